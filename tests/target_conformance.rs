//! The `Target` contract, checked the same way for every implementation:
//! a put is all-or-nothing, `list` shows only published objects, existing
//! objects are never replaced, and a failed or abandoned upload leaves nothing
//! behind.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::servers::{self, S3Server, Vsftpd};
use sessbackup::config::{FtpSettings, FtpTls, S3Settings};
use sessbackup::secret::Secret;
use sessbackup::target::{Chunk, ErrorKind, FtpTarget, LocalTarget, ObjectName, S3Credentials, S3Target, Target};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

fn name(text: &str) -> ObjectName {
    ObjectName::new(text).unwrap()
}

async fn read_all(target: &dyn Target, object: &ObjectName) -> Vec<u8> {
    let mut reader = target.get(object).await.unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    out
}

async fn listed(target: &dyn Target, prefix: &str) -> Vec<String> {
    target.list(prefix).await.unwrap().into_iter().map(|info| info.name.to_string()).collect()
}

/// Streams `parts` and then the end marker announcing `announced` bytes.
async fn put_parts(
    target: &Arc<dyn Target>,
    object: &ObjectName,
    parts: &[&[u8]],
    announced: Option<u64>,
) -> sessbackup::target::Result<u64> {
    let (sender, receiver) = mpsc::channel(2);
    let upload = {
        let target = Arc::clone(target);
        let object = object.clone();
        tokio::spawn(async move { target.put_stream(&object, receiver, None).await })
    };
    for part in parts {
        sender.send(Chunk::Data(Bytes::copy_from_slice(part))).await.unwrap();
    }
    if let Some(bytes) = announced {
        sender.send(Chunk::End { bytes }).await.unwrap();
    }
    drop(sender);
    upload.await.unwrap()
}

/// Runs every contract check; `leftovers` lists anything a target keeps
/// besides published objects (staging files), which must be empty after each
/// failed upload.
async fn conformance(target: Arc<dyn Target>, leftovers: impl Fn() -> Vec<String>) {
    // A streamed put publishes exactly the bytes sent.
    let first = name("job/20260101T000000Z-00000001.rdb.zst");
    let stored = put_parts(&target, &first, &[b"hello ", b"world"], Some(11)).await.unwrap();
    assert_eq!(stored, 11);
    assert_eq!(read_all(target.as_ref(), &first).await, b"hello world");
    let info = target.list("job/").await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].size, 11);

    // An upload abandoned before the end marker publishes nothing.
    let abandoned = name("job/20260101T000001Z-00000002.rdb.zst");
    let err = put_parts(&target, &abandoned, &[b"partial"], None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Incomplete);
    assert!(err.to_string().contains(abandoned.as_str()), "{err}");
    assert_eq!(target.get(&abandoned).await.err().map(|err| err.kind), Some(ErrorKind::NotFound));
    assert_eq!(listed(target.as_ref(), "job/").await, vec![first.to_string()]);
    assert!(leftovers().is_empty(), "leftovers after an abandoned upload: {:?}", leftovers());

    // A size that differs from the announced one publishes nothing.
    let short = name("job/20260101T000002Z-00000003.rdb.zst");
    let err = put_parts(&target, &short, &[b"abc"], Some(4)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Incomplete);
    assert!(target.get(&short).await.is_err());
    assert!(leftovers().is_empty(), "leftovers after a short upload: {:?}", leftovers());

    // An upload task cancelled mid-stream leaves nothing either.
    let cancelled = name("job/20260101T000003Z-00000004.rdb.zst");
    let (sender, receiver) = mpsc::channel(2);
    let upload = {
        let target = Arc::clone(&target);
        let object = cancelled.clone();
        tokio::spawn(async move { target.put_stream(&object, receiver, None).await })
    };
    sender.send(Chunk::Data(Bytes::from_static(b"some bytes"))).await.unwrap();
    tokio::task::yield_now().await;
    upload.abort();
    let _ = upload.await;
    drop(sender);
    assert!(target.get(&cancelled).await.is_err());
    // The upload notices the closed channel on its own schedule.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !leftovers().is_empty() {
        assert!(std::time::Instant::now() < deadline, "leftovers after a cancelled upload: {:?}", leftovers());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(target.get(&cancelled).await.is_err());

    // An existing object is never replaced.
    let manifest = name("job/20260101T000000Z-00000001.manifest.json");
    target.put_bytes(&manifest, Bytes::from_static(b"{\"v\":1}")).await.unwrap();
    let err = target.put_bytes(&manifest, Bytes::from_static(b"{\"v\":2}")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    assert_eq!(read_all(target.as_ref(), &manifest).await, b"{\"v\":1}");
    let err = put_parts(&target, &first, &[b"replacement"], Some(11)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists);
    assert_eq!(read_all(target.as_ref(), &first).await, b"hello world");
    assert!(leftovers().is_empty(), "leftovers after refused replacements: {:?}", leftovers());

    // list filters by prefix and sorts by name.
    target.put_bytes(&name("other/a.manifest.json"), Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(listed(target.as_ref(), "job/").await, vec![manifest.to_string(), first.to_string()]);
    assert_eq!(listed(target.as_ref(), "other/").await, vec!["other/a.manifest.json".to_string()]);
    assert_eq!(listed(target.as_ref(), "").await.len(), 3);
    assert!(listed(target.as_ref(), "missing/").await.is_empty());

    // delete removes; deleting again is NotFound.
    target.delete(&manifest).await.unwrap();
    assert_eq!(target.delete(&manifest).await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(listed(target.as_ref(), "job/").await, vec![first.to_string()]);

    // A large streamed object (several S3 parts) arrives whole.
    let large = name("job/20260101T000009Z-00000009.rdb.zst");
    let chunks: Vec<Vec<u8>> = (0..12u8).map(|index| vec![index; 1 << 20]).collect();
    let parts: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let stored = put_parts(&target, &large, &parts, Some(12 << 20)).await.unwrap();
    assert_eq!(stored, 12 << 20);
    let content = read_all(target.as_ref(), &large).await;
    assert_eq!(content.len(), 12 << 20);
    for (index, chunk) in content.chunks(1 << 20).enumerate() {
        assert!(chunk.iter().all(|&byte| byte == index as u8), "part {index} of the large object differs");
    }
}

/// Files under `root` whose name starts with '.' (staging files).
fn hidden_files(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else if entry.file_name().to_string_lossy().starts_with('.') {
                out.push(entry.path().display().to_string());
            }
        }
    }
    out
}

