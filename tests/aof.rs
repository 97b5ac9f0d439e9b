//! AOF files: `inspect` and `restore --aof` against the fixture corpus (real
//! AOF files written by others, and a multi-part AOF generated with
//! redis-server 7.0.15) and against AOFs a real server writes here.
//!
//! The corpus lives outside the repository; see tests/rdb_corpus.rs for how
//! it is found. Without it, the corpus tests print that they checked nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Redis, assert_exit, assert_success, sessbackup, stderr, stdout};
use sessbackup::aof;

/// Files where `inspect` differs from redis-check-aof 7.0.15 on purpose,
/// with the reason. The oracle already counts files that 7.0.15 cannot read
/// (RDB 11 and newer) as valid.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

fn fixtures_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SESSBACKUP_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    };
    if dir.join("oracle.tsv").is_file() {
        return Some(dir);
    }
    let message = "fixture corpus not found: set SESSBACKUP_FIXTURES to the folder holding oracle.tsv; \
                   NOTHING WAS CHECKED";
    if std::env::var("SESSBACKUP_REQUIRE_FIXTURES").as_deref() == Ok("1") {
        panic!("{message}");
    }
    common::say(&format!("warning: {message}"));
    None
}

#[test]
fn inspect_agrees_with_redis_check_aof() {
    let Some(dir) = fixtures_dir() else { return };
    let oracle = std::fs::read_to_string(dir.join("oracle.tsv")).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in oracle.lines().filter(|line| !line.starts_with('#') && !line.starts_with("file\t")) {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 4 || !matches!(fields[1], "aof" | "aof-manifest") {
            continue;
        }
        let (file, expected_valid) = (fields[0], fields[3] == "valid");
        let valid = aof::open(&dir.join(file)).is_ok_and(|set| aof::inspect(&set, None).valid());
        checked += 1;
        let known = KNOWN_DIFFERENCES.iter().any(|(known, _)| *known == file);
        if (valid == expected_valid) == known {
            failures.push(format!("{file}: redis-check-aof says {}, inspect says {valid}", fields[3]));
        }
    }
    assert!(checked > 0, "oracle.tsv lists no AOF files");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    common::say(&format!("checked {checked} AOF files and manifests from {}", dir.display()));
}

fn keyspace_counts(redis: &Redis) -> Vec<(u64, u64, u64)> {
    redis.keyspace()
}

#[test]
fn generated_multipart_aof_rebuilds() {
    let Some(dir) = fixtures_dir() else { return };
    let Some(_probe) = Redis::start(&[]) else { return };
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("generated/expected.json")).unwrap()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let rebuilt = work.path().join("rebuilt.rdb");

    let source = dir.join("generated/multipart-aof/appendonlydir");
    let output = sessbackup(&["restore", "--aof", source.to_str().unwrap(), "--to", rebuilt.to_str().unwrap()]);
    assert_success(&output, "restore --aof of the generated multi-part AOF");
    let loaded = Redis::start_on_rdb(&rebuilt).unwrap();
    let set = &expected["multipart_aof"];
    assert_eq!(loaded.digest(), set["debug_digest"].as_str().unwrap());
    assert_eq!(keyspace_counts(&loaded), vec![(0, 184, 149), (1, 9, 9)]);
    let last: String = loaded.cmd(&["GET", "session:last"]);
    assert_eq!(last, set["values"]["db0 GET session:last"].as_str().unwrap());
    let logins: String = loaded.cmd(&["GET", "counter:logins"]);
    assert_eq!(logins, "160");
}

