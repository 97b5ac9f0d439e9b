//! Taking a fresh snapshot from Redis and opening its RDB file.
//!
//! A snapshot is fresh only when this run can prove Redis finished a save it
//! asked for: `rdb_saves` (INFO persistence) was noted, BGSAVE was accepted,
//! and then no save is running, `rdb_saves` has grown and
//! `rdb_last_bgsave_status` is `ok`. A save already running when the run
//! starts is waited for and then followed by a save of our own, because its
//! data predates the run. While an AOF rewrite runs, `BGSAVE SCHEDULE` queues
//! the save. Servers without `rdb_saves` (before Redis 7.0) are handled with
//! `LASTSAVE`, which has one-second resolution, by starting the save in a later
//! second than the previous one.
//!
//! The RDB file is opened once; the open handle keeps reading the same file
//! even if Redis renames a newer save over it meanwhile.
//!
//! This module does not use targets; it returns an open file.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};

use crate::config::RedisSettings;
use crate::secret::Secret;

/// How often INFO is polled while a save runs.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Response timeout for one Redis command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Header, EOF opcode and CRC trailer: no RDB file of version 5 or later is shorter.
const MIN_RDB_BYTES: u64 = 9 + 1 + 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to Redis at {url}: {message}; {hint}")]
    Connect { url: String, message: String, hint: String },
    #[error(
        "Redis at {url} rejected the credentials: {message}; check the user name and the password (password_env or \
         password_file in the job, --password-env or --password-file for restore --into)"
    )]
    Auth { url: String, message: String },
    #[error(
        "Redis at {url} requires a password ({message}); set password_env or password_file in the job \
         (--password-env or --password-file for restore --into)"
    )]
    PasswordRequired { url: String, message: String },
    #[error("Redis command {command} failed: {message}")]
    Command { command: String, message: String },
    #[error(
        "cannot find the RDB file: {command} failed ({message}); set rdb_path in the job, or config_command if \
         CONFIG is renamed"
    )]
    RdbLocation { command: String, message: String },
    #[error(
        "Redis reports the last save failed (rdb_last_bgsave_status:err); check the Redis log for the cause (disk full, permissions on the data directory)"
    )]
    SaveFailed,
    #[error("timed out after {} s waiting for {waiting_for}; raise snapshot_timeout_secs if saves take longer", .after.as_secs())]
    Timeout { waiting_for: String, after: Duration },
    #[error(
        "include_aof is set, but Redis at {url} runs with appendonly no; enable AOF on the server or remove \
         include_aof from the job"
    )]
    AofOff { url: String },
    #[error(
        "cannot find the AOF: {command} failed ({message}); set aof_path in the job, or config_command if CONFIG \
         is renamed"
    )]
    AofLocation { command: String, message: String },
    #[error("RDB file {path} not found after the save; check rdb_path or Redis's dir and dbfilename")]
    RdbMissing { path: PathBuf },
    #[error("cannot open RDB file {path}: {message}")]
    RdbOpen { path: PathBuf, message: String },
    #[error(
        "RDB file {path} is {size} bytes, shorter than any complete RDB file ({MIN_RDB_BYTES} bytes); the save did not finish writing it"
    )]
    RdbTooShort { path: PathBuf, size: u64 },
}

/// A finished save and its RDB file, opened.
#[derive(Debug)]
pub struct Snapshot {
    pub file: File,
    pub path: PathBuf,
    pub size: u64,
    pub server: ServerInfo,
    /// The earliest `ctime` (Unix seconds) our save can write: the server's
    /// clock when the save was requested, less the lag of the coarse clock
    /// that stamps `ctime`.
    pub requested_at_server_secs: i64,
    /// `rdb_saves` after our save, when the server reports it.
    pub rdb_saves: Option<u64>,
    /// A save was already running and was waited for first.
    pub waited_for_running_save: bool,
    /// An AOF rewrite was running, so the save was queued with BGSAVE SCHEDULE.
    pub scheduled: bool,
}

