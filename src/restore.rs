//! Finding published backups, verifying them end to end, and restoring them
//! to a file.
//!
//! Verification downloads the artifact once and, in one pass, hashes it,
//! decompresses it, hashes the RDB, walks the RDB to its CRC-64 trailer and
//! compares every figure with the manifest. Restore runs the same pass while
//! writing the RDB to a staging file beside the destination. It renames the
//! file into place only if every check passed. Otherwise it removes the
//! staging file, and the destination stays as it was.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::manifest::{self, Manifest};
use crate::pipeline::ChannelReader;
use crate::rdb;
use crate::target::{self, ObjectName, Target};

/// Manifests larger than this are not read.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// A published backup on one target.
#[derive(Clone)]
pub struct Backup {
    pub target: Arc<dyn Target>,
    pub manifest: Manifest,
}

/// Lists the backups on `target`, for one job or all, newest first. Objects
/// that look like manifests but do not parse are returned as warnings.
pub async fn list_backups(target: &Arc<dyn Target>, job: Option<&str>) -> target::Result<(Vec<Backup>, Vec<String>)> {
    let prefix = match job {
        Some(job) => format!("{job}/"),
        None => String::new(),
    };
    let objects = target.list(&prefix).await?;
    let mut backups = Vec::new();
    let mut warnings = Vec::new();
    for object in objects {
        let Some((job_part, id)) = manifest::parse_manifest_name(object.name.as_str()) else {
            continue;
        };
        if object.size > MAX_MANIFEST_BYTES {
            warnings.push(format!(
                "{}: skipped {}: {} bytes is too large for a manifest",
                target.name(),
                object.name,
                object.size
            ));
            continue;
        }
        let bytes = match read_object(target, &object.name).await {
            Ok(bytes) => bytes,
            Err(err) => {
                warnings.push(format!("skipped {}: {err}", object.name));
                continue;
            }
        };
        match Manifest::from_json(&bytes) {
            Ok(manifest) if manifest.job == job_part && manifest.id == id => {
                backups.push(Backup { target: Arc::clone(target), manifest })
            }
            Ok(manifest) => warnings.push(format!(
                "{}: skipped {}: it describes backup {}/{}",
                target.name(),
                object.name,
                manifest.job,
                manifest.id
            )),
            Err(err) => warnings.push(format!("{}: skipped {}: {err}", target.name(), object.name)),
        }
    }
    backups.sort_by(|a, b| b.manifest.id.cmp(&a.manifest.id));
    Ok((backups, warnings))
}

async fn read_object(target: &Arc<dyn Target>, name: &ObjectName) -> target::Result<Vec<u8>> {
    let mut reader = target.get(name).await?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.map_err(|err| target::Error {
        kind: target::ErrorKind::Unavailable,
        target: target.name().to_string(),
        action: "read",
        object: name.to_string(),
        message: err.to_string(),
    })?;
    Ok(bytes)
}

/// One comparison made by a verification.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    pub what: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

/// Everything a verification found.
#[derive(Debug, serde::Serialize)]
pub struct Verification {
    pub id: String,
    pub job: String,
    pub target: String,
    pub checks: Vec<Check>,
    /// Failures that stopped a stage (download, decompression, RDB structure).
    pub errors: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.checks.iter().all(|check| check.ok)
    }

    /// Returns the failed checks and errors, one per line.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.errors.clone();
        for check in self.checks.iter().filter(|check| !check.ok) {
            out.push(format!("{}: expected {}, found {}", check.what, check.expected, check.actual));
        }
        out
    }
}

/// Figures measured while reading an artifact.
struct Measured {
    artifact_bytes: u64,
    artifact_sha256: String,
    rdb_bytes: u64,
    rdb_sha256: String,
    decode_error: Option<String>,
    read_error: Option<String>,
    sink_error: Option<String>,
    walk: Option<Result<rdb::Summary, rdb::Failure>>,
}

/// Downloads and checks a backup, its AOF archive included; with `sink`,
/// also writes the RDB there.
pub async fn verify(backup: &Backup, sink: Option<std::fs::File>) -> Verification {
    let mut verification = verify_rdb(backup, sink).await;
    if backup.manifest.aof.is_some() {
        verify_aof(backup, None, &mut verification).await;
    }
    verification
}

