//! A target on an FTP or FTPS server.
//!
//! Uploads go to a staging name beside the final one (the final file name
//! plus `.partial-` and 16 hex digits). After the transfer the server's `226`
//! reply and its `SIZE` of the staging file must match the bytes sent: some
//! servers keep a short or empty file when a TLS data connection closes
//! early, and such a file must never be published. Only then is the file
//! renamed to its final name. Transfers are always binary.
//!
//! Each operation uses its own connection, so a broken connection never
//! leaks into the next operation. Connection set-up and whole small
//! operations (manifests, listings, deletes, downloads before their first
//! byte) are retried with backoff on transient failures: connection errors,
//! time-outs and 4xx replies. A 5xx reply fails at once with the server's
//! text. A streamed upload is not retried once its data has started to flow,
//! because the data cannot be sent again.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use suppaftp::Status;
use suppaftp::list::{File as ListedFile, ListParser};
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream, ImplAsyncFtpStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use super::{Chunk, Error, ErrorKind, ObjectInfo, ObjectName, Result, Target};
use crate::config::{FtpSettings, FtpTls};
use crate::secret::Secret;

type Ftp = AsyncRustlsFtpStream;

pub struct FtpTarget {
    client: Arc<Client>,
}

/// Everything needed to open connections; shared with upload tasks.
struct Client {
    name: String,
    settings: FtpSettings,
    password: Option<Secret>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A failed FTP step, before the target and object are attached.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Failure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into() }
    }

    fn timeout(what: &str, after: Duration) -> Self {
        Failure::new(ErrorKind::Unavailable, format!("{what} timed out after {} s", after.as_secs()))
    }

    fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }
}

impl From<FtpError> for Failure {
    fn from(err: FtpError) -> Self {
        match &err {
            FtpError::ConnectionError(io) => Failure::new(ErrorKind::Unavailable, format!("connection failed: {io}")),
            FtpError::UnexpectedResponse(response) => {
                let code = response.status.code();
                let text = String::from_utf8_lossy(&response.body).trim().to_string();
                let kind = match code {
                    400..=499 => ErrorKind::Unavailable,
                    530 | 532 => ErrorKind::PermissionDenied,
                    550 => ErrorKind::NotFound,
                    _ => ErrorKind::Other,
                };
                Failure::new(kind, format!("server replied {text}"))
            }
            FtpError::SecureError(message) => {
                let hint = if message.contains("CaUsedAsEndEntity") {
                    "the server's certificate is self-signed: put it in ca_file to trust it"
                } else if message.contains("UnknownIssuer") {
                    "no trusted CA signed the server's certificate: put that CA, or the server's own certificate, \
                     in ca_file"
                } else if message.contains("NotValidForName") {
                    "the certificate does not name this host: set host to a name the certificate holds"
                } else {
                    "check tls, ca_file and the server certificate"
                };
                Failure::new(ErrorKind::Other, format!("TLS failed: {message}; {hint}"))
            }
            _ => Failure::new(ErrorKind::Other, err.to_string()),
        }
    }
}

impl FtpTarget {
    /// Builds the target. `password` is the resolved secret, if the settings name one.
    pub fn new(
        name: impl Into<String>,
        settings: FtpSettings,
        password: Option<Secret>,
    ) -> std::result::Result<Self, String> {
        let name = name.into();
        crate::tls::ensure_crypto_provider();
        let tls = match settings.tls {
            FtpTls::None => None,
            FtpTls::Explicit | FtpTls::Implicit => Some(Arc::new(tls_config(&settings)?)),
        };
        if settings.insecure_skip_verify {
            tracing::warn!(target = %name, "insecure_skip_verify is on: the FTPS server's certificate is not checked");
        }
        Ok(FtpTarget { client: Arc::new(Client { name, settings, password, tls }) })
    }
}

impl Client {
    fn error(&self, action: &'static str, object: &str, failure: Failure) -> Error {
        Error {
            kind: failure.kind,
            target: self.name.clone(),
            action,
            object: object.to_string(),
            message: failure.message,
        }
    }

