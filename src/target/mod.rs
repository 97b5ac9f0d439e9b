//! Backup targets: places that store backup objects.
//!
//! Every target implements [`Target`]. The contract is written on the trait's
//! methods and a shared conformance suite checks it: a `put` is
//! all-or-nothing, `list` sees only published objects, and object names are
//! validated before any I/O. Targets know nothing of Redis or of backups; the
//! pipeline and the manifest give their objects meaning.

mod ftp;
mod local;
mod s3;

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

pub use ftp::FtpTarget;
pub use local::LocalTarget;
pub use s3::{S3Credentials, S3Target, plan_part_size};

/// One piece of a streamed upload.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    /// The producer finished: the object must hold exactly `bytes` bytes.
    End {
        bytes: u64,
    },
}

/// A validated object name: slash-separated components of letters, digits,
/// '.', '_' and '-', none empty, none starting with '.', no `..`, not absolute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName(String);

impl ObjectName {
    pub fn new(name: impl Into<String>) -> std::result::Result<Self, InvalidName> {
        let name = name.into();
        if name.is_empty() || name.len() > 1024 {
            return Err(InvalidName { name, reason: "must be 1 to 1024 bytes" });
        }
        if name.starts_with('/') {
            return Err(InvalidName { name, reason: "must not be absolute" });
        }
        for component in name.split('/') {
            if component.is_empty() {
                return Err(InvalidName { name, reason: "has an empty path component" });
            }
            if component.starts_with('.') {
                return Err(InvalidName { name, reason: "has a component starting with '.' (reserved for staging)" });
            }
            if !component.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
                return Err(InvalidName { name, reason: "may only contain letters, digits, '.', '_', '-' and '/'" });
            }
        }
        Ok(ObjectName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid object name {name:?}: {reason}")]
pub struct InvalidName {
    pub name: String,
    pub reason: &'static str,
}

/// A published object.
#[derive(Clone, Debug)]
pub struct ObjectInfo {
    pub name: ObjectName,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// What kind of failure a target met; decides whether a retry can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    PermissionDenied,
    /// The store could not be reached or was busy; a retry may succeed.
    Unavailable,
    /// The producer stopped before the end, or the stored size differs.
    Incomplete,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[error("target {target}: {action} {object}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub target: String,
    pub action: &'static str,
    pub object: String,
    pub message: String,
}

impl Error {
    /// Whether trying the same operation again may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[async_trait]
pub trait Target: Send + Sync + fmt::Display {
    /// The target's name from the configuration.
    fn name(&self) -> &str;

    /// Stores the chunks received on `chunks` as `name`, all or nothing.
    ///
    /// The object becomes visible (to `get` and `list`) only after the
    /// producer sent [`Chunk::End`] and the target holds exactly the announced
    /// number of bytes durably. If the channel closes before `End`, a write
    /// fails, or the size differs, nothing is published under `name`, and
    /// whatever was staged is removed when the store can still be reached
    /// (otherwise [`Target::remove_stale_staging`] removes it later). An
    /// existing object `name` is never replaced: that is an `AlreadyExists`
    /// error. `size_hint` is an upper bound of the object's size, when known;
    /// stores that upload in parts size them with it.
    async fn put_stream(&self, name: &ObjectName, chunks: mpsc::Receiver<Chunk>, size_hint: Option<u64>)
    -> Result<u64>;

    /// Stores a small object, all or nothing, failing with `AlreadyExists`
    /// if `name` exists.
    async fn put_bytes(&self, name: &ObjectName, data: Bytes) -> Result<()>;

    /// Opens a published object for reading.
    async fn get(&self, name: &ObjectName) -> Result<Box<dyn AsyncRead + Send + Unpin>>;

    /// Lists published objects whose names start with `prefix`, in name
    /// order. Staged, unfinished uploads never appear.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Removes a published object; removing a missing object is `NotFound`.
    async fn delete(&self, name: &ObjectName) -> Result<()>;

    /// Removes what interrupted uploads left under `prefix` for backups whose
    /// id sorts before `before_id` (ids sort by time), and returns the names
    /// removed. Staging objects of later backups, which may belong to a run
    /// still going, are kept.
    async fn remove_stale_staging(&self, prefix: &str, before_id: &str) -> Result<Vec<String>>;
}

/// Cleanup that outlives a cancelled upload (aborting an S3 multipart
/// upload). A process that cancels backups waits for it before it exits.
pub static CLEANUP: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// Suffix that marks a staging object: `.partial-` and 16 hex digits.
const STAGING_MARK: &str = ".partial-";

/// Returns a fresh staging file name for the object whose last path
/// component is `final_name`.
pub(crate) fn staging_file_name(final_name: &str) -> String {
    format!("{final_name}{STAGING_MARK}{:016x}", rand::random::<u64>())
}

/// Returns the final file name a staging file name stands for, or `None` if
/// `file_name` is not a staging name. A leading '.' (local targets hide
/// their staging files) is ignored.
pub(crate) fn staged_final_name(file_name: &str) -> Option<&str> {
    let name = file_name.strip_prefix('.').unwrap_or(file_name);
    let at = name.rfind(STAGING_MARK)?;
    let suffix = &name[at + STAGING_MARK.len()..];
    (suffix.len() == 16 && suffix.bytes().all(|byte| byte.is_ascii_hexdigit())).then_some(&name[..at])
}

/// Whether a staging file (by its file name) belongs to a backup older than `before_id`.
pub(crate) fn is_stale_staging(file_name: &str, before_id: &str) -> bool {
    let Some(final_name) = staged_final_name(file_name) else { return false };
    // Backup ids have a fixed width, so the first characters of the final
    // name are the id of the backup the upload belonged to.
    let id_len = before_id.len();
    final_name.len() >= id_len && final_name.is_char_boundary(id_len) && &final_name[..id_len] < before_id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_round_trip() {
        let staging = staging_file_name("20261204T000000Z-0000abcd.rdb.zst");
        assert_eq!(staged_final_name(&staging), Some("20261204T000000Z-0000abcd.rdb.zst"));
        assert_eq!(staged_final_name(&format!(".{staging}")), Some("20261204T000000Z-0000abcd.rdb.zst"));
        assert_eq!(staged_final_name("20261204T000000Z-0000abcd.rdb.zst"), None);
        assert_eq!(staged_final_name("x.partial-123"), None);
    }

    #[test]
    fn only_older_staging_is_stale() {
        let old = staging_file_name("20261204T000000Z-0000abcd.rdb.zst");
        let new = staging_file_name("20261204T000002Z-0000abcd.manifest.json");
        let now = "20261204T000001Z-ffffffff";
        assert!(is_stale_staging(&old, now));
        assert!(!is_stale_staging(&new, now));
        assert!(!is_stale_staging("20261204T000000Z-0000abcd.rdb.zst", now));
    }

    #[test]
    fn object_names_are_validated() {
        assert!(ObjectName::new("sessions/20261204T205145Z-3fa9c2d1.rdb.zst").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "..", ".hidden", "a/.staging", "sp ace", "tab\t", "a\\b", "ü"] {
            assert!(ObjectName::new(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