#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version: String,
    pub role: String,
}

pub struct RedisSource {
    client: Client,
    display_url: String,
    /// How to start a server at this address, for connection errors.
    hint: String,
    has_password: bool,
    config_command: String,
    rdb_path: Option<PathBuf>,
    connect_timeout: Duration,
}

impl RedisSource {
    pub fn new(settings: &RedisSettings, password: Option<Secret>, rdb_path: Option<PathBuf>) -> Result<Self, Error> {
        crate::tls::ensure_crypto_provider();
        let display_url = settings.display_url();
        let hint = start_hint(settings.url_with_credentials());
        let invalid = |err: redis::RedisError| Error::Connect {
            url: display_url.clone(),
            message: err.to_string(),
            hint: hint.clone(),
        };
        let mut info = settings.url_with_credentials().into_connection_info().map_err(invalid)?;
        let mut redis_info = info.redis_settings().clone();
        if let Some(username) = &settings.username {
            redis_info = redis_info.set_username(username);
        }
        if let Some(password) = &password {
            redis_info = redis_info.set_password(password.expose());
        }
        info = info.set_redis_settings(redis_info);
        let client = match &settings.tls_ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|err| Error::Connect {
                    url: display_url.clone(),
                    message: format!("cannot read tls_ca_file {}: {err}", path.display()),
                    hint: "check the tls_ca_file path and its permissions".to_string(),
                })?;
                Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
                    .map_err(invalid)?
            }
            None => Client::open(info).map_err(invalid)?,
        };
        let has_password = password.is_some() || info_has_password(settings.url_with_credentials());
        Ok(RedisSource {
            client,
            display_url,
            hint,
            has_password,
            config_command: settings.config_command.clone(),
            rdb_path,
            connect_timeout: settings.connect_timeout,
        })
    }

    pub fn display_url(&self) -> &str {
        &self.display_url
    }

    /// The address and credentials the client library resolved.
    pub fn connection_info(&self) -> &redis::ConnectionInfo {
        self.client.get_connection_info()
    }

    async fn connect(&self) -> Result<MultiplexedConnection, Error> {
        self.connect_with_response_timeout(RESPONSE_TIMEOUT).await
    }

    /// Connects and checks the connection with PING; a command or pipeline
    /// that gets no reply within `response_timeout` fails.
    pub async fn connect_with_response_timeout(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(response_timeout));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| self.connect_error(err))?;
        // PING proves the handshake (and AUTH, if any) completed.
        redis::cmd("PING").query_async::<String>(&mut connection).await.map_err(|err| self.connect_error(err))?;
        Ok(connection)
    }

    fn connect_error(&self, err: redis::RedisError) -> Error {
        let message = err.to_string();
        let auth = matches!(err.kind(), redis::ErrorKind::AuthenticationFailed)
            || message.contains("WRONGPASS")
            || message.contains("NOAUTH")
            || message.contains("invalid password");
        if message.contains("NOAUTH") && !self.has_password {
            Error::PasswordRequired { url: self.display_url.clone(), message }
        } else if auth {
            Error::Auth { url: self.display_url.clone(), message }
        } else {
            Error::Connect { url: self.display_url.clone(), message, hint: self.hint.clone() }
        }
    }

    /// Connects and reads version and role, without saving anything.
    pub async fn probe(&self) -> Result<ServerInfo, Error> {
        let mut connection = self.connect().await?;
        server_info(&mut connection).await
    }

    /// Makes Redis write a fresh RDB file and opens it.
    pub async fn take_snapshot(&self, timeout: Duration) -> Result<Snapshot, Error> {
        let deadline = Instant::now() + timeout;
        let mut connection = self.connect().await?;
        let server = server_info(&mut connection).await?;
        let path = match &self.rdb_path {
            Some(path) => path.clone(),
            None => self.rdb_location(&connection).await?,
        };
        tracing::debug!(path = %path.display(), version = %server.version, role = %server.role, "snapshot starting");

        let mut waited_for_running_save = false;
        let mut scheduled = false;
        let (before, requested_at_server_secs) = loop {
            // Wait out a save that is already running: its data predates us.
            let persistence = wait_until(&mut connection, deadline, timeout, "a running save to finish", |info| {
                field(info, "rdb_bgsave_in_progress") != Some("1")
            })
            .await?;
            if persistence.waited {
                waited_for_running_save = true;
                tracing::info!("a save was already running; waited for it before taking our own");
            }
            let info = persistence.info;
            let before = SaveMarker::read(&info);
            if before.saves.is_none() {
                // Without rdb_saves, LASTSAVE must change, and it counts whole
                // seconds: start in a later second than the last save.
                wait_for_next_second(&mut connection, before.lastsave, deadline, timeout).await?;
            }
            let now = earliest_ctime(server_clock(&mut connection).await?);

            let reply: redis::RedisResult<String> = redis::cmd("BGSAVE").query_async(&mut connection).await;
            match reply {
                Ok(_) => break (before, now),
                Err(err) if err.to_string().contains("already in progress") => {
                    // Another save started between our INFO and BGSAVE.
                    continue;
                }
                Err(err) if is_child_busy(&err) => {
                    let reply: redis::RedisResult<String> =
                        redis::cmd("BGSAVE").arg("SCHEDULE").query_async(&mut connection).await;
                    match reply {
                        Ok(_) => {
                            scheduled = true;
                            tracing::info!("an AOF rewrite is running; the save is scheduled to follow it");
                            break (before, now);
                        }
                        Err(err) if err.to_string().contains("already in progress") => continue,
                        Err(err) => return Err(command_error("BGSAVE SCHEDULE", err)),
                    }
                }
                Err(err) => return Err(command_error("BGSAVE", err)),
            }
        };

        // Our save is done when none is running and the save counter moved past
        // the value noted before BGSAVE.
        let done = wait_until(&mut connection, deadline, timeout, "our BGSAVE to finish", |info| {
            field(info, "rdb_bgsave_in_progress") != Some("1") && SaveMarker::read(info).is_after(&before)
        });
        let done = match done.await {
            Ok(done) => done,
            Err(err) => {
                // A failed save does not move LASTSAVE on old servers: report
                // the failure rather than a timeout when Redis reports it.
                if before.saves.is_none()
                    && let Ok(info) = persistence_info(&mut connection).await
                    && field(&info, "rdb_last_bgsave_status") == Some("err")
                {
                    return Err(Error::SaveFailed);
                }
                return Err(err);
            }
        };
        if field(&done.info, "rdb_last_bgsave_status") != Some("ok") {
            return Err(Error::SaveFailed);
        }
        let rdb_saves = SaveMarker::read(&done.info).saves;

        let file = File::open(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Error::RdbMissing { path: path.clone() },
            _ => Error::RdbOpen { path: path.clone(), message: err.to_string() },
        })?;
        let size =
            file.metadata().map_err(|err| Error::RdbOpen { path: path.clone(), message: err.to_string() })?.len();
        if size < MIN_RDB_BYTES {
            return Err(Error::RdbTooShort { path, size });
        }
        Ok(Snapshot {
            file,
            path,
            size,
            server,
            requested_at_server_secs,
            rdb_saves,
            waited_for_running_save,
            scheduled,
        })
    }

    /// Finds the server's `appendonlydir/`: `configured` if the job names it,
    /// else from `CONFIG GET dir` and `appenddirname`. Fails if the server
    /// reports `appendonly no`.
    pub async fn aof_location(&self, configured: Option<&Path>) -> Result<PathBuf, Error> {
        let connection = self.connect().await?;
        let connection = &connection;
        let get = |name: &'static str| async move {
            self.config_get(connection, name)
                .await
                .map_err(|(command, message)| Error::AofLocation { command, message })
        };
        match get("appendonly").await {
            Ok(value) if value == "no" => return Err(Error::AofOff { url: self.display_url.clone() }),
            Ok(_) => {}
            // Without CONFIG, the configured path must be right.
            Err(err) if configured.is_none() => return Err(err),
            Err(_) => {}
        }
        if let Some(path) = configured {
            return Ok(path.to_path_buf());
        }
        let dir = get("dir").await?;
        let dir_name = get("appenddirname").await?;
        Ok(Path::new(&dir).join(dir_name))
    }

    /// Finds the RDB file from `CONFIG GET dir` and `dbfilename`.
    async fn rdb_location(&self, connection: &MultiplexedConnection) -> Result<PathBuf, Error> {
        let get = |name: &'static str| async move {
            self.config_get(connection, name)
                .await
                .map_err(|(command, message)| Error::RdbLocation { command, message })
        };
        let dir = get("dir").await?;
        let file_name = get("dbfilename").await?;
        Ok(Path::new(&dir).join(file_name))
    }

    /// Reads one parameter with `CONFIG GET` (or its renamed form). A failure
    /// returns the command sent and the reason.
    async fn config_get(&self, connection: &MultiplexedConnection, name: &str) -> Result<String, (String, String)> {
        let command = format!("{} GET {name}", self.config_command);
        let mut connection = connection.clone();
        let reply: redis::RedisResult<Vec<String>> =
            redis::cmd(&self.config_command).arg("GET").arg(name).query_async(&mut connection).await;
        match reply {
            Ok(pair) if pair.len() == 2 => Ok(pair[1].clone()),
            Ok(pair) => Err((command, format!("unexpected reply {pair:?}"))),
            Err(err) => Err((command, err.to_string())),
        }
    }
}

