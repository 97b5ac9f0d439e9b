//! Loading a verified RDB file into a running server with `RESTORE`.
//!
//! The walker reads the file on a blocking thread and hands each key over
//! as a `DUMP` payload. Batches of `SELECT` plus `RESTORE … ABSTTL` go out
//! as pipelines, several at once on one connection, so the server's round
//! trip time is paid per batch, not per key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::rdb;
use crate::source::{self, RedisSource};

mod stream;

/// Keys per pipeline.
const BATCH_KEYS: usize = 1000;
/// Payload bytes per pipeline; a batch closes at whichever limit comes first.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Pipelines in flight at once.
const IN_FLIGHT: usize = 4;
/// A pipeline of large values can take a while to apply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// Failed keys named in the report; the rest are only counted.
const FAILURES_SHOWN: usize = 10;

/// Policy for a key of the backup that already exists on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Refuse the restore before loading anything.
    Fail,
    /// Overwrite the existing key (`RESTORE … REPLACE`).
    Replace,
    /// Keep the existing key and count it as skipped.
    Skip,
}

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Empty every database of the server first (`FLUSHALL`).
    pub flush: bool,
    pub on_conflict: OnConflict,
    /// Check everything, load nothing.
    pub dry_run: bool,
}

/// Counts of a finished load, or with `dry_run`, the findings of the checks.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LoadReport {
    pub server_version: String,
    /// Highest RDB version the server loads, when its version is known.
    pub server_rdb_version: Option<u32>,
    pub flushed: bool,
    pub loaded: u64,
    /// Keys whose expiry time had passed; Redis would drop them on load too.
    pub skipped_expired: u64,
    /// Keys kept as they were on the server (`--on-conflict skip`).
    pub skipped_existing: u64,
    pub failed: u64,
    /// The first failures, with the key and the server's reply.
    pub failures: Vec<String>,
    pub functions_loaded: u64,
    /// Keys that exist on the server, found by a dry run or a conflict check.
    pub existing: u64,
    pub dry_run: bool,
    /// Time spent replaying the keys.
    pub load_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Connect(#[from] source::Error),
    #[error(
        "the backup is RDB version {rdb_version} (Redis {written_by} or newer wrote it), but Redis {server_version} \
         at {url} loads RDB versions up to {server_rdb_version}; restore into Redis {written_by} or newer, or \
         upgrade that server first"
    )]
    TooNew { rdb_version: u32, written_by: String, server_version: String, url: String, server_rdb_version: u32 },
    #[error(
        "the backup has keys in database {db}, but {url} refuses SELECT {db} ({message}); raise its `databases` \
         setting to at least {} and restart it", .db + 1
    )]
    Databases { url: String, db: u64, message: String },
    #[error("{url} is a replica (role:{role}); restore into its primary, which replicates the keys")]
    Replica { url: String, role: String },
    #[error(
        "{url} runs in cluster mode, where keys live on different nodes; --into loads into a standalone server only"
    )]
    Cluster { url: String },
    #[error(
        "{count} key(s) of the backup already exist on {url}, for example {examples}; nothing was loaded. Pass \
         --on-conflict replace or skip, or --flush to empty the server first"
    )]
    Conflicts { count: u64, examples: String, url: String },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("Redis command {command} on {url} failed: {message}")]
    Command { command: String, url: String, message: String },
}

/// Highest RDB version a server loads, from its INFO server section: the
/// `RDB_VERSION` of each release's rdb.h (Redis 2.6 to 7.4 read from the
/// sources; 8.0 to 8.4 write 12 and 8.6 writes 13). Valkey 7.2 to 9 load
/// Redis files up to version 11. Releases newer than these are assumed to
/// load every version sessbackup reads.
pub fn server_rdb_version(info: &HashMap<String, String>) -> Option<u32> {
    if let Some(version) = info.get("valkey_version") {
        let (major, _) = major_minor(version)?;
        return Some(if major >= 7 { 11 } else { 9 });
    }
    let (major, minor) = major_minor(info.get("redis_version")?)?;
    Some(match (major, minor) {
        (0..=1, _) | (2, 0..=5) => return None,
        (2, _) | (3, 0..=1) => 6,
        (3, _) => 7,
        (4, _) => 8,
        (5..=6, _) => 9,
        (7, 0..=1) => 10,
        (7, 2..=3) => 11,
        (7, _) | (8, 0..=5) => 12,
        (8, 6..=7) => 13,
        _ => rdb::MAX_REDIS_VERSION,
    })
}

