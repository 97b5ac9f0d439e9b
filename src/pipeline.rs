//! One backup run: snapshot, then one streaming pass that checks, hashes,
//! compresses and ships the RDB to every target of the job at once.
//!
//! ```text
//! RDB file ─▶ reader thread ─┬─▶ walker thread (structure, counts, CRC-64)
//!             SHA-256 of RDB └─▶ zstd encoder ─▶ SHA-256 of artifact ─▶ bounded channel per target
//! ```
//!
//! Memory stays bounded: chunks are 1 MiB, every channel buffers a few chunks,
//! and zstd keeps a window of a few MiB per worker. A slow target slows the
//! run through back-pressure; a failed target drops out and the others go on.
//!
//! Nothing is published unless everything checks out: a target receives the
//! end marker (and so publishes the artifact) only after the walker accepted
//! the whole RDB and the snapshot proved fresh; the manifest follows the
//! artifact on each target.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::Job;
use crate::manifest::{self, Manifest};
use crate::rdb;
use crate::source::{self, RedisSource};
use crate::target::{self, Chunk, ObjectName, Target};

/// Size of the chunks read from the RDB file and sent to targets.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Input per zstd worker job. zstd's default at level 3 is several times the
/// window, and each queued job keeps its input and output: on a 1 GiB RDB
/// with two workers that measured 79 MiB peak RSS, against 35 MiB with 2 MiB
/// jobs, at the same ratio and speed (scripts/bench, BENCHMARKS.md).
const ZSTD_JOB_BYTES: u32 = 2 * 1024 * 1024;
/// Chunks buffered per channel.
const CHANNEL_CHUNKS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot failed")]
    Source(#[from] source::Error),
    #[error("the RDB file failed its check, nothing was published: {0}")]
    Invalid(rdb::Error),
    #[error("reading the RDB file {path} failed: {message}")]
    Read { path: String, message: String },
    #[error("compression failed: {0}")]
    Compress(String),
    #[error(
        "snapshot is not fresh: the RDB file says it was written at {ctime} (Unix seconds), before the save was \
         requested at {requested}; the file at {path} is not the one Redis just saved (check rdb_path, or Redis's \
         dir and dbfilename); nothing was published"
    )]
    NotFresh { path: String, ctime: i64, requested: i64 },
    #[error("RDB file {path} changed size while it was read ({expected} bytes when opened, {read} read)")]
    Changed { path: String, expected: u64, read: u64 },
    #[error("no target stored the backup: {0}")]
    AllTargetsFailed(String),
    #[error("{0}; nothing was published")]
    Aof(String),
}

/// Outcome on one target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetOutcome {
    pub target: String,
    pub published: bool,
    pub error: Option<String>,
}

/// Report of a finished run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub id: String,
    pub job: String,
    pub rdb_bytes: u64,
    pub artifact_bytes: u64,
    pub keys: u64,
    pub duration_ms: u64,
    pub snapshot: SnapshotReport,
    pub targets: Vec<TargetOutcome>,
    pub manifest: Manifest,
    /// Retention applied after the backup, on each target it reached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<crate::prune::Outcome>,
}

/// Snapshot details of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotReport {
    pub rdb_path: String,
    /// A save was already running and was waited for before ours.
    pub waited_for_running_save: bool,
    /// An AOF rewrite was running, so the save was queued (BGSAVE SCHEDULE).
    pub scheduled: bool,
}

impl RunReport {
    pub fn all_published(&self) -> bool {
        self.targets.iter().all(|outcome| outcome.published)
    }
}

/// Runs one backup of `job` to `targets`. `unusable` are the outcomes of
/// the job's other targets, which could not be set up; they count as failed
/// in the report and the log.
pub async fn run_backup(
    job: &Job,
    source: &RedisSource,
    targets: &[Arc<dyn Target>],
    unusable: Vec<TargetOutcome>,
) -> Result<RunReport, Error> {
    let requested_at = OffsetDateTime::now_utc();
    let id = manifest::new_backup_id(requested_at);
    let span = tracing::info_span!("run", job = %job.name, backup_id = %id);
    run(job, source, targets, unusable, id, requested_at).instrument(span).await
}

