//! Backups fanned out to local, FTP/FTPS and S3 targets at once, against real
//! servers on loopback, and the ways one target can fail while the others
//! publish.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::servers::{self, Certificate, FaultProxy, PyFtpd, S3Server, Vsftpd};
use common::{Redis, assert_exit, assert_success, fill_random, fill_sessions, stderr, stdout, wait_for};

const KEY_VARIABLE: &str = "SESSBACKUP_TEST_S3_KEY";
const SECRET_VARIABLE: &str = "SESSBACKUP_TEST_S3_SECRET";

/// A configuration with one job and the given `[[target]]` tables.
struct Job {
    home: tempfile::TempDir,
    config: PathBuf,
}

impl Job {
    fn new(redis: &Redis, level: i32, targets: &[(&str, String)]) -> Job {
        let home = tempfile::tempdir().unwrap();
        let local = home.path().join("local");
        let names: Vec<String> = targets.iter().map(|(name, _)| format!("\"{name}\"")).collect();
        let mut text = format!(
            "[[job]]\nname = \"sessions\"\nredis_url = \"{}\"\ncompression_level = {level}\nsnapshot_timeout_secs = 120\ntargets = [{}]\n",
            redis.url(),
            names.join(", ")
        );
        for (name, body) in targets {
            let body = body.replace("@LOCAL@", &local.display().to_string());
            text.push_str(&format!("\n[[target]]\nname = \"{name}\"\n{body}\n"));
        }
        let config = home.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        Job { home, config }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sessbackup"));
        command
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env("STATE_DIRECTORY", self.home.path().join("state"))
            .env(KEY_VARIABLE, servers::S3_ACCESS_KEY)
            .env(SECRET_VARIABLE, servers::S3_SECRET_KEY);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    fn backup(&self) -> (Output, serde_json::Value) {
        let output = self.run(&["backup", "--json"]);
        let reports: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!("backup --json printed no JSON ({err}):\n{}\n{}", stdout(&output), stderr(&output))
        });
        (output, reports.into_iter().next().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn listed(&self, target: &str) -> Vec<serde_json::Value> {
        let output = self.run(&["list", "--json", "--target", target]);
        assert_success(&output, "list --json");
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

fn local_target() -> (&'static str, String) {
    ("local", "type = \"local\"\npath = \"@LOCAL@\"".to_string())
}

fn ftp_target(name: &'static str, server: &Vsftpd, certificate: Option<&Certificate>) -> (&'static str, String) {
    let tls = match certificate {
        Some(certificate) => format!("tls = \"explicit\"\nca_file = \"{}\"", certificate.cert.display()),
        None => "tls = \"none\"".to_string(),
    };
    (
        name,
        format!(
            "type = \"ftp\"\nhost = \"127.0.0.1\"\nport = {}\n{tls}\npath = \"upload/backups\"\ntimeout_secs = 10",
            server.port
        ),
    )
}

fn s3_target(endpoint: &str, bucket: &str) -> (&'static str, String) {
    (
        "s3",
        format!(
            "type = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"redis\"\nendpoint = \"{endpoint}\"\nallow_http = true\n\
             access_key_id_env = \"{KEY_VARIABLE}\"\nsecret_access_key_env = \"{SECRET_VARIABLE}\"\n\
             multipart_part_size_bytes = 5242880\ntimeout_secs = 10\nattempts = 2"
        ),
    )
}

fn outcome<'a>(report: &'a serde_json::Value, target: &str) -> &'a serde_json::Value {
    report["targets"].as_array().unwrap().iter().find(|outcome| outcome["target"] == target).unwrap()
}

/// Restores the latest backup from `target` and checks a fresh server loads
/// it with the source's digest and key counts.
fn restore_and_compare(job: &Job, target: &str, source: &Redis) {
    assert_success(&job.run(&["verify", "--target", target]), &format!("verify on {target}"));
    let restored = job.path(&format!("restored-{target}.rdb"));
    let output = job.run(&["restore", "--target", target, "--to", restored.to_str().unwrap()]);
    assert_success(&output, &format!("restore from {target}"));
    let copy = Redis::start_on_rdb(&restored).expect("redis-server is available");
    assert_eq!(copy.digest(), source.digest(), "data restored from {target} differs");
    assert_eq!(copy.keyspace(), source.keyspace());
}

fn certificate_in(dir: &Path) -> Option<Certificate> {
    servers::make_certificate(dir)
}

#[test]
fn fan_out_publishes_everywhere_and_restores_from_each() {
    let Some(redis) = Redis::start(&[]) else { return };
    let certs = tempfile::tempdir().unwrap();
    let Some(certificate) = certificate_in(certs.path()) else { return };
    let Some(ftps) = Vsftpd::start(Some(&certificate)) else { return };
    let Some(s3) = S3Server::start("backups") else { return };
    fill_sessions(&redis, 2000);
    fill_random(&redis, 12);

    let job = Job::new(
        &redis,
        3,
        &[local_target(), ftp_target("ftps", &ftps, Some(&certificate)), s3_target(&s3.endpoint(), "backups")],
    );
    let (output, report) = job.backup();
    assert_success(&output, "fanned-out backup");
    for target in ["local", "ftps", "s3"] {
        assert_eq!(outcome(&report, target)["published"], true, "{target}: {report}");
    }
    let artifact_bytes = report["artifact_bytes"].as_u64().unwrap();
    assert!(artifact_bytes > 10 << 20, "the artifact should span several 5 MiB parts, it has {artifact_bytes} bytes");

    for target in ["local", "ftps", "s3"] {
        let listed = job.listed(target);
        assert_eq!(listed.len(), 1, "{target}: {listed:?}");
        assert_eq!(listed[0]["id"], report["id"]);
        assert_eq!(listed[0]["artifact_bytes"].as_u64(), Some(artifact_bytes));
        restore_and_compare(&job, target, &redis);
    }
    assert!(ftps.staging_files().is_empty(), "{:?}", ftps.staging_files());
    let objects = s3.objects();
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert!(objects.iter().all(|object| object.starts_with("redis/sessions/")), "{objects:?}");
}

#[test]
fn ftp_server_stopped_mid_upload() {
    let Some(redis) = Redis::start(&[]) else { return };
    let Some(mut ftp) = Vsftpd::start(None) else { return };
    fill_random(&redis, 10);
    // Level 19 compresses slowly, which leaves time to stop the server
    // while the artifact is still flowing.
    let job = Job::new(&redis, 19, &[local_target(), ftp_target("ftp", &ftp, None)]);
    let child = job
        .command()
        .args(["backup", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), "the FTP upload to start", || {
        ftp.staging_files()
            .iter()
            .any(|file| std::fs::metadata(ftp.root.join("upload").join(file)).is_ok_and(|meta| meta.len() > 0))
    });
    ftp.kill();
    let output = child.wait_with_output().unwrap();
    assert_exit(&output, 3, "backup with the FTP server stopped");
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(outcome(&reports[0], "local")["published"], true);
    let failure = outcome(&reports[0], "ftp");
    assert_eq!(failure["published"], false);
    assert!(failure["error"].as_str().unwrap().contains("target ftp"), "{failure}");

    ftp.restart();
    assert!(job.listed("ftp").is_empty(), "a partial upload is visible");
    assert!(!ftp.staging_files().is_empty(), "the interrupted upload left no staging file to clean up");

    let (output, report) = job.backup();
    assert_success(&output, "backup after the FTP server came back");
    assert_eq!(outcome(&report, "ftp")["published"], true);
    assert!(ftp.staging_files().is_empty(), "staging files left after a successful run: {:?}", ftp.staging_files());
    assert_eq!(job.listed("ftp").len(), 1);
}

#[test]
fn restore_skips_unreachable_target() {
    let Some(redis) = Redis::start(&[]) else { return };
    let Some(mut ftp) = Vsftpd::start(None) else { return };
    fill_sessions(&redis, 500);
    let job = Job::new(&redis, 3, &[ftp_target("ftp", &ftp, None), local_target()]);
    let (output, _) = job.backup();
    assert_success(&output, "backup to FTP and local");
    ftp.kill();

    // Without --target the first target is tried, found down, and the
    // backup comes from the next one.
    let restored = job.path("restored.rdb");
    let output = job.run(&["restore", "--to", restored.to_str().unwrap()]);
    assert_success(&output, "restore with the FTP server down");
    assert!(stderr(&output).contains("target ftp"), "{}", stderr(&output));
    assert!(stderr(&output).contains("on target local"), "{}", stderr(&output));
    let copy = Redis::start_on_rdb(&restored).expect("redis-server is available");
    assert_eq!(copy.digest(), redis.digest());

    // A named target must be reachable.
    let output = job.run(&["verify", "--target", "ftp"]);
    assert_exit(&output, 1, "verify on a stopped FTP server");
    assert!(stderr(&output).contains("target ftp"), "{}", stderr(&output));

    // list shows what it can reach and fails for the rest.
    let output = job.run(&["list", "--json"]);
    assert_exit(&output, 1, "list with the FTP server down");
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["target"], "local");
    let message = stderr(&output);
    assert!(message.contains("target ftp: list upload/backups"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{}", ftp.port)), "{message}");

    // A backup taken while the FTP server is down exists only locally.
    // When the server is back, the newest backup still comes from local,
    // though the FTP target comes first and has an older one.
    let (output, newer) = job.backup();
    assert_exit(&output, 3, "backup with the FTP server down");
    ftp.restart();
    let output = job.run(&["verify"]);
    assert_success(&output, "verify latest with the FTP server back");
    let newer_id = newer["id"].as_str().unwrap();
    let message = stderr(&output);
    assert!(message.contains(&format!("using backup {newer_id} of job sessions on target local")), "{message}");
}

#[test]
fn check_probe_logs_in_to_targets() {
    let Some(redis) = Redis::start(&[]) else { return };
    let Some(mut ftp) = Vsftpd::start(None) else { return };
    let Some(s3) = S3Server::start("backups") else { return };
    let job = Job::new(&redis, 3, &[ftp_target("ftp", &ftp, None), s3_target(&s3.endpoint(), "backups")]);

    let output = job.run(&["check", "--probe"]);
    assert_success(&output, "check --probe with every target up");
    assert!(stdout(&output).contains("target ftp: reachable, 0 backup(s) listed"), "{}", stdout(&output));
    assert!(stdout(&output).contains("target s3: reachable, 0 backup(s) listed"), "{}", stdout(&output));

    ftp.kill();
    let output = job.run(&["check", "--probe"]);
    assert_exit(&output, 1, "check --probe with the FTP server down");
    assert!(stderr(&output).contains("target ftp: list"), "{}", stderr(&output));
    assert!(stdout(&output).contains("target s3: reachable"), "{}", stdout(&output));
}

#[test]
fn unset_password_fails_only_that_target() {
    let Some(redis) = Redis::start(&[]) else { return };
    let Some(ftp) = Vsftpd::start(None) else { return };
    fill_sessions(&redis, 200);
    let (name, mut body) = ftp_target("ftp", &ftp, None);
    body.push_str("\nusername = \"backup\"\npassword_env = \"SESSBACKUP_TEST_UNSET_PASSWORD\"");
    let job = Job::new(&redis, 3, &[(name, body), local_target()]);

    let output =
        job.command().args(["backup", "--json"]).env_remove("SESSBACKUP_TEST_UNSET_PASSWORD").output().unwrap();
    assert_exit(&output, 3, "backup with the FTP password variable unset");
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(outcome(&reports[0], "local")["published"], true);
    let error = outcome(&reports[0], "ftp")["error"].as_str().unwrap().to_string();
    assert!(error.contains("target ftp"), "{error}");
    assert!(error.contains("SESSBACKUP_TEST_UNSET_PASSWORD"), "{error}");
    let order: Vec<&str> =
        reports[0]["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(order, ["ftp", "local"]);
    assert!(stderr(&output).contains("published=1 failed=1"), "{}", stderr(&output));

    let restored = job.path("restored.rdb");
    let output = job.run(&["restore", "--to", restored.to_str().unwrap()]);
    assert_success(&output, "restore with the FTP password variable unset");
    assert!(stderr(&output).contains("on target local"), "{}", stderr(&output));
}

#[test]
fn tls_mismatches_are_explained() {
    let Some(redis) = Redis::start(&[]) else { return };
    let certs = tempfile::tempdir().unwrap();
    let Some(certificate) = servers::make_ca_certificate(certs.path()) else { return };
    let Some(plain) = Vsftpd::start(None) else { return };
    let Some(implicit) = Vsftpd::start_with(Some(&certificate), "implicit_ssl=YES\n") else { return };
    let Some(explicit) = Vsftpd::start(Some(&certificate)) else { return };
    fill_sessions(&redis, 100);
    let explicit_to = |server: &Vsftpd| {
        format!(
            "type = \"ftp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"explicit\"\npath = \"upload\"\n\
             timeout_secs = 2\nattempts = 1",
            server.port
        )
    };
    let job = Job::new(
        &redis,
        3,
        &[
            local_target(),
            ("plain", explicit_to(&plain)),
            ("implicit", explicit_to(&implicit)),
            ("selfsigned", explicit_to(&explicit)),
        ],
    );

    let (output, report) = job.backup();
    assert_exit(&output, 3, "backup with mismatched TLS settings");
    let error = |target: &str| outcome(&report, target)["error"].as_str().unwrap().to_string();
    assert!(error("plain").contains("the server does not offer AUTH TLS"), "{}", error("plain"));
    assert!(error("implicit").contains("set tls = \"implicit\""), "{}", error("implicit"));
    assert!(error("selfsigned").contains("self-signed: put it in ca_file"), "{}", error("selfsigned"));
}

#[test]
fn self_signed_ca_certificate_is_pinned() {
    let Some(redis) = Redis::start(&[]) else { return };
    let certs = tempfile::tempdir().unwrap();
    // What `openssl req -x509` makes by default: a self-signed CA, which
    // certificate validation refuses as a server's own certificate.
    let Some(certificate) = servers::make_ca_certificate(certs.path()) else { return };
    let Some(ftps) = Vsftpd::start(Some(&certificate)) else { return };
    fill_sessions(&redis, 200);
    let job = Job::new(&redis, 3, &[ftp_target("ftps", &ftps, Some(&certificate))]);

    let (output, report) = job.backup();
    assert_success(&output, "backup to FTPS with a pinned self-signed CA certificate");
    assert_eq!(outcome(&report, "ftps")["published"], true);
    restore_and_compare(&job, "ftps", &redis);
}

#[test]
fn backup_the_server_cannot_list_fails() {
    let Some(redis) = Redis::start(&[]) else { return };
    // Files and folders the anonymous login writes become private to it,
    // and vsftpd lists only world-readable ones to anonymous sessions.
    let Some(ftp) = Vsftpd::start_with(None, "anon_umask=077\n") else { return };
    fill_sessions(&redis, 200);
    let job = Job::new(&redis, 3, &[local_target(), ftp_target("ftp", &ftp, None)]);

    let (output, report) = job.backup();
    assert_exit(&output, 3, "backup to an FTP server that hides what it stores");
    assert_eq!(outcome(&report, "local")["published"], true);
    let failure = outcome(&report, "ftp");
    assert_eq!(failure["published"], false);
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("does not show it"), "{error}");
}

#[test]
fn s3_errors_fail_only_that_target() {
    let Some(redis) = Redis::start(&[]) else { return };
    let Some(s3) = S3Server::start("backups") else { return };
    fill_random(&redis, 12);
    let proxy = FaultProxy::start(s3.port);
    let job = Job::new(&redis, 1, &[local_target(), s3_target(&proxy.endpoint(), "backups")]);

    // Every PUT (parts and whole objects) fails with 500, beyond the retries.
    proxy.fail_with_500(1000, "PUT");
    let (output, report) = job.backup();
    assert_exit(&output, 3, "backup with S3 answering 500");
    assert_eq!(outcome(&report, "local")["published"], true);
    let error = outcome(&report, "s3")["error"].as_str().unwrap().to_string();
    assert!(error.contains("target s3"), "{error}");
    assert!(error.contains("500"), "{error}");
    assert!(s3.objects().is_empty(), "objects left after failed uploads: {:?}", s3.objects());

    // Connections cut in the middle of a part: the multipart upload is aborted.
    proxy.fail_with_500(0, "PUT");
    proxy.cut_mid_body(1000, "partNumber");
    let (output, report) = job.backup();
    assert_exit(&output, 3, "backup with S3 connections cut");
    assert_eq!(outcome(&report, "s3")["published"], false);
    assert!(s3.objects().is_empty(), "objects left after cut uploads: {:?}", s3.objects());

    // A transient error is retried and the backup publishes.
    proxy.cut_mid_body(0, "");
    proxy.fail_with_500(1, "PUT");
    let (output, report) = job.backup();
    assert_success(&output, "backup with one transient S3 error");
    assert_eq!(outcome(&report, "s3")["published"], true);
    assert_eq!(job.listed("s3").len(), 1);
    assert_eq!(s3.objects().len(), 2, "{:?}", s3.objects());
}

#[test]
fn wrong_credentials_and_untrusted_certificate_are_named() {
    let Some(redis) = Redis::start(&[]) else { return };
    let certs = tempfile::tempdir().unwrap();
    let Some(certificate) = certificate_in(certs.path()) else { return };
    let Some(s3) = S3Server::start("backups") else { return };
    let Some(pyftpd) = PyFtpd::start(&certificate, "backup", "right-password") else { return };
    let Some(ftps) = Vsftpd::start(Some(&certificate)) else { return };
    fill_sessions(&redis, 200);

    let untrusted = (
        "untrusted",
        format!(
            "type = \"ftp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"explicit\"\npath = \"upload\"\ntimeout_secs = 10",
            ftps.port
        ),
    );
    let wrong_login = (
        "wronglogin",
        format!(
            "type = \"ftp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"explicit\"\nca_file = \"{}\"\nusername = \"backup\"\n\
             password_env = \"SESSBACKUP_TEST_FTP_PASSWORD\"\ntimeout_secs = 10",
            pyftpd.port,
            certificate.cert.display()
        ),
    );
    let job = Job::new(&redis, 3, &[local_target(), s3_target(&s3.endpoint(), "backups"), untrusted, wrong_login]);
    let output = job
        .command()
        .args(["backup", "--json"])
        .env(SECRET_VARIABLE, "not-the-secret")
        .env("SESSBACKUP_TEST_FTP_PASSWORD", "wrong-password")
        .output()
        .unwrap();
    assert_exit(&output, 3, "backup with bad credentials");
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let report = &reports[0];
    assert_eq!(outcome(report, "local")["published"], true);

    let s3_error = outcome(report, "s3")["error"].as_str().unwrap().to_string();
    assert!(s3_error.contains("target s3"), "{s3_error}");
    assert!(s3_error.to_lowercase().contains("signature") || s3_error.contains("403"), "{s3_error}");
    let tls_error = outcome(report, "untrusted")["error"].as_str().unwrap().to_string();
    assert!(tls_error.contains("target untrusted"), "{tls_error}");
    assert!(tls_error.contains("TLS"), "{tls_error}");
    let login_error = outcome(report, "wronglogin")["error"].as_str().unwrap().to_string();
    assert!(login_error.contains("target wronglogin"), "{login_error}");
    assert!(login_error.contains("login as \"backup\" failed"), "{login_error}");
    // Nothing was stored, so there is no staging file to clean up or warn about.
    assert!(!stderr(&output).contains("staging file"), "{}", stderr(&output));
    assert!(s3.objects().is_empty(), "{:?}", s3.objects());
    assert!(servers::files_below(&pyftpd.root).is_empty(), "{:?}", servers::files_below(&pyftpd.root));
    assert!(servers::files_below(&ftps.root.join("upload")).is_empty());

    // With the right password the user/password FTPS server takes the
    // backup. Even the most verbose logging must not show the password.
    let output = job
        .command()
        .args(["backup"])
        .env("SESSBACKUP_TEST_FTP_PASSWORD", "right-password")
        .env("RUST_LOG", "trace,suppaftp=trace")
        .output()
        .unwrap();
    assert_exit(&output, 3, "backup with only the certificate still untrusted");
    assert!(stderr(&output).contains("TRACE"), "RUST_LOG=trace was not applied");
    assert!(!stderr(&output).contains("right-password"), "the FTP password appears in the log");
    let files = servers::files_below(&pyftpd.root);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|file| !file.contains(".partial-")), "{files:?}");
}

