//! The TOML configuration file: jobs (what to back up) and targets (where to
//! put it), read into validated, typed settings.
//!
//! Parsing walks the spanned TOML document by hand instead of through serde so
//! that every problem (an unknown key, a wrong type, an invalid value) is
//! reported at once with its line, not just the first one.
//!
//! Secrets are not read here: the file names where each secret lives, and
//! [`SecretSource::resolve`] reads it when a run needs it.

mod document;
mod env;
mod target;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use crate::secret::Secret;
use document::{Fields, Problems, line_of, seconds};
pub use target::{FtpSettings, FtpTls, MAX_PART_BYTES, MIN_PART_BYTES, S3Settings, Target, TargetKind};

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/sessbackup/config.toml";

const DEFAULT_SNAPSHOT_TIMEOUT_SECS: u64 = 600;
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

#[derive(Debug, Clone)]
pub struct Config {
    pub jobs: Vec<Job>,
    pub targets: Vec<Target>,
    pub daemon: Daemon,
    /// Non-fatal remarks, such as a target no job uses.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub redis: RedisSettings,
    /// Path of the RDB file on this host's file system, when `CONFIG GET dir` and
    /// `dbfilename` cannot be used or name a path that differs here.
    pub rdb_path: Option<PathBuf>,
    pub snapshot_timeout: Duration,
    pub compression_level: i32,
    pub targets: Vec<String>,
    /// Ship the multi-part AOF set with each backup.
    pub include_aof: bool,
    /// The `appendonlydir/` on this host's file system, when `CONFIG GET dir`
    /// and `appenddirname` cannot be used or name a path that differs here.
    pub aof_path: Option<PathBuf>,
    /// When the daemon runs the job; `None` for jobs run only by `backup`.
    pub schedule: Option<crate::schedule::Schedule>,
    /// Zone of the schedule and of retention's calendar buckets.
    pub timezone: chrono_tz::Tz,
    /// Random delay before each scheduled run, up to this many seconds.
    pub jitter: Duration,
    /// Run once at start-up if a scheduled run was missed while the daemon was down.
    pub catch_up: bool,
    /// The job counts as overdue when its last success is older than its
    /// previous scheduled time by more than this.
    pub alert_after: Option<chrono::Duration>,
    /// Default retention for the job's targets that set none.
    pub retention: Option<crate::retention::Policy>,
}

/// Settings of `sessbackup daemon`.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// Where the daemon keeps lock files and the time of each job's last run.
    pub state_dir: Option<PathBuf>,
    /// How long a running backup may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Address of the Prometheus metrics endpoint, if any.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon { state_dir: None, shutdown_timeout: Duration::from_secs(60), metrics_listen: None }
    }
}

/// How to reach and authenticate to Redis.
#[derive(Clone)]
pub struct RedisSettings {
    /// The URL as written, which may hold a password: never print it.
    url: String,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
    /// Extra CA certificate (PEM) trusted for `rediss://` connections.
    pub tls_ca_file: Option<PathBuf>,
    /// Name of the CONFIG command, for servers that rename it.
    pub config_command: String,
    pub connect_timeout: Duration,
}

impl RedisSettings {
    /// Settings for a server named on the command line rather than in a job.
    /// The URL must be `redis://`, `rediss://` or `unix://`.
    pub fn from_url(
        url: &str,
        username: Option<String>,
        password: Option<SecretSource>,
        tls_ca_file: Option<PathBuf>,
    ) -> Result<RedisSettings, String> {
        check_redis_url(url).map_err(|message| format!("Redis URL {}: {message}", redact_url(url)))?;
        Ok(RedisSettings {
            url: url.to_string(),
            username,
            password,
            tls_ca_file,
            config_command: "CONFIG".to_string(),
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// Returns the URL including any password in it, for the client library only.
    pub fn url_with_credentials(&self) -> &str {
        &self.url
    }

    /// Returns the URL without user name or password, for messages.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.display_url())
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("config_command", &self.config_command)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Where a secret comes from: an environment variable or a file. Contains
/// the source's name and the configuration key that named it, never the
/// secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env { variable: String, key: String },
    File { path: PathBuf, key: String },
}

impl SecretSource {
    /// Reads the secret. A file's trailing newline is dropped.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            SecretSource::Env { variable, key } => match std::env::var(variable) {
                Ok(value) if value.is_empty() => {
                    Err(format!("environment variable {variable} ({key}) is set but empty; export the secret"))
                }
                Ok(value) => Ok(Secret::new(value)),
                Err(std::env::VarError::NotPresent) => {
                    // Options on the command line start with "--"; keys of the file do not.
                    let alternative = match key.strip_suffix("-env") {
                        Some(option) if key.starts_with("--") => format!("use {option}-file"),
                        _ => "name a file with the _file key".to_string(),
                    };
                    Err(format!("environment variable {variable} ({key}) is not set; export it, or {alternative}"))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("environment variable {variable} ({key}) is not valid UTF-8"))
                }
            },
            SecretSource::File { path, key } => match std::fs::read_to_string(path) {
                Ok(text) => Ok(Secret::new(text.strip_suffix('\n').unwrap_or(&text).trim_end_matches('\r'))),
                Err(err) => Err(format!("cannot read {key} {}: {err}", path.display())),
            },
        }
    }
}

