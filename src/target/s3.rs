//! A target in an S3 bucket or an S3-compatible store (MinIO, Ceph, R2, …),
//! through object_store.
//!
//! S3 publishes an object atomically when its PUT, or the completion of its
//! multipart upload, succeeds; parts of an unfinished upload are never
//! visible. So there is no staging name: a small artifact is one PUT, a
//! large one a multipart upload that is aborted on any failure. Manifests
//! are written with `If-None-Match: *` (unless `conditional_writes = false`),
//! so two writers can never replace each other's manifest.
//!
//! Memory per upload is bounded by the part size: one part fills while at
//! most one other is in flight. The part size grows with the expected size
//! so that no upload needs more than S3's 10,000 parts.
//!
//! Retries of single requests with backoff are object_store's: 5xx replies,
//! connection errors and time-outs are retried up to `attempts` times.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as StorePath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Chunk, Error, ErrorKind, ObjectInfo, ObjectName, Result, Target};
use crate::config::S3Settings;
use crate::config::{MAX_PART_BYTES, MIN_PART_BYTES};
use crate::secret::Secret;

/// S3's limit on the number of parts of one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// Resolved S3 credentials.
pub struct S3Credentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

pub struct S3Target {
    name: String,
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    part_size: u64,
    storage_class: Option<String>,
    conditional_writes: bool,
}

/// Chooses the part size for an upload of at most `size_hint` bytes: the
/// configured minimum, raised so that the whole upload fits in 10,000 parts,
/// rounded up to a whole MiB and capped at S3's 5 GiB per part.
pub fn plan_part_size(size_hint: Option<u64>, minimum: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let minimum = minimum.clamp(MIN_PART_BYTES, MAX_PART_BYTES);
    let needed = match size_hint {
        Some(bytes) => bytes.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB,
        None => 0,
    };
    needed.max(minimum).min(MAX_PART_BYTES)
}

/// Part size of part number `index` (from 0). With a known size every part
/// has the planned size. With an unknown size the size doubles every 1,000
/// parts, which keeps the count under 10,000 up to several TiB.
fn part_size_at(index: u64, planned: u64, size_known: bool) -> u64 {
    if size_known {
        return planned;
    }
    let doublings = (index / 1000).min(30) as u32;
    planned.saturating_mul(1 << doublings).min(MAX_PART_BYTES)
}

