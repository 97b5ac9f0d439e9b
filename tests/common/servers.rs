//! FTP, FTPS and S3 servers for tests, on free loopback ports with their data
//! in temporary folders, plus a fault-injecting HTTP proxy.
//!
//! - vsftpd (Debian package) serves anonymous FTP and explicit FTPS, as root
//!   or, with `run_as_launching_user`, as any user.
//! - pyftpdlib serves FTPS with a user name and password.
//! - s3s-fs (`cargo install s3s-fs --version 0.14.1 --features binary`)
//!   serves S3 with signature checks.
//!
//! A missing server skips the test with a message; with
//! `SESSBACKUP_REQUIRE_SERVERS=1` it fails instead.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, say};

fn missing(what: &str) -> bool {
    if std::env::var("SESSBACKUP_REQUIRE_SERVERS").as_deref() == Ok("1") {
        panic!("{what} and SESSBACKUP_REQUIRE_SERVERS=1");
    }
    say(&format!("SKIPPED: {what}"));
    false
}

fn wait_for_port(port: u16, child: &mut Child, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("server on port {port} exited with {status}: {}", log());
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "server on port {port} did not listen within 10 s: {}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) on the PID of a child this harness started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Stops a child together with every process it forked (vsftpd runs each
/// session in a process of its own, in a new session).
fn stop_group(child: &mut Child) {
    let mut doomed = vec![child.id() as i32];
    let mut index = 0;
    while index < doomed.len() {
        let parent = doomed[index];
        doomed.extend(children_of(parent));
        index += 1;
    }
    for pid in doomed {
        // SAFETY: kill(2) on the harness's own child and that child's descendants.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

/// PIDs whose parent is `parent`, from /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The parent PID is the second field after the parenthesised command name.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        if rest.split_whitespace().nth(1).and_then(|field| field.parse::<i32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// A test certificate for 127.0.0.1 and localhost that rustls accepts as its
/// own trust anchor: self-signed, but not a CA.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_certificate(dir: &Path) -> Option<Certificate> {
    self_signed(dir, &["basicConstraints=critical,CA:FALSE", "extendedKeyUsage=serverAuth"])
}

/// Makes a self-signed certificate for 127.0.0.1 marked as a CA, as `openssl
/// req -x509` does by default.
pub fn make_ca_certificate(dir: &Path) -> Option<Certificate> {
    self_signed(dir, &["basicConstraints=critical,CA:TRUE"])
}

fn self_signed(dir: &Path, extensions: &[&str]) -> Option<Certificate> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut command = Command::new("openssl");
    command
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]);
    for extension in extensions {
        command.args(["-addext", extension]);
    }
    let output = command.output();
    match output {
        Ok(output) if output.status.success() => Some(Certificate { cert, key }),
        Ok(output) => panic!("openssl failed: {}", String::from_utf8_lossy(&output.stderr)),
        Err(_) => {
            missing("openssl not found");
            None
        }
    }
}

/// An anonymous vsftpd server; FTPS when started with a certificate.
pub struct Vsftpd {
    pub port: u16,
    /// Folder the FTP root maps to; uploads go below `upload/`.
    pub root: PathBuf,
    home: TempDir,
    child: Option<Child>,
    config: PathBuf,
    binary: PathBuf,
}

impl Vsftpd {
    pub fn start(certificate: Option<&Certificate>) -> Option<Vsftpd> {
        Vsftpd::start_with(certificate, "")
    }

    /// Starts a server whose configuration ends with `extra` (lines of
    /// `key=value`), which override the defaults.
    pub fn start_with(certificate: Option<&Certificate>, extra: &str) -> Option<Vsftpd> {
        let Some(binary) = vsftpd_binary() else {
            missing("vsftpd not found (apt-get install vsftpd)");
            return None;
        };
        // SAFETY: geteuid(2) has no preconditions.
        let root_user = unsafe { libc::geteuid() } == 0;
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

        let root = home.path().join("root");
        let upload = root.join("upload");
        let empty = home.path().join("empty");
        std::fs::create_dir_all(&upload).unwrap();
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        if root_user {
            // As root, vsftpd runs anonymous sessions as the user `ftp`.
            let status = Command::new("chown").args(["ftp:ftp"]).arg(&upload).status().unwrap();
            assert!(status.success(), "chown ftp:ftp failed");
        }

        let port = free_port();
        let passive = free_port().max(20000);
        let mut config = format!(
            "listen=YES\nlisten_ipv6=NO\nbackground=NO\nlisten_address=127.0.0.1\nlisten_port={port}\n\
             anonymous_enable=YES\nlocal_enable=NO\nanon_root={root}\nno_anon_password=YES\nwrite_enable=YES\n\
             anon_upload_enable=YES\nanon_mkdir_write_enable=YES\nanon_other_write_enable=YES\nanon_umask=022\n\
             pasv_enable=YES\npasv_address=127.0.0.1\npasv_min_port={passive}\npasv_max_port={}\n\
             seccomp_sandbox=NO\nsecure_chroot_dir={empty}\nxferlog_enable=YES\nvsftpd_log_file={log}\n",
            passive + 30,
            root = root.display(),
            empty = empty.display(),
            log = home.path().join("vsftpd.log").display(),
        );
        if !root_user {
            // Without root vsftpd cannot switch users or chroot: sessions
            // run as this user and start in anon_root.
            config.push_str("run_as_launching_user=YES\n");
        }
        if let Some(certificate) = certificate {
            config.push_str(&format!(
                "ssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=YES\nforce_anon_data_ssl=YES\n\
                 rsa_cert_file={}\nrsa_private_key_file={}\nssl_tlsv1=NO\nssl_sslv2=NO\nssl_sslv3=NO\n",
                certificate.cert.display(),
                certificate.key.display()
            ));
        }

        config.push_str(extra);
        let config_path = home.path().join("vsftpd.conf");
        std::fs::write(&config_path, config).unwrap();
        let mut server = Vsftpd { port, root, home, child: None, config: config_path, binary };
        server.restart();
        Some(server)
    }

