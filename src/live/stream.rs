//! Streaming load over a plain connection, as `redis-cli --pipe` does.
//!
//! The walker thread writes `SELECT`, `RESTORE … ABSTTL` and `FUNCTION LOAD`
//! commands straight into RESP buffers of about 1 MiB. One task writes the
//! buffers to the socket without waiting for replies; another reads the
//! replies and pairs each with the key it belongs to. Unlike pipelines that
//! wait for their replies, this keeps commands flowing while the server works,
//! and building a command costs one copy of its payload.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::{Error, FAILURES_SHOWN, LoadReport, OnConflict};
use crate::rdb;

/// Bytes of commands per buffer handed to the writer.
const BUFFER_BYTES: usize = 1024 * 1024;

/// Server address, for the connections this module can open.
pub enum Address {
    Tcp(String, u16),
    Unix(PathBuf),
}

/// Reply expected for each command sent, in order.
enum Expect {
    Select,
    Key { db: u64, key: Vec<u8> },
    Function,
}

/// A buffer of commands and the replies they will get.
struct Batch {
    bytes: Bytes,
    expects: Vec<Expect>,
}

pub struct Credentials<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
}

/// A load to carry out.
pub struct Plan<'a> {
    /// The RDB file, already verified.
    pub path: &'a Path,
    /// The server's URL without credentials, for messages.
    pub url: &'a str,
    pub on_conflict: OnConflict,
    /// The conflict policy for function libraries.
    pub functions: OnConflict,
    /// Keys that expire at or before this time (Unix milliseconds) are skipped.
    pub now_ms: i64,
}

/// Loads the file over a new connection to `address`.
pub async fn load(
    address: &Address,
    credentials: Credentials<'_>,
    plan: Plan<'_>,
    report: &mut LoadReport,
) -> Result<(), Error> {
    let io_error = |err: std::io::Error| Error::Command {
        command: "RESTORE".to_string(),
        url: plan.url.to_string(),
        message: err.to_string(),
    };
    match address {
        Address::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await.map_err(io_error)?;
            stream.set_nodelay(true).map_err(io_error)?;
            let (read, write) = stream.into_split();
            run(read, write, credentials, plan, report).await
        }
        Address::Unix(socket) => {
            let stream = tokio::net::UnixStream::connect(socket).await.map_err(io_error)?;
            let (read, write) = stream.into_split();
            run(read, write, credentials, plan, report).await
        }
    }
}

