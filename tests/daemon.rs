//! `sessbackup daemon` end to end against a real redis-server, with
//! seconds-level schedules: runs, metrics, signals, reloads and the job lock.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Redis, Setup, assert_exit, fill_random, fill_sessions, free_port, stderr, wait_for};

/// A daemon started on a test configuration; killed if a test fails.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(setup: &Setup) -> Daemon {
        let log = setup.path("daemon.log");
        let child = setup
            .command()
            .args(["--log-format", "json", "daemon"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the daemon");
        Daemon { child: Some(child), log }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child this test started.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines as JSON objects.
    fn events(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("a log line is not JSON: {line}")))
            .collect()
    }

    fn wait_for_log(&self, timeout: Duration, text: &str) {
        let start = Instant::now();
        while !self.log().contains(text) {
            if start.elapsed() > timeout {
                panic!("the daemon did not log {text:?} within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the daemon to exit and returns its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn append(setup: &Setup, text: &str) {
    let mut config = std::fs::read_to_string(&setup.config).unwrap();
    config.push_str(text);
    std::fs::write(&setup.config, config).unwrap();
}

/// GET `path` from a loopback HTTP server; returns status line and body.
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Returns the value of the first sample of `series` (name and labels as printed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn staging_files(setup: &Setup) -> Vec<String> {
    setup.backup_files().into_iter().filter(|file| file.contains(".partial-")).collect()
}

#[test]
fn scheduled_runs_happen_and_show_in_metrics() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 300);
    let setup =
        Setup::new(&redis.url(), "schedule = \"*/2 * * * * *\"\nalert_after = \"1h\"\nretention = { keep_last = 2 }");
    let port = free_port();
    append(&setup, &format!("\n[daemon]\nmetrics_listen = \"127.0.0.1:{port}\"\n"));
    let mut daemon = Daemon::start(&setup);

    wait_for(Duration::from_secs(30), "three scheduled runs", || {
        daemon.log().matches("\"scheduled backup starting\"").count() >= 3
            && daemon.log().matches("retention applied").count() >= 3
    });
    // Retention ran after each run.
    assert_eq!(setup.list_json().len(), 2);

    let (status, metrics) = http_get(port, "/metrics");
    assert!(status.contains("200"), "{status}");
    let successes = sample(&metrics, "sessbackup_runs_total{job=\"sessions\",result=\"success\"}").unwrap();
    assert!(successes >= 2.0, "{metrics}");
    let last_success = sample(&metrics, "sessbackup_last_success_timestamp_seconds{job=\"sessions\"}").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - last_success).abs() < 60.0, "{metrics}");
    let keys: u64 = redis.keyspace().iter().map(|(_, keys, _)| keys).sum();
    assert_eq!(sample(&metrics, "sessbackup_last_backup_keys{job=\"sessions\"}"), Some(keys as f64), "{metrics}");
    assert!(
        sample(&metrics, "sessbackup_target_last_success_timestamp_seconds{job=\"sessions\",target=\"local\"}")
            .is_some()
    );
    assert_eq!(sample(&metrics, "sessbackup_overdue{job=\"sessions\"}"), Some(0.0), "{metrics}");
    assert!(sample(&metrics, "sessbackup_pruned").is_none());
    assert!(
        sample(&metrics, "sessbackup_target_pruned_backups_total{job=\"sessions\",target=\"local\"}").unwrap() >= 1.0
    );
    assert!(http_get(port, "/").0.contains("404"));

    // JSON log lines name the job, and a run's lines its backup id, phase
    // and target.
    let events = daemon.events();
    let starting = events.iter().find(|event| event["message"] == "scheduled backup starting").unwrap();
    assert_eq!(starting["job"], "sessions", "{starting}");
    assert_eq!(starting["phase"], "schedule", "{starting}");
    let snapshot = events.iter().find(|event| event["message"] == "snapshot written").unwrap();
    assert_eq!(snapshot["phase"], "snapshot", "{snapshot}");
    let published = events.iter().find(|event| event["message"] == "backup published").unwrap();
    assert_eq!(published["job"], "sessions", "{published}");
    assert_eq!(published["target"], "local", "{published}");
    assert_eq!(published["phase"], "publish", "{published}");
    assert!(published["backup_id"].as_str().is_some_and(|id| id.starts_with("20")), "{published}");
    let pruned = events.iter().find(|event| event["message"] == "retention applied").unwrap();
    assert_eq!(pruned["phase"], "prune", "{pruned}");
    assert!(pruned["backup_id"].is_string(), "{pruned}");

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), 0);
    assert!(daemon.log().contains("daemon stopped"));
    assert!(staging_files(&setup).is_empty());
    let listed = setup.list_json();
    assert_eq!(listed.len(), 2);
}

