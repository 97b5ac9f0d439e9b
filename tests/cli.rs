//! The command line without a Redis server: `inspect`, `check`, usage errors
//! and exit codes.

mod common;

use std::process::Command;

use common::{Redis, assert_exit, assert_success, stderr, stdout};

fn sessbackup() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sessbackup"));
    command.env_remove("SESSBACKUP_CONFIG").env_remove("RUST_LOG");
    command
}

/// Saves an RDB file with a real server, with keys in two databases, and
/// returns its path.
fn saved_rdb(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let redis = Redis::start(&[])?;
    common::fill_sessions(&redis, 200);
    let _: String = redis.cmd(&["SAVE"]);
    let path = dir.join("dump.rdb");
    std::fs::copy(redis.rdb_path(), &path).unwrap();
    Some(path)
}

#[test]
fn inspect_describes_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some(rdb) = saved_rdb(dir.path()) else { return };
    let output = sessbackup().args(["inspect", rdb.to_str().unwrap()]).output().unwrap();
    assert_success(&output, "inspect");
    let text = stdout(&output);
    assert!(text.contains("format: Redis RDB version 10"), "{text}");
    assert!(text.contains("aux redis-ver: 7.0.15"), "{text}");
    assert!(text.contains("db 1:"), "{text}");
    assert!(text.contains("verdict: valid"), "{text}");

    let output = sessbackup().args(["inspect", "--json", rdb.to_str().unwrap()]).output().unwrap();
    assert_success(&output, "inspect --json");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["valid"], true);
    assert_eq!(value["rdb_version"], 10);
    let databases = value["databases"].as_array().unwrap();
    assert_eq!(databases.len(), 2);
    let total: u64 = databases.iter().map(|db| db["keys"].as_u64().unwrap()).sum();
    assert_eq!(value["keys"].as_u64(), Some(total));
    assert!(value["expires"].as_u64().unwrap() > 0);
    assert!(value.get("error").is_none());
}

#[test]
fn inspect_reports_offset_of_damage() {
    let dir = tempfile::tempdir().unwrap();
    let Some(rdb) = saved_rdb(dir.path()) else { return };
    let mut bytes = std::fs::read(&rdb).unwrap();
    let len = bytes.len();
    bytes.truncate(len - 3);
    std::fs::write(&rdb, &bytes).unwrap();

    let output = sessbackup().args(["inspect", "--json", rdb.to_str().unwrap()]).output().unwrap();
    assert_exit(&output, 1, "inspect of a truncated file");
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["valid"], false);
    assert!(value["error"]["offset"].as_u64().unwrap() >= (len - 8) as u64, "{value}");
    assert!(value["error"]["message"].as_str().unwrap().contains("end of file"), "{value}");

    let output = sessbackup().args(["inspect", rdb.to_str().unwrap()]).output().unwrap();
    assert_exit(&output, 1, "inspect of a truncated file");
    assert!(stdout(&output).contains("verdict: INVALID at offset"), "{}", stdout(&output));
}

#[test]
fn inspect_of_missing_file_fails() {
    let output = sessbackup().args(["inspect", "/nonexistent/dump.rdb"]).output().unwrap();
    assert_exit(&output, 1, "inspect of a missing file");
    assert!(stderr(&output).contains("/nonexistent/dump.rdb"));
}

#[test]
fn check_reports_all_problems_with_exit_78() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[job]]\nname = \"sessions\"\nredis_url = \"redis://127.0.0.1:6379/\"\ncompression_level = 30\ntargets = [\"nas\"]\nretension = 3\n\n\
         [[target]]\nname = \"local\"\ntype = \"local\"\npath = \"relative/dir\"\n",
    )
    .unwrap();
    let output = sessbackup().args(["--config", config.to_str().unwrap(), "check"]).output().unwrap();
    assert_exit(&output, 78, "check of an invalid file");
    let text = stderr(&output);
    for expected in [
        "line 4: job \"sessions\": compression_level 30",
        "line 5:",
        "line 6: unknown key \"retension\"",
        "line 11: target \"local\": path",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.contains("(4 problems)"), "{text}");
    assert!(text.contains("defined targets: [\"local\"]"), "{text}");
}