async fn run(
    job: &Job,
    source: &RedisSource,
    targets: &[Arc<dyn Target>],
    unusable: Vec<TargetOutcome>,
    id: String,
    requested_at: OffsetDateTime,
) -> Result<RunReport, Error> {
    let started = Instant::now();
    tracing::info!(redis = %source.display_url(), targets = targets.len(), "backup started");

    let (snapshot, held_aof) = async {
        // Found before the snapshot, so that a server without AOF fails the
        // run before it saves.
        let aof_dir = match job.include_aof {
            true => Some(source.aof_location(job.aof_path.as_deref()).await?),
            false => None,
        };
        let snapshot = source.take_snapshot(job.snapshot_timeout).await?;
        tracing::info!(
            path = %snapshot.path.display(),
            bytes = snapshot.size,
            waited_for_running_save = snapshot.waited_for_running_save,
            scheduled = snapshot.scheduled,
            duration_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        // The AOF as it is on disk right after the snapshot, held open.
        let held_aof = if let Some(dir) = aof_dir {
            let held = tokio::task::spawn_blocking(move || crate::aof::capture::hold(&dir))
                .await
                .expect("AOF capture thread panicked")
                .map_err(Error::Aof)?;
            tracing::info!(files = held.files.len(), bytes = held.total_bytes(), "AOF captured");
            Some(held)
        } else {
            None
        };
        Ok::<_, Error>((snapshot, held_aof))
    }
    .instrument(tracing::info_span!("snapshot", phase = "snapshot"))
    .await?;

    let artifact = manifest::artifact_name(&job.name, &id).expect("job names are valid object name parts");
    let level = job.compression_level;
    let snapshot_path = snapshot.path.display().to_string();
    let size = snapshot.size;
    let requested_at_server = snapshot.requested_at_server_secs;
    let server = snapshot.server.clone();
    let rdb_saves = snapshot.rdb_saves;
    let snapshot_report = SnapshotReport {
        rdb_path: snapshot_path.clone(),
        waited_for_running_save: snapshot.waited_for_running_save,
        scheduled: snapshot.scheduled,
    };
    let file = snapshot.file;
    let (pass, summary, mut stored) = async {
        // zstd never makes data bigger than its input plus a small frame
        // overhead (zstd's ZSTD_compressBound), so that is an upper bound of
        // the artifact.
        let size_hint = Some(zstd::zstd_safe::compress_bound(size as usize) as u64);
        let (uploads, senders) = start_uploads(targets, &artifact, size_hint);
        tracing::info!(bytes = size, level, "reading, checking and compressing the RDB");
        // A cancelled run (the daemon stopping) drops this future. The
        // guard then stops the streaming thread, which closes the targets'
        // channels without an end marker, so each removes its staging object.
        let cancelled = Arc::new(AtomicBool::new(false));
        let _stop_streaming = SetOnDrop(Arc::clone(&cancelled));
        // Counted as cleanup, so a daemon that cancels the run waits until the
        // compression in progress ends and the targets' channels close.
        let cleanup = crate::target::CLEANUP.token();
        let streamed = tokio::task::spawn_blocking(move || {
            let _cleanup = cleanup;
            stream_rdb(file, size, level, senders, &cancelled)
        })
        .await
        .expect("streaming thread panicked");
        let (pass, walked, senders) = match streamed {
            Ok(result) => result,
            Err(err) => {
                abandon(uploads).await;
                return Err(match err {
                    StreamError::Read(message) => Error::Read { path: snapshot_path.clone(), message },
                    StreamError::Compress(message) => Error::Compress(message),
                    StreamError::Cancelled => Error::Compress("the run was cancelled".to_string()),
                });
            }
        };
        let summary = match judge(walked, pass.rdb_bytes, size, &snapshot_path, requested_at_server) {
            Ok(summary) => summary,
            Err(err) => {
                drop(senders);
                abandon(uploads).await;
                return Err(err);
            }
        };

        // Everything checked: let each target publish the artifact.
        for sender in senders.into_iter().flatten() {
            let _ = sender.send(Chunk::End { bytes: pass.artifact_bytes }).await;
        }
        let mut stored = Vec::new();
        for (target, upload) in targets.iter().zip(uploads) {
            let result = upload.await.expect("upload task panicked");
            stored.push((Arc::clone(target), result));
        }
        Ok((pass, summary, stored))
    }
    .instrument(tracing::info_span!("stream", phase = "stream"))
    .await?;

    let publish = tracing::info_span!("publish", phase = "publish");
    let aof = match held_aof {
        Some(held) => ship_aof(held, &job.name, &id, level, &mut stored).instrument(publish.clone()).await,
        None => None,
    };

    let manifest = Manifest {
        format: manifest::FORMAT.to_string(),
        version: manifest::VERSION,
        id: id.clone(),
        job: job.name.clone(),
        created_at: manifest::rfc3339(requested_at),
        finished_at: manifest::rfc3339(OffsetDateTime::now_utc()),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        redis: manifest::RedisInfo {
            url: source.display_url().to_string(),
            version: server.version.clone(),
            role: server.role.clone(),
            rdb_saves,
        },
        rdb: manifest::RdbInfo::from_summary(&summary, pass.rdb_bytes, pass.rdb_sha256.clone()),
        artifact: manifest::ArtifactInfo {
            name: artifact.to_string(),
            bytes: pass.artifact_bytes,
            sha256: pass.artifact_sha256.clone(),
            compression: manifest::Compression { algorithm: "zstd".to_string(), level },
        },
        aof,
    };
    let mut reports = publish_manifests(&manifest, &artifact, stored).instrument(publish.clone()).await;
    reports.extend(unusable);
    reports.sort_by_key(|outcome| job.targets.iter().position(|name| *name == outcome.target));

    let duration = started.elapsed();
    publish.in_scope(|| log_finished(&pass, &summary, duration, &reports));
    if !reports.iter().any(|outcome| outcome.published) {
        let reasons: Vec<String> = reports
            .iter()
            .map(|outcome| format!("{}: {}", outcome.target, outcome.error.as_deref().unwrap_or("unknown")))
            .collect();
        return Err(Error::AllTargetsFailed(reasons.join("; ")));
    }
    Ok(RunReport {
        id,
        job: job.name.clone(),
        rdb_bytes: pass.rdb_bytes,
        artifact_bytes: pass.artifact_bytes,
        keys: summary.keys(),
        duration_ms: duration.as_millis() as u64,
        snapshot: snapshot_report,
        targets: reports,
        manifest,
        pruned: Vec::new(),
    })
}

/// An upload task; dropping it (a cancelled run) cancels the upload, which
/// then removes its staging object.
type Upload = tokio_util::task::AbortOnDropHandle<target::Result<u64>>;

/// Uploads the held AOF set as a second artifact to every target that
/// stored the RDB artifact. A target that fails here loses its RDB artifact
/// too, since its manifest could not describe a complete backup.
async fn ship_aof(
    held: crate::aof::capture::Held,
    job: &str,
    id: &str,
    level: i32,
    stored: &mut [(Arc<dyn Target>, target::Result<u64>)],
) -> Option<manifest::AofInfo> {
    let appendfilename = held.appendfilename.clone();
    let name = manifest::aof_name(job, id).expect("job names are valid object name parts");
    let ready: Vec<usize> = (0..stored.len()).filter(|index| stored[*index].1.is_ok()).collect();
    let targets: Vec<Arc<dyn Target>> = ready.iter().map(|index| Arc::clone(&stored[*index].0)).collect();
    // A tar archive adds 512 bytes per file and 1 KiB at the end.
    let archive_bound = held.total_bytes() + 512 * (held.files.len() as u64 + 1) + 1024;
    let size_hint = Some(zstd::zstd_safe::compress_bound(archive_bound as usize) as u64);
    let (uploads, senders) = start_uploads(&targets, &name, size_hint);
    let streamed = tokio::task::spawn_blocking(move || {
        let mut encoder = zstd::stream::write::Encoder::new(FanOut::new(senders), level)?;
        encoder.include_checksum(true)?;
        let (files, encoder) = crate::aof::capture::write_archive(&held, encoder)?;
        let (bytes, sha256, senders) = encoder.finish()?.finish()?;
        Ok::<_, io::Error>((files, bytes, sha256, senders))
    })
    .await
    .expect("AOF streaming thread panicked");

    let info = match streamed {
        Ok((files, bytes, sha256, senders)) => {
            for sender in senders.into_iter().flatten() {
                let _ = sender.send(Chunk::End { bytes }).await;
            }
            let compression = manifest::Compression { algorithm: "zstd".to_string(), level };
            Some(manifest::AofInfo { name: name.to_string(), bytes, sha256, compression, appendfilename, files })
        }
        Err(err) => {
            tracing::error!(error = %err, "reading the captured AOF failed");
            None
        }
    };
    for (index, upload) in ready.into_iter().zip(uploads) {
        let result = upload.await.expect("upload task panicked");
        let failure = match (&info, result) {
            (Some(info), Ok(bytes)) if bytes == info.bytes => continue,
            (Some(info), Ok(bytes)) => format!("stored {bytes} bytes of the AOF archive, expected {}", info.bytes),
            (Some(_), Err(err)) => format!("AOF archive: {err}"),
            (None, _) => "the AOF archive could not be written".to_string(),
        };
        let (target, result) = &mut stored[index];
        if let Err(err) = target.delete(&manifest::artifact_name(job, id).expect("valid names")).await {
            tracing::warn!(target = %target.name(), error = %err, "could not remove the artifact of a backup without AOF");
        }
        *result = Err(target::Error {
            kind: target::ErrorKind::Other,
            target: target.name().to_string(),
            action: "upload",
            object: name.to_string(),
            message: failure,
        });
    }
    info
}

/// Starts one upload of the artifact per target, each fed by its own bounded channel.
fn start_uploads(targets: &[Arc<dyn Target>], artifact: &ObjectName, size_hint: Option<u64>) -> (Vec<Upload>, Senders) {
    let mut uploads = Vec::new();
    let mut senders = Vec::new();
    for target in targets {
        let (sender, mut receiver) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
        if let Some(bar) = crate::progress::bytes(target.name(), None) {
            receiver = relay_with_progress(receiver, bar);
        }
        let target = Arc::clone(target);
        let name = artifact.clone();
        uploads.push(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            target.put_stream(&name, receiver, size_hint).await
        })));
        senders.push(Some(sender));
    }
    (uploads, senders)
}

