//! End-to-end backup, list, verify and restore against real redis-server
//! processes, including the ways snapshots go wrong in practice.

mod common;

use std::time::Duration;

use common::{Redis, Setup, assert_exit, assert_success, fill_sessions, stderr, stdout, wait_for};

fn backup_json(setup: &Setup) -> serde_json::Value {
    let output = setup.run(&["backup", "--json"]);
    assert_success(&output, "backup --json");
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("backup --json prints JSON");
    assert_eq!(reports.len(), 1);
    reports.into_iter().next().unwrap()
}

/// Starts a server on the restored file and returns it.
fn load_restored(file: &std::path::Path) -> Redis {
    let server = Redis::start_on_rdb(file).expect("redis-server is available");
    assert!(server.log().contains("DB loaded from disk"), "the restored file was not loaded:\n{}", server.log());
    server
}

#[test]
fn session_data_round_trips() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 3000);
    let setup = Setup::new(&redis.url(), "");

    let report = backup_json(&setup);
    let id = report["id"].as_str().unwrap().to_string();
    assert_eq!(report["targets"][0]["published"], true);
    assert!(!report["snapshot"]["waited_for_running_save"].as_bool().unwrap());

    let listed = setup.list_json();
    assert_eq!(listed.len(), 1);
    let entry = &listed[0];
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["job"], "sessions");
    assert_eq!(entry["target"], "local");
    for field in ["created_at", "rdb_sha256", "artifact_sha256"] {
        assert!(entry[field].is_string(), "list --json lacks {field}: {entry}");
    }
    assert!(entry["created_at"].as_str().unwrap().ends_with('Z'));
    let source_keys: u64 = redis.keyspace().iter().map(|(_, keys, _)| keys).sum();
    assert_eq!(entry["keys"].as_u64(), Some(source_keys));
    assert!(entry["rdb_bytes"].as_u64().unwrap() > entry["artifact_bytes"].as_u64().unwrap());

    // Published files are private to the owner.
    for file in setup.backup_files() {
        assert!(!file.contains("/."), "staging file left behind: {file}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(setup.backups.join(&file)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file} has mode {mode:o}");
    }

    let verify = setup.run(&["verify", &id]);
    assert_success(&verify, "verify");
    assert!(stdout(&verify).contains("verified"));

    let restored = setup.path("restored.rdb");
    let output = setup.run(&["restore", "latest", "--to", restored.to_str().unwrap()]);
    assert_success(&output, "restore");

    let copy = load_restored(&restored);
    assert_eq!(copy.digest(), redis.digest(), "restored data differs from the source");
    assert_eq!(copy.keyspace(), redis.keyspace());
}

#[test]
fn overlapping_run_is_refused() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 100);
    let setup = Setup::new(&redis.url(), "");
    // The lock a run of the same job takes while it lasts.
    let held = sessbackup::lock::acquire(&setup.path("state"), "sessions").unwrap();

    let output = setup.run(&["backup"]);
    assert_exit(&output, 75, "backup while another run of the job holds the lock");
    let message = stderr(&output);
    assert!(message.contains("another backup of job sessions is running"), "{message}");
    assert!(message.contains(&format!("process {}", std::process::id())), "{message}");
    assert!(stdout(&output).contains("sessions: backup FAILED: another backup"), "{}", stdout(&output));
    assert!(setup.backup_files().is_empty(), "{:?}", setup.backup_files());

    drop(held);
    assert_success(&setup.run(&["backup"]), "backup once the other run ended");
}