#[test]
fn torn_multipart_aof_needs_truncate_tail() {
    let Some(dir) = fixtures_dir() else { return };
    let Some(_probe) = Redis::start(&[]) else { return };
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("generated/expected.json")).unwrap()).unwrap();
    let set = &expected["multipart_aof_truncated"];
    let source = dir.join("generated/multipart-aof-truncated/appendonlydir");
    let torn_file = source.join("appendonly.aof.2.incr.aof");
    let size_before = std::fs::metadata(&torn_file).unwrap().len();

    let output = sessbackup(&["inspect", "--json", source.to_str().unwrap()]);
    assert_exit(&output, 1, "inspect of a torn multi-part AOF");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["kind"], "multi-part-aof");
    assert_eq!(report["error"]["file"], "appendonly.aof.2.incr.aof");
    assert_eq!(report["error"]["offset"], set["last_command_offset"]);
    assert_eq!(report["error"]["torn_tail"], true);

    let work = tempfile::tempdir().unwrap();
    let rebuilt = work.path().join("rebuilt.rdb");
    let output = sessbackup(&["restore", "--aof", source.to_str().unwrap(), "--to", rebuilt.to_str().unwrap()]);
    assert_exit(&output, 1, "restore --aof of a torn AOF without --truncate-tail");
    assert!(stderr(&output).contains("appendonly.aof.2.incr.aof at offset 6392"), "{}", stderr(&output));
    assert!(stderr(&output).contains("pass --truncate-tail"), "{}", stderr(&output));
    assert!(!rebuilt.exists());

    let args = ["restore", "--aof", source.to_str().unwrap(), "--to", rebuilt.to_str().unwrap(), "--truncate-tail"];
    assert_success(&sessbackup(&args), "restore --aof --truncate-tail");
    let loaded = Redis::start_on_rdb(&rebuilt).unwrap();
    assert_eq!(loaded.digest(), set["after_fix_debug_digest"].as_str().unwrap());
    assert_eq!(keyspace_counts(&loaded), vec![(0, 183, 148), (1, 9, 9)]);
    assert_eq!(std::fs::metadata(&torn_file).unwrap().len(), size_before, "the input was changed");
}

/// One real AOF fixture and what loading it into redis-server 7.0.15 gave.
struct LoadRow {
    path: PathBuf,
    /// Keys per database, or the part of the failure message to look for.
    outcome: Result<BTreeMap<u64, u64>, String>,
}

/// Reads the AOF rows of PROVENANCE.md's table of real files. A row whose
/// load column starts with "as dir:" was loaded as its whole folder.
fn load_rows(dir: &Path) -> Vec<LoadRow> {
    let text = std::fs::read_to_string(dir.join("PROVENANCE.md")).unwrap();
    let mut rows: Vec<LoadRow> = Vec::new();
    for line in text.lines().filter(|line| line.starts_with("| real/")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (file, format, load) = (cells[1], cells[7], cells[9]);
        if !format.starts_with("AOF") {
            continue;
        }
        let (path, load) = match load.strip_prefix("as dir: ") {
            Some(rest) => (dir.join(file).parent().unwrap().to_path_buf(), rest),
            None => (dir.join(file), load),
        };
        if rows.iter().any(|row| row.path == path) {
            continue;
        }
        let outcome = match load.strip_prefix("FAILS: ") {
            Some(message) => Err(failure_token(message)),
            None => Ok(load
                .split(';')
                .next()
                .unwrap()
                .split_whitespace()
                .filter_map(|word| {
                    let (db, keys) = word.strip_prefix("db")?.split_once('=')?;
                    Some((db.parse().ok()?, keys.parse().ok()?))
                })
                .collect()),
        };
        rows.push(LoadRow { path, outcome });
    }
    rows
}

/// The telling part of a failure: a quoted name, an RDB version, or a file.
fn failure_token(message: &str) -> String {
    if let Some((_, rest)) = message.split_once('\'')
        && let Some((quoted, _)) = rest.split_once('\'')
    {
        return quoted.to_string();
    }
    if let Some(index) = message.find("RDB format version") {
        return message[index..].split(" /").next().unwrap().to_string();
    }
    message
        .split_whitespace()
        .find(|word| word.ends_with(".rdb") || word.ends_with(".aof"))
        .unwrap_or(message)
        .trim_end_matches('.')
        .to_string()
}

/// Parses "rebuilt 12 keys (db0=12 db1=3)" from restore's output.
fn rebuilt_counts(text: &str) -> BTreeMap<u64, u64> {
    let line = text.lines().find(|line| line.starts_with("rebuilt ")).unwrap_or_default();
    line.split(['(', ')', ' '])
        .filter_map(|word| {
            let (db, keys) = word.strip_prefix("db")?.split_once('=')?;
            Some((db.parse().ok()?, keys.parse().ok()?))
        })
        .collect()
}