#[test]
fn sigterm_cancels_slow_run_cleanly() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_random(&redis, 64);
    // Level 19 on incompressible data takes many seconds.
    let setup = Setup::new(&redis.url(), "schedule = \"*/1 * * * * *\"\ncompression_level = 19");
    append(&setup, "\n[daemon]\nshutdown_timeout_secs = 1\n");
    let mut daemon = Daemon::start(&setup);
    wait_for(Duration::from_secs(60), "the first upload to start", || !staging_files(&setup).is_empty());

    // A backup by hand while the daemon's run holds the job's lock.
    let output = setup.run(&["backup"]);
    assert_exit(&output, 75, "backup while the daemon runs the job");
    assert!(stderr(&output).contains("another backup of job sessions is running"), "{}", stderr(&output));
    assert!(stderr(&output).contains(&format!("process {}", daemon.pid())), "{}", stderr(&output));

    // The next due runs are skipped while this one goes on.
    daemon.wait_for_log(Duration::from_secs(10), "the previous run is still going; this run is skipped");

    daemon.signal(libc::SIGTERM);
    let stopped = Instant::now();
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), 0);
    assert!(stopped.elapsed() < Duration::from_secs(20), "took {:?}:\n{}", stopped.elapsed(), daemon.log());
    let log = daemon.log();
    assert!(log.contains("shutdown timeout reached; cancelling running backups"), "{log}");
    assert!(log.contains("backup cancelled; nothing of it was published"), "{log}");
    // The daemon waits for the cancelled run to clean up before it stops.
    let cleaned = log.find("cancelled runs cleaned up").unwrap_or_else(|| panic!("no cleanup line:\n{log}"));
    assert!(cleaned < log.find("daemon stopped").unwrap(), "{log}");
    assert!(setup.list_json().is_empty(), "a cancelled run was published");
    assert!(setup.backup_files().is_empty(), "files left by the cancelled run: {:?}", setup.backup_files());
}

#[test]
fn sigterm_lets_a_short_run_finish() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_random(&redis, 24);
    let setup = Setup::new(&redis.url(), "schedule = \"*/1 * * * * *\"\ncompression_level = 19");
    let mut daemon = Daemon::start(&setup);
    wait_for(Duration::from_secs(60), "the first upload to start", || !staging_files(&setup).is_empty());
    daemon.signal(libc::SIGTERM);
    daemon.wait_for_log(Duration::from_secs(5), "waiting for running backups to finish");
    assert_eq!(daemon.wait_exit(Duration::from_secs(120)), 0);
    // The run that was going finished and published; no new one started.
    assert_eq!(setup.list_json().len(), 1);
    assert!(staging_files(&setup).is_empty());
}