/// Downloads and checks the backup's RDB artifact alone; with `sink`, also
/// writes the RDB there. Restoring the RDB does not depend on the AOF.
pub async fn verify_rdb(backup: &Backup, sink: Option<std::fs::File>) -> Verification {
    let manifest = &backup.manifest;
    let mut verification = Verification {
        id: manifest.id.clone(),
        job: manifest.job.clone(),
        target: backup.target.name().to_string(),
        checks: Vec::new(),
        errors: Vec::new(),
    };
    let artifact = match manifest::artifact_name(&manifest.job, &manifest.id) {
        Ok(name) => name,
        Err(err) => {
            verification.errors.push(err.to_string());
            return verification;
        }
    };
    let reader = match backup.target.get(&artifact).await {
        Ok(reader) => reader,
        Err(err) => {
            verification.errors.push(format!("cannot download the artifact: {err}"));
            return verification;
        }
    };
    let bar = crate::progress::bytes(backup.target.name(), Some(manifest.artifact.bytes));
    let bridge = crate::progress::ProgressReader::new(tokio_util::io::SyncIoBridge::new(reader), bar);
    let measured =
        tokio::task::spawn_blocking(move || measure(bridge, sink)).await.expect("verification thread panicked");
    compare(manifest, measured, &mut verification);
    verification
}

/// Downloads the backup's AOF archive and checks it against the manifest:
/// its size and SHA-256, then each file's name, size and SHA-256 in order,
/// and each file's structure as Redis would load it. With `extract_to`, the
/// files are also written to `extract_to/appendonlydir/`.
pub async fn verify_aof(backup: &Backup, extract_to: Option<PathBuf>, verification: &mut Verification) {
    let Some(aof) = backup.manifest.aof.clone() else {
        verification.errors.push("the backup has no AOF (the job did not set include_aof)".to_string());
        return;
    };
    let name = match ObjectName::new(aof.name.clone()) {
        Ok(name) => name,
        Err(err) => {
            verification.errors.push(err.to_string());
            return;
        }
    };
    let reader = match backup.target.get(&name).await {
        Ok(reader) => reader,
        Err(err) => {
            verification.errors.push(format!("cannot download the AOF archive: {err}"));
            return;
        }
    };
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let (checks, errors) = tokio::task::spawn_blocking(move || measure_aof(bridge, &aof, extract_to.as_deref()))
        .await
        .expect("AOF verification thread panicked");
    verification.checks.extend(checks);
    verification.errors.extend(errors);
}

fn measure_aof(reader: impl Read, aof: &manifest::AofInfo, extract_to: Option<&Path>) -> (Vec<Check>, Vec<String>) {
    let mut checks = Vec::new();
    let mut errors = Vec::new();
    let mut check = |what: String, expected: String, actual: String| {
        let ok = expected == actual;
        checks.push(Check { what, expected, actual, ok });
    };
    let folder = extract_to.map(|dir| dir.join("appendonlydir"));
    if let Some(folder) = &folder
        && let Err(err) = std::fs::create_dir_all(folder)
    {
        errors.push(format!("cannot create {}: {err}", folder.display()));
        return (checks, errors);
    }

    let mut archive_reader = HashingReader::new(reader);
    let unpacked = (|| -> Result<usize, String> {
        let mut decoder = zstd::stream::read::Decoder::new(&mut archive_reader).map_err(|err| err.to_string())?;
        decoder.window_log_max(24).map_err(|err| err.to_string())?;
        let mut archive = tar::Archive::new(decoder);
        let mut seen = 0;
        for (index, entry) in archive.entries().map_err(|err| err.to_string())?.enumerate() {
            let entry = entry.map_err(|err| format!("reading the archive failed: {err}"))?;
            let path = entry.path().map_err(|err| err.to_string())?.to_string_lossy().into_owned();
            let Some(expected) = aof.files.get(index) else {
                return Err(format!("the archive holds {path}, which the manifest does not list"));
            };
            let wanted = format!("appendonlydir/{}", expected.name);
            if path != wanted {
                return Err(format!("entry {} of the archive is {path}, the manifest expects {wanted}", index + 1));
            }
            let bytes = entry.header().size().map_err(|err| err.to_string())?;
            let mut sink = match &folder {
                Some(folder) => Some(
                    std::fs::File::create(folder.join(&expected.name))
                        .map_err(|err| format!("cannot write {}: {err}", expected.name))?,
                ),
                None => None,
            };
            let mut hashed = TeeReader { inner: entry, hash: Sha256::new(), bytes: 0, sink: sink.as_mut() };
            let outcome = match expected.kind.as_str() {
                "manifest" => {
                    let mut text = String::new();
                    hashed.read_to_string(&mut text).map_err(|err| format!("{}: {err}", expected.name))?;
                    crate::aof::parse_manifest(&text).err().map(|message| format!("{}: {message}", expected.name))
                }
                kind => {
                    let kind = if kind == "base" { crate::aof::FileType::Base } else { crate::aof::FileType::Incr };
                    let (_, outcome) = crate::aof::check_stream(&expected.name, kind, &mut hashed, bytes, None);
                    // Read what the check left, so the hash covers the whole file.
                    io::copy(&mut hashed, &mut io::sink()).map_err(|err| format!("{}: {err}", expected.name))?;
                    match outcome {
                        crate::aof::FileOutcome::Whole => None,
                        crate::aof::FileOutcome::Torn { valid_up_to: offset, message }
                        | crate::aof::FileOutcome::Invalid { offset, message } => {
                            Some(format!("AOF file {} is invalid at offset {offset}: {message}", expected.name))
                        }
                        crate::aof::FileOutcome::Until(_) => None,
                    }
                }
            };
            check(
                format!("AOF file {} size in bytes", expected.name),
                expected.bytes.to_string(),
                hashed.bytes.to_string(),
            );
            check(
                format!("AOF file {} SHA-256", expected.name),
                expected.sha256.clone(),
                hex::encode(hashed.hash.finalize()),
            );
            if let Some(problem) = outcome {
                errors.push(problem);
            }
            seen += 1;
        }
        Ok(seen)
    })();
    match unpacked {
        Ok(seen) => check("AOF files in the archive".to_string(), aof.files.len().to_string(), seen.to_string()),
        Err(err) => errors.push(format!("the AOF archive is unreadable: {err}")),
    }
    if let Err(err) = archive_reader.drain() {
        errors.push(format!("reading the AOF archive failed: {err}"));
    }
    let (bytes, sha256) = archive_reader.finish();
    check("AOF archive size in bytes".to_string(), aof.bytes.to_string(), bytes.to_string());
    check("AOF archive SHA-256".to_string(), aof.sha256.clone(), sha256);
    (checks, errors)
}

