//! `restore --into`: loading a verified backup into a running redis-server
//! with RESTORE, against real servers on loopback.

mod common;

use std::time::Duration;

use common::{Redis, Setup, assert_exit, assert_success, fill_sessions, stderr, stdout};

/// A source server with sessions, a function library and a key that expires
/// soon, backed up once.
fn backed_up_source() -> Option<(Redis, Setup)> {
    let redis = Redis::start(&[])?;
    fill_sessions(&redis, 1500);
    let mut connection = redis.connection();
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("#!lua name=sessions\nredis.register_function('touch', function(keys, args) return 1 end)")
        .query::<String>(&mut connection)
        .unwrap();
    redis::cmd("SET").arg("soon-gone").arg("x").arg("PX").arg(600).query::<()>(&mut connection).unwrap();
    let setup = Setup::new(&redis.url(), "");
    assert_success(&setup.run(&["backup"]), "backup of the source");
    Some((redis, setup))
}

/// Waits until the source's short-lived key has expired and removes it, so
/// that digests compare only keys both sides must have.
fn let_short_key_expire(source: &Redis) {
    std::thread::sleep(Duration::from_millis(700));
    source.cmd::<()>(&["DEL", "soon-gone"]);
}

fn pexpiretime(redis: &Redis, db: u32, key: &str) -> i64 {
    let mut connection = redis.connection();
    redis::cmd("SELECT").arg(db).query::<()>(&mut connection).unwrap();
    redis::cmd("PEXPIRETIME").arg(key).query(&mut connection).unwrap()
}

#[test]
fn into_empty_server_matches_source() {
    let Some((source, setup)) = backed_up_source() else { return };
    let Some(target) = Redis::start(&[]) else { return };
    // The short-lived key expires between backup and restore.
    let_short_key_expire(&source);

    let output = setup.run(&["restore", "--into", &target.url()]);
    assert_success(&output, "restore --into an empty server");
    let text = stdout(&output);
    assert!(text.contains("skipped 1 already expired"), "{text}");
    assert!(text.contains("1 function library"), "{text}");
    assert_eq!(target.digest(), source.digest());
    assert_eq!(target.keyspace(), source.keyspace());
    // ABSTTL keeps the absolute expiry time, to the millisecond.
    assert_eq!(pexpiretime(&target, 0, "sess:000007"), pexpiretime(&source, 0, "sess:000007"));
    assert_eq!(pexpiretime(&target, 1, "csrf:3"), pexpiretime(&source, 1, "csrf:3"));
    let libraries: Vec<redis::Value> = target.cmd(&["FUNCTION", "LIST"]);
    assert_eq!(libraries.len(), 1);
}

#[test]
fn conflict_fails_before_loading() {
    let Some((_source, setup)) = backed_up_source() else { return };
    let Some(target) = Redis::start(&[]) else { return };
    target.cmd::<()>(&["SET", "sess:000042", "newer"]);

    let output = setup.run(&["restore", "--into", &target.url()]);
    assert_exit(&output, 1, "restore --into with an existing key");
    let message = stderr(&output);
    assert!(message.contains("1 key(s) of the backup already exist"), "{message}");
    assert!(message.contains("\"sess:000042\" (db 0)"), "{message}");
    let keys: u64 = target.cmd(&["DBSIZE"]);
    assert_eq!(keys, 1, "keys were loaded despite the conflict");
}

#[test]
fn conflict_policies_skip_and_replace() {
    let Some((source, setup)) = backed_up_source() else { return };
    let Some(target) = Redis::start(&[]) else { return };
    target.cmd::<()>(&["SET", "sess:000042", "newer"]);
    let_short_key_expire(&source);

    let output = setup.run(&["restore", "--into", &target.url(), "--on-conflict", "skip"]);
    assert_success(&output, "restore --on-conflict skip");
    assert!(stdout(&output).contains("1 existing"), "{}", stdout(&output));
    let value: String = target.cmd(&["GET", "sess:000042"]);
    assert_eq!(value, "newer");

    let output = setup.run(&["restore", "--into", &target.url(), "--on-conflict", "replace"]);
    assert_success(&output, "restore --on-conflict replace");
    assert_eq!(target.digest(), source.digest());
}

#[test]
fn flush_empties_server_first() {
    let Some((source, setup)) = backed_up_source() else { return };
    let Some(target) = Redis::start(&[]) else { return };
    target.cmd::<()>(&["SET", "stale", "x"]);
    target.cmd::<()>(&["SET", "sess:000042", "newer"]);
    let_short_key_expire(&source);

    let output = setup.run(&["restore", "--into", &target.url(), "--flush"]);
    assert_success(&output, "restore --flush");
    assert!(stdout(&output).contains("after emptying it"), "{}", stdout(&output));
    assert_eq!(target.digest(), source.digest());
}