impl S3Target {
    pub fn new(
        name: impl Into<String>,
        settings: &S3Settings,
        credentials: Option<S3Credentials>,
    ) -> std::result::Result<Self, String> {
        let name = name.into();
        crate::tls::ensure_crypto_provider();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_conditional_put(if settings.conditional_writes {
                S3ConditionalPut::ETagMatch
            } else {
                S3ConditionalPut::Disabled
            })
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: settings.attempts.saturating_sub(1) as usize,
                retry_timeout: settings.timeout * settings.attempts,
            })
            .with_client_options(
                ClientOptions::new().with_timeout(settings.timeout).with_connect_timeout(Duration::from_secs(10)),
            )
            // After the client options, which would reset it.
            .with_allow_http(settings.allow_http);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(credentials) = credentials {
            builder = builder
                .with_access_key_id(credentials.access_key_id.expose())
                .with_secret_access_key(credentials.secret_access_key.expose());
            if let Some(token) = credentials.session_token {
                builder = builder.with_token(token.expose());
            }
        }
        let store = builder.build().map_err(|err| format!("invalid S3 settings: {err}"))?;
        Ok(S3Target {
            name,
            store: Arc::new(store),
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
            endpoint: settings.endpoint.clone(),
            part_size: settings.multipart_part_size_bytes,
            storage_class: settings.storage_class.clone(),
            conditional_writes: settings.conditional_writes,
        })
    }

    fn location(&self, name: &str) -> StorePath {
        if self.prefix.is_empty() { StorePath::from(name) } else { StorePath::from(format!("{}/{name}", self.prefix)) }
    }

    fn attributes(&self) -> Attributes {
        let mut attributes = Attributes::new();
        if let Some(class) = &self.storage_class {
            attributes.insert(Attribute::StorageClass, class.clone().into());
        }
        attributes
    }

    fn error(&self, action: &'static str, object: &str, err: object_store::Error) -> Error {
        let kind = match &err {
            object_store::Error::NotFound { .. } => ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                ErrorKind::AlreadyExists
            }
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                ErrorKind::PermissionDenied
            }
            object_store::Error::Generic { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Other,
        };
        // object_store's message includes its direct cause but not always
        // the root one (a refused connection, a TLS failure): add it.
        let mut message = shorten_error_body(&condense_http_error(&format!("{err}")));
        let mut root = std::error::Error::source(&err);
        while let Some(cause) = root.and_then(std::error::Error::source) {
            root = Some(cause);
        }
        if let Some(root) = root.map(|root| shorten_error_body(&root.to_string()))
            && !message.contains(&root)
        {
            message.push_str(&format!(": {root}"));
        }
        let hint = match error_code(&message) {
            Some("NoSuchBucket") => format!("; bucket {} does not exist: create it or correct `bucket`", self.bucket),
            Some("SignatureDoesNotMatch") => {
                "; the secret key does not match the access key: check the secret access key".to_string()
            }
            Some("InvalidAccessKeyId") => {
                "; the store does not know this access key: check the access key id".to_string()
            }
            _ if kind == ErrorKind::PermissionDenied || message.contains("403 Forbidden") => {
                "; check the access key, the secret key and the bucket policy".to_string()
            }
            _ => String::new(),
        };
        let object = if object.is_empty() { format!("bucket {}", self.bucket) } else { object.to_string() };
        Error { kind, target: self.name.clone(), action, object, message: format!("{message}{hint}") }
    }

    fn incomplete(&self, object: &str, message: String) -> Error {
        Error {
            kind: ErrorKind::Incomplete,
            target: self.name.clone(),
            action: "upload",
            object: object.to_string(),
            message,
        }
    }

    fn already_exists(&self, name: &ObjectName) -> Error {
        Error {
            kind: ErrorKind::AlreadyExists,
            target: self.name.clone(),
            action: "upload",
            object: name.to_string(),
            message: "the object exists".to_string(),
        }
    }

    /// Puts a whole object in one request; existing objects are not replaced.
    async fn put_whole(&self, name: &ObjectName, payload: PutPayload) -> Result<()> {
        let mode = if self.conditional_writes { PutMode::Create } else { PutMode::Overwrite };
        if !self.conditional_writes && self.store.head(&self.location(name.as_str())).await.is_ok() {
            return Err(self.already_exists(name));
        }
        let options = PutOptions { mode, attributes: self.attributes(), ..PutOptions::default() };
        self.store
            .put_opts(&self.location(name.as_str()), payload, options)
            .await
            .map(|_| ())
            .map_err(|err| self.error("upload", name.as_str(), err))
    }

    /// Streams `first` and the rest of `chunks` as a multipart upload.
    async fn put_multipart(
        &self,
        name: &ObjectName,
        first: Vec<Bytes>,
        chunks: &mut mpsc::Receiver<Chunk>,
        planned: u64,
        size_known: bool,
    ) -> Result<u64> {
        let location = self.location(name.as_str());
        let options = PutMultipartOptions { attributes: self.attributes(), ..PutMultipartOptions::default() };
        let upload = self
            .store
            .put_multipart_opts(&location, options)
            .await
            .map_err(|err| self.error("start multipart upload of", name.as_str(), err))?;
        let mut guard = AbortGuard { upload: Some(upload), target: self.name.clone() };
        let mut in_flight: JoinSet<object_store::Result<()>> = JoinSet::new();
        let mut parts: u64 = 0;
        let mut written: u64 = 0;
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_bytes: u64 = 0;
        let mut incoming = first.into_iter();

        let outcome: Result<u64> = 'upload: loop {
            let next = match incoming.next() {
                Some(data) => Some(Chunk::Data(data)),
                None => chunks.recv().await,
            };
            let last = match next {
                Some(Chunk::Data(data)) => {
                    written += data.len() as u64;
                    pending_bytes += data.len() as u64;
                    pending.push(data);
                    false
                }
                Some(Chunk::End { bytes }) if bytes == written => true,
                Some(Chunk::End { bytes }) => {
                    break Err(self.incomplete(
                        name.as_str(),
                        format!("received {written} bytes, the producer announced {bytes}"),
                    ));
                }
                None => break Err(self.incomplete(name.as_str(), format!("upload abandoned after {written} bytes"))),
            };
            // Send whole parts while there is enough data, and the rest at the end.
            while pending_bytes > 0 && (last || pending_bytes >= part_size_at(parts, planned, size_known)) {
                let size = if last { pending_bytes } else { part_size_at(parts, planned, size_known) };
                let payload = take_bytes(&mut pending, &mut pending_bytes, size);
                if parts == MAX_PARTS {
                    break 'upload Err(
                        self.incomplete(name.as_str(), format!("the upload would need more than {MAX_PARTS} parts"))
                    );
                }
                // At most one part in flight while the next one fills.
                while !in_flight.is_empty() {
                    match in_flight.join_next().await {
                        Some(Ok(Ok(()))) | None => {}
                        Some(Ok(Err(err))) => break 'upload Err(self.error("upload part of", name.as_str(), err)),
                        Some(Err(err)) => {
                            break 'upload Err(self.incomplete(name.as_str(), format!("part task failed: {err}")));
                        }
                    }
                }
                let upload = guard.upload.as_mut().expect("the upload is open until completed or aborted");
                in_flight.spawn(upload.put_part(payload));
                parts += 1;
            }
            if last {
                while let Some(result) = in_flight.join_next().await {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => break 'upload Err(self.error("upload part of", name.as_str(), err)),
                        Err(err) => {
                            break 'upload Err(self.incomplete(name.as_str(), format!("part task failed: {err}")));
                        }
                    }
                }
                let upload = guard.upload.as_mut().expect("the upload is open until completed or aborted");
                match upload.complete().await {
                    Ok(_) => {
                        guard.upload = None;
                        break Ok(written);
                    }
                    Err(err) => break Err(self.error("complete multipart upload of", name.as_str(), err)),
                }
            }
        };
        if outcome.is_err() {
            in_flight.abort_all();
            guard.abort().await;
        }
        outcome
    }
}

