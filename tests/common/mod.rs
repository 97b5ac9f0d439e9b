//! Test harness: real `redis-server` processes on free loopback ports, with
//! their data in temporary folders, and helpers to run the `sessbackup`
//! binary against them.
//!
//! A missing `redis-server` skips the test with a message on standard error;
//! `SESSBACKUP_REQUIRE_SERVERS=1` turns that skip into a failure.

#![allow(dead_code, reason = "each test crate uses a different part of the harness")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Prints a line straight to standard error. The test harness captures
/// `eprintln!` of passing tests, and a skip must stay visible.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Waits up to `timeout` for `condition`, polling every 20 ms.
pub fn wait_for(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns whether redis-server exists; prints a skip message when not.
pub fn redis_available() -> bool {
    let found = Command::new("redis-server").arg("--version").output().is_ok_and(|out| out.status.success());
    if !found {
        if std::env::var("SESSBACKUP_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!("redis-server is not installed and SESSBACKUP_REQUIRE_SERVERS=1");
        }
        say(
            "SKIPPED: redis-server not found on PATH (install redis-server, or set SESSBACKUP_REQUIRE_SERVERS=1 to fail)",
        );
    }
    found
}

/// Returns a port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
    _home: TempDir,
    password: Option<String>,
}

impl Redis {
    /// Starts a server with `extra` arguments (as `--name value` pairs or a
    /// config file path first), or returns `None` when redis-server is missing.
    pub fn start(extra: &[&str]) -> Option<Redis> {
        Self::start_with(extra, None)
    }

    pub fn start_with(extra: &[&str], config_file: Option<&str>) -> Option<Redis> {
        Self::start_full(extra, config_file, None, None)
    }

    /// Starts a server that loads `rdb` as its dump.rdb at start-up.
    pub fn start_on_rdb(rdb: &Path) -> Option<Redis> {
        Self::start_full(&[], None, Some(rdb), None)
    }

    /// Starts a server whose data directory is `dir`, which outlives it.
    pub fn start_in(dir: &Path, extra: &[&str]) -> Option<Redis> {
        Self::start_full(extra, None, None, Some(dir))
    }

    /// Stops the server without saving and waits until it has exited.
    pub fn shutdown(mut self) {
        let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut self.connection());
        let _ = self.child.wait();
    }

    fn start_full(extra: &[&str], config_file: Option<&str>, rdb: Option<&Path>, data: Option<&Path>) -> Option<Redis> {
        if !redis_available() {
            return None;
        }
        let mut last_error = String::new();
        // A port found free can be taken before the server binds it: retry.
        for _attempt in 0..5 {
            let home = tempfile::tempdir().unwrap();
            let dir = match data {
                Some(data) => data.to_path_buf(),
                None => {
                    let dir = home.path().join("data");
                    std::fs::create_dir(&dir).unwrap();
                    dir
                }
            };
            if let Some(rdb) = rdb {
                std::fs::copy(rdb, dir.join("dump.rdb")).unwrap();
            }
            let port = free_port();
            let mut command = Command::new("redis-server");
            if let Some(text) = config_file {
                let path = home.path().join("redis.conf");
                std::fs::write(&path, text).unwrap();
                command.arg(&path);
            }
            command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
                .arg(&dir)
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--enable-debug-command", "local", "--logfile"])
                .arg(dir.join("redis.log"))
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = command.spawn().expect("spawn redis-server");
            let password = extra.windows(2).find(|pair| pair[0] == "--requirepass").map(|pair| pair[1].to_string());
            let mut redis = Redis { port, dir, child, _home: home, password };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(status)) = redis.child.try_wait() {
                    last_error = format!("redis-server exited with {status}: {}", redis.log());
                    break;
                }
                if redis.try_ping() {
                    return Some(redis);
                }
                if Instant::now() > deadline {
                    last_error = format!("redis-server did not answer PING within 5 s: {}", redis.log());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn try_ping(&self) -> bool {
        self.client()
            .get_connection_with_timeout(Duration::from_millis(200))
            .is_ok_and(|mut connection| redis::cmd("PING").query::<String>(&mut connection).is_ok())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        let url = match &self.password {
            Some(password) => format!("redis://:{}@127.0.0.1:{}/", urlencode(password), self.port),
            None => self.url(),
        };
        redis::Client::open(url).unwrap()
    }

    pub fn connection(&self) -> redis::Connection {
        self.client().get_connection_with_timeout(Duration::from_secs(5)).unwrap()
    }

    /// Runs one command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut self.connection()).unwrap_or_else(|err| panic!("{args:?} failed: {err}"))
    }

    pub fn info_field(&self, section: &str, key: &str) -> Option<String> {
        let text: String = self.cmd(&["INFO", section]);
        text.lines().find_map(|line| line.strip_prefix(&format!("{key}:")).map(|value| value.trim().to_string()))
    }

    pub fn digest(&self) -> String {
        self.cmd(&["DEBUG", "DIGEST"])
    }

    /// Keys per database from INFO keyspace, as (db, keys, expires).
    pub fn keyspace(&self) -> Vec<(u64, u64, u64)> {
        let text: String = self.cmd(&["INFO", "keyspace"]);
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("db") else { continue };
            let (db, fields) = rest.split_once(':').unwrap();
            let mut keys = 0;
            let mut expires = 0;
            for field in fields.trim().split(',') {
                let (name, value) = field.split_once('=').unwrap();
                match name {
                    "keys" => keys = value.parse().unwrap(),
                    "expires" => expires = value.parse().unwrap(),
                    _ => {}
                }
            }
            out.push((db.parse().unwrap(), keys, expires));
        }
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    pub fn rdb_path(&self) -> PathBuf {
        self.dir.join("dump.rdb")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of a child this harness started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- redis-server log (port {}) ---\n{}", self.port, self.log());
        }
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A scratch directory with a configuration file for one job and one local target.
pub struct Setup {
    pub home: TempDir,
    pub config: PathBuf,
    pub backups: PathBuf,
}

impl Setup {
    /// Writes a configuration whose job reads `redis_url` with `job_extra`
    /// lines added to the [[job]] table.
    pub fn new(redis_url: &str, job_extra: &str) -> Setup {
        let home = tempfile::tempdir().unwrap();
        let backups = home.path().join("backups");
        let config = home.path().join("config.toml");
        let text = format!(
            "[[job]]\nname = \"sessions\"\nredis_url = \"{redis_url}\"\nsnapshot_timeout_secs = 60\n{job_extra}\ntargets = [\"local\"]\n\n\
             [[target]]\nname = \"local\"\ntype = \"local\"\npath = \"{}\"\n",
            backups.display()
        );
        std::fs::write(&config, text).unwrap();
        Setup { home, config, backups }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sessbackup"));
        // Each test has its own state folder (and lock files), so tests that back up a job of
        // the same name run side by side.
        command
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("STATE_DIRECTORY", self.home.path().join("state"));
        command
    }

    /// Runs sessbackup with `args` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run sessbackup")
    }

    /// Files below the backup folder, relative, sorted (hidden ones included).
    pub fn backup_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_files(&self.backups, &self.backups, &mut out);
        out.sort();
        out
    }

    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let output = self.run(&["list", "--json"]);
        assert_success(&output, "list --json");
        serde_json::from_slice(&output.stdout).expect("list --json prints JSON")
    }
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            collect_files(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
}