/// Passes chunks on to a new channel, counting them on `bar`.
fn relay_with_progress(mut from: mpsc::Receiver<Chunk>, bar: indicatif::ProgressBar) -> mpsc::Receiver<Chunk> {
    let (sender, receiver) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        while let Some(chunk) = from.recv().await {
            if let Chunk::Data(data) = &chunk {
                bar.inc(data.len() as u64);
            }
            if sender.send(chunk).await.is_err() {
                break;
            }
        }
        bar.finish_and_clear();
    });
    receiver
}

/// Decides whether the streamed RDB may be published: the walker accepted
/// it, the whole file was read, and it is the snapshot this run asked for.
fn judge(walked: Walked, read: u64, size: u64, path: &str, requested_at_server: i64) -> Result<rdb::Summary, Error> {
    let summary = walked.map_err(|failure| Error::Invalid(failure.error))?;
    if read != size {
        return Err(Error::Changed { path: path.to_string(), expected: size, read });
    }
    if let Some(err) = freshness_error(&summary, path, requested_at_server) {
        return Err(err);
    }
    if summary.aux_field("ctime").is_none() {
        tracing::warn!("the RDB file has no ctime field; freshness rests on the save counter alone");
    }
    if summary.trailing_bytes > 0 {
        tracing::warn!(bytes = summary.trailing_bytes, "the RDB file has bytes after its checksum; Redis ignores them");
    }
    if let Some(rdb::Checksum::Disabled) = summary.checksum {
        tracing::warn!("the RDB file was saved with rdbchecksum no: its content has no CRC-64 to check");
    }
    Ok(summary)
}