#[test]
fn dry_run_changes_nothing() {
    let Some((_source, setup)) = backed_up_source() else { return };
    let Some(target) = Redis::start(&[]) else { return };
    target.cmd::<()>(&["SET", "sess:000042", "newer"]);

    let output = setup.run(&["restore", "--into", &target.url(), "--dry-run"]);
    assert_exit(&output, 1, "restore --dry-run that the real run would refuse");
    let text = stdout(&output);
    assert!(text.contains("dry run: nothing was changed"), "{text}");
    assert!(text.contains("1 key(s) of the backup exist on the server; --on-conflict fail would refuse"), "{text}");
    let keys: u64 = target.cmd(&["DBSIZE"]);
    assert_eq!(keys, 1);

    let output = setup.run(&["restore", "--into", &target.url(), "--dry-run", "--on-conflict", "replace"]);
    assert_success(&output, "restore --dry-run with --on-conflict replace");
    assert!(stdout(&output).contains("would overwrite them"), "{}", stdout(&output));
    let value: String = target.cmd(&["GET", "sess:000042"]);
    assert_eq!(value, "newer");
}

#[test]
fn too_few_databases_refused_before_loading() {
    let Some(source) = Redis::start(&[]) else { return };
    fill_sessions(&source, 50);
    let mut connection = source.connection();
    redis::cmd("SELECT").arg(3).query::<()>(&mut connection).unwrap();
    redis::cmd("SET").arg("in-db-3").arg("x").query::<()>(&mut connection).unwrap();
    let setup = Setup::new(&source.url(), "");
    assert_success(&setup.run(&["backup"]), "backup with a key in database 3");
    let Some(target) = Redis::start(&["--databases", "2"]) else { return };

    let output = setup.run(&["restore", "--into", &target.url()]);
    assert_exit(&output, 1, "restore --into a server with two databases");
    let message = stderr(&output);
    assert!(message.contains("keys in database 3"), "{message}");
    assert!(message.contains("`databases` setting to at least 4"), "{message}");
    assert!(target.keyspace().is_empty(), "keys were loaded: {:?}", target.keyspace());
}

#[test]
fn local_rdb_rejects_aof_options() {
    let dir = tempfile::tempdir().unwrap();
    let rdb = dir.path().join("dump.rdb");
    std::fs::write(&rdb, b"not read").unwrap();
    let output = common::sessbackup(&["restore", "--rdb", rdb.to_str().unwrap(), "--drill", "--until", "5"]);
    assert_exit(&output, 2, "restore --rdb with --until");
    assert!(stderr(&output).contains("apply to --aof and --from-aof"), "{}", stderr(&output));
}

#[test]
fn replica_is_refused() {
    let Some((_source, setup)) = backed_up_source() else { return };
    let Some(primary) = Redis::start(&[]) else { return };
    let port = primary.url().trim_end_matches('/').rsplit(':').next().unwrap().to_string();
    let Some(replica) = Redis::start(&["--replicaof", "127.0.0.1", &port]) else { return };

    let output = setup.run(&["restore", "--into", &replica.url()]);
    assert_exit(&output, 1, "restore --into a replica");
    assert!(stderr(&output).contains("is a replica (role:slave); restore into its primary"), "{}", stderr(&output));
}

