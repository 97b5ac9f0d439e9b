//! `[[target]]` tables: a local directory, an FTP/FTPS server, or an S3 or
//! S3-compatible bucket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use super::SecretSource;
use super::document::{Fields, Problems, Span, seconds};

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    /// Which backups this target keeps; `None` falls back to the job's
    /// retention, and without that every backup is kept.
    pub retention: Option<crate::retention::Policy>,
}

#[derive(Debug, Clone)]
pub enum TargetKind {
    /// A directory on a local or mounted file system.
    Local {
        path: PathBuf,
    },
    Ftp(FtpSettings),
    S3(S3Settings),
}

/// Encryption of an FTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FtpTls {
    /// Plain FTP: passwords and data travel unencrypted.
    None,
    /// FTPS with AUTH TLS on the normal port (RFC 4217).
    Explicit,
    /// FTPS with TLS from the first byte, usually on port 990.
    Implicit,
}

#[derive(Debug, Clone)]
pub struct FtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: FtpTls,
    pub username: String,
    pub password: Option<SecretSource>,
    /// Folder on the server that holds the backups, relative to the login
    /// folder unless it starts with '/'.
    pub path: String,
    /// Extra CA certificate (PEM) trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Accept any server certificate. Off by default; every run warns when on.
    pub insecure_skip_verify: bool,
    pub passive: bool,
    pub timeout: Duration,
    /// Attempts for an operation that fails with a transient error.
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix (folder) inside the bucket, without leading or trailing '/'.
    pub prefix: String,
    pub region: String,
    /// Endpoint URL of an S3-compatible store; AWS when unset.
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`.
    pub path_style: bool,
    pub allow_http: bool,
    pub access_key_id: Option<SecretSource>,
    pub secret_access_key: Option<SecretSource>,
    pub session_token: Option<SecretSource>,
    pub storage_class: Option<String>,
    /// Smallest multipart part; grows so that no upload needs more than
    /// 10,000 parts.
    pub multipart_part_size_bytes: u64,
    /// Write manifests with If-None-Match, so two writers never overwrite each other.
    pub conditional_writes: bool,
    pub timeout: Duration,
    pub attempts: u32,
}

/// S3's smallest allowed part, except for the last one.
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// S3's largest allowed part.
pub const MAX_PART_BYTES: u64 = 5 * 1024 * 1024 * 1024;
const DEFAULT_PART_BYTES: u64 = 8 * 1024 * 1024;

const SUPPORTED: &str = "supported: \"local\", \"ftp\", \"s3\"";

/// Returns the target's name when it is valid, and the target when all of it is.
pub(super) fn parse_target(
    table: &DeTable<'_>,
    span: Span,
    problems: &mut Problems<'_>,
) -> (Option<String>, Option<Target>) {
    let mut fields = Fields::new(table, "[[target]]");
    let name = fields.name(problems, span.clone(), "target");
    let kind = fields.string(problems, "type");
    let context = match &name {
        Some(name) => format!("target {name:?}"),
        None => "target".to_string(),
    };
    let kind = match kind {
        None => {
            problems.add(span.clone(), format!("{context}: type is missing; {SUPPORTED}"));
            fields.finish_ignoring_rest();
            return (name, None);
        }
        Some((kind, kind_span)) => match kind.as_str() {
            "local" => parse_local(&mut fields, problems, &context, span),
            "ftp" => parse_ftp(&mut fields, problems, &context, span).map(TargetKind::Ftp),
            "s3" => parse_s3(&mut fields, problems, &context, span).map(TargetKind::S3),
            other => {
                problems.add(kind_span, format!("{context}: unknown type {other:?}; {SUPPORTED}"));
                fields.finish_ignoring_rest();
                return (name, None);
            }
        },
    };
    let retention = fields
        .table(problems, "retention")
        .and_then(|(table, retention_span)| super::document::retention(table, retention_span, problems, &context));
    fields.finish(problems);
    let target = match (&name, kind) {
        (Some(name), Some(kind)) => Some(Target { name: name.clone(), kind, retention }),
        _ => None,
    };
    (name, target)
}

fn parse_local(
    fields: &mut Fields<'_, '_>,
    problems: &mut Problems<'_>,
    context: &str,
    span: Span,
) -> Option<TargetKind> {
    let Some((path, path_span)) = fields.string(problems, "path") else {
        problems.add(
            span,
            format!(
                "{context}: path is missing; set the backup directory, for example path = \"/var/backups/sessbackup\""
            ),
        );
        return None;
    };
    if !Path::new(&path).is_absolute() {
        problems.add(path_span, format!("{context}: path {path:?} must be an absolute path"));
        return None;
    }
    if problems.check_environment
        && let Err(message) = check_target_dir(Path::new(&path))
    {
        problems.add(path_span, format!("{context}: {message}"));
    }
    Some(TargetKind::Local { path: PathBuf::from(path) })
}

fn parse_ftp(
    fields: &mut Fields<'_, '_>,
    problems: &mut Problems<'_>,
    context: &str,
    span: Span,
) -> Option<FtpSettings> {
    let host = fields.string(problems, "host");
    let port = fields.integer(problems, "port");
    let tls = fields.string(problems, "tls");
    let username = fields.string(problems, "username");
    let password = fields.secret(problems, "password", context).map(|(source, _)| source);
    let path = fields.string(problems, "path");
    let ca_file = fields.string(problems, "ca_file");
    let insecure = fields.boolean(problems, "insecure_skip_verify");
    let passive = fields.boolean(problems, "passive");
    let timeout = fields.integer(problems, "timeout_secs");
    let attempts = fields.integer(problems, "attempts");

    let host = match host {
        Some((host, host_span)) if host.is_empty() || host.contains(['/', ' ', ':']) => {
            problems.add(host_span, format!("{context}: host {host:?} is invalid; give a host name or IP address"));
            None
        }
        Some((host, _)) => Some(host),
        None => {
            problems
                .add(span.clone(), format!("{context}: host is missing; for example host = \"backup.example.com\""));
            None
        }
    };
    let tls = match tls {
        None => FtpTls::Explicit,
        Some((value, tls_span)) => match value.as_str() {
            "none" => FtpTls::None,
            "explicit" => FtpTls::Explicit,
            "implicit" => FtpTls::Implicit,
            other => {
                problems.add(
                    tls_span,
                    format!("{context}: tls {other:?} is invalid; use \"none\", \"explicit\" or \"implicit\""),
                );
                FtpTls::Explicit
            }
        },
    };
    let port = match port {
        None => Some(if tls == FtpTls::Implicit { 990 } else { 21 }),
        Some((port, port_span)) => match u16::try_from(port) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                problems.add(port_span, format!("{context}: port {port} is out of range; use 1 to 65535"));
                None
            }
        },
    };
    let username = match username {
        Some((name, name_span)) if name.is_empty() || name.chars().any(|c| c.is_control()) => {
            problems.add(name_span, format!("{context}: username {name:?} is invalid"));
            None
        }
        Some((name, _)) => Some(name),
        None => Some("anonymous".to_string()),
    };
    let path = match path {
        None => Some(String::new()),
        Some((path, path_span)) => {
            let invalid = path.chars().any(|c| c.is_control()) || path.split('/').any(|part| part == "..");
            if invalid {
                problems
                    .add(path_span, format!("{context}: path {path:?} must not contain '..' or control characters"));
                None
            } else {
                Some(path.trim_end_matches('/').to_string())
            }
        }
    };
    let ca_file = ca_file.and_then(|(path, path_span)| check_ca_file(problems, context, "ca_file", path, path_span));
    let timeout = seconds(problems, context, "timeout_secs", timeout, 30, 3600);
    let attempts = attempt_count(problems, context, attempts);
    if tls == FtpTls::None && (ca_file.is_some() || insecure.is_some()) {
        problems.add(
            span.clone(),
            format!("{context}: ca_file and insecure_skip_verify need tls = \"explicit\" or \"implicit\""),
        );
    }

    Some(FtpSettings {
        host: host?,
        port: port?,
        tls,
        username: username?,
        password,
        path: path?,
        ca_file,
        insecure_skip_verify: insecure.is_some_and(|(flag, _)| flag),
        passive: passive.is_none_or(|(flag, _)| flag),
        timeout,
        attempts,
    })
}

fn parse_s3(fields: &mut Fields<'_, '_>, problems: &mut Problems<'_>, context: &str, span: Span) -> Option<S3Settings> {
    let bucket = fields.string(problems, "bucket");
    let prefix = fields.string(problems, "prefix");
    let region = fields.string(problems, "region");
    let endpoint = fields.string(problems, "endpoint");
    let path_style = fields.boolean(problems, "path_style");
    let allow_http = fields.boolean(problems, "allow_http");
    let access_key_id = fields.secret(problems, "access_key_id", context);
    let secret_access_key = fields.secret(problems, "secret_access_key", context);
    let session_token = fields.secret(problems, "session_token", context).map(|(source, _)| source);
    let storage_class = fields.string(problems, "storage_class");
    let part_size = fields.integer(problems, "multipart_part_size_bytes");
    let conditional_writes = fields.boolean(problems, "conditional_writes");
    let timeout = fields.integer(problems, "timeout_secs");
    let attempts = fields.integer(problems, "attempts");

    let bucket = match bucket {
        None => {
            problems.add(span.clone(), format!("{context}: bucket is missing; for example bucket = \"redis-backups\""));
            None
        }
        Some((bucket, bucket_span)) => {
            let valid = (3..=63).contains(&bucket.len())
                && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'));
            if valid {
                Some(bucket)
            } else {
                problems.add(
                    bucket_span,
                    format!(
                        "{context}: bucket {bucket:?} is invalid; use 3 to 63 lowercase letters, digits, '.' or '-'"
                    ),
                );
                None
            }
        }
    };
    let prefix = match prefix {
        None => Some(String::new()),
        Some((prefix, prefix_span)) => {
            let trimmed = prefix.trim_matches('/').to_string();
            if trimmed.is_empty() || crate::target::ObjectName::new(trimmed.clone()).is_ok() {
                Some(trimmed)
            } else {
                problems.add(
                    prefix_span,
                    format!("{context}: prefix {prefix:?} is invalid; use letters, digits, '.', '_', '-' and '/'"),
                );
                None
            }
        }
    };
    let allow_http = allow_http.is_some_and(|(flag, _)| flag);
    let endpoint = match endpoint {
        None => None,
        Some((endpoint, endpoint_span)) => match url::Url::parse(&endpoint) {
            Ok(url) if url.scheme() == "https" || url.scheme() == "http" => {
                if url.scheme() == "http" && !allow_http {
                    problems.add(
                        endpoint_span,
                        format!("{context}: endpoint {endpoint:?} uses plain http; set allow_http = true to allow it"),
                    );
                }
                Some(endpoint.trim_end_matches('/').to_string())
            }
            _ => {
                problems.add(endpoint_span, format!("{context}: endpoint {endpoint:?} is not an http(s) URL"));
                None
            }
        },
    };
    match (&access_key_id, &secret_access_key) {
        (Some((_, key_span)), None) => problems.add(
            key_span.clone(),
            format!("{context}: access_key_id is set without secret_access_key_env or secret_access_key_file"),
        ),
        (None, Some((_, key_span))) => problems.add(
            key_span.clone(),
            format!("{context}: secret_access_key is set without access_key_id_env or access_key_id_file"),
        ),
        _ => {}
    }
    let multipart_part_size_bytes = match part_size {
        None => DEFAULT_PART_BYTES,
        Some((bytes, size_span)) => {
            if bytes < MIN_PART_BYTES as i64 || bytes > MAX_PART_BYTES as i64 {
                problems.add(
                    size_span,
                    format!(
                        "{context}: multipart_part_size_bytes {bytes} is out of range; use 5 MiB (5242880) to 5 GiB"
                    ),
                );
            }
            bytes.clamp(MIN_PART_BYTES as i64, MAX_PART_BYTES as i64) as u64
        }
    };
    let timeout = seconds(problems, context, "timeout_secs", timeout, 60, 3600);
    let attempts = attempt_count(problems, context, attempts);

    Some(S3Settings {
        bucket: bucket?,
        prefix: prefix?,
        region: region.map(|(region, _)| region).unwrap_or_else(|| "us-east-1".to_string()),
        path_style: path_style.map(|(flag, _)| flag).unwrap_or(endpoint.is_some()),
        endpoint,
        allow_http,
        access_key_id: access_key_id.map(|(source, _)| source),
        secret_access_key: secret_access_key.map(|(source, _)| source),
        session_token,
        storage_class: storage_class.map(|(class, _)| class),
        multipart_part_size_bytes,
        conditional_writes: conditional_writes.is_none_or(|(flag, _)| flag),
        timeout,
        attempts,
    })
}

fn attempt_count(problems: &mut Problems<'_>, context: &str, value: Option<(i64, Span)>) -> u32 {
    match value {
        None => 3,
        Some((count, span)) if !(1..=20).contains(&count) => {
            problems.add(span, format!("{context}: attempts {count} is out of range; use 1 (no retry) to 20"));
            3
        }
        Some((count, _)) => count as u32,
    }
}

fn check_ca_file(problems: &mut Problems<'_>, context: &str, key: &str, path: String, span: Span) -> Option<PathBuf> {
    if !Path::new(&path).is_absolute() {
        problems.add(span, format!("{context}: {key} {path:?} must be an absolute path"));
        return None;
    }
    if problems.check_environment
        && let Err(err) = std::fs::read(&path)
    {
        problems.add(span, format!("{context}: cannot read {key} {path:?}: {err}"));
    }
    Some(PathBuf::from(path))
}

/// Checks that `path` is a writable directory, or could be created as one.
fn check_target_dir(path: &Path) -> Result<(), String> {
    let Some(existing) = path.ancestors().find(|dir| dir.exists()) else {
        return Ok(());
    };
    if !existing.is_dir() {
        return Err(format!("path {} cannot be used: {} is not a directory", path.display(), existing.display()));
    }
    let c_path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(existing.as_os_str()))
        .map_err(|_| format!("path {} contains a NUL byte", path.display()))?;
    // SAFETY: access(2) on a valid NUL-terminated path; it only reads the path.
    let writable = unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    if !writable {
        let what = if existing == path { "is not writable" } else { "cannot be created" };
        return Err(format!(
            "path {} {what}: this user cannot write to {}; fix its permissions or run as its owner",
            path.display(),
            existing.display()
        ));
    }
    Ok(())
}
