//! Per-job state the daemon keeps between restarts: one small JSON file per
//! job in the state folder, with the time a run was last due and the time
//! one last succeeded.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobState {
    /// The scheduled time of the last run the daemon started.
    pub last_due: Option<DateTime<Utc>>,
    /// When the last run that published on every target ended.
    pub last_success: Option<DateTime<Utc>>,
}

/// Creates the state folder (mode 0700) if it is missing.
pub fn ensure_folder(folder: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(folder.join("jobs"))
}

fn file(folder: &Path, job: &str) -> PathBuf {
    folder.join("jobs").join(format!("{job}.json"))
}

/// Reads the state of `job`. A missing file is an empty state (a job the
/// daemon never ran), and so is an unreadable one, with a warning.
pub fn load(folder: &Path, job: &str) -> JobState {
    let path = file(folder, job);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            tracing::warn!(file = %path.display(), error = %err, "state file is unreadable; starting from an empty state");
            JobState::default()
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => JobState::default(),
        Err(err) => {
            tracing::warn!(file = %path.display(), error = %err, "cannot read the state file; starting from an empty state");
            JobState::default()
        }
    }
}

/// Writes the state of `job`: to a temporary file first, then renamed over
/// the old one, so a crash leaves the old state or the new one.
pub fn save(folder: &Path, job: &str, state: &JobState) -> std::io::Result<()> {
    ensure_folder(folder)?;
    let path = file(folder, job);
    let temporary = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let result = (|| {
        let mut out =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        out.write_all(&serde_json::to_vec_pretty(state).expect("state serializes"))?;
        out.sync_all()?;
        std::fs::rename(&temporary, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "sessions"), JobState::default());
        let state = JobState {
            last_due: Some("2026-12-05T02:30:00Z".parse().unwrap()),
            last_success: Some("2026-12-05T02:30:07Z".parse().unwrap()),
        };
        save(dir.path(), "sessions", &state).unwrap();
        assert_eq!(load(dir.path(), "sessions"), state);
        std::fs::write(dir.path().join("jobs/sessions.json"), b"{not json").unwrap();
        assert_eq!(load(dir.path(), "sessions"), JobState::default());
    }
}