#[test]
fn retention_prunes_every_target_it_published_to() {
    let Some(redis) = Redis::start(&[]) else { return };
    let Some(mut ftp) = Vsftpd::start(None) else { return };
    let Some(s3) = S3Server::start("backups") else { return };
    fill_sessions(&redis, 100);
    let keep_two = "\n[target.retention]\nkeep_last = 2";
    let (local_name, local_body) = local_target();
    let (ftp_name, ftp_body) = ftp_target("ftp", &ftp, None);
    let (s3_name, s3_body) = s3_target(&s3.endpoint(), "backups");
    let job = Job::new(
        &redis,
        3,
        &[
            (local_name, local_body + keep_two),
            (ftp_name, ftp_body + keep_two),
            (s3_name, s3_body + "\n[target.retention]\nkeep_last = 3"),
        ],
    );
    let mut created = Vec::new();
    for _ in 0..4 {
        let (output, report) = job.backup();
        assert_success(&output, "backup");
        created.push(report["id"].as_str().unwrap().to_string());
    }
    created.reverse();
    let listed_ids = |target: &str| -> Vec<String> {
        job.listed(target).iter().map(|entry| entry["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(listed_ids("local"), created[..2]);
    assert_eq!(listed_ids("ftp"), created[..2]);
    assert_eq!(listed_ids("s3"), created[..3]);
    assert_eq!(s3.objects().len(), 6, "{:?}", s3.objects());
    assert_eq!(servers::files_below(&ftp.root.join("upload")).len(), 4);

    // Dry runs list every backup and delete nothing.
    let output = job.run(&["prune", "--dry-run", "--target", "s3"]);
    assert_success(&output, "prune --dry-run");
    assert!(stdout(&output).contains("dry run: 0 of 3 backup(s) would be deleted"), "{}", stdout(&output));
    let output = job.run(&["prune", "--dry-run", "--target", "ftp", "--json"]);
    assert_success(&output, "prune --dry-run --json on FTP");
    let outcomes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(outcomes[0]["decisions"].as_array().unwrap().len(), 2, "{outcomes:?}");
    assert_eq!(listed_ids("ftp"), created[..2]);

    // With the FTP server down, the next run publishes to the other two and
    // prunes only there; the FTP target keeps what it had.
    ftp.kill();
    let (output, report) = job.backup();
    assert_exit(&output, 3, "backup with the FTP server down");
    let newest = report["id"].as_str().unwrap().to_string();
    assert_eq!(listed_ids("local"), [newest.clone(), created[0].clone()]);
    assert_eq!(listed_ids("s3"), [newest, created[0].clone(), created[1].clone()]);
    let pruned: Vec<&str> =
        report["pruned"].as_array().unwrap().iter().map(|p| p["target"].as_str().unwrap()).collect();
    assert_eq!(pruned, ["local", "s3"]);
}