#[test]
fn check_accepts_example_file() {
    // The example's target folder may not be writable by the test user, so
    // point it at a temporary folder and keep everything else.
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml")).unwrap();
    assert!(example.contains("/var/backups/sessbackup"));
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        example.replace("/var/backups/sessbackup", &dir.path().join("backups").display().to_string()),
    )
    .unwrap();
    let output = sessbackup().args(["--config", config.to_str().unwrap(), "check"]).output().unwrap();
    assert_success(&output, "check of config.example.toml");
    assert!(stdout(&output).contains("is valid"));
}

#[test]
fn check_reports_environment_and_file_problems_together() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    std::fs::write(
        &config,
        format!(
            "[[job]]\nname = \"sessions\"\nredis_url = \"redis://127.0.0.1:6379/\"\npassword_file = \"{}\"\ntargets = [\"local\"]\ncolour = 1\n\n\
             [[target]]\nname = \"local\"\ntype = \"local\"\npath = \"{}\"\n",
            dir.path().join("missing-password").display(),
            blocker.join("backups").display()
        ),
    )
    .unwrap();
    let output = sessbackup().args(["--config", config.to_str().unwrap(), "check"]).output().unwrap();
    assert_exit(&output, 78, "check with file and environment problems");
    let text = stderr(&output);
    assert!(text.contains("(3 problems)"), "{text}");
    assert!(text.contains("line 4: job \"sessions\": cannot read password_file"), "{text}");
    assert!(text.contains("line 6: unknown key \"colour\""), "{text}");
    assert!(text.contains("line 11: target \"local\": path"), "{text}");
    assert!(text.contains("is not a directory"), "{text}");
}

#[test]
fn check_rejects_empty_password_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[job]]\nname = \"sessions\"\nredis_url = \"redis://127.0.0.1:6379/\"\npassword_env = \"SESSBACKUP_TEST_EMPTY\"\ntargets = [\"local\"]\n\n\
             [[target]]\nname = \"local\"\ntype = \"local\"\npath = \"{}\"\n",
            dir.path().join("backups").display()
        ),
    )
    .unwrap();
    let output = sessbackup()
        .args(["--config", config.to_str().unwrap(), "check"])
        .env("SESSBACKUP_TEST_EMPTY", "")
        .output()
        .unwrap();
    assert_exit(&output, 78, "check with an empty password variable");
    assert!(stderr(&output).contains("set but empty"), "{}", stderr(&output));
}

#[test]
fn misspelled_log_level_is_usage_error() {
    let output = sessbackup().args(["--log-level", "loud", "inspect", "/nonexistent"]).output().unwrap();
    assert_exit(&output, 2, "an unknown log level");
    assert!(stderr(&output).contains("loud"), "{}", stderr(&output));
    let output = sessbackup().args(["--log-level", "warning", "inspect", "/nonexistent"]).output().unwrap();
    assert_exit(&output, 1, "log level 'warning'");
}

#[test]
fn inspect_recognises_compressed_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("backup.rdb.zst");
    std::fs::write(&artifact, zstd::encode_all(&b"REDIS0010\xff"[..], 3).unwrap()).unwrap();
    let output = sessbackup().args(["inspect", artifact.to_str().unwrap()]).output().unwrap();
    assert_exit(&output, 1, "inspect of a zstd file");
    assert!(stdout(&output).contains("zstd"), "{}", stdout(&output));
}

#[test]
fn missing_config_file_exits_78() {
    let output = sessbackup().args(["--config", "/nonexistent/sessbackup.toml", "list"]).output().unwrap();
    assert_exit(&output, 78, "list without a config file");
    assert!(stderr(&output).contains("file not found"), "{}", stderr(&output));
}

