//! A target in a local directory.
//!
//! Uploads go to a hidden staging file next to their final name, created with
//! mode 0600. Publishing is: write, `fsync` the file, rename it to the final
//! name without replacing anything, `fsync` the directory so the rename
//! survives a crash, and check the published size. A staging file left by a
//! crash starts with '.', so `list` never shows it.
//!
//! Each upload runs on one blocking thread that owns the staging file from
//! creation to rename or removal. An upload whose task is cancelled keeps
//! running until its channel closes, then removes the staging file itself, so
//! no cancelled upload can leave a file behind.

use std::fmt;
use std::io::{ErrorKind as IoKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use super::{Chunk, Error, ErrorKind, ObjectInfo, ObjectName, Result, Target};
use crate::fsutil::{rename_no_replace, sync_dir, sync_dir_blocking};

pub struct LocalTarget {
    name: String,
    root: PathBuf,
}

/// A failed step of an upload, before the target and object are attached.
struct Failure {
    kind: ErrorKind,
    action: &'static str,
    message: String,
}

impl Failure {
    fn io(action: &'static str, err: std::io::Error) -> Self {
        Failure { kind: kind_of(&err), action, message: err.to_string() }
    }

    fn incomplete(message: String) -> Self {
        Failure { kind: ErrorKind::Incomplete, action: "write", message }
    }
}

fn kind_of(err: &std::io::Error) -> ErrorKind {
    match err.kind() {
        IoKind::NotFound => ErrorKind::NotFound,
        IoKind::AlreadyExists => ErrorKind::AlreadyExists,
        IoKind::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Other,
    }
}

impl LocalTarget {
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        LocalTarget { name: name.into(), root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn error(&self, action: &'static str, object: &str, err: std::io::Error) -> Error {
        Error {
            kind: kind_of(&err),
            target: self.name.clone(),
            action,
            object: object.to_string(),
            message: err.to_string(),
        }
    }

    fn attach(&self, object: &ObjectName, failure: Failure) -> Error {
        Error {
            kind: failure.kind,
            target: self.name.clone(),
            action: failure.action,
            object: object.to_string(),
            message: failure.message,
        }
    }

    fn path_of(&self, name: &ObjectName) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// Runs one upload on a blocking thread: `fill` writes the content into
    /// the staging file, then the file is published as `name`.
    async fn upload<F>(&self, name: &ObjectName, fill: F) -> Result<u64>
    where
        F: FnOnce(&mut std::fs::File) -> std::result::Result<u64, Failure> + Send + 'static,
    {
        let path = self.path_of(name);
        let result = {
            // Counted as cleanup: a cancelled upload ends here, removing its staging file.
            let cleanup = super::CLEANUP.token();
            tokio::task::spawn_blocking(move || {
                let _cleanup = cleanup;
                stage_and_publish(&path, fill)
            })
            .await
            .expect("upload thread panicked")
        };
        result.map_err(|failure| self.attach(name, failure))
    }
}

/// Creates the staging file, fills it, makes it durable and renames it to
/// `path`; removes the staging file on any failure.
fn stage_and_publish<F>(path: &Path, fill: F) -> std::result::Result<u64, Failure>
where
    F: FnOnce(&mut std::fs::File) -> std::result::Result<u64, Failure>,
{
    let parent = path.parent().expect("object paths are below the root");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|err| Failure::io("create directory for", err))?;
    let file_name = path.file_name().expect("object names have a last component").to_string_lossy().into_owned();
    let staging = path.with_file_name(format!(".{}", super::staging_file_name(&file_name)));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .map_err(|err| Failure::io("create staging file for", err))?;
    let mut guard = StagingGuard(Some(staging.clone()));

    let written = fill(&mut file)?;
    file.flush().map_err(|err| Failure::io("write", err))?;
    file.sync_all().map_err(|err| Failure::io("fsync", err))?;
    drop(file);
    rename_no_replace(&staging, path).map_err(|err| Failure::io("publish", err))?;
    guard.disarm();
    sync_dir_blocking(parent).map_err(|err| Failure::io("fsync directory of", err))?;

    let size = std::fs::metadata(path).map_err(|err| Failure::io("check size of", err))?.len();
    if size != written {
        return Err(Failure {
            kind: ErrorKind::Incomplete,
            action: "check size of",
            message: format!("file holds {size} bytes after publishing, {written} were written"),
        });
    }
    Ok(written)
}

impl fmt::Display for LocalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (local {})", self.name, self.root.display())
    }
}