impl Config {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|job| job.name == name)
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|target| target.name == name)
    }
}

/// One problem in the file, with its line when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

/// The file could not be read or has problems; `problems` lists them all.
#[derive(Debug)]
pub struct Error {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
    /// The configuration came from environment variables alone.
    pub variables_only: bool,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let source = if self.variables_only {
            format!("from SESSBACKUP_* variables (no file at {})", self.path.display())
        } else {
            self.path.display().to_string()
        };
        write!(f, "invalid configuration {source} ({count} problem{})", if count == 1 { "" } else { "s" })?;
        for problem in &self.problems {
            match problem.line {
                Some(line) => write!(f, "\n  line {line}: {}", problem.message)?,
                None => write!(f, "\n  {}", problem.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, Error> {
    read_and_parse(path, false)
}

/// Reads and validates the file at `path` like [`load`], and also checks what
/// only this host can tell: password variables and files, the TLS CA file and
/// the target folders. Problems of both kinds are reported together.
pub fn load_checked(path: &Path) -> Result<Config, Error> {
    read_and_parse(path, true)
}

fn read_and_parse(path: &Path, check_environment: bool) -> Result<Config, Error> {
    let variables = env::variables();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        // A container configured by variables alone needs no file. A path
        // given on purpose must exist, so a mistyped one is not ignored.
        Err(err)
            if err.kind() == std::io::ErrorKind::NotFound
                && !variables.is_empty()
                && path == Path::new(DEFAULT_PATH) =>
        {
            String::new()
        }
        Err(err) => {
            return Err(Error {
                path: path.to_path_buf(),
                variables_only: false,
                problems: vec![Problem {
                    line: None,
                    message: match err.kind() {
                        std::io::ErrorKind::NotFound => "file not found; create it (see config.example.toml), pass --config PATH / set SESSBACKUP_CONFIG, or configure with SESSBACKUP_JOB__<NAME>__<KEY> variables"
                            .to_string(),
                        _ => format!("cannot read the file: {err}"),
                    },
                }],
            });
        }
    };
    let variables_only = text.is_empty() && !path.exists();
    parse_with(&text, &variables, check_environment).map_err(|problems| Error {
        path: path.to_path_buf(),
        problems,
        variables_only,
    })
}

/// Validates configuration text; returns every problem found.
pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    parse_with(text, &[], false)
}

/// Validates configuration text with `variables` (name, value) over it, as
/// the process environment would give them.
pub fn parse_with_variables(text: &str, variables: &[(String, String)]) -> Result<Config, Vec<Problem>> {
    parse_with(text, variables, false)
}

fn parse_with(text: &str, variables: &[(String, String)], check_environment: bool) -> Result<Config, Vec<Problem>> {
    // The variables' document follows the file's text, so one offset names
    // a place in either. In the padded copy the file's part is blank, so the
    // variables' document parses alone with the same offsets.
    let layer = env::layer(variables);
    let combined = format!("{text}\n{}", layer.text);
    let padded: String = text
        .bytes()
        .map(|byte| if byte == b'\n' { '\n' } else { ' ' })
        .chain(std::iter::once('\n'))
        .collect::<String>()
        + &layer.text;
    let mut problems = Problems {
        text: &combined,
        list: Vec::new(),
        check_environment,
        env_start: if variables.is_empty() { usize::MAX } else { text.len() + 1 },
        env_lines: &layer.lines,
    };
    for name in &layer.invalid {
        problems.list.push(Problem {
            line: None,
            message: format!(
                "environment variable {name}: not a configuration key; use SESSBACKUP_JOB__<NAME>__<KEY>, SESSBACKUP_JOB__<NAME>__RETENTION__<KEY>, SESSBACKUP_TARGET__<NAME>__<KEY> or SESSBACKUP_DAEMON__<KEY>"
            ),
        });
    }
    let mut document = match DeTable::parse(&combined[..text.len()]) {
        Ok(document) => document,
        Err(err) => {
            let line = err.span().map(|span| line_of(text, span.start));
            problems.list.push(Problem { line, message: format!("TOML syntax error: {}", err.message()) });
            return Err(problems.list);
        }
    };
    if !variables.is_empty() {
        match DeTable::parse(&padded) {
            Ok(layer) => env::merge(document.get_mut(), layer.into_inner()),
            Err(err) => {
                let span = err.span().unwrap_or(text.len() + 1..text.len() + 1);
                problems.add(span, format!("cannot be read: {}", err.message()));
                return Err(problems.list);
            }
        }
    }

    let mut root = Fields::new(document.get_ref(), "top level");
    let job_tables = root.array_of_tables(&mut problems, "job");
    let target_tables = root.array_of_tables(&mut problems, "target");
    let daemon = match root.table(&mut problems, "daemon") {
        Some((table, _)) => parse_daemon(table, &mut problems),
        None => Daemon::default(),
    };
    root.finish(&mut problems);

    let mut targets = Vec::new();
    let mut target_names = HashSet::new();
    for (table, span) in &target_tables {
        let (name, target) = target::parse_target(table, span.clone(), &mut problems);
        if let Some(name) = name {
            // A target with other problems still counts as defined, so jobs
            // naming it get no second, misleading "not defined" problem.
            if !target_names.insert(name.clone()) {
                problems.add(span.clone(), format!("target name {name:?} is used twice; names must be unique"));
            }
        }
        targets.extend(target);
    }

    let mut jobs = Vec::new();
    let mut job_names = HashSet::new();
    for (table, span) in &job_tables {
        if let Some(job) = parse_job(table, span.clone(), &target_names, &mut problems) {
            if !job_names.insert(job.name.clone()) {
                problems.add(span.clone(), format!("job name {:?} is used twice; names must be unique", job.name));
            }
            jobs.push(job);
        }
    }
    if job_tables.is_empty() {
        problems.list.push(Problem {
            line: None,
            message: "no [[job]] table: define at least one job (see config.example.toml), in the file or with SESSBACKUP_JOB__<NAME>__<KEY> variables".to_string(),
        });
    }

    let mut warnings = Vec::new();
    for target in &targets {
        if !jobs.iter().any(|job| job.targets.contains(&target.name)) {
            warnings.push(format!("target {:?} is not used by any job", target.name));
        }
    }

    if problems.list.is_empty() {
        Ok(Config { jobs, targets, daemon, warnings })
    } else {
        problems.list.sort_by_key(|problem| problem.line.unwrap_or(usize::MAX));
        Err(problems.list)
    }
}

fn parse_job(
    table: &DeTable<'_>,
    span: std::ops::Range<usize>,
    target_names: &HashSet<String>,
    problems: &mut Problems<'_>,
) -> Option<Job> {
    let mut fields = Fields::new(table, "[[job]]");
    let name = fields.name(problems, span.clone(), "job");
    let context = match &name {
        Some(name) => format!("job {name:?}"),
        None => "job".to_string(),
    };
    let url = fields.string(problems, "redis_url");
    let username = fields.string(problems, "username");
    let password = fields.secret(problems, "password", &context).map(|(source, _)| source);
    let tls_ca_file = fields.string(problems, "tls_ca_file");
    let config_command = fields.string(problems, "config_command");
    let connect_timeout = fields.integer(problems, "connect_timeout_secs");
    let rdb_path = fields.string(problems, "rdb_path");
    let snapshot_timeout = fields.integer(problems, "snapshot_timeout_secs");
    let compression_level = fields.integer(problems, "compression_level");
    let targets = fields.string_array(problems, "targets");
    let include_aof = fields.boolean(problems, "include_aof").is_some_and(|(value, _)| value);
    let aof_path = fields.string(problems, "aof_path");
    let schedule = fields.string(problems, "schedule");
    let timezone = fields.string(problems, "timezone");
    let jitter = fields.integer(problems, "jitter_secs");
    let catch_up = fields.boolean(problems, "catch_up").is_some_and(|(value, _)| value);
    let alert_after = fields.string(problems, "alert_after");
    let retention = fields.table(problems, "retention");
    let retention = retention.and_then(|(table, span)| document::retention(table, span, problems, &context));
    fields.finish(problems);

    let timezone = match timezone {
        None => chrono_tz::Tz::UTC,
        Some((zone, span)) => zone.parse().unwrap_or_else(|_| {
            problems.add(
                span,
                format!("{context}: timezone {zone:?} is not an IANA zone name; use for example \"Europe/Berlin\" or \"UTC\""),
            );
            chrono_tz::Tz::UTC
        }),
    };
    let schedule = schedule.and_then(|(expression, span)| {
        crate::schedule::Schedule::parse(&expression, timezone.name())
            .map_err(|message| problems.add(span, format!("{context}: {message}")))
            .ok()
    });
    let jitter = match jitter {
        None => Duration::ZERO,
        Some((secs, _)) if (0..=86_400).contains(&secs) => Duration::from_secs(secs as u64),
        Some((secs, span)) => {
            problems.add(span, format!("{context}: jitter_secs {secs} is out of range; use 0 to 86400"));
            Duration::ZERO
        }
    };
    let alert_after = alert_after.and_then(|(text, span)| {
        crate::retention::parse_duration(&text)
            .map_err(|message| problems.add(span, format!("{context}: alert_after: {message}")))
            .ok()
    });

    let url = match url {
        None => {
            problems.add(
                span.clone(),
                format!("{context}: redis_url is missing; for example redis_url = \"redis://127.0.0.1:6379/\""),
            );
            None
        }
        Some((url, url_span)) => match check_redis_url(&url) {
            Ok(has_password) => Some((url, url_span, has_password)),
            Err(message) => {
                problems.add(url_span, format!("{context}: redis_url {:?}: {message}", redact_url(&url)));
                None
            }
        },
    };

    if let (Some(_), Some((_, url_span, true))) = (&password, &url) {
        problems.add(
            url_span.clone(),
            format!("{context}: redis_url contains a password and password_env/password_file is set too; keep one"),
        );
    }
    if let (Some((_, span)), None, Some((_, _, false))) = (&username, &password, &url) {
        problems.add(
            span.clone(),
            format!("{context}: username is set without a password; set password_env or password_file"),
        );
    }

    let snapshot_timeout = seconds(
        problems,
        &context,
        "snapshot_timeout_secs",
        snapshot_timeout,
        DEFAULT_SNAPSHOT_TIMEOUT_SECS,
        7 * 86_400,
    );
    let connect_timeout =
        seconds(problems, &context, "connect_timeout_secs", connect_timeout, DEFAULT_CONNECT_TIMEOUT_SECS, 3600);

    let compression_level = match compression_level {
        None => DEFAULT_COMPRESSION_LEVEL,
        Some((level, span)) => {
            if !(1..=19).contains(&level) {
                problems.add(
                    span,
                    format!("{context}: compression_level {level} is out of range; use 1 (fastest) to 19 (smallest)"),
                );
            }
            level as i32
        }
    };

    let rdb_path = rdb_path.and_then(|(path, span)| {
        if Path::new(&path).is_absolute() {
            Some(PathBuf::from(path))
        } else {
            problems.add(span, format!("{context}: rdb_path {path:?} must be an absolute path"));
            None
        }
    });
    let aof_path = aof_path.and_then(|(path, span)| {
        if Path::new(&path).is_absolute() {
            Some(PathBuf::from(path))
        } else {
            problems.add(span, format!("{context}: aof_path {path:?} must be an absolute path"));
            None
        }
    });

    let config_command = match config_command {
        None => "CONFIG".to_string(),
        Some((command, span)) => {
            if command.is_empty() || command.chars().any(|c| c.is_whitespace() || c.is_control()) {
                problems.add(span, format!("{context}: config_command {command:?} must be one word"));
            }
            command
        }
    };

    let tls_ca_file = tls_ca_file.map(|(path, span)| {
        if !Path::new(&path).is_absolute() {
            problems.add(span, format!("{context}: tls_ca_file {path:?} must be an absolute path"));
        } else if problems.check_environment
            && let Err(err) = std::fs::read(&path)
        {
            problems.add(span, format!("{context}: cannot read tls_ca_file {path:?}: {err}"));
        }
        PathBuf::from(path)
    });

    let targets = match targets {
        None => {
            problems.add(
                span.clone(),
                format!("{context}: targets is missing; list target names, for example targets = [\"local\"]"),
            );
            Vec::new()
        }
        Some((names, span)) => {
            if names.is_empty() {
                problems.add(span.clone(), format!("{context}: targets is empty; list at least one target name"));
            }
            let mut seen = HashSet::new();
            for name in &names {
                if !target_names.contains(name) {
                    let known: Vec<&String> =
                        target_names.iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
                    problems.add(
                        span.clone(),
                        format!("{context}: target {name:?} is not defined; defined targets: {known:?}"),
                    );
                }
                if !seen.insert(name) {
                    problems.add(span.clone(), format!("{context}: target {name:?} is listed twice"));
                }
            }
            names
        }
    };

    let name = name?;
    let (url, _, _) = url?;
    Some(Job {
        name,
        redis: RedisSettings {
            url,
            username: username.map(|(name, _)| name),
            password,
            tls_ca_file,
            config_command,
            connect_timeout,
        },
        rdb_path,
        snapshot_timeout,
        compression_level,
        targets,
        include_aof,
        aof_path,
        schedule,
        timezone,
        jitter,
        catch_up,
        alert_after,
        retention,
    })
}

fn parse_daemon(table: &DeTable<'_>, problems: &mut Problems<'_>) -> Daemon {
    let mut fields = Fields::new(table, "[daemon]");
    let state_dir = fields.string(problems, "state_dir");
    let shutdown_timeout = fields.integer(problems, "shutdown_timeout_secs");
    let metrics_listen = fields.string(problems, "metrics_listen");
    fields.finish(problems);
    let mut daemon = Daemon::default();
    if let Some((path, span)) = state_dir {
        if Path::new(&path).is_absolute() {
            daemon.state_dir = Some(PathBuf::from(path));
        } else {
            problems.add(span, format!("[daemon] state_dir {path:?} must be an absolute path"));
        }
    }
    match shutdown_timeout {
        Some((secs, _)) if (1..=86_400).contains(&secs) => daemon.shutdown_timeout = Duration::from_secs(secs as u64),
        Some((secs, span)) => {
            problems.add(span, format!("[daemon] shutdown_timeout_secs {secs} is out of range; use 1 to 86400"))
        }
        None => {}
    }
    if let Some((address, span)) = metrics_listen {
        match address.parse() {
            Ok(address) => daemon.metrics_listen = Some(address),
            Err(_) => problems.add(
                span,
                format!(
                    "[daemon] metrics_listen {address:?} is not an address and port; use for example \"127.0.0.1:9187\""
                ),
            ),
        }
    }
    daemon
}

/// Accepts `redis://`, `rediss://` and `unix://` URLs; returns whether the URL
/// carries a password.
fn check_redis_url(text: &str) -> Result<bool, String> {
    let url = url::Url::parse(text).map_err(|err| format!("not a valid URL ({err})"))?;
    match url.scheme() {
        "redis" | "rediss" => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err("has no host; for example redis://127.0.0.1:6379/".to_string());
            }
        }
        "unix" | "redis+unix" => {}
        other => {
            return Err(format!("scheme {other:?} is not supported; use redis://, rediss:// or unix://"));
        }
    }
    let db = url.path().trim_matches('/');
    if !db.is_empty() && !url.scheme().contains("unix") && db.parse::<u32>().is_err() {
        return Err(format!("database {db:?} in the path is not a number"));
    }
    Ok(url.password().is_some())
}