async fn run(
    read: impl AsyncRead + Unpin,
    mut write: impl AsyncWrite + Unpin + Send + 'static,
    credentials: Credentials<'_>,
    plan: Plan<'_>,
    report: &mut LoadReport,
) -> Result<(), Error> {
    let Plan { path, url, on_conflict, functions, now_ms } = plan;
    let command_error =
        |command: &str, message: String| Error::Command { command: command.to_string(), url: url.to_string(), message };
    let mut replies = BufReader::with_capacity(64 * 1024, read);
    if let Some(password) = credentials.password {
        let mut auth = BytesMut::new();
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(username) = credentials.username {
            args.push(username.as_bytes());
        }
        args.push(password.as_bytes());
        encode(&mut auth, &args);
        write.write_all(&auth).await.map_err(|err| command_error("AUTH", err.to_string()))?;
        match read_reply(&mut replies).await.map_err(|err| command_error("AUTH", err.to_string()))? {
            Reply::Ok => {}
            Reply::Error(message) => return Err(command_error("AUTH", message)),
        }
    }

    let (batches, mut incoming) = mpsc::channel::<Batch>(4);
    let (skipped_sender, skipped) = tokio::sync::oneshot::channel::<u64>();
    let walker = encode_file(path.to_path_buf(), on_conflict, functions, now_ms, batches, skipped_sender);

    // The writer sends buffers as they come; the reader learns what each
    // command expects before its bytes leave.
    let (expect_sender, mut expected) = mpsc::unbounded_channel::<Vec<Expect>>();
    let writer = tokio::spawn(async move {
        while let Some(batch) = incoming.recv().await {
            if expect_sender.send(batch.expects).is_err() {
                break;
            }
            write.write_all(&batch.bytes).await?;
        }
        write.flush().await?;
        Ok::<_, std::io::Error>(write)
    });

    let mut pending: VecDeque<Expect> = VecDeque::new();
    let mut stopped = None;
    loop {
        if pending.is_empty() {
            match expected.recv().await {
                Some(expects) => pending.extend(expects),
                None => break,
            }
            continue;
        }
        let expect = pending.pop_front().expect("checked above");
        let reply = match read_reply(&mut replies).await {
            Ok(reply) => reply,
            Err(err) => {
                stopped = Some(command_error("RESTORE", format!("reading replies failed: {err}")));
                break;
            }
        };
        match (expect, reply) {
            (Expect::Key { .. }, Reply::Ok) => report.loaded += 1,
            (Expect::Function, Reply::Ok) => report.functions_loaded += 1,
            (Expect::Select, Reply::Ok) => {}
            (Expect::Key { .. }, Reply::Error(message))
                if message.starts_with("BUSYKEY") && on_conflict == OnConflict::Skip =>
            {
                report.skipped_existing += 1;
            }
            (Expect::Function, Reply::Error(message))
                if message.contains("already exists") && functions == OnConflict::Skip => {}
            (Expect::Key { db, key }, Reply::Error(message)) => {
                report.failed += 1;
                // A payload the server cannot read fails the same way for every key.
                if message.contains("payload version or checksum") && report.loaded == 0 {
                    stopped = Some(command_error(
                        "RESTORE",
                        format!("{message}; the server cannot read values of this backup's RDB version"),
                    ));
                    break;
                }
                if report.failures.len() < FAILURES_SHOWN {
                    report.failures.push(format!("\"{}\" (db {db}): {message}", rdb::printable(&key)));
                }
            }
            (Expect::Function, Reply::Error(message)) => {
                stopped = Some(command_error("FUNCTION LOAD", message));
                break;
            }
            (Expect::Select, Reply::Error(message)) => {
                stopped = Some(command_error("SELECT", message));
                break;
            }
        }
    }
    // Dropping the receivers stops the writer and the walker after an error.
    drop(expected);
    if stopped.is_some() {
        writer.abort();
    }
    let written = writer.await;
    let walked = walker.await.expect("walker thread panicked");
    if let Some(err) = stopped {
        return Err(err);
    }
    match written {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => return Err(command_error("RESTORE", format!("sending commands failed: {err}"))),
        Err(err) => return Err(command_error("RESTORE", format!("the writer failed: {err}"))),
    }
    walked?;
    report.skipped_expired += skipped.await.unwrap_or(0);
    Ok(())
}

/// Walks the file on a blocking thread and encodes its records as commands.
fn encode_file(
    path: PathBuf,
    on_conflict: OnConflict,
    functions: OnConflict,
    now_ms: i64,
    batches: mpsc::Sender<Batch>,
    skipped: tokio::sync::oneshot::Sender<u64>,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    tokio::task::spawn_blocking(move || {
        let read_error = |message: String| Error::Read { path: path.clone(), message };
        let file = std::fs::File::open(&path).map_err(|err| read_error(err.to_string()))?;
        let reader = std::io::BufReader::with_capacity(1024 * 1024, file);
        let state = std::sync::Arc::new(std::sync::Mutex::new(Encoder::new()));
        let filling = std::sync::Arc::clone(&state);
        let sender = batches.clone();
        let walked = rdb::walk_checked_records(reader, move |record| {
            let mut encoder = filling.lock().expect("not poisoned");
            match record {
                rdb::Record::Key(key) if key.expire_at_ms.is_some_and(|at| at <= now_ms) => encoder.expired += 1,
                rdb::Record::Key(key) => encoder.restore(key, on_conflict),
                rdb::Record::Function(code) => encoder.function(&code, functions),
            }
            if encoder.buffer.len() < BUFFER_BYTES {
                return Ok(());
            }
            let batch = encoder.take();
            sender.blocking_send(batch).map_err(|_| "the loader stopped".to_string())
        });
        let mut encoder = state.lock().expect("not poisoned");
        let _ = skipped.send(encoder.expired);
        match walked {
            Ok(_) => {
                // A loader that stopped reports its own error.
                let _ = batches.blocking_send(encoder.take());
                Ok(())
            }
            Err(failure) if failure.error.kind == rdb::ErrorKind::Stopped => Ok(()),
            Err(failure) => Err(read_error(failure.to_string())),
        }
    })
}