/// Hashes what passes through and copies it to `sink`, if there is one.
struct TeeReader<'a, R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
    sink: Option<&'a mut std::fs::File>,
}

impl<R: Read> Read for TeeReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(out)?;
        self.hash.update(&out[..read]);
        self.bytes += read as u64;
        if let Some(sink) = self.sink.as_mut() {
            sink.write_all(&out[..read])?;
        }
        Ok(read)
    }
}

fn compare(manifest: &Manifest, measured: Measured, verification: &mut Verification) {
    let mut checks = Vec::new();
    let mut check = |what: &str, expected: String, actual: String| {
        let ok = expected == actual;
        checks.push(Check { what: what.to_string(), expected, actual, ok });
    };
    check("artifact size in bytes", manifest.artifact.bytes.to_string(), measured.artifact_bytes.to_string());
    check("artifact SHA-256", manifest.artifact.sha256.clone(), measured.artifact_sha256.clone());
    if let Some(err) = measured.read_error {
        verification.errors.push(format!("reading the artifact failed: {err}"));
    }
    if let Some(err) = measured.sink_error {
        verification.errors.push(format!("writing the restored file failed: {err}"));
    }

    // After a decompression error the RDB figures describe a cut-off stream,
    // so comparing them would only add misleading failures.
    if let Some(err) = measured.decode_error {
        verification.errors.push(format!("decompressing the artifact failed: {err}; the RDB inside was not checked"));
        verification.checks = checks;
        return;
    }
    check("RDB size in bytes", manifest.rdb.bytes.to_string(), measured.rdb_bytes.to_string());
    check("RDB SHA-256", manifest.rdb.sha256.clone(), measured.rdb_sha256.clone());
    match measured.walk {
        None => verification.errors.push("the RDB was not checked".to_string()),
        Some(Err(failure)) => verification.errors.push(format!("the RDB is invalid: {failure}")),
        Some(Ok(summary)) => {
            check("RDB version", manifest.rdb.version.to_string(), summary.version.to_string());
            check("keys", manifest.rdb.keys.to_string(), summary.keys().to_string());
            check("keys with expiry", manifest.rdb.expires.to_string(), summary.expires().to_string());
            let expected: Vec<String> =
                manifest.rdb.databases.iter().map(|db| format!("db{}={}/{}", db.db, db.keys, db.expires)).collect();
            let actual: Vec<String> = manifest::database_counts(&summary)
                .iter()
                .map(|db| format!("db{}={}/{}", db.db, db.keys, db.expires))
                .collect();
            check("keys/expires per database", expected.join(" "), actual.join(" "));
        }
    }
    verification.checks = checks;
}