/// Removes user name and password from a URL, for messages and logs.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            url.to_string()
        }
        // An unparsable URL may still contain a secret: show only its scheme.
        Err(_) => match text.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "(unparsable URL)".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[job]]
name = "sessions"
redis_url = "redis://127.0.0.1:6379/"
targets = ["local"]

[[target]]
name = "local"
type = "local"
path = "/var/backups/sessbackup"
"#;

    fn problems(text: &str) -> Vec<Problem> {
        parse(text).expect_err("expected problems")
    }

    #[test]
    fn schedule_and_retention_parse() {
        let text = MINIMAL.replace(
            "targets = [\"local\"]",
            "targets = [\"local\"]\nschedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\"\njitter_secs = 30\n\
             alert_after = \"6h\"\n[job.retention]\nkeep_daily = 7\nkeep_within = \"36h\"",
        ) + "[target.retention]\nkeep_last = 3\n[daemon]\nstate_dir = \"/var/lib/sessbackup\"\nmetrics_listen = \"127.0.0.1:9187\"\n";
        let config = parse(&text).unwrap();
        let job = &config.jobs[0];
        assert_eq!(job.schedule.as_ref().unwrap().expression(), "30 2 * * *");
        assert_eq!(job.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(job.jitter, Duration::from_secs(30));
        assert_eq!(job.alert_after, Some(chrono::Duration::hours(6)));
        let retention = job.retention.as_ref().unwrap();
        assert_eq!(retention.keep_daily, 7);
        assert_eq!(retention.keep_within, Some(chrono::Duration::hours(36)));
        assert_eq!(config.targets[0].retention.as_ref().unwrap().keep_last, 3);
        assert_eq!(config.daemon.state_dir, Some(PathBuf::from("/var/lib/sessbackup")));
        assert_eq!(config.daemon.metrics_listen, Some("127.0.0.1:9187".parse().unwrap()));
    }

    #[test]
    fn empty_retention_is_rejected() {
        let text = MINIMAL.to_string() + "[target.retention]\nkeep_last = 0\n";
        let message = messages(&text);
        assert!(message.contains("the retention table sets no rule"), "{message}");
        assert!(message.contains("leave the table out"), "{message}");
    }

    #[test]
    fn schedule_problems_are_reported() {
        let text = MINIMAL.replace(
            "targets = [\"local\"]",
            "targets = [\"local\"]\nschedule = \"61 * * * *\"\ntimezone = \"Europe/Nowhere\"\n\
             [job.retention]\nkeep_within = \"5 minutes\"",
        ) + "[daemon]\nmetrics_listen = \"localhost\"\nshutdown_timeout_secs = 0\n";
        let message = messages(&text);
        assert!(message.contains("timezone \"Europe/Nowhere\" is not an IANA zone name"), "{message}");
        assert!(message.contains("schedule \"61 * * * *\" is invalid"), "{message}");
        assert!(message.contains("keep_within: duration \"5 minutes\" is invalid"), "{message}");
        assert!(message.contains("metrics_listen \"localhost\" is not an address and port"), "{message}");
        assert!(message.contains("shutdown_timeout_secs 0 is out of range"), "{message}");
    }

    fn messages(text: &str) -> String {
        problems(text).iter().map(|p| format!("{:?}: {}", p.line, p.message)).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let config = parse(MINIMAL).unwrap();
        let job = &config.jobs[0];
        assert_eq!(job.name, "sessions");
        assert_eq!(job.compression_level, 3);
        assert_eq!(job.snapshot_timeout, Duration::from_secs(600));
        assert_eq!(job.redis.config_command, "CONFIG");
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../config.example.toml");
        let config = parse(text).unwrap_or_else(|problems| panic!("{problems:?}"));
        assert!(!config.jobs.is_empty());
    }

    #[test]
    fn unknown_keys_are_reported_with_lines() {
        let text = MINIMAL.replace("targets = [\"local\"]", "targets = [\"local\"]\ncompresion_level = 5\nretries = 2");
        let found = problems(&text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].line, Some(6));
        assert!(found[0].message.contains("compresion_level"));
        assert_eq!(found[1].line, Some(7));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
[[job]]
name = "bad name!"
redis_url = "http://x"
compression_level = 40
snapshot_timeout_secs = "ten"
targets = ["nowhere"]

[[target]]
name = "t"
type = "nfs"
"#;
        let found = messages(text);
        for expected in [
            "name \"bad name!\" is invalid",
            "scheme \"http\" is not supported",
            "compression_level 40 is out of range",
            "snapshot_timeout_secs must be an integer",
            "target \"nowhere\" is not defined",
            "unknown type \"nfs\"",
        ] {
            assert!(found.contains(expected), "missing {expected:?} in:\n{found}");
        }
    }

    #[test]
    fn syntax_error_names_line() {
        let found = problems("[[job]]\nname = \"a\nredis_url = 1\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].message.starts_with("TOML syntax error"));
        assert!(found[0].line.is_some());
    }

    #[test]
    fn missing_job_is_reported() {
        let found = messages("[[target]]\nname = \"local\"\ntype = \"local\"\npath = \"/tmp/x\"\n");
        assert!(found.contains("no [[job]] table"), "{found}");
    }

    #[test]
    fn duplicate_names_are_reported() {
        let text = format!("{MINIMAL}\n[[target]]\nname = \"local\"\ntype = \"local\"\npath = \"/tmp/y\"\n");
        assert!(messages(&text).contains("used twice"));
    }

    #[test]
    fn relative_paths_are_rejected() {
        let text = MINIMAL.replace("/var/backups/sessbackup", "backups");
        assert!(messages(&text).contains("must be an absolute path"));
    }

    #[test]
    fn password_in_two_places_is_rejected() {
        let text = MINIMAL
            .replace("redis://127.0.0.1:6379/", "redis://:pw@127.0.0.1:6379/")
            .replace("targets = [", "password_env = \"REDIS_PASSWORD\"\ntargets = [");
        let found = messages(&text);
        assert!(found.contains("keep one"), "{found}");
        assert!(!found.contains("pw@"), "password leaked into a message: {found}");
    }

    #[test]
    fn debug_output_hides_url_password() {
        let text = MINIMAL.replace("redis://127.0.0.1:6379/", "redis://user:s3cr3t@127.0.0.1:6379/");
        let config = parse(&text).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(config.jobs[0].redis.url_with_credentials().contains("s3cr3t"));
    }

    #[test]
    fn unused_target_is_a_warning() {
        let text = format!("{MINIMAL}\n[[target]]\nname = \"spare\"\ntype = \"local\"\npath = \"/tmp/spare\"\n");
        let config = parse(&text).unwrap();
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].contains("spare"));
    }

    #[test]
    fn password_file_drops_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("sessbackup-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        std::fs::write(&path, "p@ss:w%rd\"\n").unwrap();
        let secret = SecretSource::File { path, key: "password_file".to_string() }.resolve().unwrap();
        assert_eq!(secret.expose(), "p@ss:w%rd\"");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const REMOTE_TARGETS: &str = r#"