/// Rewrites an RDB file's version in its magic and fixes its CRC-64, as if
/// a newer Redis had written the same keys.
fn with_rdb_version(bytes: &[u8], version: u32) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[5..9].copy_from_slice(format!("{version:04}").as_bytes());
    let body = out.len() - 8;
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_REDIS).checksum(&out[..body]);
    out[body..].copy_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn newer_rdb_version_is_refused() {
    let Some(source) = Redis::start(&[]) else { return };
    fill_sessions(&source, 50);
    let _: String = source.cmd(&["SAVE"]);
    let original = std::fs::read(source.rdb_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("from-7.2.rdb");
    std::fs::write(&newer, with_rdb_version(&original, 11)).unwrap();
    let Some(target) = Redis::start(&[]) else { return };

    let output = common::sessbackup(&["restore", "--rdb", newer.to_str().unwrap(), "--into", &target.url()]);
    assert_exit(&output, 1, "an RDB 11 file into Redis 7.0");
    let message = stderr(&output);
    assert!(message.contains("RDB version 11 (Redis 7.2 or newer wrote it)"), "{message}");
    assert!(message.contains("loads RDB versions up to 10"), "{message}");
    let keys: u64 = target.cmd(&["DBSIZE"]);
    assert_eq!(keys, 0);

    // The original file, loaded from disk without any configuration.
    let output =
        common::sessbackup(&["restore", "--rdb", source.rdb_path().to_str().unwrap(), "--into", &target.url()]);
    assert_success(&output, "restore --rdb of a 7.0 file");
    assert_eq!(target.digest(), source.digest());
}

#[test]
fn verify_drill_loads_backup() {
    let Some((_source, setup)) = backed_up_source() else { return };
    let output = setup.run(&["verify", "--drill"]);
    assert_success(&output, "verify --drill");
    let text = stdout(&output);
    assert!(text.contains("drill: redis-server 7.0.15 loaded the RDB"), "{text}");
    assert!(text.contains("ok   drill db0:"), "{text}");
    assert!(text.contains("ok   drill db1:"), "{text}");

    let output = setup.run(&["verify", "--drill", "--json"]);
    assert_success(&output, "verify --drill --json");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["drill"]["ok"], true);
    assert_eq!(report["drill"]["databases"][0]["expected"], report["drill"]["databases"][0]["loaded"]);
}

#[test]
fn restore_drill_allows_for_expired_keys() {
    let Some((_source, setup)) = backed_up_source() else { return };
    // The key set with PX 600 has expired by the time the drill loads.
    std::thread::sleep(Duration::from_millis(700));
    let work = tempfile::tempdir().unwrap();
    let output = setup.run(&["restore", "--drill", "--work-dir", work.path().to_str().unwrap()]);
    assert_success(&output, "restore --drill");
    let text = stdout(&output);
    assert!(text.contains("(1 had expired, which Redis drops)"), "{text}");
    assert!(text.contains("passed"), "{text}");
    let leftovers: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "files left in the work folder: {leftovers:?}");
}

#[test]
fn drill_reports_server_refusal() {
    let Some(source) = Redis::start(&[]) else { return };
    fill_sessions(&source, 50);
    let _: String = source.cmd(&["SAVE"]);
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("from-7.2.rdb");
    std::fs::write(&newer, with_rdb_version(&std::fs::read(source.rdb_path()).unwrap(), 11)).unwrap();

    let output = common::sessbackup(&["restore", "--rdb", newer.to_str().unwrap(), "--drill"]);
    assert_exit(&output, 1, "a drill of an RDB file the server cannot load");
    let message = stderr(&output);
    assert!(message.contains("the scratch redis-server stopped while starting or loading"), "{message}");
    assert!(message.contains("Can't handle RDB format version 11"), "{message}");
}

#[test]
fn into_with_password_over_unix_socket() {
    let Some((source, setup)) = backed_up_source() else { return };
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("redis.sock").display().to_string();
    let Some(target) =
        Redis::start(&["--unixsocket", &socket, "--unixsocketperm", "700", "--requirepass", "restore-secret"])
    else {
        return;
    };
    let url = format!("unix://{socket}");
    let_short_key_expire(&source);

    let output = setup.command().args(["restore", "--into", &url]).output().unwrap();
    assert_exit(&output, 1, "restore --into a server that needs a password, without one");
    assert!(stderr(&output).contains("requires a password"), "{}", stderr(&output));

    let output = setup
        .command()
        .args(["restore", "--into", &url, "--password-env", "SESSBACKUP_TEST_INTO_PASSWORD"])
        .env("SESSBACKUP_TEST_INTO_PASSWORD", "restore-secret")
        .output()
        .unwrap();
    assert_success(&output, "restore --into over a Unix socket with a password");
    assert_eq!(target.digest(), source.digest());
}

#[test]
fn into_over_tls() {
    let Some((source, setup)) = backed_up_source() else { return };
    let certs = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = common::make_certificates(certs.path()) else { return };
    let tls_port = common::free_port().to_string();
    let tls = ["--tls-port", &tls_port, "--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-ca-cert-file", &ca];
    let Some(target) = Redis::start(&[&tls[..], &["--tls-auth-clients", "no"]].concat()) else { return };
    let url = format!("rediss://127.0.0.1:{tls_port}/");
    let_short_key_expire(&source);

    let output = setup.run(&["restore", "--into", &url, "--tls-ca-file", &ca]);
    assert_success(&output, "restore --into over TLS");
    assert_eq!(target.digest(), source.digest());
}