    /// Path on the server of an object or folder below the base folder.
    fn remote_path(&self, relative: &str) -> String {
        match (self.settings.path.as_str(), relative) {
            ("", relative) => relative.to_string(),
            (base, "") => base.to_string(),
            (base, relative) => format!("{base}/{relative}"),
        }
    }

    async fn timed<T>(
        &self,
        what: &str,
        future: impl Future<Output = std::result::Result<T, FtpError>>,
    ) -> std::result::Result<T, Failure> {
        match tokio::time::timeout(self.settings.timeout, future).await {
            Ok(result) => result.map_err(Failure::from),
            Err(_) => Err(Failure::timeout(what, self.settings.timeout)),
        }
    }

    /// Opens a logged-in, binary-mode connection.
    async fn connect(&self) -> std::result::Result<Ftp, Failure> {
        let address = format!("{}:{}", self.settings.host, self.settings.port);
        let at_address = |failure: Failure| Failure { message: format!("{address}: {}", failure.message), ..failure };
        let mut ftp: Ftp = match (&self.settings.tls, &self.tls) {
            (FtpTls::Implicit, Some(config)) => {
                let connector = AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(Arc::clone(config)));
                let mut ftp = self
                    .timed(
                        "connecting",
                        ImplAsyncFtpStream::connect_secure_implicit(&address, connector, &self.settings.host),
                    )
                    .await
                    .map_err(at_address)?;
                // The library protects data connections only after explicit
                // AUTH TLS; with implicit TLS the server still needs PROT P
                // (RFC 4217) before it accepts encrypted data connections.
                self.timed("sending PBSZ", ftp.custom_command("PBSZ 0", &[Status::CommandOk])).await?;
                self.timed("sending PROT P", ftp.custom_command("PROT P", &[Status::CommandOk])).await?;
                ftp
            }
            (tls, config) => {
                let explicit = matches!(tls, FtpTls::Explicit);
                let plain =
                    self.timed("connecting", ImplAsyncFtpStream::connect(&address)).await.map_err(|failure| {
                        // An implicit-TLS server waits for a TLS handshake and
                        // never sends the plain greeting.
                        let hint = if explicit && failure.message.contains("timed out") {
                            "; if the server expects TLS from the first byte (implicit FTPS, often port 990), set \
                         tls = \"implicit\""
                        } else {
                            ""
                        };
                        at_address(Failure { message: format!("{}{hint}", failure.message), ..failure })
                    })?;
                match (tls, config) {
                    (FtpTls::Explicit, Some(config)) => {
                        let connector =
                            AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(Arc::clone(config)));
                        self.timed("starting TLS", plain.into_secure(connector, &self.settings.host)).await.map_err(
                            |failure| {
                                let hint = if failure.message.starts_with("server replied 5") {
                                    "; the server does not offer AUTH TLS: enable TLS on it, or set tls = \"none\" \
                                     on a trusted network only"
                                } else {
                                    ""
                                };
                                at_address(Failure { message: format!("{}{hint}", failure.message), ..failure })
                            },
                        )?
                    }
                    _ => plain,
                }
            }
        };
        let password = match &self.password {
            Some(secret) => secret.expose().to_string(),
            None => "sessbackup@".to_string(),
        };
        self.timed("logging in", ftp.login(self.settings.username.as_str(), password.as_str())).await.map_err(
            |failure| {
                if failure.kind == ErrorKind::PermissionDenied {
                    Failure::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "login as {:?} failed ({}); check username and password",
                            self.settings.username, failure.message
                        ),
                    )
                } else {
                    failure
                }
            },
        )?;
        self.timed("setting binary mode", ftp.transfer_type(FileType::Binary)).await?;
        if self.settings.passive {
            ftp.set_mode(Mode::Passive);
        } else {
            ftp = ftp.active_mode(self.settings.timeout);
        }
        Ok(ftp)
    }

    /// Runs `operation` with a fresh connection, again on transient failures.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut operation: F) -> std::result::Result<T, Failure>
    where
        F: FnMut(Ftp) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let attempts = self.settings.attempts.max(1);
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=attempts {
            let result = match self.connect().await {
                Ok(ftp) => operation(ftp).await,
                Err(failure) => Err(failure),
            };
            match result {
                Ok(value) => return Ok(value),
                Err(failure) if failure.is_transient() && attempt < attempts => {
                    tracing::warn!(
                        target = %self.name,
                        attempt,
                        attempts,
                        delay_ms = delay.as_millis() as u64,
                        error = %failure.message,
                        "{what} failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(failure) => return Err(failure),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Creates every folder of `folder` that does not exist yet.
    async fn make_folders(&self, ftp: &mut Ftp, folder: &str) -> std::result::Result<(), Failure> {
        let mut path = String::new();
        for part in folder.split('/') {
            if part.is_empty() {
                if path.is_empty() {
                    path.push('/');
                }
                continue;
            }
            if !path.is_empty() && !path.ends_with('/') {
                path.push('/');
            }
            path.push_str(part);
            // The folder usually exists already, and servers answer 550 for
            // that as for a real failure; a real failure shows at STOR.
            let _ = self.timed("creating a folder", ftp.mkdir(&path)).await;
        }
        Ok(())
    }

    /// Size of a remote file, `None` if the server says it does not exist.
    async fn remote_size(&self, ftp: &mut Ftp, path: &str) -> std::result::Result<Option<u64>, Failure> {
        match self.timed("SIZE", ftp.size(path)).await {
            Ok(size) => Ok(Some(size as u64)),
            Err(failure) if failure.kind == ErrorKind::NotFound => Ok(None),
            Err(failure) => Err(failure),
        }
    }

    /// Uploads everything from `chunks` to `staging` and publishes it as `path`.
    async fn upload(
        &self,
        path: &str,
        staging: &str,
        chunks: &mut mpsc::Receiver<Chunk>,
        stored: &mut bool,
    ) -> std::result::Result<u64, Failure> {
        let folder = path.rsplit_once('/').map(|(folder, _)| folder.to_string()).unwrap_or_default();
        // Set once a STOR was sent: only then can a staging file exist.
        let store_sent = std::sync::atomic::AtomicBool::new(false);
        let opened = self
            .with_retries("opening the upload", |mut ftp| {
                let folder = folder.clone();
                let store_sent = &store_sent;
                async move {
                    if !folder.is_empty() {
                        self.make_folders(&mut ftp, &folder).await?;
                    }
                    if self.remote_size(&mut ftp, path).await?.is_some() {
                        return Err(Failure::new(ErrorKind::AlreadyExists, format!("{path} exists on the server")));
                    }
                    store_sent.store(true, std::sync::atomic::Ordering::Relaxed);
                    let transfer = self.timed("STOR", ftp.put_with_stream(staging)).await?;
                    Ok((ftp, transfer))
                }
            })
            .await;
        *stored = store_sent.load(std::sync::atomic::Ordering::Relaxed);
        let (mut ftp, mut transfer) = opened?;

        let mut written: u64 = 0;
        let outcome = loop {
            match chunks.recv().await {
                Some(Chunk::Data(data)) => {
                    match tokio::time::timeout(self.settings.timeout, transfer.write_all(&data)).await {
                        Ok(Ok(())) => written += data.len() as u64,
                        Ok(Err(err)) => {
                            break Err(Failure::new(
                                ErrorKind::Unavailable,
                                format!("sending data failed after {written} bytes: {err}"),
                            ));
                        }
                        Err(_) => break Err(Failure::timeout("sending data", self.settings.timeout)),
                    }
                }
                Some(Chunk::End { bytes }) if bytes == written => break Ok(()),
                Some(Chunk::End { bytes }) => {
                    break Err(Failure::new(
                        ErrorKind::Incomplete,
                        format!("received {written} bytes, the producer announced {bytes}"),
                    ));
                }
                None => {
                    break Err(Failure::new(ErrorKind::Incomplete, format!("upload abandoned after {written} bytes")));
                }
            }
        };
        if let Err(failure) = outcome {
            drop(transfer);
            return Err(failure);
        }
        self.timed("finishing the transfer", transfer.finish()).await?;

        // A server may acknowledge a transfer whose tail was lost: trust
        // only its own count of the stored bytes.
        match self.remote_size(&mut ftp, staging).await? {
            Some(size) if size == written => {}
            Some(size) => {
                return Err(Failure::new(
                    ErrorKind::Incomplete,
                    format!("the server stored {size} bytes of {written} sent; nothing was published"),
                ));
            }
            None => return Err(Failure::new(ErrorKind::Incomplete, "the staging file vanished after the transfer")),
        }
        if self.remote_size(&mut ftp, path).await?.is_some() {
            return Err(Failure::new(
                ErrorKind::AlreadyExists,
                format!("{path} appeared on the server during the upload"),
            ));
        }
        self.timed("renaming", ftp.rename(staging, path)).await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), ftp.quit()).await;
        Ok(written)
    }

    /// Deletes a staging file after a failed upload, if the server can be reached.
    async fn discard(&self, staging: &str) {
        let result = async {
            let mut ftp = self.connect().await?;
            let result = self.timed("deleting the staging file", ftp.rm(staging)).await;
            let _ = tokio::time::timeout(Duration::from_secs(2), ftp.quit()).await;
            result
        }
        .await;
        if let Err(failure) = result
            && failure.kind != ErrorKind::NotFound
        {
            tracing::warn!(target = %self.name, file = staging, error = %failure.message, "could not remove a staging file; a later run removes it");
        }
    }

    /// Lists the files of one folder with their sizes.
    async fn list_folder(&self, ftp: &mut Ftp, folder: &str) -> std::result::Result<Vec<ListedFile>, Failure> {
        let path = if folder.is_empty() { None } else { Some(folder) };
        let lines = match self.timed("LIST", ftp.list(path)).await {
            Ok(lines) => lines,
            Err(failure) if failure.kind == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(failure) => return Err(failure),
        };
        Ok(lines
            .iter()
            .filter_map(|line| {
                ListParser::parse_posix(line)
                    .or_else(|_| ListParser::parse_dos(line))
                    .or_else(|_| ListParser::parse_mlsd(line))
                    .ok()
            })
            .collect())
    }

    /// Uploads `data` as `name`: the whole upload is retried on transient failures.
    async fn put_small(&self, name: &ObjectName, data: Bytes) -> std::result::Result<(), Failure> {
        let path = self.remote_path(name.as_str());
        let file_name = name.as_str().rsplit('/').next().expect("object names have a last component");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let staging = match path.rsplit_once('/') {
                Some((folder, _)) => format!("{folder}/{}", super::staging_file_name(file_name)),
                None => super::staging_file_name(file_name),
            };
            let (sender, mut receiver) = mpsc::channel(2);
            sender.send(Chunk::Data(data.clone())).await.expect("the receiver is alive");
            sender.send(Chunk::End { bytes: data.len() as u64 }).await.expect("the receiver is alive");
            let mut stored = false;
            let result = self.upload(&path, &staging, &mut receiver, &mut stored).await;
            match result {
                Ok(_) => return Ok(()),
                Err(failure) => {
                    if stored {
                        self.discard(&staging).await;
                    }
                    if !failure.is_transient() || attempt >= self.settings.attempts {
                        return Err(failure);
                    }
                    tracing::warn!(target = %self.name, attempt, error = %failure.message, "upload of {name} failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1 << attempt.min(4))).await;
                }
            }
        }
    }
}

impl fmt::Display for FtpTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client = &self.client;
        let scheme = match client.settings.tls {
            FtpTls::None => "ftp",
            FtpTls::Explicit => "ftps (explicit)",
            FtpTls::Implicit => "ftps (implicit)",
        };
        write!(
            f,
            "{} ({scheme} {}:{}/{})",
            client.name, client.settings.host, client.settings.port, client.settings.path
        )
    }
}

