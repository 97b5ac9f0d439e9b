//! File system steps shared by the local target and restore: renaming
//! without replacing, and making a rename durable.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing.
pub fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    let from_c = CString::new(from.as_os_str().as_bytes())?;
    let to_c = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both arguments are valid NUL-terminated paths that outlive the call.
    let result = unsafe {
        libc::renameat2(libc::AT_FDCWD, from_c.as_ptr(), libc::AT_FDCWD, to_c.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if result == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // The file system cannot rename without replacing: a hard link fails
        // on an existing name just the same.
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(err),
    }
}

/// Copies `from` to `to` without ever leaving a partial file at `to`: the
/// copy goes to a hidden staging file next to `to` (mode 0600), is flushed
/// to disk and renamed into place. An existing `to` is replaced only with
/// `force`.
pub fn install_copy(from: &Path, to: &Path, force: bool) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::OpenOptionsExt;
    if to.is_dir() {
        return Err(Error::new(ErrorKind::IsADirectory, format!("{} is a directory; give a file name", to.display())));
    }
    if !force && to.symlink_metadata().is_ok() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("{} exists; pass --force to replace it", to.display()),
        ));
    }
    let parent = match to.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = to.file_name().ok_or_else(|| Error::new(ErrorKind::InvalidInput, "the path has no file name"))?;
    let staging = parent.join(format!(".{}.sessbackup-partial-{:016x}", name.to_string_lossy(), rand::random::<u64>()));
    let result = (|| {
        let mut target = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&staging)?;
        std::io::copy(&mut std::fs::File::open(from)?, &mut target)?;
        target.sync_all()?;
        if force { std::fs::rename(&staging, to) } else { rename_no_replace(&staging, to) }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result?;
    sync_dir_blocking(&parent)
}

/// Flushes a directory's entries (a rename or removal in it) to disk.
pub fn sync_dir_blocking(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await.expect("fsync task panicked")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind as IoKind;

    #[test]
    fn rename_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "new").unwrap();
        std::fs::write(&b, "old").unwrap();
        let err = rename_no_replace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), IoKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "old");
    }
}