/// Reads the artifact once: hash, decompress, hash, walk, optionally write.
fn measure(reader: impl Read, sink: Option<std::fs::File>) -> Measured {
    let mut artifact = HashingReader::new(reader);
    let (walk_sender, walk_receiver) = std_mpsc::sync_channel::<Bytes>(4);
    let walker = std::thread::Builder::new()
        .name("rdb-walker".to_string())
        .spawn(move || rdb::walk(ChannelReader::new(walk_receiver)))
        .expect("spawn walker thread");

    let mut rdb_hash = Sha256::new();
    let mut rdb_bytes: u64 = 0;
    let mut decode_error = None;
    let mut sink_error = None;
    let mut sink = sink.map(io::BufWriter::new);
    let decoded = zstd::stream::read::Decoder::new(&mut artifact).and_then(|mut decoder| {
        // Our own artifacts use windows of at most 8 MiB (level 19); refusing
        // larger ones keeps a damaged or foreign artifact from taking memory.
        decoder.window_log_max(24)?;
        let mut walker_alive = true;
        loop {
            let mut buffer = vec![0u8; crate::pipeline::CHUNK_BYTES];
            let read = match decoder.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            buffer.truncate(read);
            rdb_hash.update(&buffer);
            rdb_bytes += read as u64;
            if let Some(file) = sink.as_mut()
                && sink_error.is_none()
                && let Err(err) = file.write_all(&buffer)
            {
                sink_error = Some(err.to_string());
            }
            if walker_alive && walk_sender.send(Bytes::from(buffer)).is_err() {
                walker_alive = false;
            }
        }
    });
    if let Err(err) = decoded {
        decode_error = Some(err.to_string());
    }
    drop(walk_sender);
    let walk = walker.join().expect("walker thread panicked");

    // Hash whatever the decoder left unread so size and hash describe the
    // whole artifact, also after a decompression error.
    let read_error = artifact.drain().err().map(|err| err.to_string());
    if let Some(mut file) = sink
        && sink_error.is_none()
        && let Err(err) = file.flush()
    {
        sink_error = Some(err.to_string());
    }
    let (artifact_bytes, artifact_sha256) = artifact.finish();
    Measured {
        artifact_bytes,
        artifact_sha256,
        rdb_bytes,
        rdb_sha256: hex::encode(rdb_hash.finalize()),
        decode_error,
        read_error,
        sink_error,
        walk: Some(walk),
    }
}

/// Counts and hashes every byte read through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader { inner, hash: Sha256::new(), bytes: 0 }
    }

    fn drain(&mut self) -> io::Result<()> {
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            match self.read(&mut buffer) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    fn finish(self) -> (u64, String) {
        (self.bytes, hex::encode(self.hash.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(out)?;
        self.hash.update(&out[..read]);
        self.bytes += read as u64;
        Ok(read)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path} exists; pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("cannot restore to {path}: {message}")]
    Destination { path: PathBuf, message: String },
    #[error("backup {id} on target {target} failed verification, nothing was written:\n  {}", .problems.join("\n  "))]
    Verification { id: String, target: String, problems: Vec<String> },
}

/// Verifies `backup` and writes its RDB to `destination`, atomically. Without
/// `force`, an existing file is never replaced.
pub async fn restore_to_file(backup: &Backup, destination: &Path, force: bool) -> Result<Verification, RestoreError> {
    let dest_error = |message: String| RestoreError::Destination { path: destination.to_path_buf(), message };
    if destination.is_dir() {
        return Err(dest_error("it is a directory; give the path of the file to write".to_string()));
    }
    if !force && destination.symlink_metadata().is_ok() {
        return Err(RestoreError::Exists { path: destination.to_path_buf() });
    }
    let file_name = destination
        .file_name()
        .ok_or_else(|| dest_error("the path has no file name".to_string()))?
        .to_string_lossy()
        .into_owned();
    let parent = match destination.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(dest_error(format!("directory {} does not exist", parent.display())));
    }
    let staging = parent.join(format!(".{file_name}.sessbackup-partial-{:016x}", rand::random::<u64>()));
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)
            .map_err(|err| dest_error(format!("cannot create {}: {err}", staging.display())))?
    };
    let guard = RemoveOnDrop(Some(staging.clone()));
    let sync_handle = file.try_clone().map_err(|err| dest_error(err.to_string()))?;
    let verification = verify_rdb(backup, Some(file)).await;
    if !verification.ok() {
        return Err(RestoreError::Verification {
            id: verification.id.clone(),
            target: verification.target.clone(),
            problems: verification.problems(),
        });
    }
    sync_handle.sync_all().map_err(|err| dest_error(format!("fsync failed: {err}")))?;
    drop(sync_handle);
    let rename = if force {
        std::fs::rename(&staging, destination)
    } else {
        crate::fsutil::rename_no_replace(&staging, destination)
    };
    rename.map_err(|err| match err.kind() {
        io::ErrorKind::AlreadyExists => RestoreError::Exists { path: destination.to_path_buf() },
        _ => dest_error(format!("cannot move the verified file into place: {err}")),
    })?;
    let mut guard = guard;
    guard.0 = None;
    std::fs::File::open(&parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| dest_error(format!("fsync of {} failed: {err}", parent.display())))?;
    Ok(verification)
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