/// Commands being gathered into a buffer.
struct Encoder {
    buffer: BytesMut,
    expects: Vec<Expect>,
    db: Option<u64>,
    expired: u64,
}

impl Encoder {
    fn new() -> Encoder {
        Encoder { buffer: BytesMut::with_capacity(BUFFER_BYTES + 64 * 1024), expects: Vec::new(), db: None, expired: 0 }
    }

    fn restore(&mut self, key: rdb::KeyRecord, on_conflict: OnConflict) {
        if self.db != Some(key.db) {
            encode(&mut self.buffer, &[b"SELECT", key.db.to_string().as_bytes()]);
            self.expects.push(Expect::Select);
            self.db = Some(key.db);
        }
        let ttl = key.expire_at_ms.unwrap_or(0).to_string();
        let mut args: Vec<&[u8]> = vec![b"RESTORE", &key.key, ttl.as_bytes(), &key.payload, b"ABSTTL"];
        if on_conflict == OnConflict::Replace {
            args.push(b"REPLACE");
        }
        encode(&mut self.buffer, &args);
        self.expects.push(Expect::Key { db: key.db, key: key.key });
    }

    fn function(&mut self, code: &[u8], functions: OnConflict) {
        let mut args: Vec<&[u8]> = vec![b"FUNCTION", b"LOAD"];
        if functions == OnConflict::Replace {
            args.push(b"REPLACE");
        }
        args.push(code);
        encode(&mut self.buffer, &args);
        self.expects.push(Expect::Function);
    }

    fn take(&mut self) -> Batch {
        let bytes = self.buffer.split().freeze();
        self.buffer.reserve(BUFFER_BYTES + 64 * 1024);
        Batch { bytes, expects: std::mem::take(&mut self.expects) }
    }
}

/// Appends a command as a RESP array of bulk strings.
fn encode(buffer: &mut BytesMut, args: &[&[u8]]) {
    buffer.put_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        buffer.put_slice(format!("${}\r\n", arg.len()).as_bytes());
        buffer.put_slice(arg);
        buffer.put_slice(b"\r\n");
    }
}

/// The replies the loader's commands get: simple strings (`+OK`), bulk
/// strings (`FUNCTION LOAD` returns the library name) or errors.
enum Reply {
    Ok,
    Error(String),
}

async fn read_reply(reader: &mut (impl AsyncBufReadExt + Unpin)) -> std::io::Result<Reply> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    let text = String::from_utf8_lossy(&line).trim_end().to_string();
    match line.first() {
        Some(b'+') => Ok(Reply::Ok),
        Some(b'-') => Ok(Reply::Error(text[1..].to_string())),
        Some(b'$') => {
            let len: i64 = text[1..].parse().map_err(|_| invalid(&text))?;
            if len >= 0 {
                let mut data = vec![0u8; len as usize + 2];
                reader.read_exact(&mut data).await?;
            }
            Ok(Reply::Ok)
        }
        None => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection")),
        Some(_) => Err(invalid(&text)),
    }
}

fn invalid(text: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unexpected reply {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_resp() {
        let mut buffer = BytesMut::new();
        encode(&mut buffer, &[b"SELECT", b"3"]);
        assert_eq!(&buffer[..], b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n");
    }

    #[tokio::test]
    async fn replies_parse() {
        let input: &[u8] = b"+OK\r\n-BUSYKEY Target key name already exists.\r\n$8\r\nsessions\r\n";
        let mut reader = BufReader::new(input);
        assert!(matches!(read_reply(&mut reader).await.unwrap(), Reply::Ok));
        match read_reply(&mut reader).await.unwrap() {
            Reply::Error(message) => assert_eq!(message, "BUSYKEY Target key name already exists."),
            Reply::Ok => panic!("expected an error reply"),
        }
        assert!(matches!(read_reply(&mut reader).await.unwrap(), Reply::Ok));
        assert!(read_reply(&mut reader).await.is_err());
    }
}