#[test]
fn running_save_is_waited_for() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 2000);
    // About 2000 keys x 1 ms: each save takes about two seconds.
    redis.cmd::<()>(&["CONFIG", "SET", "rdb-key-save-delay", "1000"]);
    let _: String = redis.cmd(&["BGSAVE"]);
    wait_for(Duration::from_secs(5), "the first save to start", || {
        redis.info_field("persistence", "rdb_bgsave_in_progress").as_deref() == Some("1")
    });
    // Written after that save began, so only a later save contains it.
    redis.cmd::<()>(&["SET", "written-after", "yes"]);

    let setup = Setup::new(&redis.url(), "");
    let report = backup_json(&setup);
    assert_eq!(report["snapshot"]["waited_for_running_save"], true);

    let restored = setup.path("restored.rdb");
    assert_success(&setup.run(&["restore", "--to", restored.to_str().unwrap()]), "restore");
    let copy = load_restored(&restored);
    let value: Option<String> = copy.cmd(&["GET", "written-after"]);
    assert_eq!(value.as_deref(), Some("yes"), "the backup holds the older save");
}

#[test]
fn aof_rewrite_schedules_save() {
    let Some(redis) = Redis::start(&["--appendonly", "yes"]) else { return };
    fill_sessions(&redis, 2000);
    redis.cmd::<()>(&["CONFIG", "SET", "rdb-key-save-delay", "1000"]);
    let _: String = redis.cmd(&["BGREWRITEAOF"]);
    wait_for(Duration::from_secs(5), "the AOF rewrite to start", || {
        redis.info_field("persistence", "aof_rewrite_in_progress").as_deref() == Some("1")
    });

    let setup = Setup::new(&redis.url(), "");
    let report = backup_json(&setup);
    assert_eq!(report["snapshot"]["scheduled"], true);
    assert_success(&setup.run(&["verify"]), "verify");
}

/// Returns the PIDs of the server's child processes (the save child).
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = entry.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        out.extend(text.split_whitespace().filter_map(|pid| pid.parse::<i32>().ok()));
    }
    out
}

#[test]
fn failed_save_is_not_shipped() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 2000);
    // An older dump.rdb is on disk: it must never be shipped as new.
    let _: String = redis.cmd(&["SAVE"]);
    assert!(redis.rdb_path().exists());
    redis.cmd::<()>(&["CONFIG", "SET", "rdb-key-save-delay", "5000"]);

    let setup = Setup::new(&redis.url(), "");
    let child = setup
        .command()
        .arg("backup")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "the backup's save to start", || {
        redis.info_field("persistence", "rdb_bgsave_in_progress").as_deref() == Some("1")
    });
    let save_children = children_of(redis.pid());
    assert!(!save_children.is_empty(), "no save child found");
    for pid in save_children {
        // SAFETY: kill(2) on the save child of the server this test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let output = child.wait_with_output().unwrap();
    assert_exit(&output, 1, "backup with a killed save");
    assert!(stderr(&output).contains("last save failed"), "{}", stderr(&output));
    assert!(setup.backup_files().is_empty(), "files were written: {:?}", setup.backup_files());
}

#[test]
fn unreachable_redis_names_the_fix() {
    let port = common::free_port();
    let setup = Setup::new(&format!("redis://127.0.0.1:{port}/"), "connect_timeout_secs = 2");
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup without Redis");
    let message = stderr(&output);
    assert!(message.contains("cannot connect to Redis"), "{message}");
    assert!(message.contains("redis-server"), "{message}");
    assert!(setup.backup_files().is_empty());
}

#[test]
fn renamed_config_needs_rdb_path() {
    let Some(redis) = Redis::start_with(&[], Some("rename-command CONFIG \"\"\n")) else { return };
    fill_sessions(&redis, 100);
    let setup = Setup::new(&redis.url(), "");
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup with CONFIG disabled");
    assert!(stderr(&output).contains("rdb_path"), "{}", stderr(&output));

    let setup = Setup::new(&redis.url(), &format!("rdb_path = \"{}\"", redis.rdb_path().display()));
    let report = backup_json(&setup);
    assert_eq!(report["keys"].as_u64(), Some(redis.keyspace().iter().map(|(_, keys, _)| keys).sum()));
}