/// Replaces an S3 XML error document in `message` with its code and
/// message, which is all it says that matters.
fn shorten_error_body(message: &str) -> String {
    let Some(start) = message.find("<?xml").or_else(|| message.find("<Error>")) else {
        return message.to_string();
    };
    let document = &message[start..];
    let end = document.find("</Error>").map(|end| end + "</Error>".len()).unwrap_or(document.len());
    let element = |tag: &str| {
        let open = format!("<{tag}>");
        let from = document[..end].find(&open)? + open.len();
        let to = document[from..end].find(&format!("</{tag}>"))? + from;
        Some(document[from..to].to_string())
    };
    let summary = match (element("Code"), element("Message")) {
        (Some(code), Some(text)) => format!("{code} ({text})"),
        (Some(code), None) => code,
        (None, Some(text)) => text,
        (None, None) => return message.to_string(),
    };
    format!("{}{summary}{}", &message[..start], &document[end..])
}

/// Reduces object_store's nested "Error performing list request: Error
/// performing GET <url> in 1.2ms - Server returned non-2xx status code:
/// <status>" to "GET <url>: <status>".
fn condense_http_error(message: &str) -> String {
    const STATUS: &str = " - Server returned non-2xx status code: ";
    const REQUEST: &str = "Error performing ";
    let Some((head, status)) = message.split_once(STATUS) else {
        return message.to_string();
    };
    let Some(start) = head.rfind(REQUEST) else {
        return message.to_string();
    };
    let status = status.trim_end().trim_end_matches(':');
    let request = &head[start + REQUEST.len()..];
    let request = request.rsplit_once(" in ").map_or(request, |(request, _)| request);
    // "Error after 2 retries in 3.1s, max_retries: …" when retries ran out.
    let retries = head
        .split_once("Error after ")
        .and_then(|(_, rest)| rest.split_once(" in "))
        .map(|(count, _)| format!(" (after {count})"))
        .unwrap_or_default();
    format!("{request}: {status}{retries}")
}

/// Finds the S3 error code in a message shortened by [`shorten_error_body`].
fn error_code(message: &str) -> Option<&'static str> {
    ["NoSuchBucket", "SignatureDoesNotMatch", "InvalidAccessKeyId"].into_iter().find(|code| message.contains(code))
}

/// Takes `size` bytes from the front of `pending` without copying whole chunks.
fn take_bytes(pending: &mut Vec<Bytes>, pending_bytes: &mut u64, size: u64) -> PutPayload {
    let mut taken = Vec::new();
    let mut left = size;
    while left > 0 {
        let chunk = &mut pending[0];
        if chunk.len() as u64 <= left {
            left -= chunk.len() as u64;
            taken.push(pending.remove(0));
        } else {
            taken.push(chunk.split_to(left as usize));
            left = 0;
        }
    }
    *pending_bytes -= size;
    taken.into_iter().collect()
}