fn ftp_settings(server: &Vsftpd, tls: FtpTls, ca_file: Option<std::path::PathBuf>) -> FtpSettings {
    FtpSettings {
        host: "127.0.0.1".to_string(),
        port: server.port,
        tls,
        username: "anonymous".to_string(),
        password: None,
        path: "upload".to_string(),
        ca_file,
        insecure_skip_verify: false,
        passive: true,
        timeout: Duration::from_secs(10),
        attempts: 2,
    }
}

fn s3_settings(server: &S3Server, endpoint: String) -> S3Settings {
    S3Settings {
        bucket: server.bucket.clone(),
        prefix: "redis/prod".to_string(),
        region: "us-east-1".to_string(),
        endpoint: Some(endpoint),
        path_style: true,
        allow_http: true,
        access_key_id: None,
        secret_access_key: None,
        session_token: None,
        storage_class: None,
        multipart_part_size_bytes: 5 * 1024 * 1024,
        conditional_writes: true,
        timeout: Duration::from_secs(10),
        attempts: 2,
    }
}

fn s3_credentials() -> S3Credentials {
    S3Credentials {
        access_key_id: Secret::new(servers::S3_ACCESS_KEY),
        secret_access_key: Secret::new(servers::S3_SECRET_KEY),
        session_token: None,
    }
}

#[tokio::test]
async fn ftp_target_meets_contract() {
    let Some(server) = Vsftpd::start(None) else { return };
    let target: Arc<dyn Target> =
        Arc::new(FtpTarget::new("ftp", ftp_settings(&server, FtpTls::None, None), None).unwrap());
    conformance(target, || server.staging_files()).await;
}

#[tokio::test]
async fn ftps_target_meets_contract() {
    let dir = tempfile::tempdir().unwrap();
    let Some(certificate) = servers::make_certificate(dir.path()) else { return };
    let Some(server) = Vsftpd::start(Some(&certificate)) else { return };
    let settings = ftp_settings(&server, FtpTls::Explicit, Some(certificate.cert.clone()));
    let target: Arc<dyn Target> = Arc::new(FtpTarget::new("ftps", settings, None).unwrap());
    conformance(target, || server.staging_files()).await;
}

#[tokio::test]
async fn implicit_ftps_target_meets_contract() {
    let dir = tempfile::tempdir().unwrap();
    let Some(certificate) = servers::make_certificate(dir.path()) else { return };
    let Some(server) = Vsftpd::start_with(Some(&certificate), "implicit_ssl=YES\n") else { return };
    let settings = ftp_settings(&server, FtpTls::Implicit, Some(certificate.cert.clone()));
    let target: Arc<dyn Target> = Arc::new(FtpTarget::new("implicit", settings, None).unwrap());
    conformance(target, || server.staging_files()).await;
}

#[tokio::test]
async fn s3_target_meets_contract() {
    let Some(server) = S3Server::start("backups") else { return };
    let target: Arc<dyn Target> =
        Arc::new(S3Target::new("s3", &s3_settings(&server, server.endpoint()), Some(s3_credentials())).unwrap());
    // Parts of unfinished multipart uploads are not objects, so there is
    // nothing left over to look for.
    conformance(target, Vec::new).await;
    for object in server.objects() {
        assert!(object.starts_with("redis/prod/"), "object outside the prefix: {object}");
    }
}

#[tokio::test]
async fn local_target_meets_contract() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("backups");
    let target: Arc<dyn Target> = Arc::new(LocalTarget::new("local", &root));
    conformance(target, || hidden_files(&root)).await;
}

#[tokio::test]
async fn local_target_ignores_stray_staging_files() {
    let dir = tempfile::tempdir().unwrap();
    let target = LocalTarget::new("local", dir.path());
    std::fs::create_dir_all(dir.path().join("job")).unwrap();
    std::fs::write(dir.path().join("job/.20260101T000000Z-1.rdb.zst.partial-1"), b"crash leftover").unwrap();
    assert!(target.list("job/").await.unwrap().is_empty());
}

#[tokio::test]
async fn local_target_names_cause_of_write_failure() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the job directory should be makes directory creation fail.
    std::fs::write(dir.path().join("job"), b"not a directory").unwrap();
    let target: Arc<dyn Target> = Arc::new(LocalTarget::new("local", dir.path()));
    let err = put_parts(&target, &name("job/x.rdb.zst"), &[b"a"], Some(1)).await.unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("target local:"), "{message}");
    assert!(message.contains("job"), "{message}");
}