#[test]
fn stale_rdb_file_is_refused() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 100);
    let _: String = redis.cmd(&["SAVE"]);
    // An old copy elsewhere, as when Redis's dir changed after the job was set up.
    let setup = Setup::new(&redis.url(), "");
    let stale = setup.path("old-dump.rdb");
    std::fs::copy(redis.rdb_path(), &stale).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let setup = Setup::new(&redis.url(), &format!("rdb_path = \"{}\"", stale.display()));
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup of a stale file");
    assert!(stderr(&output).contains("not fresh"), "{}", stderr(&output));
    assert!(setup.backup_files().is_empty(), "{:?}", setup.backup_files());
}

#[test]
fn corrupt_rdb_is_not_published() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 500);
    let _: String = redis.cmd(&["SAVE"]);
    let setup = Setup::new(&redis.url(), "");
    let corrupt = setup.path("corrupt.rdb");
    let mut bytes = std::fs::read(redis.rdb_path()).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&corrupt, bytes).unwrap();
    let setup = Setup::new(&redis.url(), &format!("rdb_path = \"{}\"", corrupt.display()));
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup of a corrupt file");
    assert!(stderr(&output).contains("failed its check"), "{}", stderr(&output));
    assert!(setup.backup_files().is_empty(), "{:?}", setup.backup_files());
}

#[test]
fn short_rdb_file_is_refused() {
    let Some(redis) = Redis::start(&[]) else { return };
    let setup = Setup::new(&redis.url(), "");
    let empty = setup.path("empty.rdb");
    std::fs::write(&empty, b"").unwrap();
    let setup = Setup::new(&redis.url(), &format!("rdb_path = \"{}\"", empty.display()));
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup of an empty file");
    assert!(stderr(&output).contains("shorter than any complete RDB file"), "{}", stderr(&output));
    assert!(setup.backup_files().is_empty());
}

/// Makes one backup and returns the setup and the artifact's path.
fn one_backup(redis: &Redis) -> (Setup, std::path::PathBuf) {
    let setup = Setup::new(&redis.url(), "");
    backup_json(&setup);
    let artifact = setup.backup_files().into_iter().find(|file| file.ends_with(".rdb.zst")).unwrap();
    let path = setup.backups.join(artifact);
    (setup, path)
}

#[test]
fn bit_flip_is_found_and_restore_writes_nothing() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 1000);
    let (setup, artifact) = one_backup(&redis);
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&artifact, bytes).unwrap();

    let output = setup.run(&["verify"]);
    assert_exit(&output, 1, "verify of a damaged artifact");
    assert!(stdout(&output).contains("FAIL artifact SHA-256"), "{}", stdout(&output));

    let restored = setup.path("restored.rdb");
    let output = setup.run(&["restore", "--to", restored.to_str().unwrap()]);
    assert_exit(&output, 1, "restore of a damaged artifact");
    assert!(stderr(&output).contains("failed verification"), "{}", stderr(&output));
    assert!(!restored.exists());
    let leftovers: Vec<_> = std::fs::read_dir(setup.home.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
}

#[test]
fn truncation_is_found() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 1000);
    let (setup, artifact) = one_backup(&redis);
    let bytes = std::fs::read(&artifact).unwrap();
    std::fs::write(&artifact, &bytes[..bytes.len() - 100]).unwrap();
    let output = setup.run(&["verify"]);
    assert_exit(&output, 1, "verify of a truncated artifact");
    let text = stdout(&output);
    assert!(text.contains("FAIL artifact size in bytes"), "{text}");
    assert!(text.contains("decompressing the artifact failed"), "{text}");
}

#[test]
fn restore_keeps_existing_file_without_force() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 100);
    let (setup, _) = one_backup(&redis);
    let target = setup.path("dump.rdb");
    std::fs::write(&target, b"precious").unwrap();
    let output = setup.run(&["restore", "--to", target.to_str().unwrap()]);
    assert_exit(&output, 1, "restore onto an existing file");
    assert!(stderr(&output).contains("--force"), "{}", stderr(&output));
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");

    assert_success(&setup.run(&["restore", "--to", target.to_str().unwrap(), "--force"]), "restore --force");
    assert_eq!(&std::fs::read(&target).unwrap()[..5], b"REDIS");
}