/// Aborts a multipart upload that was neither completed nor aborted, also
/// when the upload task is cancelled, so no parts stay behind.
struct AbortGuard {
    upload: Option<Box<dyn MultipartUpload>>,
    target: String,
}

impl AbortGuard {
    async fn abort(&mut self) {
        if let Some(mut upload) = self.upload.take()
            && let Err(err) = upload.abort().await
        {
            tracing::warn!(target = %self.target, error = %err, "could not abort a failed multipart upload; a bucket lifecycle rule removes its parts");
        }
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let target = self.target.clone();
            super::CLEANUP.spawn_on(
                async move {
                    if let Err(err) = upload.abort().await {
                        tracing::warn!(target = %target, error = %err, "could not abort a cancelled multipart upload");
                    }
                },
                &runtime,
            );
        }
    }
}

impl fmt::Display for S3Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoint = self.endpoint.as_deref().unwrap_or("aws");
        write!(f, "{} (s3 {endpoint} bucket {} prefix {:?})", self.name, self.bucket, self.prefix)
    }
}

#[async_trait]
impl Target for S3Target {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put_stream(
        &self,
        name: &ObjectName,
        mut chunks: mpsc::Receiver<Chunk>,
        size_hint: Option<u64>,
    ) -> Result<u64> {
        let planned = plan_part_size(size_hint, self.part_size);
        // Collect up to one part: a smaller object is a single PUT.
        let mut first = Vec::new();
        let mut first_bytes: u64 = 0;
        loop {
            match chunks.recv().await {
                Some(Chunk::Data(data)) => {
                    first_bytes += data.len() as u64;
                    first.push(data);
                    if first_bytes >= planned {
                        break;
                    }
                }
                Some(Chunk::End { bytes }) if bytes == first_bytes => {
                    self.put_whole(name, first.into_iter().collect()).await?;
                    return Ok(first_bytes);
                }
                Some(Chunk::End { bytes }) => {
                    return Err(self.incomplete(
                        name.as_str(),
                        format!("received {first_bytes} bytes, the producer announced {bytes}"),
                    ));
                }
                None => {
                    return Err(self.incomplete(name.as_str(), format!("upload abandoned after {first_bytes} bytes")));
                }
            }
        }
        if self.store.head(&self.location(name.as_str())).await.is_ok() {
            return Err(self.already_exists(name));
        }
        self.put_multipart(name, first, &mut chunks, planned, size_hint.is_some()).await
    }

    async fn put_bytes(&self, name: &ObjectName, data: Bytes) -> Result<()> {
        self.put_whole(name, PutPayload::from(data)).await
    }