impl Client {
    /// Uploads a stream to a staging name and publishes it; see [`Target::put_stream`].
    async fn put_stream(&self, name: &ObjectName, chunks: &mut mpsc::Receiver<Chunk>) -> Result<u64> {
        let path = self.remote_path(name.as_str());
        let file_name = name.as_str().rsplit('/').next().expect("object names have a last component");
        let staging = match path.rsplit_once('/') {
            Some((folder, _)) => format!("{folder}/{}", super::staging_file_name(file_name)),
            None => super::staging_file_name(file_name),
        };
        let mut stored = false;
        match self.upload(&path, &staging, chunks, &mut stored).await {
            Ok(written) => Ok(written),
            Err(failure) => {
                if stored {
                    self.discard(&staging).await;
                }
                Err(self.error("upload", name.as_str(), failure))
            }
        }
    }

    async fn get_object(&self, name: &ObjectName) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let path = self.remote_path(name.as_str());
        let (ftp, transfer) = self
            .with_retries("opening the download", |mut ftp| {
                let path = path.clone();
                async move {
                    let transfer = self.timed("RETR", ftp.retr_as_stream(&path)).await?;
                    Ok((ftp, transfer))
                }
            })
            .await
            .map_err(|failure| self.error("download", name.as_str(), failure))?;
        // The transfer must be finished after the last byte to learn whether
        // the server completed it, so a task pumps the data through a channel
        // and reports the final reply as the reader's last item.
        let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(4);
        let timeout = self.settings.timeout;
        tokio::spawn(async move {
            let mut ftp = ftp;
            let mut transfer = transfer;
            loop {
                let mut buffer = vec![0u8; 256 * 1024];
                let read = match tokio::time::timeout(timeout, transfer.read(&mut buffer)).await {
                    Ok(Ok(read)) => read,
                    Ok(Err(err)) => {
                        let _ = sender.send(Err(err)).await;
                        return;
                    }
                    Err(_) => {
                        let _ = sender
                            .send(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "download timed out")))
                            .await;
                        return;
                    }
                };
                if read == 0 {
                    break;
                }
                buffer.truncate(read);
                if sender.send(Ok(Bytes::from(buffer))).await.is_err() {
                    return;
                }
            }
            match tokio::time::timeout(timeout, transfer.finish()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    let _ = sender
                        .send(Err(std::io::Error::other(format!("the server did not complete the download: {err}"))))
                        .await;
                }
                Err(_) => {
                    let _ = sender
                        .send(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "download completion timed out")))
                        .await;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), ftp.quit()).await;
        });
        Ok(Box::new(ChannelReader { receiver, current: Bytes::new() }))
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let (folder, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let folder = folder.to_string();
        let prefix = prefix.to_string();
        let objects = self
            .with_retries("listing", |mut ftp| {
                let folder = folder.clone();
                let prefix = prefix.clone();
                async move {
                    let mut out = Vec::new();
                    let mut pending = vec![folder];
                    while let Some(relative) = pending.pop() {
                        for file in self.list_folder(&mut ftp, &self.remote_path(&relative)).await? {
                            let file_name = file.name().rsplit('/').next().unwrap_or(file.name()).to_string();
                            if file_name.starts_with('.') || super::staged_final_name(&file_name).is_some() {
                                continue;
                            }
                            let name = if relative.is_empty() { file_name } else { format!("{relative}/{file_name}") };
                            if file.is_directory() {
                                if prefix.starts_with(&format!("{name}/")) || name.starts_with(&prefix) {
                                    pending.push(name);
                                }
                            } else if name.starts_with(&prefix)
                                && let Ok(object) = ObjectName::new(name)
                            {
                                out.push(ObjectInfo {
                                    name: object,
                                    size: file.size() as u64,
                                    modified: Some(file.modified()),
                                });
                            }
                        }
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(2), ftp.quit()).await;
                    Ok(out)
                }
            })
            .await
            .map_err(|failure| {
                let folder = self.remote_path(&folder);
                self.error("list", if folder.is_empty() { "the login folder" } else { &folder }, failure)
            })?;
        let mut objects = objects;
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    async fn delete_object(&self, name: &ObjectName) -> Result<()> {
        let path = self.remote_path(name.as_str());
        self.with_retries("deleting", |mut ftp| {
            let path = path.clone();
            async move {
                let result = self.timed("DELE", ftp.rm(&path)).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), ftp.quit()).await;
                result
            }
        })
        .await
        .map_err(|failure| self.error("delete", name.as_str(), failure))
    }

    async fn remove_staging(&self, prefix: &str, before_id: &str) -> Result<Vec<String>> {
        let (folder, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let folder = self.remote_path(folder);
        self.with_retries("removing staging files", |mut ftp| {
            let folder = folder.clone();
            async move {
                let mut removed = Vec::new();
                for file in self.list_folder(&mut ftp, &folder).await? {
                    let file_name = file.name().rsplit('/').next().unwrap_or(file.name()).to_string();
                    if file.is_file() && super::is_stale_staging(&file_name, before_id) {
                        let path = if folder.is_empty() { file_name } else { format!("{folder}/{file_name}") };
                        self.timed("DELE", ftp.rm(&path)).await?;
                        removed.push(path);
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), ftp.quit()).await;
                Ok(removed)
            }
        })
        .await
        .map_err(|failure| self.error("remove staging files in", &folder, failure))
    }
}