#[test]
fn password_never_reaches_output() {
    let password = "s3cr:t@pa%ss\"word";
    let Some(redis) = Redis::start(&["--requirepass", password]) else { return };
    fill_sessions(&redis, 100);
    let setup = Setup::new(&redis.url(), "password_env = \"SESSBACKUP_TEST_REDIS_PASSWORD\"");
    let output = setup
        .command()
        .args(["--log-level", "debug", "backup", "--json"])
        .env("SESSBACKUP_TEST_REDIS_PASSWORD", password)
        .output()
        .unwrap();
    assert_success(&output, "backup with a password");
    for text in [stdout(&output), stderr(&output)] {
        assert!(!text.contains(password), "password printed: {text}");
    }
    for file in setup.backup_files() {
        let content = std::fs::read(setup.backups.join(&file)).unwrap();
        assert!(
            !content.windows(password.len()).any(|window| window == password.as_bytes()),
            "{file} holds the password"
        );
    }

    let wrong = setup.command().arg("backup").env("SESSBACKUP_TEST_REDIS_PASSWORD", "nope").output().unwrap();
    assert_exit(&wrong, 1, "backup with a wrong password");
    assert!(stderr(&wrong).contains("credentials"), "{}", stderr(&wrong));
}

#[test]
fn save_timeout_publishes_nothing() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 2000);
    // About 2000 keys x 10 ms: far longer than the one-second timeout below.
    redis.cmd::<()>(&["CONFIG", "SET", "rdb-key-save-delay", "10000"]);
    let setup = Setup::new(&redis.url(), "");
    let text = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("snapshot_timeout_secs = 60", "snapshot_timeout_secs = 1");
    std::fs::write(&setup.config, text).unwrap();
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup with a save that outlasts the timeout");
    let message = stderr(&output);
    assert!(message.contains("timed out after 1 s waiting for our BGSAVE to finish"), "{message}");
    assert!(message.contains("snapshot_timeout_secs"), "{message}");
    assert!(setup.backup_files().is_empty());
}

#[test]
fn missing_rdb_file_is_reported() {
    let Some(redis) = Redis::start(&[]) else { return };
    let setup = Setup::new(&redis.url(), "rdb_path = \"/nonexistent/sessbackup/dump.rdb\"");
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup with a wrong rdb_path");
    assert!(stderr(&output).contains("/nonexistent/sessbackup/dump.rdb not found"), "{}", stderr(&output));
    assert!(setup.backup_files().is_empty());
}

#[test]
fn tls_connection_uses_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = common::make_certificates(certs.path()) else { return };
    let tls_port = common::free_port().to_string();
    let Some(redis) = Redis::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]) else {
        return;
    };
    fill_sessions(&redis, 200);
    let url = format!("rediss://127.0.0.1:{tls_port}/");

    let setup = Setup::new(&url, &format!("tls_ca_file = \"{ca}\""));
    let report = backup_json(&setup);
    assert_eq!(report["targets"][0]["published"], true);
    assert_success(&setup.run(&["verify"]), "verify");

    // Without the CA the server's certificate is not trusted.
    let setup = Setup::new(&url, "connect_timeout_secs = 5");
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup over TLS without the CA");
    assert!(stderr(&output).to_lowercase().contains("certificate"), "{}", stderr(&output));
    assert!(setup.backup_files().is_empty());
}

#[test]
fn unix_socket_url_works() {
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("redis.sock").display().to_string();
    let Some(redis) = Redis::start(&["--unixsocket", &socket, "--unixsocketperm", "700"]) else { return };
    fill_sessions(&redis, 100);
    let setup = Setup::new(&format!("unix://{socket}"), "");
    let report = backup_json(&setup);
    assert_eq!(report["keys"].as_u64(), Some(redis.keyspace().iter().map(|(_, keys, _)| keys).sum()));
}