/// Suggests how to get a server listening at `url`, for connection errors.
fn start_hint(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return "check redis_url".to_string();
    };
    match parsed.scheme() {
        "unix" | "redis+unix" => format!(
            "check that redis-server is running with `unixsocket {}` and that this user may open the socket",
            parsed.path()
        ),
        "rediss" => format!(
            "check that redis-server is running with TLS on port {} (`tls-port` in redis.conf)",
            parsed.port().unwrap_or(6379)
        ),
        _ => {
            let port = parsed.port().unwrap_or(6379);
            format!(
                "check that redis-server is running and listening there (start one with `redis-server --port {port}`, \
                 or `systemctl start redis-server` for the system service)"
            )
        }
    }
}

fn info_has_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|parsed| parsed.password().is_some())
}

/// Save progress markers from INFO persistence.
#[derive(Clone, Copy, Debug)]
struct SaveMarker {
    saves: Option<u64>,
    lastsave: Option<i64>,
}

impl SaveMarker {
    fn read(info: &HashMap<String, String>) -> Self {
        SaveMarker {
            saves: field(info, "rdb_saves").and_then(|value| value.parse().ok()),
            lastsave: field(info, "rdb_last_save_time").and_then(|value| value.parse().ok()),
        }
    }

    fn is_after(&self, before: &SaveMarker) -> bool {
        match (before.saves, self.saves) {
            (Some(before), Some(now)) => now > before,
            _ => {
                matches!((before.lastsave, self.lastsave), (Some(before), Some(now)) if now > before)
            }
        }
    }
}