    fn log(&self) -> String {
        let startup = std::fs::read_to_string(self.home.path().join("startup-errors")).unwrap_or_default();
        let log = std::fs::read_to_string(self.home.path().join("vsftpd.log")).unwrap_or_default();
        format!("{startup}{log}")
    }

    /// Starts the server again (after `kill`) on the same port and folder.
    pub fn restart(&mut self) {
        // vsftpd reports start-up errors on file descriptor 0.
        let errors = std::fs::File::create(self.home.path().join("startup-errors")).unwrap();
        let mut child = Command::new(&self.binary)
            .arg(&self.config)
            .stdin(Stdio::from(errors))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vsftpd");
        wait_for_port(self.port, &mut child, || self.log());
        self.child = Some(child);
    }

    /// Stops the server and its sessions at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_group(&mut child);
        }
    }

    /// Files below the upload folder whose names mark an unfinished upload.
    pub fn staging_files(&self) -> Vec<String> {
        files_below(&self.root.join("upload")).into_iter().filter(|name| name.contains(".partial-")).collect()
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_group(&mut child);
        }
        if std::thread::panicking() {
            say(&format!("--- vsftpd log (port {}) ---\n{}", self.port, self.log()));
        }
    }
}

/// A pyftpdlib FTPS server with one user and password.
pub struct PyFtpd {
    pub port: u16,
    pub root: PathBuf,
    _home: TempDir,
    child: Child,
}