/// Writes the manifest on every target that stored the artifact, and
/// reports the outcome per target. A target whose manifest cannot be written
/// loses the artifact too, so it keeps no invisible leftovers.
async fn publish_manifests(
    manifest: &Manifest,
    artifact: &ObjectName,
    stored: Vec<(Arc<dyn Target>, target::Result<u64>)>,
) -> Vec<TargetOutcome> {
    let manifest_name =
        manifest::manifest_name(&manifest.job, &manifest.id).expect("job names are valid object name parts");
    let manifest_json = Bytes::from(manifest.to_json());
    let mut reports = Vec::new();
    for (target, result) in stored {
        let error = match result {
            Ok(bytes) if bytes == manifest.artifact.bytes => {
                match target.put_bytes(&manifest_name, manifest_json.clone()).await {
                    Ok(()) => None,
                    Err(err) => {
                        if let Err(cleanup) = target.delete(artifact).await {
                            tracing::warn!(target = %target.name(), error = %cleanup, "could not remove the artifact of a backup without manifest");
                        }
                        Some(err.to_string())
                    }
                }
            }
            Ok(bytes) => Some(format!("stored {bytes} bytes, expected {}", manifest.artifact.bytes)),
            Err(err) => Some(err.to_string()),
        };
        let error = match error {
            None => confirm_and_tidy(target.as_ref(), manifest, artifact, &manifest_name).await.err(),
            error => error,
        };
        match &error {
            None => tracing::info!(target = %target.name(), "backup published"),
            Some(error) => {
                tracing::error!(target = %target.name(), error = %error, "target failed; this target has no new backup")
            }
        }
        reports.push(TargetOutcome { target: target.name().to_string(), published: error.is_none(), error });
    }
    reports
}