/// The first Redis release that writes RDB version `rdb_version`, for messages.
pub fn first_release_with(rdb_version: u32) -> &'static str {
    match rdb_version {
        0..=6 => "2.6",
        7 => "3.2",
        8 => "4.0",
        9 => "5.0",
        10 => "7.0",
        11 => "7.2",
        12 => "7.4",
        _ => "8.6",
    }
}

fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    Some((major, minor))
}

/// Loads the RDB file at `path` (already verified) into the server.
pub async fn load(
    path: &Path,
    rdb_version: u32,
    highest_db: u64,
    server: &RedisSource,
    options: LoadOptions,
) -> Result<LoadReport, Error> {
    let url = server.display_url().to_string();
    let mut connection = server.connect_with_response_timeout(RESPONSE_TIMEOUT).await?;
    let command_error = |command: &str, err: redis::RedisError| Error::Command {
        command: command.to_string(),
        url: url.clone(),
        message: err.to_string(),
    };

    let info = source::info_section(&mut connection, "server").await?;
    let replication = source::info_section(&mut connection, "replication").await?;
    let cluster = source::info_section(&mut connection, "cluster").await?;
    let server_version = info
        .get("valkey_version")
        .or_else(|| info.get("redis_version"))
        .cloned()
        .unwrap_or_else(|| "unknown".to_string());
    let mut report = LoadReport {
        server_rdb_version: server_rdb_version(&info),
        server_version: server_version.clone(),
        dry_run: options.dry_run,
        ..LoadReport::default()
    };
    if let Some(server_rdb_version) = report.server_rdb_version
        && rdb_version > server_rdb_version
    {
        return Err(Error::TooNew {
            rdb_version,
            written_by: first_release_with(rdb_version).to_string(),
            server_version,
            url,
            server_rdb_version,
        });
    }
    if let Some(role) = replication.get("role")
        && role != "master"
    {
        return Err(Error::Replica { url, role: role.clone() });
    }
    if cluster.get("cluster_enabled").map(String::as_str) == Some("1") {
        return Err(Error::Cluster { url });
    }
    // A server with fewer databases would fail SELECT in the middle of the
    // load, after keys of earlier databases were written.
    if highest_db > 0 {
        let selected: redis::RedisResult<()> = redis::cmd("SELECT").arg(highest_db).query_async(&mut connection).await;
        if let Err(err) = selected {
            return Err(Error::Databases { url, db: highest_db, message: err.to_string() });
        }
        redis::cmd("SELECT")
            .arg(0)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|err| command_error("SELECT", err))?;
    }

    // Keys that already exist matter unless the server is emptied first,
    // and cannot exist on an empty server.
    let keyspace = source::info_section(&mut connection, "keyspace").await?;
    let server_empty = !keyspace.keys().any(|name| name.starts_with("db"));
    if !options.flush && !server_empty && (options.on_conflict == OnConflict::Fail || options.dry_run) {
        let (count, examples) = existing_keys(path, &connection, &url).await?;
        report.existing = count;
        if count > 0 && options.on_conflict == OnConflict::Fail && !options.dry_run {
            return Err(Error::Conflicts { count, examples: examples.join(", "), url });
        }
    }
    if options.dry_run {
        return Ok(report);
    }

    if options.flush {
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|err| command_error("FLUSHALL", err))?;
        report.flushed = true;
    }
    let (now_secs, now_micros) = source::server_clock(&mut connection).await?;
    let now_ms = now_secs * 1000 + now_micros / 1000;
    let started = std::time::Instant::now();
    let info = server.connection_info();
    let address = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => Some(stream::Address::Tcp(host.clone(), *port)),
        redis::ConnectionAddr::Unix(socket) => Some(stream::Address::Unix(socket.clone())),
        // Over TLS the client library's pipelines carry the commands.
        _ => None,
    };
    match address {
        Some(address) => {
            let credentials = stream::Credentials {
                username: info.redis_settings().username(),
                password: info.redis_settings().password(),
            };
            // FLUSHALL keeps function libraries: after it, the backup's replace them.
            let functions = if options.flush { OnConflict::Replace } else { options.on_conflict };
            let plan = stream::Plan { path, url: &url, on_conflict: options.on_conflict, functions, now_ms };
            stream::load(&address, credentials, plan, &mut report).await?;
        }
        None => replay(path, connection, &url, options, now_ms, &mut report).await?,
    }
    report.load_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Records handed over per channel message: one message per record would