#[test]
fn check_reports_unset_password_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let backups = dir.path().join("backups");
    std::fs::write(
        &config,
        format!(
            "[[job]]\nname = \"sessions\"\nredis_url = \"redis://127.0.0.1:6379/\"\npassword_env = \"SESSBACKUP_TEST_UNSET_VARIABLE\"\ntargets = [\"local\"]\n\n\
             [[target]]\nname = \"local\"\ntype = \"local\"\npath = \"{}\"\n",
            backups.display()
        ),
    )
    .unwrap();
    let output = sessbackup()
        .args(["--config", config.to_str().unwrap(), "check"])
        .env_remove("SESSBACKUP_TEST_UNSET_VARIABLE")
        .output()
        .unwrap();
    assert_exit(&output, 78, "check with an unset password variable");
    assert!(stderr(&output).contains("SESSBACKUP_TEST_UNSET_VARIABLE"), "{}", stderr(&output));
}

#[test]
fn usage_error_exits_2() {
    let output = sessbackup().args(["restore"]).output().unwrap();
    assert_exit(&output, 2, "restore without --to");
    let output = sessbackup().args(["frobnicate"]).output().unwrap();
    assert_exit(&output, 2, "unknown command");
}

#[test]
fn check_probe_connects_to_redis() {
    let Some(redis) = Redis::start(&[]) else { return };
    let setup = common::Setup::new(&redis.url(), "");
    let output = setup.run(&["check", "--probe"]);
    assert_success(&output, "check --probe");
    assert!(stdout(&output).contains("Redis 7.0.15 (master) reachable"), "{}", stdout(&output));

    let closed = common::Setup::new(&format!("redis://127.0.0.1:{}/", common::free_port()), "connect_timeout_secs = 2");
    let output = closed.run(&["check", "--probe"]);
    assert_exit(&output, 1, "check --probe without Redis");
    assert!(stderr(&output).contains("cannot connect to Redis"), "{}", stderr(&output));
}

#[test]
fn json_logs_are_json_lines() {
    let Some(redis) = Redis::start(&[]) else { return };
    common::fill_sessions(&redis, 50);
    let setup = common::Setup::new(&redis.url(), "");
    let output = setup.run(&["--log-format", "json", "backup"]);
    assert_success(&output, "backup with JSON logs");
    let mut finished = None;
    for line in stderr(&output).lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        if value["message"] == "backup finished" {
            finished = Some(value);
        }
    }
    let finished = finished.expect("a 'backup finished' line");
    // One flat object: the run's span fields sit beside the event's own.
    assert_eq!(finished["job"], "sessions");
    assert!(finished["backup_id"].is_string());
    assert_eq!(finished["phase"], "publish");
    assert_eq!(finished["level"], "INFO");
    for field in ["timestamp", "rdb_bytes", "artifact_bytes", "ratio", "throughput_mib_s", "duration_ms"] {
        assert!(!finished[field].is_null(), "missing {field}: {finished}");
    }
}

#[test]
fn password_file_in_the_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("redis-password"), "secret\n").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[job]]\nname = \"sessions\"\nredis_url = \"redis://127.0.0.1:6379/\"\npassword_file = \"$CREDENTIALS_DIRECTORY/redis-password\"\ntargets = [\"local\"]\n\n\
             [[target]]\nname = \"local\"\ntype = \"local\"\npath = \"{}\"\n",
            dir.path().join("backups").display()
        ),
    )
    .unwrap();
    let check = |credentials_directory: Option<&std::path::Path>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sessbackup"));
        command.args(["--config", config.to_str().unwrap(), "check"]).env_remove("CREDENTIALS_DIRECTORY");
        if let Some(folder) = credentials_directory {
            command.env("CREDENTIALS_DIRECTORY", folder);
        }
        command.output().unwrap()
    };
    assert_success(&check(Some(&credentials)), "check with the credential loaded");
    let output = check(Some(dir.path()));
    assert_exit(&output, 78, "check with the credential missing");
    assert!(stderr(&output).contains("redis-password"), "{}", stderr(&output));
    let output = check(None);
    assert_exit(&output, 78, "check outside a unit with credentials");
    assert!(stderr(&output).contains("$CREDENTIALS_DIRECTORY, which is not set here"), "{}", stderr(&output));
}