/// After publishing on `target`: checks that listing the job's folder shows
/// the new backup, then removes what earlier, interrupted runs of this job
/// left there: staging objects, and artifacts whose manifest was never
/// written. Only leftovers of older backups are touched: an older run of the
/// job cannot still be going on this host, because each run holds the job's
/// lock, and a newer run keeps its own.
///
/// A backup that `list`, `verify` and `restore` cannot see is as good as
/// lost (an FTP server may store files its login cannot list), so that is an
/// error. Failures to tidy up are only logged.
async fn confirm_and_tidy(
    target: &dyn Target,
    manifest: &Manifest,
    artifact: &ObjectName,
    manifest_name: &ObjectName,
) -> Result<(), String> {
    let (job, id) = (manifest.job.as_str(), manifest.id.as_str());
    let prefix = format!("{job}/");
    match target.remove_stale_staging(&prefix, id).await {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => {
            tracing::info!(target = %target.name(), count = removed.len(), "removed staging files of interrupted uploads")
        }
        Err(err) => {
            tracing::warn!(target = %target.name(), error = %err, "could not remove staging files of interrupted uploads")
        }
    }
    let objects = target
        .list(&prefix)
        .await
        .map_err(|err| format!("the backup was written, but listing it back failed: {err}"))?;
    let listed_artifact = objects.iter().find(|object| object.name == *artifact);
    let listed_manifest = objects.iter().any(|object| object.name == *manifest_name);
    match listed_artifact {
        Some(found) if listed_manifest && found.size == manifest.artifact.bytes => {}
        Some(found) if listed_manifest => {
            return Err(format!(
                "the backup was written, but the listing shows {} with {} bytes instead of {}",
                artifact, found.size, manifest.artifact.bytes
            ));
        }
        _ => {
            return Err(format!(
                "the backup was written, but listing {prefix} does not show it, so list, verify and restore \
                 cannot use it; check that the login may list the files it stores"
            ));
        }
    }
    if let Some(aof) = &manifest.aof
        && !objects.iter().any(|object| object.name.as_str() == aof.name && object.size == aof.bytes)
    {
        return Err(format!("the backup was written, but listing {prefix} does not show {} whole", aof.name));
    }

    let names: std::collections::HashSet<&str> = objects.iter().map(|object| object.name.as_str()).collect();
    for object in &objects {
        let Some(orphan_id) = object.name.as_str().strip_prefix(&prefix).and_then(|rest| {
            rest.strip_suffix(manifest::ARTIFACT_SUFFIX).or_else(|| rest.strip_suffix(manifest::AOF_SUFFIX))
        }) else {
            continue;
        };
        let manifest = format!("{prefix}{orphan_id}{}", manifest::MANIFEST_SUFFIX);
        if orphan_id < id && !names.contains(manifest.as_str()) {
            match target.delete(&object.name).await {
                Ok(()) => {
                    tracing::info!(target = %target.name(), artifact = %object.name, "removed an artifact whose manifest was never written")
                }
                Err(err) => {
                    tracing::warn!(target = %target.name(), error = %err, "could not remove an orphaned artifact")
                }
            }
        }
    }
    Ok(())
}

