//! Pruning: applying a retention policy to the backups of one job on one
//! target.
//!
//! The decisions come from [`crate::retention::decide`] and from nothing but
//! that target's manifests, so pruning works from any host and after any
//! restart. A backup is deleted manifest first: once the manifest is gone,
//! `list`, `verify` and `restore` no longer see it, and an artifact whose
//! deletion fails is removed as an orphan later.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use crate::manifest;
use crate::restore;
use crate::retention::{self, Candidate, Decision, Policy};
use crate::target::{self, ObjectName, Target};

/// Staging files of interrupted uploads this old are removed by prune; a
/// younger one may belong to an upload still going on another host.
pub const STAGING_GRACE: Duration = Duration::hours(24);

#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub job: String,
    pub target: String,
    pub decisions: Vec<Decision>,
    /// Backups deleted (none in a dry run).
    pub deleted: Vec<String>,
    /// Staging files of interrupted uploads removed.
    pub staging_removed: Vec<String>,
    /// Deletions that failed, and manifests that could not be read (their
    /// backups are kept).
    pub problems: Vec<String>,
    pub dry_run: bool,
}

/// Applies `policy` to the backups of `job` on `target` at `now`, with
/// calendar buckets in `zone`. A dry run decides and deletes nothing.
pub async fn prune(
    target: &Arc<dyn Target>,
    job: &str,
    policy: &Policy,
    zone: Tz,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Outcome, target::Error> {
    let (backups, warnings) = restore::list_backups(target, Some(job)).await?;
    let mut outcome = Outcome {
        job: job.to_string(),
        target: target.name().to_string(),
        decisions: Vec::new(),
        deleted: Vec::new(),
        staging_removed: Vec::new(),
        problems: warnings.into_iter().map(|warning| format!("{warning}; that backup is kept")).collect(),
        dry_run,
    };
    let mut candidates = Vec::new();
    for backup in &backups {
        match backup.manifest.created_at() {
            Some(created_at) => {
                candidates.push(Candidate { id: backup.manifest.id.clone(), created_at: created_at_utc(created_at) })
            }
            None => outcome.problems.push(format!(
                "backup {} has an unreadable created_at {:?}; it is kept",
                backup.manifest.id, backup.manifest.created_at
            )),
        }
    }
    outcome.decisions = retention::decide(&candidates, policy, now, zone);
    if dry_run {
        return Ok(outcome);
    }

    for decision in outcome.decisions.iter().filter(|decision| !decision.keep) {
        let Some(backup) = backups.iter().find(|backup| backup.manifest.id == decision.id) else { continue };
        match delete_backup(target, &backup.manifest).await {
            Ok(()) => outcome.deleted.push(decision.id.clone()),
            Err(err) => outcome.problems.push(format!("deleting backup {}: {err}", decision.id)),
        }
    }
    let before = manifest::new_backup_id(to_offset(now - STAGING_GRACE));
    match target.remove_stale_staging(&format!("{job}/"), &before).await {
        Ok(removed) => outcome.staging_removed = removed,
        Err(err) => outcome.problems.push(format!("removing staging files: {err}")),
    }
    Ok(outcome)
}

/// Deletes a backup's manifest, then its artifacts.
async fn delete_backup(target: &Arc<dyn Target>, backup: &manifest::Manifest) -> Result<(), target::Error> {
    let manifest_name = manifest::manifest_name(&backup.job, &backup.id).expect("listed manifests have valid names");
    target.delete(&manifest_name).await?;
    let mut artifacts = vec![manifest::artifact_name(&backup.job, &backup.id).expect("valid names")];
    if let Some(aof) = &backup.aof
        && let Ok(name) = ObjectName::new(aof.name.clone())
    {
        artifacts.push(name);
    }
    for artifact in artifacts {
        match target.delete(&artifact).await {
            Ok(()) => {}
            // Already gone: nothing to do.
            Err(err) if err.kind == target::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(target = %target.name(), artifact = %artifact, error = %err, "could not delete an artifact; a later run removes it as an orphan");
            }
        }
    }
    Ok(())
}

fn created_at_utc(at: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(at.unix_timestamp(), at.nanosecond()).unwrap_or_default()
}

fn to_offset(at: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(at.timestamp()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