/// wake the loader hundreds of thousands of times.
const RECORDS_PER_MESSAGE: usize = 256;

/// The records of a file, read on a blocking thread.
struct Records {
    receiver: mpsc::Receiver<Vec<rdb::Record>>,
    current: std::vec::IntoIter<rdb::Record>,
}

impl Records {
    async fn recv(&mut self) -> Option<rdb::Record> {
        loop {
            if let Some(record) = self.current.next() {
                return Some(record);
            }
            self.current = self.receiver.recv().await?.into_iter();
        }
    }
}

/// Walks the file on a blocking thread and returns its records.
fn read_records(path: &Path) -> (Records, tokio::task::JoinHandle<Result<(), Error>>) {
    let (sender, receiver) = mpsc::channel::<Vec<rdb::Record>>(8);
    let path = path.to_path_buf();
    let walker = tokio::task::spawn_blocking(move || {
        let read_error = |message: String| Error::Read { path: path.clone(), message };
        let file = std::fs::File::open(&path).map_err(|err| read_error(err.to_string()))?;
        let reader = std::io::BufReader::with_capacity(1024 * 1024, file);
        let pending = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(RECORDS_PER_MESSAGE)));
        let filling = std::sync::Arc::clone(&pending);
        let batches = sender.clone();
        // The file was verified before; reading it again needs no checks.
        let sent = rdb::walk_checked_records(reader, move |record| {
            let mut pending = filling.lock().expect("not poisoned");
            pending.push(record);
            if pending.len() < RECORDS_PER_MESSAGE {
                return Ok(());
            }
            let full = std::mem::replace(&mut *pending, Vec::with_capacity(RECORDS_PER_MESSAGE));
            batches.blocking_send(full).map_err(|_| "the loader stopped".to_string())
        });
        match sent {
            Ok(_) => {
                let rest = std::mem::take(&mut *pending.lock().expect("not poisoned"));
                // A loader that stopped reports its own error.
                let _ = sender.blocking_send(rest);
                Ok(())
            }
            Err(failure) if failure.error.kind == rdb::ErrorKind::Stopped => Ok(()),
            Err(failure) => Err(read_error(failure.to_string())),
        }
    });
    (Records { receiver, current: Vec::new().into_iter() }, walker)
}

/// Counts the backup's keys that exist on the server, naming the first few.
async fn existing_keys(
    path: &Path,
    connection: &MultiplexedConnection,
    url: &str,
) -> Result<(u64, Vec<String>), Error> {
    let (mut records, walker) = read_records(path);
    let mut count = 0u64;
    let mut examples = Vec::new();
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
    loop {
        let record = records.recv().await;
        let done = record.is_none();
        if let Some(rdb::Record::Key(key)) = record {
            batch.push((key.db, key.key));
        }
        if batch.len() >= BATCH_KEYS || (done && !batch.is_empty()) {
            let mut pipe = redis::pipe();
            let mut db = None;
            for (key_db, key) in &batch {
                if db != Some(*key_db) {
                    pipe.cmd("SELECT").arg(*key_db).ignore();
                    db = Some(*key_db);
                }
                pipe.cmd("EXISTS").arg(key);
            }
            let found: Vec<u64> = pipe.query_async(&mut connection.clone()).await.map_err(|err| Error::Command {
                command: "EXISTS".to_string(),
                url: url.to_string(),
                message: err.to_string(),
            })?;
            for ((db, key), exists) in batch.iter().zip(found) {
                if exists > 0 {
                    count += 1;
                    if examples.len() < FAILURES_SHOWN {
                        examples.push(format!("\"{}\" (db {db})", rdb::printable(key)));
                    }
                }
            }
            batch.clear();
        }
        if done {
            break;
        }
    }
    walker.await.expect("walker thread panicked")?;
    Ok((count, examples))
}