fn log_finished(pass: &Pass, summary: &rdb::Summary, duration: Duration, reports: &[TargetOutcome]) {
    let ratio = if pass.artifact_bytes > 0 { pass.rdb_bytes as f64 / pass.artifact_bytes as f64 } else { 0.0 };
    let mib_per_sec = pass.rdb_bytes as f64 / (1024.0 * 1024.0) / pass.duration.as_secs_f64().max(1e-9);
    tracing::info!(
        rdb_bytes = pass.rdb_bytes,
        artifact_bytes = pass.artifact_bytes,
        ratio = format!("{ratio:.2}"),
        throughput_mib_s = format!("{mib_per_sec:.1}"),
        keys = summary.keys(),
        duration_ms = duration.as_millis() as u64,
        published = reports.iter().filter(|outcome| outcome.published).count(),
        failed = reports.iter().filter(|outcome| !outcome.published).count(),
        "backup finished"
    );
}

fn freshness_error(summary: &rdb::Summary, path: &str, requested: i64) -> Option<Error> {
    let ctime = summary.aux_field("ctime")?.parse::<i64>().ok()?;
    (ctime < requested).then(|| Error::NotFresh { path: path.to_string(), ctime, requested })
}

/// Lets every upload see the channel close without an end marker, so it
/// removes what it staged, and waits for them.
async fn abandon(uploads: Vec<Upload>) {
    for upload in uploads {
        let _ = upload.await;
    }
}

/// Results of the streaming pass.
pub struct Pass {
    pub rdb_bytes: u64,
    pub rdb_sha256: String,
    pub artifact_bytes: u64,
    pub artifact_sha256: String,
    pub duration: Duration,
}

/// The walker's verdict on the RDB.
type Walked = Result<rdb::Summary, rdb::Failure>;

/// Per-target senders of a run; `None` once that target stopped receiving.
type Senders = Vec<Option<mpsc::Sender<Chunk>>>;

