//! A target in a local directory.
//!
//! Uploads go to a hidden staging file next to their final name, created with
//! mode 0600. Publishing is: write, `fsync` the file, check its size, rename it
//! to the final name without replacing anything, then `fsync` the directory so
//! the rename survives a crash. A staging file left by a crash starts with '.',
//! so `list` never shows it.

use std::fmt;
use std::io::ErrorKind as IoKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Chunk, Error, ErrorKind, ObjectInfo, ObjectName, Result, Target};
use crate::fsutil::{rename_no_replace, sync_dir};

pub struct LocalTarget {
    name: String,
    root: PathBuf,
}

impl LocalTarget {
    pub fn new(name: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        LocalTarget { name: name.into(), root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn error(&self, action: &'static str, object: &str, err: std::io::Error) -> Error {
        let kind = match err.kind() {
            IoKind::NotFound => ErrorKind::NotFound,
            IoKind::AlreadyExists => ErrorKind::AlreadyExists,
            IoKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Other,
        };
        Error { kind, target: self.name.clone(), action, object: object.to_string(), message: err.to_string() }
    }

    fn path_of(&self, name: &ObjectName) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// Creates the object's parent directories (mode 0700) and returns the
    /// final path and a fresh staging path beside it.
    async fn prepare(&self, name: &ObjectName) -> Result<(PathBuf, PathBuf)> {
        let path = self.path_of(name);
        let parent = path.parent().expect("object paths are below the root").to_path_buf();
        let for_error = parent.clone();
        tokio::task::spawn_blocking(move || std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&parent))
            .await
            .expect("create_dir task panicked")
            .map_err(|err| self.error("create directory for", &for_error.display().to_string(), err))?;
        let file_name = path.file_name().expect("object names have a last component").to_string_lossy().into_owned();
        let staging = path.with_file_name(format!(".{file_name}.partial-{:016x}", rand::random::<u64>()));
        Ok((path, staging))
    }

    async fn create_staging(&self, name: &ObjectName, staging: &Path) -> Result<tokio::fs::File> {
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(staging)
            .await
            .map_err(|err| self.error("create staging file for", name.as_str(), err))
    }

    /// Makes the staged file durable and gives it its final name.
    async fn publish(&self, name: &ObjectName, mut file: tokio::fs::File, staging: &Path, path: &Path) -> Result<()> {
        file.flush().await.map_err(|err| self.error("write", name.as_str(), err))?;
        file.sync_all().await.map_err(|err| self.error("fsync", name.as_str(), err))?;
        drop(file);
        let (from, to) = (staging.to_path_buf(), path.to_path_buf());
        tokio::task::spawn_blocking(move || rename_no_replace(&from, &to))
            .await
            .expect("rename task panicked")
            .map_err(|err| self.error("publish", name.as_str(), err))?;
        sync_dir(path.parent().expect("object paths are below the root"))
            .await
            .map_err(|err| self.error("fsync directory of", name.as_str(), err))
    }
}

impl fmt::Display for LocalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (local {})", self.name, self.root.display())
    }
}

/// Removes a staging file when dropped, unless it was published. This also
/// covers a cancelled upload task.
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

    async fn put_stream(&self, name: &ObjectName, mut chunks: mpsc::Receiver<Chunk>) -> Result<u64> {
        let (path, staging) = self.prepare(name).await?;
        let mut guard = StagingGuard(Some(staging.clone()));
        let mut file = self.create_staging(name, &staging).await?;
        let mut written: u64 = 0;
        loop {
            match chunks.recv().await {
                Some(Chunk::Data(data)) => {
                    file.write_all(&data).await.map_err(|err| self.error("write", name.as_str(), err))?;
                    written += data.len() as u64;
                }
                Some(Chunk::End { bytes }) => {
                    if bytes != written {
                        return Err(Error {
                            kind: ErrorKind::Incomplete,
                            target: self.name.clone(),
                            action: "write",
                            object: name.to_string(),
                            message: format!("received {written} bytes, the producer announced {bytes}"),
                        });
                    }
                    break;
                }
                None => {
                    return Err(Error {
                        kind: ErrorKind::Incomplete,
                        target: self.name.clone(),
                        action: "write",
                        object: name.to_string(),
                        message: format!("upload abandoned after {written} bytes; nothing was published"),
                    });
                }
            }
        }
        self.publish(name, file, &staging, &path).await?;
        guard.disarm();
        let size =
            tokio::fs::metadata(&path).await.map_err(|err| self.error("check size of", name.as_str(), err))?.len();
        if size != written {
            return Err(Error {
                kind: ErrorKind::Incomplete,
                target: self.name.clone(),
                action: "check size of",
                object: name.to_string(),
                message: format!("file holds {size} bytes after publishing, {written} were written"),
            });
        }
        Ok(written)
    }

    async fn put_bytes(&self, name: &ObjectName, data: Bytes) -> Result<()> {
        let (path, staging) = self.prepare(name).await?;
        let mut guard = StagingGuard(Some(staging.clone()));
        let mut file = self.create_staging(name, &staging).await?;
        file.write_all(&data).await.map_err(|err| self.error("write", name.as_str(), err))?;
        self.publish(name, file, &staging, &path).await?;
        guard.disarm();
        Ok(())
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