/// Removes a staging file when dropped, unless it was published.
struct StagingGuard(Option<PathBuf>);

impl StagingGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[async_trait]
impl Target for LocalTarget {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put_stream(
        &self,
        name: &ObjectName,
        mut chunks: mpsc::Receiver<Chunk>,
        _size_hint: Option<u64>,
    ) -> Result<u64> {
        self.upload(name, move |file| {
            let mut written: u64 = 0;
            loop {
                match chunks.blocking_recv() {
                    Some(Chunk::Data(data)) => {
                        file.write_all(&data).map_err(|err| Failure::io("write", err))?;
                        written += data.len() as u64;
                    }
                    Some(Chunk::End { bytes }) if bytes == written => return Ok(written),
                    Some(Chunk::End { bytes }) => {
                        return Err(Failure::incomplete(format!(
                            "received {written} bytes, the producer announced {bytes}; nothing was published"
                        )));
                    }
                    None => {
                        return Err(Failure::incomplete(format!(
                            "upload abandoned after {written} bytes; nothing was published"
                        )));
                    }
                }
            }
        })
        .await
    }

    async fn put_bytes(&self, name: &ObjectName, data: Bytes) -> Result<()> {
        self.upload(name, move |file| {
            file.write_all(&data).map_err(|err| Failure::io("write", err))?;
            Ok(data.len() as u64)
        })
        .await
        .map(|_| ())
    }

    async fn get(&self, name: &ObjectName) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let file =
            tokio::fs::File::open(self.path_of(name)).await.map_err(|err| self.error("open", name.as_str(), err))?;
        Ok(Box::new(file))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let found = tokio::task::spawn_blocking(move || list_files(&root, &prefix)).await.expect("list task panicked");
        found.map_err(|err| self.error("list", &self.root.display().to_string(), err))
    }

    async fn delete(&self, name: &ObjectName) -> Result<()> {
        let path = self.path_of(name);
        tokio::fs::remove_file(&path).await.map_err(|err| self.error("delete", name.as_str(), err))?;
        sync_dir(path.parent().expect("object paths are below the root"))
            .await
            .map_err(|err| self.error("fsync directory of", name.as_str(), err))
    }

    async fn remove_stale_staging(&self, prefix: &str, before_id: &str) -> Result<Vec<String>> {
        let dir = match prefix.rfind('/') {
            Some(slash) => self.root.join(&prefix[..slash]),
            None => self.root.clone(),
        };
        let before_id = before_id.to_string();
        let for_error = dir.display().to_string();
        let removed = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == IoKind::NotFound => return Ok(Vec::new()),
                Err(err) => return Err(err),
            };
            let mut removed = Vec::new();
            for entry in entries {
                let entry = entry?;
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if file_name.starts_with('.') && super::is_stale_staging(&file_name, &before_id) {
                    std::fs::remove_file(entry.path())?;
                    removed.push(entry.path().display().to_string());
                }
            }
            if !removed.is_empty() {
                sync_dir_blocking(&dir)?;
            }
            Ok(removed)
        })
        .await
        .expect("cleanup task panicked");
        removed.map_err(|err| self.error("remove staging files in", &for_error, err))
    }
}

/// Walks `root` for published files whose object names start with `prefix`.
fn list_files(root: &Path, prefix: &str) -> std::io::Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    // Start from the deepest directory the prefix names, so a listing of one
    // job does not read every other job's folder.
    let start_dir = match prefix.rfind('/') {
        Some(slash) => prefix[..slash].to_string(),
        None => String::new(),
    };
    let mut pending = vec![start_dir];
    while let Some(relative) = pending.pop() {
        let dir = if relative.is_empty() { root.to_path_buf() } else { root.join(&relative) };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == IoKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            if file_name.starts_with('.') {
                continue;
            }
            let name = if relative.is_empty() { file_name.to_string() } else { format!("{relative}/{file_name}") };
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                if prefix.starts_with(&format!("{name}/")) || name.starts_with(prefix) || prefix.is_empty() {
                    pending.push(name);
                }
            } else if file_type.is_file() && name.starts_with(prefix) {
                let Ok(object) = ObjectName::new(name) else {
                    continue;
                };
                let metadata = entry.metadata()?;
                out.push(ObjectInfo { name: object, size: metadata.len(), modified: metadata.modified().ok() });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