struct Polled {
    info: HashMap<String, String>,
    /// The condition was false at least once.
    waited: bool,
}

async fn wait_until(
    connection: &mut MultiplexedConnection,
    deadline: Instant,
    timeout: Duration,
    waiting_for: &str,
    condition: impl Fn(&HashMap<String, String>) -> bool,
) -> Result<Polled, Error> {
    let mut waited = false;
    loop {
        let info = persistence_info(connection).await?;
        if condition(&info) {
            return Ok(Polled { info, waited });
        }
        waited = true;
        if Instant::now() >= deadline {
            return Err(Error::Timeout { waiting_for: waiting_for.to_string(), after: timeout });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn wait_for_next_second(
    connection: &mut MultiplexedConnection,
    lastsave: Option<i64>,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), Error> {
    let Some(lastsave) = lastsave else {
        return Ok(());
    };
    while server_time(connection).await? <= lastsave {
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                waiting_for: "the server clock to pass LASTSAVE".to_string(),
                after: timeout,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

fn is_child_busy(err: &redis::RedisError) -> bool {
    let message = err.to_string();
    message.contains("Another child process is active") || message.contains("AOF")
}

fn command_error(command: &str, err: redis::RedisError) -> Error {
    Error::Command { command: command.to_string(), message: err.to_string() }
}

async fn persistence_info(connection: &mut MultiplexedConnection) -> Result<HashMap<String, String>, Error> {
    info_section(connection, "persistence").await
}

pub async fn info_section(
    connection: &mut MultiplexedConnection,
    section: &str,
) -> Result<HashMap<String, String>, Error> {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(connection)
        .await
        .map_err(|err| command_error(&format!("INFO {section}"), err))?;
    Ok(parse_info(&text))
}

async fn server_info(connection: &mut MultiplexedConnection) -> Result<ServerInfo, Error> {
    let server = info_section(connection, "server").await?;
    let replication = info_section(connection, "replication").await?;
    Ok(ServerInfo {
        version: field(&server, "redis_version")
            .or_else(|| field(&server, "valkey_version"))
            .unwrap_or("unknown")
            .to_string(),
        role: field(&replication, "role").unwrap_or("unknown").to_string(),
    })
}

/// Reads the server's clock as (seconds, microseconds) with TIME.
pub async fn server_clock(connection: &mut MultiplexedConnection) -> Result<(i64, i64), Error> {
    redis::cmd("TIME").query_async(connection).await.map_err(|err| command_error("TIME", err))
}

async fn server_time(connection: &mut MultiplexedConnection) -> Result<i64, Error> {
    Ok(server_clock(connection).await?.0)
}

/// How far the clock that stamps `ctime` may lag TIME. Redis writes `ctime`
/// from time(2), which Linux serves from a clock updated once per kernel
/// tick (at most 10 ms); TIME reads the precise clock. A save requested a
/// few milliseconds into a second can therefore carry the previous second.
const CTIME_LAG_MICROS: i64 = 100_000;

/// Returns the earliest `ctime` that a save requested at `clock` (from TIME) may carry.
fn earliest_ctime((secs, micros): (i64, i64)) -> i64 {
    if micros < CTIME_LAG_MICROS { secs - 1 } else { secs }
}

/// Parses INFO output (`key:value` lines; `#` starts a section title).
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

fn field<'a>(info: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    info.get(key).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_parsing_skips_titles() {
        let info = parse_info("# Persistence\r\nloading:0\r\nrdb_saves:3\r\nrdb_last_bgsave_status:ok\r\n");
        assert_eq!(field(&info, "rdb_saves"), Some("3"));
        assert_eq!(field(&info, "rdb_last_bgsave_status"), Some("ok"));
        assert_eq!(info.len(), 3);
    }

    #[test]
    fn save_counter_decides_freshness() {
        let before = SaveMarker { saves: Some(3), lastsave: Some(100) };
        assert!(SaveMarker { saves: Some(4), lastsave: Some(100) }.is_after(&before));
        assert!(!SaveMarker { saves: Some(3), lastsave: Some(101) }.is_after(&before));
        let old = SaveMarker { saves: None, lastsave: Some(100) };
        assert!(SaveMarker { saves: None, lastsave: Some(101) }.is_after(&old));
        assert!(!SaveMarker { saves: None, lastsave: Some(100) }.is_after(&old));
    }

    #[test]
    fn ctime_may_lag_early_in_second() {
        assert_eq!(earliest_ctime((1000, 3_000)), 999);
        assert_eq!(earliest_ctime((1000, 99_999)), 999);
    }

    #[test]
    fn ctime_must_not_lag_later_in_second() {
        assert_eq!(earliest_ctime((1000, 100_000)), 1000);
        assert_eq!(earliest_ctime((1000, 999_999)), 1000);
    }
}