#[test]
fn real_aof_files_load_as_recorded() {
    let Some(dir) = fixtures_dir() else { return };
    let Some(_probe) = Redis::start(&[]) else { return };
    let rows = load_rows(&dir);
    assert!(rows.len() >= 8, "PROVENANCE.md lists only {} AOF fixtures", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        let output = sessbackup(&["restore", "--aof", row.path.to_str().unwrap(), "--drill"]);
        let shown = row.path.strip_prefix(&dir).unwrap().display();
        match &row.outcome {
            Ok(counts) => {
                if !output.status.success() {
                    failures.push(format!("{shown}: expected to load, failed: {}", stderr(&output)));
                } else if rebuilt_counts(&stdout(&output)) != *counts {
                    failures.push(format!("{shown}: expected {counts:?}, got {}", stdout(&output)));
                }
            }
            Err(token) => {
                if output.status.success() {
                    failures.push(format!("{shown}: expected a failure naming {token:?}, it loaded"));
                } else if !stderr(&output).contains(token.as_str()) {
                    failures.push(format!("{shown}: the failure does not name {token:?}: {}", stderr(&output)));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Starts a server with AOF and `#TS:` annotations in `dir`.
fn aof_server(dir: &Path) -> Option<Redis> {
    Redis::start_in(dir, &["--appendonly", "yes", "--aof-timestamp-enabled", "yes", "--appendfsync", "always"])
}

#[test]
fn until_stops_at_point_in_time() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let Some(redis) = aof_server(&data) else { return };
    redis.cmd::<()>(&["SET", "before", "1"]);
    // Annotations are written once per second of commands.
    std::thread::sleep(Duration::from_millis(2100));
    let between = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 1;
    std::thread::sleep(Duration::from_millis(1100));
    redis.cmd::<()>(&["SET", "after", "2"]);
    let aof_dir = data.join("appendonlydir");

    let output =
        sessbackup(&["restore", "--aof", aof_dir.to_str().unwrap(), "--drill", "--until", &between.to_string()]);
    assert_success(&output, "restore --aof --until");
    assert!(stdout(&output).contains("stopping at the first annotation after"), "{}", stdout(&output));
    assert_eq!(rebuilt_counts(&stdout(&output)), BTreeMap::from([(0, 1)]));

    let Some(target) = Redis::start(&[]) else { return };
    let output = sessbackup(&["restore", "--aof", aof_dir.to_str().unwrap(), "--into", &target.url()]);
    assert_success(&output, "restore --aof --into");
    assert_eq!(target.digest(), redis.digest());
}

#[test]
fn corruption_in_middle_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let Some(redis) = aof_server(&data) else { return };
    for index in 0..20 {
        redis.cmd::<()>(&["SET", &format!("key:{index}"), "value"]);
    }
    redis.shutdown();
    let incr = std::fs::read_dir(data.join("appendonlydir"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(".incr.aof"))
        .unwrap();
    let mut bytes = std::fs::read(&incr).unwrap();
    let middle = bytes.windows(3).enumerate().filter(|(_, window)| *window == b"*3\r").nth(10).unwrap().0;
    bytes[middle] = b'+';
    std::fs::write(&incr, &bytes).unwrap();

    let output = sessbackup(&["inspect", data.to_str().unwrap()]);
    assert_exit(&output, 1, "inspect of a corrupt AOF");
    assert!(
        stdout(&output).contains(&format!("at offset {middle}: expected '*' to start a command")),
        "{}",
        stdout(&output)
    );
    let output = sessbackup(&["inspect", "--json", data.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["commands"].as_u64().unwrap() >= 10, "commands before the damage are not counted: {report}");
    let work = tempfile::tempdir().unwrap();
    let rebuilt = work.path().join("out.rdb");
    let args = ["restore", "--aof", data.to_str().unwrap(), "--to", rebuilt.to_str().unwrap(), "--truncate-tail"];
    let output = sessbackup(&args);
    assert_exit(&output, 1, "restore --aof of a corrupt AOF");
    assert!(stderr(&output).contains("the files were not changed"), "{}", stderr(&output));
    assert!(!rebuilt.exists());
    assert_eq!(std::fs::read(&incr).unwrap(), bytes, "the input was changed");
}

#[test]
fn missing_manifest_file_is_named() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("appendonlydir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("appendonly.aof.manifest"), "file appendonly.aof.3.base.rdb seq 3 type b\n").unwrap();
    let output = sessbackup(&["inspect", dir.to_str().unwrap()]);
    assert_exit(&output, 1, "inspect of a manifest naming a missing file");
    assert!(stderr(&output).contains("names appendonly.aof.3.base.rdb, which does not exist"), "{}", stderr(&output));
}

#[test]
fn backup_ships_aof_and_restores_from_it() {
    let Some(redis) = Redis::start(&["--appendonly", "yes"]) else { return };
    common::fill_sessions(&redis, 300);
    // A rewrite makes a base file; the writes after it go to an incr file.
    let _: String = redis.cmd(&["BGREWRITEAOF"]);
    common::wait_for(Duration::from_secs(10), "the AOF rewrite to finish", || {
        redis.info_field("persistence", "aof_rewrite_in_progress").as_deref() == Some("0")
    });
    redis.cmd::<()>(&["SET", "written-after-rewrite", "yes"]);
    let setup = common::Setup::new(&redis.url(), "include_aof = true");

    let output = setup.run(&["backup", "--json"]);
    assert_success(&output, "backup with include_aof");
    let listed = setup.list_json();
    assert_eq!(listed.len(), 1);
    let id = listed[0]["id"].as_str().unwrap().to_string();
    let manifest_path = setup.backups.join(format!("sessions/{id}.manifest.json"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let kinds: Vec<&str> =
        manifest["aof"]["files"].as_array().unwrap().iter().map(|file| file["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["manifest", "base", "incr"]);
    assert!(setup.backups.join(format!("sessions/{id}.aof.tar.zst")).is_file());

    let output = setup.run(&["verify"]);
    assert_success(&output, "verify of a backup with an AOF");
    assert!(stdout(&output).contains("ok   AOF archive SHA-256"), "{}", stdout(&output));

    let rebuilt = setup.path("from-aof.rdb");
    let output = setup.run(&["restore", "--from-aof", "--to", rebuilt.to_str().unwrap()]);
    assert_success(&output, "restore --from-aof");
    let loaded = Redis::start_on_rdb(&rebuilt).unwrap();
    assert_eq!(loaded.digest(), redis.digest());

    // A damaged archive fails verification and is not restored from.
    let archive = setup.backups.join(format!("sessions/{id}.aof.tar.zst"));
    let mut bytes = std::fs::read(&archive).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&archive, &bytes).unwrap();
    let output = setup.run(&["verify"]);
    assert_exit(&output, 1, "verify of a damaged AOF archive");
    assert!(stdout(&output).contains("FAIL AOF archive SHA-256"), "{}", stdout(&output));
    let output = setup.run(&["restore", "--from-aof", "--drill"]);
    assert_exit(&output, 1, "restore --from-aof of a damaged archive");
    assert!(stderr(&output).contains("failed verification, nothing was changed"), "{}", stderr(&output));
    // The RDB does not depend on the AOF archive.
    let from_rdb = setup.path("from-rdb.rdb");
    assert_success(&setup.run(&["restore", "--to", from_rdb.to_str().unwrap()]), "restore of the RDB");
}

#[test]
fn include_aof_needs_appendonly() {
    let Some(redis) = Redis::start(&[]) else { return };
    common::fill_sessions(&redis, 10);
    let setup = common::Setup::new(&redis.url(), "include_aof = true");
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "include_aof against a server without AOF");
    assert!(stderr(&output).contains("runs with appendonly no"), "{}", stderr(&output));
    assert!(setup.backup_files().is_empty(), "{:?}", setup.backup_files());
    // Found before the snapshot: the server did not save for nothing.
    assert_eq!(redis.info_field("persistence", "rdb_saves").as_deref(), Some("0"));
    let output = setup.run(&["check", "--probe"]);
    assert_exit(&output, 1, "check --probe of an include_aof job without AOF");
    assert!(stderr(&output).contains("runs with appendonly no"), "{}", stderr(&output));
}

#[test]
fn until_before_last_rewrite_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let Some(redis) = aof_server(&data) else { return };
    redis.cmd::<()>(&["SET", "early", "1"]);
    let before_rewrite = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    std::thread::sleep(Duration::from_millis(1100));
    let _: String = redis.cmd(&["BGREWRITEAOF"]);
    common::wait_for(Duration::from_secs(10), "the AOF rewrite to finish", || {
        redis.info_field("persistence", "aof_rewrite_in_progress").as_deref() == Some("0")
            && redis.info_field("persistence", "aof_rewrite_scheduled").as_deref() == Some("0")
    });
    let aof_dir = data.join("appendonlydir");

    let until = before_rewrite.to_string();
    let output = sessbackup(&["restore", "--aof", aof_dir.to_str().unwrap(), "--drill", "--until", &until]);
    assert_exit(&output, 1, "restore --aof --until before the last rewrite");
    assert!(stderr(&output).contains("cannot go back before its last rewrite"), "{}", stderr(&output));

    let incr = std::fs::read_dir(&aof_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with(".incr.aof"))
        .unwrap();
    let output = sessbackup(&["restore", "--aof", incr.to_str().unwrap(), "--drill"]);
    assert_exit(&output, 1, "restore --aof of an incremental file alone");
    assert!(stderr(&output).contains("without its base"), "{}", stderr(&output));
}