#[async_trait]
impl Target for FtpTarget {
    fn name(&self) -> &str {
        &self.client.name
    }

    async fn put_stream(
        &self,
        name: &ObjectName,
        mut chunks: mpsc::Receiver<Chunk>,
        _size_hint: Option<u64>,
    ) -> Result<u64> {
        // The upload runs in a task of its own: if this future is dropped,
        // the task still sees the channel close and removes its staging file.
        let client = Arc::clone(&self.client);
        let name = name.clone();
        tokio::spawn(async move { client.put_stream(&name, &mut chunks).await }).await.expect("upload task panicked")
    }

    async fn put_bytes(&self, name: &ObjectName, data: Bytes) -> Result<()> {
        self.client.put_small(name, data).await.map_err(|failure| self.client.error("upload", name.as_str(), failure))
    }

    async fn get(&self, name: &ObjectName) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        self.client.get_object(name).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.client.list_objects(prefix).await
    }

    async fn delete(&self, name: &ObjectName) -> Result<()> {
        self.client.delete_object(name).await
    }

    async fn remove_stale_staging(&self, prefix: &str, before_id: &str) -> Result<Vec<String>> {
        self.client.remove_staging(prefix, before_id).await
    }
}

/// `AsyncRead` over chunks from a channel; an `Err` item ends the stream with that error.
struct ChannelReader {
    receiver: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl AsyncRead for ChannelReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        while self.current.is_empty() {
            match self.receiver.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk,
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(err)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let take = self.current.len().min(buf.remaining());
        let chunk = self.current.split_to(take);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// Trusts the system's roots and the certificates in `ca_file`. A
/// certificate in `ca_file` that the server presents as its own is also
/// accepted as is: a self-signed server certificate is often marked as a CA,
/// which chain validation refuses as a server certificate.
fn tls_config(settings: &FtpSettings) -> std::result::Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder();
    if settings.insecure_skip_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for certificate in native.certs {
        let _ = roots.add(certificate);
    }
    let mut pinned = Vec::new();
    if let Some(path) = &settings.ca_file {
        use rustls_pki_types::pem::PemObject;
        let certificates = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|err| format!("cannot read ca_file {}: {err}", path.display()))?;
        for certificate in certificates {
            let certificate =
                certificate.map_err(|err| format!("invalid certificate in ca_file {}: {err}", path.display()))?;
            // One that cannot be a trust anchor can still be pinned.
            let _ = roots.add(certificate.clone());
            pinned.push(certificate);
        }
        if pinned.is_empty() {
            return Err(format!("ca_file {} holds no PEM certificate", path.display()));
        }
    }
    let chain = if roots.is_empty() {
        None
    } else {
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|err| format!("cannot use the trusted certificates: {err}"))?;
        Some(verifier)
    };
    if chain.is_none() && pinned.is_empty() {
        return Err("no trusted certificate: the system has none and ca_file is not set; set ca_file".to_string());
    }
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOrPinned { chain, pinned }))
        .with_no_client_auth())
}