/// A batch sent as one pipeline, with what is needed to read its replies.
struct Batch {
    db: u64,
    keys: Vec<Vec<u8>>,
    pipe: redis::Pipeline,
    bytes: usize,
}

impl Batch {
    fn new(db: u64) -> Batch {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("SELECT").arg(db);
        Batch { db, keys: Vec::new(), pipe, bytes: 0 }
    }
}

/// Outcome of one batch: per key, the server's error reply if any.
type BatchResult = Result<(u64, Vec<Vec<u8>>, Vec<Option<redis::ServerError>>), redis::RedisError>;

async fn replay(
    path: &Path,
    connection: MultiplexedConnection,
    url: &str,
    options: LoadOptions,
    now_ms: i64,
    report: &mut LoadReport,
) -> Result<(), Error> {
    let on_conflict = options.on_conflict;
    // FLUSHALL keeps function libraries: after it, the backup's replace them.
    let functions = if options.flush { OnConflict::Replace } else { on_conflict };
    let (mut records, walker) = read_records(path);
    let mut in_flight: JoinSet<BatchResult> = JoinSet::new();
    let mut batch: Option<Batch> = None;
    let mut stopped: Option<Error> = None;

    loop {
        let record = records.recv().await;
        let done = record.is_none();
        match record {
            Some(rdb::Record::Key(key)) => {
                if key.expire_at_ms.is_some_and(|at| at <= now_ms) {
                    report.skipped_expired += 1;
                    continue;
                }
                if batch.as_ref().is_some_and(|batch| batch.db != key.db) {
                    let full = batch.take().expect("checked above");
                    send(&mut in_flight, &connection, full);
                }
                let current = batch.get_or_insert_with(|| Batch::new(key.db));
                let command = current.pipe.cmd("RESTORE");
                command.arg(&key.key).arg(key.expire_at_ms.unwrap_or(0)).arg(&key.payload).arg("ABSTTL");
                if on_conflict == OnConflict::Replace {
                    command.arg("REPLACE");
                }
                current.bytes += key.payload.len() + key.key.len();
                current.keys.push(key.key);
            }
            Some(rdb::Record::Function(code)) => {
                // Functions are loaded in file order, before the keys that follow.
                if let Some(full) = batch.take() {
                    send(&mut in_flight, &connection, full);
                }
                while let Some(result) = in_flight.join_next().await {
                    collect(result.expect("batch task panicked"), on_conflict, url, report, &mut stopped);
                }
                load_function(&connection, &code, functions, url, report).await?;
            }
            None => {}
        }
        if batch.as_ref().is_some_and(|batch| done || batch.keys.len() >= BATCH_KEYS || batch.bytes >= BATCH_BYTES) {
            let full = batch.take().expect("checked above");
            send(&mut in_flight, &connection, full);
        }
        while in_flight.len() >= IN_FLIGHT || (done && !in_flight.is_empty()) {
            let result = in_flight.join_next().await.expect("the set is not empty");
            collect(result.expect("batch task panicked"), on_conflict, url, report, &mut stopped);
        }
        if stopped.is_some() || done {
            break;
        }
    }
    // Dropping the receiver ends the walker thread early after an error.
    drop(records);
    in_flight.abort_all();
    let walked = walker.await.expect("walker thread panicked");
    if let Some(err) = stopped {
        return Err(err);
    }
    walked
}

