//! One backup run per job at a time on this host.
//!
//! A run removes what older, interrupted runs of its job left on each
//! target. If an older run were still going, that would delete its upload,
//! so runs of one job take an exclusive lock on a file for their whole
//! length. The operating system releases the lock when the process ends,
//! however it ends, so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct JobLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "another backup of job {job} is running ({holder}, lock file {path}); runs of one job cannot overlap, \
         so wait for it to finish"
    )]
    Busy { job: String, holder: String, path: PathBuf },
    #[error("cannot use lock file {path}: {source}; set [daemon] state_dir to a writable folder")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Takes the lock of `job` in the `locks` folder of `state_folder`, or
/// fails at once if another process holds it.
pub fn acquire(state_folder: &Path, job: &str) -> Result<JobLock, Error> {
    acquire_in(&state_folder.join("locks"), job)
}

/// Takes the lock of `job` in `folder`, creating the folder (mode 0700).
pub fn acquire_in(folder: &Path, job: &str) -> Result<JobLock, Error> {
    let path = folder.join(format!("{job}.lock"));
    let io = |source| Error::Io { path: path.clone(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(folder).map_err(io)?;
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "process unknown".to_string(),
                pid => format!("process {pid}"),
            };
            return Err(Error::Busy { job: job.to_string(), holder, path });
        }
        Err(TryLockError::Error(err)) => return Err(io(err)),
    }
    // The process id is for the message above only; the lock is the flock.
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(JobLock { _file: file })
}

/// Returns the folder for lock files and the daemon's run times: `configured`
/// (`[daemon] state_dir`) when set, else systemd's StateDirectory, else
/// /var/lib/sessbackup for root, else the user's state folder
/// (`$XDG_STATE_HOME/sessbackup`, by default `~/.local/state/sessbackup`).
///
/// The folder must outlive every run: a lock file that disappears while
/// held (as a runtime folder does when its unit stops) no longer keeps a
/// second process out.
pub fn state_folder(configured: Option<&Path>) -> PathBuf {
    if let Some(folder) = configured {
        return folder.to_path_buf();
    }
    if let Some(folders) = std::env::var_os("STATE_DIRECTORY")
        && let Some(first) = folders.to_string_lossy().split(':').find(|folder| !folder.is_empty())
    {
        return PathBuf::from(first);
    }
    // SAFETY: geteuid(2) takes no arguments and always succeeds (POSIX).
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/var/lib/sessbackup");
    }
    if let Some(folder) = std::env::var_os("XDG_STATE_HOME").filter(|folder| !folder.is_empty()) {
        return PathBuf::from(folder).join("sessbackup");
    }
    match std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/sessbackup"),
        None => std::env::temp_dir().join(format!("sessbackup-{uid}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire_in(dir.path(), "sessions").unwrap();
        let err = acquire_in(dir.path(), "sessions").unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&format!("process {}", std::process::id())), "{message}");
        assert!(message.contains("another backup of job sessions is running"), "{message}");
        drop(first);
        acquire_in(dir.path(), "sessions").unwrap();
    }

    #[test]
    fn jobs_lock_separately() {
        let dir = tempfile::tempdir().unwrap();
        let _sessions = acquire_in(dir.path(), "sessions").unwrap();
        let _cache = acquire_in(dir.path(), "cache").unwrap();
    }
}