#[test]
fn sighup_keeps_config_when_broken() {
    let Some(redis) = Redis::start(&[]) else { return };
    let setup = Setup::new(&redis.url(), "schedule = \"*/1 * * * * *\"");
    let good = std::fs::read_to_string(&setup.config).unwrap();
    let mut daemon = Daemon::start(&setup);
    wait_for(Duration::from_secs(30), "a first run", || daemon.log().contains("scheduled backup starting"));

    std::fs::write(&setup.config, good.replace("schedule = ", "schedule = 5 #")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log(Duration::from_secs(10), "configuration not reloaded, the old one stays in use");
    assert!(daemon.log().contains("schedule must be a string"), "{}", daemon.log());
    let runs = daemon.log().matches("scheduled backup starting").count();
    wait_for(Duration::from_secs(30), "runs going on with the old configuration", || {
        daemon.log().matches("scheduled backup starting").count() >= runs + 2
    });

    // A valid change is taken: the job now runs once a year.
    std::fs::write(&setup.config, good.replace("*/1 * * * * *", "0 0 1 1 *")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log(Duration::from_secs(10), "configuration reloaded");
    daemon.wait_for_log(Duration::from_secs(10), "schedule changed");
    std::thread::sleep(Duration::from_millis(1500));
    let runs = daemon.log().matches("scheduled backup starting").count();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(daemon.log().matches("scheduled backup starting").count(), runs, "{}", daemon.log());

    daemon.signal(libc::SIGINT);
    assert_eq!(daemon.wait_exit(Duration::from_secs(60)), 0);
}

#[test]
fn catch_up_runs_once_when_asked() {
    let Some(redis) = Redis::start(&[]) else { return };
    // Due once a year: the only run in this test is a catch-up run.
    for (catch_up, expected) in [(false, 0), (true, 1)] {
        let setup = Setup::new(&redis.url(), &format!("schedule = \"0 3 1 1 *\"\ncatch_up = {catch_up}"));
        let jobs = setup.path("state/jobs");
        std::fs::create_dir_all(&jobs).unwrap();
        std::fs::write(jobs.join("sessions.json"), r#"{"last_due": "2020-01-01T03:00:00Z", "last_success": null}"#)
            .unwrap();
        let mut daemon = Daemon::start(&setup);
        daemon.wait_for_log(Duration::from_secs(10), "daemon started");
        if catch_up {
            daemon.wait_for_log(Duration::from_secs(30), "backup published");
        } else {
            std::thread::sleep(Duration::from_secs(2));
        }
        daemon.signal(libc::SIGTERM);
        assert_eq!(daemon.wait_exit(Duration::from_secs(60)), 0);
        assert_eq!(setup.list_json().len(), expected, "catch_up = {catch_up}:\n{}", daemon.log());
        // Six years were missed; one run at most.
        assert!(daemon.log().matches("scheduled backup starting").count() <= 1);
    }
}

#[test]
fn daemon_refuses_a_config_without_schedules() {
    let Some(redis) = Redis::start(&[]) else { return };
    let setup = Setup::new(&redis.url(), "");
    let output = setup.run(&["daemon"]);
    assert_exit(&output, 78, "daemon without any schedule");
    assert!(stderr(&output).contains("no job has a schedule"), "{}", stderr(&output));
    // check agrees with the daemon when asked to.
    common::assert_success(&setup.run(&["check"]), "check");
    let output = setup.run(&["check", "--daemon"]);
    assert_exit(&output, 78, "check --daemon without any schedule");
    assert!(stderr(&output).contains("no job has a schedule"), "{}", stderr(&output));
    // With JSON logs, the error is a JSON line too.
    let output = setup.run(&["--log-format", "json", "daemon"]);
    assert_exit(&output, 78, "daemon with JSON logs");
    let line: serde_json::Value = serde_json::from_str(stderr(&output).trim()).expect("a JSON line");
    assert_eq!(line["level"], "ERROR");
    assert!(line["message"].as_str().unwrap().contains("no job has a schedule"), "{line}");
}

#[test]
fn service_manager_is_notified() {
    let Some(redis) = Redis::start(&[]) else { return };
    let setup = Setup::new(&redis.url(), "schedule = \"0 3 * * *\"");
    let socket_path = setup.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let log = setup.path("daemon.log");
    let child = setup
        .command()
        .arg("daemon")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child: Some(child), log };
    let receive = || {
        let mut buffer = [0u8; 4096];
        let length = socket.recv(&mut buffer).expect("a notification within 10 s");
        String::from_utf8_lossy(&buffer[..length]).into_owned()
    };
    let ready = receive();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=1 job(s) scheduled; next run"), "{ready}");
    // The watchdog is pinged at half its interval.
    assert_eq!(receive(), "WATCHDOG=1\n");

    daemon.signal(libc::SIGHUP);
    let mut seen = Vec::new();
    while !seen.iter().any(|message: &String| message.contains("READY=1")) {
        seen.push(receive());
    }
    assert!(seen.iter().any(|message| message.starts_with("RELOADING=1\nMONOTONIC_USEC=")), "{seen:?}");

    daemon.signal(libc::SIGTERM);
    let mut stopping = false;
    for _ in 0..10 {
        if receive().contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), 0);
}

#[test]
fn jitter_delays_each_run() {
    let Some(redis) = Redis::start(&[]) else { return };
    let setup = Setup::new(&redis.url(), "schedule = \"*/1 * * * * *\"\njitter_secs = 2");
    let mut daemon = Daemon::start(&setup);
    wait_for(Duration::from_secs(30), "a run after its jitter", || daemon.log().contains("backup published"));
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)), 0);
    let delays: Vec<u64> = daemon
        .events()
        .iter()
        .filter(|event| event["message"] == "waiting the random jitter")
        .map(|event| event["delay_ms"].as_u64().unwrap())
        .collect();
    assert!(!delays.is_empty(), "{}", daemon.log());
    assert!(delays.iter().all(|delay| *delay <= 2000), "{delays:?}");
}