fn send(in_flight: &mut JoinSet<BatchResult>, connection: &MultiplexedConnection, batch: Batch) {
    let mut connection = connection.clone();
    in_flight.spawn(async move {
        let Batch { db, keys, pipe, .. } = batch;
        let replies: Vec<redis::Value> = pipe.query_async(&mut connection).await?;
        // The first reply belongs to SELECT.
        let errors = replies
            .into_iter()
            .skip(1)
            .map(|reply| match reply {
                redis::Value::ServerError(err) => Some(err),
                _ => None,
            })
            .collect();
        Ok((db, keys, errors))
    });
}

fn collect(
    result: BatchResult,
    on_conflict: OnConflict,
    url: &str,
    report: &mut LoadReport,
    stopped: &mut Option<Error>,
) {
    let (db, keys, errors) = match result {
        Ok(outcome) => outcome,
        Err(err) => {
            stopped.get_or_insert(Error::Command {
                command: "RESTORE".to_string(),
                url: url.to_string(),
                message: err.to_string(),
            });
            return;
        }
    };
    for (key, error) in keys.iter().zip(errors) {
        match error {
            None => report.loaded += 1,
            Some(err) if err.code() == "BUSYKEY" && on_conflict == OnConflict::Skip => report.skipped_existing += 1,
            Some(err) => {
                report.failed += 1;
                let message = format!("{} {}", err.code(), err.details().unwrap_or_default());
                // A payload the server cannot read fails the same way for every key.
                if message.contains("payload version or checksum") && report.loaded == 0 {
                    stopped.get_or_insert(Error::Command {
                        command: "RESTORE".to_string(),
                        url: url.to_string(),
                        message: format!("{message}; the server cannot read values of this backup's RDB version"),
                    });
                }
                if report.failures.len() < FAILURES_SHOWN {
                    report.failures.push(format!("\"{}\" (db {db}): {message}", rdb::printable(key)));
                }
            }
        }
    }
}

async fn load_function(
    connection: &MultiplexedConnection,
    code: &[u8],
    on_conflict: OnConflict,
    url: &str,
    report: &mut LoadReport,
) -> Result<(), Error> {
    let mut command = redis::cmd("FUNCTION");
    command.arg("LOAD");
    if on_conflict == OnConflict::Replace {
        command.arg("REPLACE");
    }
    command.arg(code);
    match command.query_async::<String>(&mut connection.clone()).await {
        Ok(_) => {
            report.functions_loaded += 1;
            Ok(())
        }
        Err(err) if on_conflict == OnConflict::Skip && err.to_string().contains("already exists") => Ok(()),
        Err(err) => {
            Err(Error::Command { command: "FUNCTION LOAD".to_string(), url: url.to_string(), message: err.to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    #[test]
    fn redis_releases_map_to_rdb_versions() {
        for (version, rdb) in [
            ("2.8.24", 6),
            ("3.2.12", 7),
            ("4.0.14", 8),
            ("6.2.14", 9),
            ("7.0.15", 10),
            ("7.2.4", 11),
            ("7.4.1", 12),
            ("8.0.2", 12),
            ("8.6.0", 13),
        ] {
            assert_eq!(server_rdb_version(&info(&[("redis_version", version)])), Some(rdb), "Redis {version}");
        }
    }

    #[test]
    fn valkey_reports_its_own_version() {
        let valkey = info(&[("redis_version", "7.2.4"), ("valkey_version", "8.0.1")]);
        assert_eq!(server_rdb_version(&valkey), Some(11));
    }

    #[test]
    fn unknown_versions_are_not_guessed() {
        assert_eq!(server_rdb_version(&info(&[])), None);
        assert_eq!(server_rdb_version(&info(&[("redis_version", "x.y")])), None);
        assert_eq!(server_rdb_version(&info(&[("redis_version", "2.4.0")])), None);
    }

    #[test]
    fn newer_releases_load_everything_known() {
        assert_eq!(server_rdb_version(&info(&[("redis_version", "9.0.0")])), Some(rdb::MAX_REDIS_VERSION));
    }
}