/// Accepts a certificate chain that validates against the trusted roots, or
/// a server certificate identical to one in `ca_file`.
#[derive(Debug)]
struct ChainOrPinned {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    pinned: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for ChainOrPinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verdict = match &self.chain {
            Some(chain) => chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
        };
        match verdict {
            Ok(verified) => Ok(verified),
            Err(_) if self.pinned.iter().any(|pinned| pinned.as_ref() == end_entity.as_ref()) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Err(err) => Err(err),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        supported_verify_schemes()
    }
}

/// Certificate verifier for `insecure_skip_verify = true`: accepts anything.
#[derive(Debug)]
struct AcceptAnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        supported_verify_schemes()
    }
}

// The handshake signature is checked the same way whatever decided trust:
// it proves the server holds the certificate's private key.

fn verify_tls12_signature(
    message: &[u8],
    cert: &rustls_pki_types::CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider::get_default().expect("a crypto provider is installed at start-up");
    rustls::crypto::verify_tls12_signature(message, cert, dss, &provider.signature_verification_algorithms)
}

fn verify_tls13_signature(
    message: &[u8],
    cert: &rustls_pki_types::CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    let provider = rustls::crypto::CryptoProvider::get_default().expect("a crypto provider is installed at start-up");
    rustls::crypto::verify_tls13_signature(message, cert, dss, &provider.signature_verification_algorithms)
}