impl PyFtpd {
    pub fn start(certificate: &Certificate, user: &str, password: &str) -> Option<PyFtpd> {
        let probe = Command::new("python3").args(["-c", "import pyftpdlib, OpenSSL"]).output();
        if !probe.is_ok_and(|output| output.status.success()) {
            missing("pyftpdlib or pyopenssl not installed (pip install pyftpdlib pyopenssl)");
            return None;
        }
        let home = tempfile::tempdir().unwrap();
        let root = home.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-m", "pyftpdlib", "-i", "127.0.0.1", "-p", &port.to_string(), "-w", "-d"])
            .arg(&root)
            .args(["-u", user, "-P", password, "--tls", "--keyfile"])
            .arg(&certificate.key)
            .arg("--certfile")
            .arg(&certificate.cert)
            .args(["--tls-control-required", "--tls-data-required"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pyftpdlib");
        wait_for_port(port, &mut child, String::new);
        Some(PyFtpd { port, root, _home: home, child })
    }
}

impl Drop for PyFtpd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

pub const S3_ACCESS_KEY: &str = "sessbackup-test-key";
pub const S3_SECRET_KEY: &str = "sessbackup-test-secret";

/// An s3s-fs server with one bucket.
pub struct S3Server {
    pub port: u16,
    pub bucket: String,
    pub data: PathBuf,
    _home: TempDir,
    child: Child,
}

impl S3Server {
    pub fn start(bucket: &str) -> Option<S3Server> {
        let binary = s3s_binary()?;
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("data");
        std::fs::create_dir_all(data.join(bucket)).unwrap();
        let port = free_port();
        let log = std::fs::File::create(home.path().join("s3s.log")).unwrap();
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", S3_ACCESS_KEY])
            .args(["--secret-key", S3_SECRET_KEY])
            .arg(&data)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn s3s-fs");
        let log_path = home.path().join("s3s.log");
        wait_for_port(port, &mut child, || std::fs::read_to_string(&log_path).unwrap_or_default());
        Some(S3Server { port, bucket: bucket.to_string(), data, _home: home, child })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Objects in the bucket, as paths relative to it.
    pub fn objects(&self) -> Vec<String> {
        files_below(&self.data.join(&self.bucket))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// vsftpd lives in /usr/sbin, which is often not on a non-root PATH.
fn vsftpd_binary() -> Option<PathBuf> {
    ["vsftpd", "/usr/sbin/vsftpd"].into_iter().map(PathBuf::from).find(|candidate| {
        Command::new(candidate)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
}

fn s3s_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("CARGO_HOME").map(|home| PathBuf::from(home).join("bin/s3s-fs")),
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin/s3s-fs")),
        Some(PathBuf::from("s3s-fs")),
    ];
    for candidate in candidates.into_iter().flatten() {
        if Command::new(&candidate).arg("--version").output().is_ok_and(|output| output.status.success()) {
            return Some(candidate);
        }
    }
    missing("s3s-fs not found (cargo install s3s-fs --version 0.14.1 --features binary --locked)");
    None
}

/// Regular files below `dir`, relative to it, sorted.
pub fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// An HTTP proxy on loopback in front of one server, which can reply 500 or
/// cut connections instead of forwarding. Every request gets its own
/// upstream connection (`Connection: close` is forced), so each one is
/// judged on its own.
pub struct FaultProxy {
    pub port: u16,
    faults: Arc<Faults>,
}

#[derive(Default)]
struct Faults {
    /// Reply 500 to this many more matching requests.
    fail_with_500: AtomicUsize,
    /// Cut this many more matching requests after forwarding part of their body.
    cut_mid_body: AtomicUsize,
    /// Requests whose first line contains this text are matched (empty: all).
    matching: std::sync::Mutex<String>,
    pub seen: AtomicUsize,
}

impl FaultProxy {
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let shared = Arc::clone(&faults);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let faults = Arc::clone(&shared);
                std::thread::spawn(move || serve(client, upstream_port, &faults));
            }
        });
        FaultProxy { port, faults }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replies "500 Internal Server Error" to the next `count` requests whose
    /// request line contains `matching`.
    pub fn fail_with_500(&self, count: usize, matching: &str) {
        *self.faults.matching.lock().unwrap() = matching.to_string();
        self.faults.fail_with_500.store(count, Ordering::SeqCst);
    }

    /// Closes the next `count` matching requests halfway through their body.
    pub fn cut_mid_body(&self, count: usize, matching: &str) {
        *self.faults.matching.lock().unwrap() = matching.to_string();
        self.faults.cut_mid_body.store(count, Ordering::SeqCst);
    }

    pub fn requests_seen(&self) -> usize {
        self.faults.seen.load(Ordering::SeqCst)
    }
}

fn take(counter: &AtomicUsize) -> bool {
    counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |value| value.checked_sub(1)).is_ok()
}

fn serve(mut client: TcpStream, upstream_port: u16, faults: &Faults) {
    let Some(head) = read_head(&mut client) else { return };
    faults.seen.fetch_add(1, Ordering::SeqCst);
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let matches = request_line.contains(faults.matching.lock().unwrap().as_str());
    let content_length = content_length(&head);

    if matches && take(&faults.fail_with_500) {
        reply_500(client, content_length);
        return;
    }

    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else { return };
    if upstream.write_all(close_after_reply(&head).as_bytes()).is_err() {
        return;
    }
    let cut = matches && content_length > 0 && take(&faults.cut_mid_body);
    let body_limit = if cut { content_length / 2 } else { content_length };
    if copy_body(&mut client, Some(&mut upstream), body_limit).is_none() {
        return;
    }
    if cut {
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    }

    let mut response = Vec::new();
    let _ = upstream.read_to_end(&mut response);
    let _ = client.write_all(&response);
    let _ = client.shutdown(Shutdown::Both);
}

/// Reads the request line and headers, up to and including the blank line.
fn read_head(client: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Returns the head with `Connection: close`, so each upstream connection
/// carries one request.
fn close_after_reply(head: &str) -> String {
    let mut forwarded = String::new();
    for line in head.split("\r\n").filter(|line| !line.is_empty()) {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    forwarded
}

/// Reads `length` body bytes from the client, passing them upstream if given.
fn copy_body(client: &mut TcpStream, mut upstream: Option<&mut TcpStream>, length: usize) -> Option<()> {
    let mut left = length;
    let mut buffer = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buffer.len());
        let read = match client.read(&mut buffer[..want]) {
            Ok(0) | Err(_) => return None,
            Ok(read) => read,
        };
        if let Some(upstream) = upstream.as_deref_mut() {
            upstream.write_all(&buffer[..read]).ok()?;
        }
        left -= read;
    }
    Some(())
}

fn reply_500(mut client: TcpStream, content_length: usize) {
    // Read the whole body first: a client still sending would see a broken
    // pipe instead of the reply.
    if copy_body(&mut client, None, content_length).is_none() {
        return;
    }
    let body = "<Error><Code>InternalError</Code><Message>injected by the test proxy</Message></Error>";
    let _ = write!(
        client,
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}
