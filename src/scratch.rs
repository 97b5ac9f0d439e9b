//! A throw-away redis-server for drills and AOF rebuilds.
//!
//! It listens on a Unix socket in its own private folder and on no TCP port,
//! so it needs no free port, cannot be reached from the network, and runs as
//! any user. Dropping it stops the process and removes the folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of the server's log quoted when it fails.
const LOG_LINES_SHOWN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot run {binary}: {message}; install redis-server (Debian package redis-server) or pass --redis-server PATH"
    )]
    Spawn { binary: String, message: String },
    #[error("the scratch redis-server stopped while starting or loading ({status}); its log ends with:\n{log}")]
    Exited { status: String, log: String },
    #[error(
        "the scratch redis-server did not finish loading within {} s; pass a longer --load-timeout-secs", .after.as_secs()
    )]
    Timeout { after: Duration },
    #[error("cannot prepare the scratch folder {path}: {message}")]
    Folder { path: PathBuf, message: String },
    #[error("command {command} on the scratch redis-server failed: {message}")]
    Command { command: String, message: String },
}

/// The data a scratch server starts with.
pub enum Dataset<'a> {
    /// Nothing: an empty server.
    Empty,
    /// This RDB file, hard-linked or copied in as dump.rdb.
    Rdb(&'a Path),
    /// These AOF files up to the cut, loaded with appendonly yes; Redis
    /// refuses a torn tail instead of dropping it.
    Aof(&'a crate::aof::AofSet, Option<crate::aof::Cut>),
}

pub struct ScratchServer {
    child: Option<Child>,
    folder: tempfile::TempDir,
    socket: PathBuf,
    binary: String,
}

impl ScratchServer {
    /// Starts `binary` (a redis-server) in a new folder under `parent` and
    /// waits until it has loaded `dataset` and replies to commands.
    pub async fn start(
        binary: &str,
        parent: &Path,
        dataset: Dataset<'_>,
        extra: &[&str],
        load_timeout: Duration,
    ) -> Result<ScratchServer, Error> {
        let folder = tempfile::Builder::new()
            .prefix(".sessbackup-scratch-")
            .tempdir_in(parent)
            .map_err(|err| Error::Folder { path: parent.to_path_buf(), message: format!("{err}; pass --work-dir") })?;
        let data = folder.path();
        let mut aof_args: Vec<String> = Vec::new();
        match dataset {
            Dataset::Empty => {}
            Dataset::Rdb(rdb) => {
                let dump = data.join("dump.rdb");
                // A hard link costs no space; across file systems, copy.
                if std::fs::hard_link(rdb, &dump).is_err() {
                    std::fs::copy(rdb, &dump)
                        .map_err(|err| Error::Folder { path: dump.clone(), message: err.to_string() })?;
                }
            }
            Dataset::Aof(set, cut) => {
                let appendfilename = crate::aof::stage(set, cut, data)
                    .map_err(|err| Error::Folder { path: data.to_path_buf(), message: err.to_string() })?;
                aof_args = ["--appendonly", "yes", "--appenddirname", "appendonlydir", "--appendfilename"]
                    .into_iter()
                    .map(String::from)
                    .chain([appendfilename, "--aof-load-truncated".to_string(), "no".to_string()])
                    .collect();
            }
        }
        let socket = data.join("redis.sock");
        let log = data.join("redis.log");
        let child = Command::new(binary)
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(data)
            .args(["--dbfilename", "dump.rdb", "--logfile"])
            .arg(&log)
            .args(&aof_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| Error::Spawn { binary: binary.to_string(), message: err.to_string() })?;
        let mut server = ScratchServer { child: Some(child), folder, socket, binary: binary.to_string() };
        server.wait_until_loaded(load_timeout).await?;
        Ok(server)
    }

    pub fn folder(&self) -> &Path {
        self.folder.path()
    }

    /// Saves the dataset with SAVE and returns the path of the RDB file.
    pub async fn save(&self) -> Result<PathBuf, Error> {
        let mut connection = self.connect().await?;
        redis::cmd("SAVE").query_async::<()>(&mut connection).await.map_err(|err| self.command_error("SAVE", err))?;
        Ok(self.folder.path().join("dump.rdb"))
    }

    /// Connects over the server's socket.
    pub async fn connect(&self) -> Result<MultiplexedConnection, Error> {
        let url = format!("unix://{}", self.socket.display());
        let client = redis::Client::open(url).map_err(|err| self.command_error("connect", err))?;
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(300)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| self.command_error("connect", err))
    }

    fn command_error(&self, command: &str, err: redis::RedisError) -> Error {
        Error::Command { command: command.to_string(), message: format!("{err} (server {})", self.binary) }
    }

    /// Polls until the server replies to INFO with `loading:0`.
    async fn wait_until_loaded(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                // It reports bad arguments on standard error, not in its log.
                let mut errors = String::new();
                if let Some(mut stderr) = self.child.take().and_then(|mut child| child.stderr.take()) {
                    let _ = std::io::Read::read_to_string(&mut stderr, &mut errors);
                }
                return Err(Error::Exited { status: status.to_string(), log: self.log_tail(&errors) });
            }
            if self.socket.exists()
                && let Ok(mut connection) = self.connect().await
                && let Ok(info) = redis::cmd("INFO").arg("persistence").query_async::<String>(&mut connection).await
                && crate::source::parse_info(&info).get("loading").map(String::as_str) == Some("0")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout { after: timeout });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the last lines of the server's log followed by `more`.
    fn log_tail(&self, more: &str) -> String {
        let mut text = std::fs::read_to_string(self.folder.path().join("redis.log")).unwrap_or_default();
        text.push_str(more);
        // The overcommit warning appears on many hosts and explains nothing here.
        let lines: Vec<&str> =
            text.lines().filter(|line| !line.trim().is_empty() && !line.contains("Memory overcommit")).collect();
        let start = lines.len().saturating_sub(LOG_LINES_SHOWN);
        lines[start..].iter().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
    }

    /// Stops the server without saving and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a PID of a child we own, not yet reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds redis-server: `requested` if given, else on PATH, else in the
/// folders where Debian and other distributions install it.
pub fn find_redis_server(requested: Option<&Path>) -> String {
    if let Some(path) = requested {
        return path.display().to_string();
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("redis-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"].map(PathBuf::from))
        .find(|candidate| candidate.is_file())
        .map(|found| found.display().to_string())
        .unwrap_or_else(|| "redis-server".to_string())
}
