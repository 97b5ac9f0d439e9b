//! Restore drill: proves that a real redis-server loads an RDB file with the
//! keys its manifest promises.
//!
//! A scratch server (see [`crate::scratch`]) starts on the file and reports
//! its keys per database. A server drops keys whose expiry time has passed
//! while it loads, so each database may hold fewer keys than the manifest
//! counts: exactly as many fewer as had expired by then. The drill reads the
//! file's expiry times and accepts a count only within that window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::manifest::DatabaseCounts;
use crate::rdb;
use crate::scratch::{self, Dataset, ScratchServer};

pub struct DrillOptions {
    /// The redis-server binary to run.
    pub redis_server: String,
    /// Parent folder of the scratch server's folder.
    pub work_dir: PathBuf,
    pub load_timeout: Duration,
}

/// The outcome for one database.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DbDrill {
    pub db: u64,
    /// Keys in the RDB file, as the manifest counts them.
    pub expected: u64,
    /// Keys in the scratch server after loading.
    pub loaded: u64,
    /// Keys whose expiry time had passed before the server started.
    pub expired_before_start: u64,
    /// Keys whose expiry time had passed when the server was asked.
    pub expired_when_counted: u64,
    pub ok: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DrillReport {
    pub server_version: String,
    pub load_ms: u64,
    pub databases: Vec<DbDrill>,
    pub ok: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Scratch(#[from] scratch::Error),
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// Starts a scratch server on `rdb` and compares its keys per database with
/// `expected`.
pub async fn drill(rdb_path: &Path, expected: &[DatabaseCounts], options: &DrillOptions) -> Result<DrillReport, Error> {
    let started = now_ms();
    let server = ScratchServer::start(
        &options.redis_server,
        &options.work_dir,
        Dataset::Rdb(rdb_path),
        &[],
        options.load_timeout,
    )
    .await?;
    let load_ms = (now_ms() - started).max(0) as u64;
    let mut connection = server.connect().await?;
    let command_error = |command: &str, err: redis::RedisError| scratch::Error::Command {
        command: command.to_string(),
        message: err.to_string(),
    };
    let keyspace: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut connection)
        .await
        .map_err(|err| command_error("INFO keyspace", err))?;
    let counted = now_ms();
    let server_info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await
        .map_err(|err| command_error("INFO", err))?;
    drop(connection);
    drop(server);

    let loaded = parse_keyspace(&keyspace);
    let (before_start, when_counted) = expired_by(rdb_path, started, counted).await?;
    let mut dbs: Vec<u64> = expected.iter().map(|counts| counts.db).chain(loaded.keys().copied()).collect();
    dbs.sort_unstable();
    dbs.dedup();
    let databases: Vec<DbDrill> = dbs
        .into_iter()
        .map(|db| {
            let expected = expected.iter().find(|counts| counts.db == db).map_or(0, |counts| counts.keys);
            let loaded = loaded.get(&db).copied().unwrap_or(0);
            let expired_before_start = before_start.get(&db).copied().unwrap_or(0);
            let expired_when_counted = when_counted.get(&db).copied().unwrap_or(0);
            // INFO keyspace still counts expired keys that no one touched
            // yet, so the upper bound only excludes keys dropped at load.
            let lowest = expected.saturating_sub(expired_when_counted);
            let highest = expected.saturating_sub(expired_before_start);
            DbDrill {
                db,
                expected,
                loaded,
                expired_before_start,
                expired_when_counted,
                ok: (lowest..=highest).contains(&loaded),
            }
        })
        .collect();
    let server_version =
        crate::source::parse_info(&server_info).get("redis_version").cloned().unwrap_or_else(|| "unknown".to_string());
    let ok = databases.iter().all(|db| db.ok);
    Ok(DrillReport { server_version, load_ms, databases, ok })
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64)
}

/// Parses `db0:keys=3,expires=1,avg_ttl=0` lines into keys per database.
fn parse_keyspace(text: &str) -> BTreeMap<u64, u64> {
    text.lines()
        .filter_map(|line| {
            let (db, fields) = line.trim().strip_prefix("db")?.split_once(':')?;
            let keys = fields.split(',').find_map(|field| field.strip_prefix("keys="))?;
            Some((db.parse().ok()?, keys.parse().ok()?))
        })
        .collect()
}

/// Counts, per database, the keys of the file that expire before `first`
/// and at or before `second` (Unix milliseconds).
async fn expired_by(path: &Path, first: i64, second: i64) -> Result<(BTreeMap<u64, u64>, BTreeMap<u64, u64>), Error> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let counts = std::sync::Arc::new(std::sync::Mutex::new((BTreeMap::new(), BTreeMap::new())));
        let sink = std::sync::Arc::clone(&counts);
        let file =
            std::fs::File::open(&path).map_err(|err| Error::Read { path: path.clone(), message: err.to_string() })?;
        rdb::walk_checked_records(std::io::BufReader::with_capacity(1024 * 1024, file), move |record| {
            if let rdb::Record::Key(key) = record
                && let Some(at) = key.expire_at_ms
            {
                let mut counts = sink.lock().expect("no panics while locked");
                if at < first {
                    *counts.0.entry(key.db).or_insert(0) += 1;
                }
                if at <= second {
                    *counts.1.entry(key.db).or_insert(0) += 1;
                }
            }
            Ok(())
        })
        .map_err(|failure| Error::Read { path: path.clone(), message: failure.to_string() })?;
        let counts = std::mem::take(&mut *counts.lock().expect("no panics while locked"));
        Ok(counts)
    })
    .await
    .expect("walker thread panicked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_lines_parse() {
        let parsed =
            parse_keyspace("# Keyspace\r\ndb0:keys=184,expires=149,avg_ttl=0\r\ndb12:keys=9,expires=9,avg_ttl=5\r\n");
        assert_eq!(parsed, BTreeMap::from([(0, 184), (12, 9)]));
    }

    #[test]
    fn empty_keyspace_parses() {
        assert!(parse_keyspace("# Keyspace\r\n").is_empty());
    }
}