enum StreamError {
    Read(String),
    Compress(String),
    Cancelled,
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Reads the RDB once: hashes it, walks it on a second thread, compresses it
/// and hands the artifact to every live sender. Returns the senders so the
/// caller decides whether to send the end marker.
fn stream_rdb(
    mut file: std::fs::File,
    size: u64,
    level: i32,
    senders: Senders,
    cancelled: &AtomicBool,
) -> Result<(Pass, Walked, Senders), StreamError> {
    let started = Instant::now();
    let (walk_sender, walk_receiver) = std_mpsc::sync_channel::<Bytes>(CHANNEL_CHUNKS);
    let walker = std::thread::Builder::new()
        .name("rdb-walker".to_string())
        .spawn(move || rdb::walk(ChannelReader::new(walk_receiver)))
        .expect("spawn walker thread");

    let fan_out = FanOut::new(senders);
    let mut encoder =
        zstd::stream::write::Encoder::new(fan_out, level).map_err(|err| StreamError::Compress(err.to_string()))?;
    configure_encoder(&mut encoder, size).map_err(|err| StreamError::Compress(err.to_string()))?;

    let mut rdb_hash = Sha256::new();
    let mut rdb_bytes: u64 = 0;
    let read_result: Result<(), StreamError> = loop {
        if cancelled.load(Ordering::Relaxed) {
            break Err(StreamError::Cancelled);
        }
        let mut buffer = BytesMut::zeroed(CHUNK_BYTES);
        let read = match read_full(&mut file, &mut buffer) {
            Ok(read) => read,
            Err(err) => break Err(StreamError::Read(err.to_string())),
        };
        if read == 0 {
            break Ok(());
        }
        buffer.truncate(read);
        let chunk = buffer.freeze();
        rdb_hash.update(&chunk);
        rdb_bytes += read as u64;
        if walk_sender.send(chunk.clone()).is_err() {
            // The walker reads to the end of the stream unless it finds an
            // error; it has its verdict, and nothing will be published.
            break Ok(());
        }
        if encoder.get_ref().live() > 0
            && let Err(err) = encoder.write_all(&chunk)
        {
            break Err(StreamError::Compress(err.to_string()));
        }
    };
    drop(walk_sender);
    let summary = walker.join().expect("walker thread panicked");
    read_result?;

    let fan_out = encoder.finish().map_err(|err| StreamError::Compress(err.to_string()))?;
    let (artifact_bytes, artifact_sha256, senders) =
        fan_out.finish().map_err(|err| StreamError::Compress(err.to_string()))?;
    let pass = Pass {
        rdb_bytes,
        rdb_sha256: hex::encode(rdb_hash.finalize()),
        artifact_bytes,
        artifact_sha256,
        duration: started.elapsed(),
    };
    Ok((pass, summary, senders))
}

fn configure_encoder<W: Write>(encoder: &mut zstd::stream::write::Encoder<'static, W>, size: u64) -> io::Result<()> {
    // A frame checksum lets zstd itself notice damage when decompressing.
    encoder.include_checksum(true)?;
    encoder.set_pledged_src_size(Some(size))?;
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8) as u32;
    if workers > 1 {
        encoder.multithread(workers)?;
        encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_BYTES))?;
    }
    Ok(())
}

/// Reads until `buffer` is full or the file ends.
fn read_full(file: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// The zstd encoder's output: counted, hashed, cut into chunks and sent to
/// every target still alive.
struct FanOut {
    hash: Sha256,
    bytes: u64,
    pending: BytesMut,
    senders: Senders,
}

impl FanOut {
    fn new(senders: Senders) -> Self {
        FanOut { hash: Sha256::new(), bytes: 0, pending: BytesMut::with_capacity(CHUNK_BYTES), senders }
    }

    /// Targets still receiving.
    fn live(&self) -> usize {
        self.senders.iter().filter(|sender| sender.is_some()).count()
    }

    fn send_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let chunk = self.pending.split().freeze();
        for slot in &mut self.senders {
            if let Some(sender) = slot {
                // A closed channel means that target failed; it reports why.
                if sender.blocking_send(Chunk::Data(chunk.clone())).is_err() {
                    *slot = None;
                }
            }
        }
        self.pending.reserve(CHUNK_BYTES);
    }

    fn finish(mut self) -> io::Result<(u64, String, Senders)> {
        self.send_pending();
        Ok((self.bytes, hex::encode(self.hash.finalize()), self.senders))
    }
}

impl Write for FanOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hash.update(data);
        self.bytes += data.len() as u64;
        self.pending.extend_from_slice(data);
        if self.pending.len() >= CHUNK_BYTES {
            self.send_pending();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `io::Read` over chunks arriving on a channel; ends when the sender is dropped.
pub struct ChannelReader {
    receiver: std_mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(receiver: std_mpsc::Receiver<Bytes>) -> Self {
        ChannelReader { receiver, current: Bytes::new() }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.recv() {
                Ok(chunk) => self.current = chunk,
                Err(_) => return Ok(0),
            }
        }
        let take = self.current.len().min(out.len());
        out[..take].copy_from_slice(&self.current[..take]);
        let _ = self.current.split_to(take);
        Ok(take)
    }
}