#[test]
fn unknown_job_or_target_is_usage_error() {
    let setup = Setup::new("redis://127.0.0.1:1/", "");
    let output = setup.run(&["backup", "--job", "nope"]);
    assert_exit(&output, 2, "backup of an unknown job");
    assert!(
        stderr(&output).contains("job \"nope\" is not defined; jobs in the configuration: sessions"),
        "{}",
        stderr(&output)
    );
    let output = setup.run(&["list", "--target", "nowhere"]);
    assert_exit(&output, 2, "list of an unknown target");
    assert!(stderr(&output).contains("targets in the configuration: local"), "{}", stderr(&output));
}

#[test]
fn unreadable_manifest_fails_list() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 50);
    let (setup, artifact) = one_backup(&redis);
    let manifest = artifact.to_str().unwrap().replace(".rdb.zst", ".manifest.json");
    std::fs::write(&manifest, b"{ not json").unwrap();
    let output = setup.run(&["list"]);
    assert_exit(&output, 1, "list with a damaged manifest");
    let text = stderr(&output);
    assert!(text.contains("warning:") && text.contains("not valid JSON"), "{text}");
    assert!(text.contains("1 manifest(s) could not be read"), "{text}");
    assert!(stdout(&output).contains("no backups found on local"), "{}", stdout(&output));
}

#[test]
fn missing_password_is_named() {
    let Some(redis) = Redis::start(&["--requirepass", "secret"]) else { return };
    let setup = Setup::new(&redis.url(), "");
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup without the required password");
    assert!(stderr(&output).contains("requires a password"), "{}", stderr(&output));
    assert!(stderr(&output).contains("password_env or password_file"), "{}", stderr(&output));
}

#[test]
fn restore_to_directory_names_the_fix() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 50);
    let (setup, _) = one_backup(&redis);
    let output = setup.run(&["restore", "--to", setup.home.path().to_str().unwrap()]);
    assert_exit(&output, 1, "restore onto a directory");
    assert!(stderr(&output).contains("is a directory; give the path of the file to write"), "{}", stderr(&output));
}

#[test]
fn connection_hint_names_configured_port() {
    let port = common::free_port();
    let setup = Setup::new(&format!("redis://127.0.0.1:{port}/"), "connect_timeout_secs = 2");
    let output = setup.run(&["backup"]);
    assert_exit(&output, 1, "backup without Redis");
    assert!(stderr(&output).contains(&format!("redis-server --port {port}")), "{}", stderr(&output));
}

#[test]
fn successful_run_removes_leftovers_of_older_runs() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 50);
    let setup = Setup::new(&redis.url(), "");
    let job_dir = setup.backups.join("sessions");
    std::fs::create_dir_all(&job_dir).unwrap();
    // What a crashed run leaves: a staging file, and an artifact without manifest.
    let staging = job_dir.join(".20200101T000000Z-00000001.rdb.zst.partial-0123456789abcdef");
    let orphan = job_dir.join("20200101T000000Z-00000002.rdb.zst");
    // A staging file of a later backup may belong to a run still going.
    let later = job_dir.join(".29991231T000000Z-00000003.rdb.zst.partial-0123456789abcdef");
    for path in [&staging, &orphan, &later] {
        std::fs::write(path, b"leftover").unwrap();
    }
    assert_success(&setup.run(&["backup"]), "backup");
    assert!(!staging.exists(), "stale staging file kept");
    assert!(!orphan.exists(), "orphaned artifact kept");
    assert!(later.exists(), "staging file of a later backup removed");
}