    async fn get(&self, name: &ObjectName) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let result = self
            .store
            .get(&self.location(name.as_str()))
            .await
            .map_err(|err| self.error("download", name.as_str(), err))?;
        let stream = result.into_stream().map_err(std::io::Error::other);
        Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let folder = prefix.rsplit_once('/').map(|(folder, _)| folder).unwrap_or("");
        let location = if folder.is_empty() {
            (!self.prefix.is_empty()).then(|| StorePath::from(self.prefix.as_str()))
        } else {
            Some(self.location(folder))
        };
        let mut stream = self.store.list(location.as_ref());
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|err| self.error("list", prefix, err))?;
            let full = meta.location.to_string();
            let Some(relative) = full.strip_prefix(&strip) else { continue };
            if !relative.starts_with(prefix) {
                continue;
            }
            let Ok(object) = ObjectName::new(relative) else { continue };
            out.push(ObjectInfo { name: object, size: meta.size, modified: Some(meta.last_modified.into()) });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete(&self, name: &ObjectName) -> Result<()> {
        let location = self.location(name.as_str());
        // S3 answers a delete of a missing key with success; the contract
        // reports it, so look first.
        self.store.head(&location).await.map_err(|err| self.error("delete", name.as_str(), err))?;
        self.store.delete(&location).await.map_err(|err| self.error("delete", name.as_str(), err))
    }

    async fn remove_stale_staging(&self, _prefix: &str, _before_id: &str) -> Result<Vec<String>> {
        // Unfinished multipart uploads are invisible and aborted on failure;
        // there are no staging objects to remove.
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn planner_keeps_configured_minimum_for_small_uploads() {
        assert_eq!(plan_part_size(Some(100 * MIB), 8 * MIB), 8 * MIB);
        assert_eq!(plan_part_size(None, 8 * MIB), 8 * MIB);
        assert_eq!(plan_part_size(Some(1), MIN_PART_BYTES - 1), MIN_PART_BYTES);
    }

    #[test]
    fn planner_never_exceeds_part_limit() {
        for size in [
            MAX_PARTS * 8 * MIB,
            MAX_PARTS * 8 * MIB + 1,
            MAX_PARTS * 8 * MIB - 1,
            5 * 1024 * 1024 * MIB,
            123_456_789_012,
            1,
            0,
        ] {
            let part = plan_part_size(Some(size), 8 * MIB);
            assert!(size.div_ceil(part) <= MAX_PARTS, "{size} bytes in parts of {part} needs too many parts");
            assert!((MIN_PART_BYTES..=MAX_PART_BYTES).contains(&part));
            assert_eq!(part % MIB, 0);
        }
    }

    #[test]
    fn exact_boundary_uses_next_mebibyte() {
        // 10,000 parts of 8 MiB fit exactly; one byte more needs 9 MiB parts.
        assert_eq!(plan_part_size(Some(MAX_PARTS * 8 * MIB), 8 * MIB), 8 * MIB);
        assert_eq!(plan_part_size(Some(MAX_PARTS * 8 * MIB + 1), 8 * MIB), 9 * MIB);
    }

    #[test]
    fn unknown_size_grows_parts() {
        assert_eq!(part_size_at(0, 8 * MIB, false), 8 * MIB);
        assert_eq!(part_size_at(999, 8 * MIB, false), 8 * MIB);
        assert_eq!(part_size_at(1000, 8 * MIB, false), 16 * MIB);
        assert_eq!(part_size_at(9999, 8 * MIB, false), MAX_PART_BYTES.min((8 * MIB) << 9));
        let total: u64 = (0..MAX_PARTS).map(|index| part_size_at(index, 8 * MIB, false)).sum();
        assert!(total >= 5 * 1024 * 1024 * MIB, "unknown-size uploads must reach 5 TiB, reach {total}");
        assert_eq!(part_size_at(5000, 8 * MIB, true), 8 * MIB);
    }

    #[test]
    fn error_document_is_shortened() {
        let message = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\" \
                       encoding=\"UTF-8\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request \
                       signature we calculated does not match</Message><RequestId>1</RequestId></Error>";
        assert_eq!(
            shorten_error_body(message),
            "Server returned non-2xx status code: 403 Forbidden: SignatureDoesNotMatch (The request signature we \
             calculated does not match)"
        );
    }

    #[test]
    fn nested_request_error_is_condensed() {
        let message = "Generic S3 error: Error performing list request: Error performing GET \
                       http://127.0.0.1:9000/backups?list-type=2 in 1.18ms - Server returned non-2xx status code: \
                       403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code></Error>";
        assert_eq!(
            shorten_error_body(&condense_http_error(message)),
            "GET http://127.0.0.1:9000/backups?list-type=2: 403 Forbidden: SignatureDoesNotMatch"
        );
        assert_eq!(condense_http_error("connection refused"), "connection refused");
    }

    #[test]
    fn retries_survive_condensing() {
        let message = "Generic S3 error: Error after 2 retries in 3.2s, max_retries: 2, retry_timeout: 20s, \
                       source: Error performing PUT http://127.0.0.1:9000/b/x in 5ms - Server returned non-2xx \
                       status code: 500 Internal Server Error: ";
        assert_eq!(
            condense_http_error(message),
            "PUT http://127.0.0.1:9000/b/x: 500 Internal Server Error (after 2 retries)"
        );
    }

    #[test]
    fn error_without_document_is_kept() {
        assert_eq!(shorten_error_body("connection refused"), "connection refused");
        assert_eq!(
            shorten_error_body("404 Not Found: <Error><Code>NoSuchBucket</Code></Error>"),
            "404 Not Found: NoSuchBucket"
        );
    }

    #[test]
    fn take_bytes_splits_chunks() {
        let mut pending = vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg")];
        let mut pending_bytes = 7;
        let payload = take_bytes(&mut pending, &mut pending_bytes, 5);
        assert_eq!(payload.content_length(), 5);
        assert_eq!(pending_bytes, 2);
        assert_eq!(pending, vec![Bytes::from_static(b"fg")]);
    }
}