fn supported_verify_schemes() -> Vec<rustls::SignatureScheme> {
    rustls::crypto::CryptoProvider::get_default()
        .map(|provider| provider.signature_verification_algorithms.supported_schemes())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use suppaftp::types::Response;

    use super::*;

    fn reply(code: u32, text: &str) -> Failure {
        Failure::from(FtpError::UnexpectedResponse(Response::new(code.into(), text.as_bytes().to_vec())))
    }

    #[test]
    fn temporary_replies_are_retried() {
        for code in [421, 425, 426, 450, 451, 452] {
            let failure = reply(code, &format!("{code} try later"));
            assert_eq!(failure.kind, ErrorKind::Unavailable, "reply {code}");
            assert!(failure.is_transient(), "reply {code}");
        }
    }

    #[test]
    fn permanent_replies_are_not_retried() {
        let login = reply(530, "530 Login incorrect.");
        assert_eq!(login.kind, ErrorKind::PermissionDenied);
        assert!(!login.is_transient());
        assert_eq!(login.message, "server replied 530 Login incorrect.");

        let missing = reply(550, "550 Failed to open file.");
        assert_eq!(missing.kind, ErrorKind::NotFound);
        assert!(!missing.is_transient());

        for code in [500, 501, 502, 504, 552, 553] {
            assert_eq!(reply(code, "no").kind, ErrorKind::Other, "reply {code}");
        }
    }

    #[test]
    fn broken_connections_are_retried() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let failure = Failure::from(FtpError::ConnectionError(io));
        assert!(failure.is_transient());
        assert!(failure.message.contains("reset by peer"), "{}", failure.message);
    }

    #[test]
    fn timeouts_are_retried() {
        let failure = Failure::timeout("upload of backup.rdb.zst", Duration::from_secs(30));
        assert!(failure.is_transient());
        assert_eq!(failure.message, "upload of backup.rdb.zst timed out after 30 s");
    }
}