#[test]
fn environment_variables_alone_configure_a_backup() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 100);
    let home = tempfile::tempdir().unwrap();
    let backups = home.path().join("backups");
    if std::path::Path::new(sessbackup::config::DEFAULT_PATH).exists() {
        common::say(
            "SKIPPED: a configuration file exists at the default path, which variables alone would not replace",
        );
        return;
    }
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sessbackup"));
        command
            .args(args)
            .env_remove("SESSBACKUP_CONFIG")
            .env_remove("RUST_LOG")
            .env("STATE_DIRECTORY", home.path().join("state"))
            .env("SESSBACKUP_JOB__SESSIONS__REDIS_URL", redis.url())
            .env("SESSBACKUP_JOB__SESSIONS__TARGETS", "nas")
            .env("SESSBACKUP_JOB__SESSIONS__RETENTION__KEEP_LAST", "1")
            .env("SESSBACKUP_TARGET__NAS__TYPE", "local")
            .env("SESSBACKUP_TARGET__NAS__PATH", &backups);
        for (name, value) in extra {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    assert_success(&run(&["check"], &[]), "check of a configuration made of variables");
    assert_success(&run(&["backup"], &[]), "backup");
    assert_success(&run(&["backup"], &[]), "second backup");
    let listed = run(&["list", "--json"], &[]);
    assert_success(&listed, "list");
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 1, "keep_last = 1 from a variable was not applied");
    assert_eq!(listed[0]["target"], "nas");

    // A file named on purpose must exist, even with variables set.
    let absent = home.path().join("absent.toml");
    let output = run(&["--config", absent.to_str().unwrap(), "check"], &[]);
    assert_exit(&output, 78, "check of a missing file named with --config");
    assert!(stderr(&output).contains("file not found"), "{}", stderr(&output));

    let output = run(&["check"], &[("SESSBACKUP_JOB__SESSIONS__COMPRESSION_LEVEL", "99")]);
    assert_exit(&output, 78, "check with a bad variable");
    assert!(stderr(&output).contains("invalid configuration from SESSBACKUP_* variables"), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("environment variable SESSBACKUP_JOB__SESSIONS__COMPRESSION_LEVEL: job \"sessions\": compression_level 99 is out of range"),
        "{}",
        stderr(&output)
    );
}

/// Runs sessbackup with `args` on a pseudo-terminal (script(1)) and returns
/// what the terminal showed, or `None` when script(1) is missing.
fn on_terminal(setup: &Setup, args: &[&str]) -> Option<String> {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        common::say("SKIPPED: script(1) not found (Debian package bsdutils)");
        return None;
    }
    let mut line =
        vec![env!("CARGO_BIN_EXE_sessbackup").to_string(), "--config".to_string(), setup.config.display().to_string()];
    line.extend(args.iter().map(|arg| arg.to_string()));
    let output = std::process::Command::new("script")
        .args(["-qefc", &line.join(" "), "/dev/null"])
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("STATE_DIRECTORY", setup.path("state"))
        .output()
        .unwrap();
    assert_success(&output, &format!("{args:?} on a terminal"));
    Some(stdout(&output))
}

#[test]
fn progress_bars_only_on_a_terminal() {
    let Some(redis) = Redis::start(&[]) else { return };
    common::fill_random(&redis, 8);
    let setup = Setup::new(&redis.url(), "compression_level = 9");
    let Some(shown) = on_terminal(&setup, &["backup"]) else { return };
    assert!(shown.contains("local"), "no progress bar for the target:\n{shown}");
    assert!(shown.contains(" sent, "), "no progress bar for the target:\n{shown}");
    let shown = on_terminal(&setup, &["verify", "latest"]).unwrap();
    assert!(shown.contains("MiB/"), "no progress bar for the download:\n{shown}");

    for args in
        [&["backup", "--json"][..], &["--log-format", "json", "backup"][..], &["verify", "--json", "latest"][..]]
    {
        let shown = on_terminal(&setup, args).unwrap();
        assert!(!shown.contains(" sent, "), "an upload progress bar with {args:?}:\n{shown}");
        assert!(!shown.contains("MiB/"), "a download progress bar with {args:?}:\n{shown}");
    }
    // Not a terminal: no bars either.
    let output = setup.run(&["backup"]);
    assert!(!stderr(&output).contains(" sent, "), "{}", stderr(&output));
}