[[job]]
name = "sessions"
redis_url = "redis://127.0.0.1:6379/"
targets = ["ftp", "s3"]

[[target]]
name = "ftp"
type = "ftp"
host = "backup.example.com"
username = "backup"
password_env = "FTP_PASSWORD"
path = "/redis"

[[target]]
name = "s3"
type = "s3"
bucket = "redis-backups"
prefix = "/prod/"
endpoint = "https://minio.example.com:9000"
access_key_id_env = "S3_KEY"
secret_access_key_file = "/run/credentials/s3-secret"
"#;

    #[test]
    fn remote_targets_use_defaults() {
        let config = parse(REMOTE_TARGETS).unwrap_or_else(|problems| panic!("{problems:?}"));
        let TargetKind::Ftp(ftp) = &config.targets[0].kind else { panic!("not ftp") };
        assert_eq!(ftp.port, 21);
        assert_eq!(ftp.tls, FtpTls::Explicit);
        assert!(ftp.passive);
        assert!(!ftp.insecure_skip_verify);
        assert_eq!(ftp.path, "/redis");
        let TargetKind::S3(s3) = &config.targets[1].kind else { panic!("not s3") };
        assert_eq!(s3.prefix, "prod");
        assert!(s3.path_style, "a custom endpoint defaults to path-style addressing");
        assert!(s3.conditional_writes);
        assert_eq!(s3.multipart_part_size_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn remote_target_mistakes_are_reported() {
        let text = REMOTE_TARGETS
            .replace("host = \"backup.example.com\"", "host = \"backup.example.com\"\ntls = \"starttls\"\nport = 70000")
            .replace(
                "endpoint = \"https://minio.example.com:9000\"",
                "endpoint = \"http://minio:9000\"\nmultipart_part_size_bytes = 1024",
            )
            .replace("secret_access_key_file = \"/run/credentials/s3-secret\"", "");
        let found = messages(&text);
        for expected in [
            "tls \"starttls\" is invalid",
            "port 70000 is out of range",
            "uses plain http; set allow_http = true",
            "multipart_part_size_bytes 1024 is out of range",
            "access_key_id is set without secret_access_key",
        ] {
            assert!(found.contains(expected), "missing {expected:?} in:\n{found}");
        }
    }

    #[test]
    fn ftp_secret_pair_is_exclusive() {
        let text = REMOTE_TARGETS
            .replace("password_env = \"FTP_PASSWORD\"", "password_env = \"FTP_PASSWORD\"\npassword_file = \"/x\"");
        assert!(messages(&text).contains("set password_env or password_file, not both"));
    }
}