/// Runs sessbackup with `args` and no configuration file.
pub fn sessbackup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sessbackup"))
        .args(args)
        .env_remove("SESSBACKUP_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run sessbackup")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

pub fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Fills a server with session-store data in two databases.
pub fn fill_sessions(redis: &Redis, sessions: usize) {
    let mut connection = redis.connection();
    let mut pipe = redis::pipe();
    for index in 0..sessions {
        let key = format!("sess:{index:06}");
        let value = format!(
            "{{\"user\":{},\"csrf\":\"{:016x}\",\"roles\":[\"reader\"],\"last_seen\":{}}}",
            index % 997,
            (index as u64).wrapping_mul(0x9e3779b97f4a7c15),
            1_764_800_000 + index
        );
        pipe.cmd("SET").arg(&key).arg(value).arg("EX").arg(3600 + index % 600).ignore();
        if index % 10 == 0 {
            let user = format!("user:{}", index % 997);
            pipe.cmd("HSET").arg(&user).arg("name").arg(format!("user{index}")).arg("plan").arg("pro").ignore();
            pipe.cmd("RPUSH").arg(format!("recent:{}", index % 997)).arg(&key).ignore();
            pipe.cmd("ZADD").arg("active").arg(index as f64).arg(&key).ignore();
        }
    }
    pipe.query::<()>(&mut connection).unwrap();
    let mut pipe = redis::pipe();
    pipe.cmd("SELECT").arg(1).ignore();
    for index in 0..sessions / 10 {
        pipe.cmd("SET").arg(format!("csrf:{index}")).arg("x".repeat(40)).arg("EX").arg(7200).ignore();
    }
    pipe.cmd("SADD").arg("banned").arg("10.0.0.1").arg("10.0.0.2").ignore();
    pipe.cmd("SELECT").arg(0).ignore();
    pipe.query::<()>(&mut connection).unwrap();
}

/// Writes a CA and a server certificate for 127.0.0.1 signed by it; returns
/// (CA certificate, server certificate, server key) paths.
pub fn make_certificates(dir: &std::path::Path) -> Option<(String, String, String)> {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl").args(args).current_dir(dir).output();
        match output {
            Ok(output) if output.status.success() => true,
            Ok(output) => panic!("openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr)),
            Err(_) => false,
        }
    };
    let ca_ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sessbackup test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    if !ca_ok {
        if std::env::var("SESSBACKUP_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!("openssl is not installed and SESSBACKUP_REQUIRE_SERVERS=1");
        }
        say("SKIPPED: openssl not found");
        return None;
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let path = |name: &str| dir.join(name).display().to_string();
    Some((path("ca.pem"), path("server.pem"), path("server.key")))
}

pub mod servers;

/// Fills Redis with about `megabytes` MiB of random values, which do not
/// compress: large artifacts, and slow runs at high compression levels.
pub fn fill_random(redis: &Redis, megabytes: usize) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut connection = redis.connection();
    for batch in 0..megabytes {
        let mut pipe = redis::pipe();
        for index in 0..1024 {
            let mut value = vec![0u8; 1024];
            for byte in value.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            pipe.cmd("SET").arg(format!("blob:{batch}:{index}")).arg(value).ignore();
        }
        pipe.query::<()>(&mut connection).unwrap();
    }
}
