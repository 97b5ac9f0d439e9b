//! `sessbackup daemon`: runs every job on its schedule until stopped.
//!
//! One task per run; the loop itself only decides when runs start. A job
//! never overlaps itself: a run still going when the next is due makes the
//! daemon skip that one, and the per-job lock keeps out a `backup` started
//! by hand or by cron at the same time. Runs missed while the daemon was
//! down are not replayed, except one catch-up run for jobs that ask for it.
//!
//! SIGTERM and SIGINT stop scheduling and give running backups the
//! configured shutdown timeout to finish. After that they are cancelled,
//! which publishes nothing and removes their staging files. A second signal
//! cancels at once. SIGHUP reloads the configuration if it validates.

pub mod metrics;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

use crate::config::{self, Config};
use metrics::Metrics;

/// Maximum sleep of the scheduling loop. A wall clock that jumps (a
/// suspended VM, a corrected clock) delays a run by this much at most.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// How long cleanup that cancelled uploads started (aborting S3 multipart
/// uploads) may take before the daemon exits anyway.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Scheduling state of one job.
struct Slot {
    /// The schedule and zone the next due time was computed with, to see
    /// whether a reload changed them.
    schedule: String,
    next_due: Option<DateTime<Utc>>,
    running: Option<JoinHandle<()>>,
}

/// Runs the daemon until a signal stops it; returns the exit code.
pub async fn run(config_path: PathBuf, config: Config) -> u8 {
    if let Err(message) = schedulable(&config) {
        crate::logging::error(&message);
        return crate::cli::EXIT_CONFIG;
    }
    let state_dir = crate::lock::state_folder(config.daemon.state_dir.as_deref());
    if let Err(err) = state::ensure_folder(&state_dir) {
        crate::logging::error(&format!(
            "cannot use the state folder {}: {err}; set [daemon] state_dir to a writable folder",
            state_dir.display()
        ));
        return crate::cli::EXIT_FAILURE;
    }
    let mut config = Arc::new(config);
    let metrics = Arc::new(Mutex::new(Metrics::new(Utc::now(), config.clone())));

    let _server = match config.daemon.metrics_listen {
        Some(address) => match metrics::serve(address, metrics.clone()).await {
            Ok(server) => Some(server),
            Err(err) => {
                crate::logging::error(&format!(
                    "cannot serve metrics on {address}: {err}; change [daemon] metrics_listen"
                ));
                return crate::cli::EXIT_FAILURE;
            }
        },
        None => None,
    };

    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        crate::logging::error("cannot install signal handlers");
        return crate::cli::EXIT_FAILURE;
    };

    let now = Utc::now();
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    let mut catch_up = Vec::new();
    for job in &config.jobs {
        // The last success from the state folder, so a restart does not make
        // a job look overdue or fresh.
        let saved = state::load(&state_dir, &job.name);
        if let Some(at) = saved.last_success {
            metrics.lock().expect("metrics lock").seed_success(&job.name, at);
        }
        let Some(schedule) = &job.schedule else { continue };
        if job.catch_up
            && let Some(last_due) = saved.last_due
            && schedule.next_after(last_due).is_some_and(|missed| missed <= now)
        {
            catch_up.push(job.name.clone());
        }
        slots.insert(
            job.name.clone(),
            Slot { schedule: schedule_key(job), next_due: schedule.next_after(now), running: None },
        );
    }
    let _ = metrics
        .lock()
        .map(|mut metrics| metrics.reset_next_due(slots.iter().map(|(name, slot)| (name.clone(), slot.next_due))));
    for name in catch_up {
        tracing::info!(job = %name, phase = "schedule", "a scheduled run was missed while the daemon was down; running it once now");
        let slot = slots.get_mut(&name).expect("slot exists");
        slot.running = Some(spawn_run(&config, &name, now, &state_dir, &metrics));
    }

    let watchdog = sd_notify::watchdog_enabled().map(|interval| interval / 2);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status_line(&slots))]);
    tracing::info!(
        jobs = slots.len(),
        state_dir = %state_dir.display(),
        metrics = %config.daemon.metrics_listen.map_or("off".to_string(), |address| address.to_string()),
        "daemon started"
    );
    for (name, slot) in &slots {
        if let Some(next) = slot.next_due {
            tracing::info!(job = %name, next_run = %next.to_rfc3339(), schedule = %slot.schedule, "job scheduled");
        }
    }

    // The scheduling loop.
    loop {
        let now = Utc::now();
        for (name, slot) in slots.iter_mut() {
            if slot.running.as_ref().is_some_and(|handle| handle.is_finished()) {
                slot.running = None;
            }
            let Some(due) = slot.next_due.filter(|due| *due <= now) else { continue };
            let job = config.job(name).expect("slots follow the configuration");
            let schedule = job.schedule.as_ref().expect("slots are for scheduled jobs");
            slot.next_due = schedule.next_after(now);
            if slot.running.is_some() {
                tracing::warn!(
                    job = %name,
                    phase = "schedule",
                    due = %due.to_rfc3339(),
                    "the previous run is still going; this run is skipped"
                );
                metrics.lock().expect("metrics lock").skipped(name);
            } else {
                slot.running = Some(spawn_run(&config, name, due, &state_dir, &metrics));
            }
            if let Ok(mut metrics) = metrics.lock() {
                metrics.set_next_due(name, slot.next_due);
            }
        }
        let sleep = slots
            .values()
            .filter_map(|slot| slot.next_due)
            .min()
            .map(|due| (due - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);

        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = terminate.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT received"); break; }
            _ = hangup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading, monotonic_now()]);
                match reload(&config_path, &mut config, &mut slots, &metrics) {
                    Ok(()) => tracing::info!(jobs = slots.len(), "configuration reloaded"),
                    Err(err) => tracing::error!("configuration not reloaded, the old one stays in use: {err}"),
                }
                notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status_line(&slots))]);
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    }

    shutdown(slots, &config, &mut terminate, &mut interrupt, watchdog).await;
    0
}

/// Stops the daemon: waits for running backups up to the shutdown timeout,
/// then cancels them.
async fn shutdown(
    slots: BTreeMap<String, Slot>,
    config: &Config,
    terminate: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
    watchdog: Option<Duration>,
) {
    let mut running: Vec<(String, JoinHandle<()>)> = slots
        .into_iter()
        .filter_map(|(name, slot)| slot.running.filter(|handle| !handle.is_finished()).map(|handle| (name, handle)))
        .collect();
    notify(&[sd_notify::NotifyState::Stopping]);
    if running.is_empty() {
        tracing::info!("daemon stopped");
        return;
    }
    let timeout = config.daemon.shutdown_timeout;
    let names: Vec<&str> = running.iter().map(|(name, _)| name.as_str()).collect();
    tracing::info!(
        jobs = %names.join(","),
        timeout_secs = timeout.as_secs(),
        "waiting for running backups to finish; a second signal cancels them at once"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let cancel = loop {
        running.retain(|(_, handle)| !handle.is_finished());
        if running.is_empty() {
            break false;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                tracing::warn!(timeout_secs = timeout.as_secs(), "shutdown timeout reached; cancelling running backups");
                break true;
            }
            _ = terminate.recv() => { tracing::warn!("second signal; cancelling running backups"); break true; }
            _ = interrupt.recv() => { tracing::warn!("second signal; cancelling running backups"); break true; }
            _ = watchdog_tick.tick(), if watchdog.is_some() => notify(&[sd_notify::NotifyState::Watchdog]),
        }
    };
    if cancel {
        for (name, handle) in running {
            handle.abort();
            let _ = handle.await;
            tracing::warn!(job = %name, phase = "cancel", "backup cancelled; nothing of it was published");
        }
        // The compression in progress ends first (seconds at high levels),
        // then the uploads remove their staging files.
        crate::target::CLEANUP.close();
        match tokio::time::timeout(CLEANUP_TIMEOUT, crate::target::CLEANUP.wait()).await {
            Ok(()) => tracing::info!(phase = "cancel", "cancelled runs cleaned up"),
            Err(_) => tracing::warn!(
                phase = "cancel",
                "cleanup of cancelled runs did not finish within {} s; a later run removes what is left",
                CLEANUP_TIMEOUT.as_secs()
            ),
        }
    }
    tracing::info!("daemon stopped");
}

/// Checks that at least one job has a schedule, as the daemon needs.
pub fn schedulable(config: &Config) -> Result<(), String> {
    if config.jobs.iter().any(|job| job.schedule.is_some()) {
        Ok(())
    } else {
        Err("no job has a schedule, so the daemon would never run one; add schedule = \"30 2 * * *\" (a crontab line) to a [[job]], or run `sessbackup backup` from a timer instead".to_string())
    }
}

fn schedule_key(job: &config::Job) -> String {
    match &job.schedule {
        Some(schedule) => format!("{} ({})", schedule.expression(), schedule.zone()),
        None => String::new(),
    }
}

/// Starts one run of `job`, due at `due`.
fn spawn_run(
    config: &Arc<Config>,
    job: &str,
    due: DateTime<Utc>,
    state_dir: &Path,
    metrics: &Arc<Mutex<Metrics>>,
) -> JoinHandle<()> {
    let config = config.clone();
    let job = job.to_string();
    let state_dir = state_dir.to_path_buf();
    let metrics = metrics.clone();
    tokio::spawn(async move {
        let Some(settings) = config.job(&job) else { return };
        let mut saved = state::load(&state_dir, &job);
        saved.last_due = Some(due);
        if let Err(err) = state::save(&state_dir, &job, &saved) {
            tracing::warn!(job = %job, error = %err, "cannot record the run time; a catch-up run after a restart may repeat it");
        }
        if !settings.jitter.is_zero() {
            let delay = Duration::from_millis(rand::random_range(0..=settings.jitter.as_millis() as u64));
            tracing::info!(job = %job, phase = "schedule", delay_ms = delay.as_millis() as u64, "waiting the random jitter");
            tokio::time::sleep(delay).await;
        }
        let started = Utc::now();
        let clock = std::time::Instant::now();
        tracing::info!(job = %job, phase = "schedule", due = %due.to_rfc3339(), "scheduled backup starting");
        let result = crate::cli::backup_job(&config, settings).await;
        let elapsed = clock.elapsed();
        match &result {
            Ok(report) if report.all_published() => {
                saved.last_success = Some(Utc::now());
                if let Err(err) = state::save(&state_dir, &job, &saved) {
                    tracing::warn!(job = %job, error = %err, "cannot record the run time");
                }
            }
            Ok(report) => {
                let failed: Vec<&str> =
                    report.targets.iter().filter(|t| !t.published).map(|t| t.target.as_str()).collect();
                tracing::warn!(job = %job, backup_id = %report.id, failed_targets = ?failed, "backup published on some targets only");
            }
            Err(err) if is_busy(err) => {
                tracing::warn!(job = %job, phase = "schedule", "{err:#}; this run is skipped");
            }
            Err(err) => tracing::error!(job = %job, error = %format!("{err:#}"), "scheduled backup failed"),
        }
        if let Ok(mut metrics) = metrics.lock() {
            match &result {
                Err(err) if is_busy(err) => metrics.skipped(&job),
                _ => metrics.record(&job, started, elapsed, result.as_ref().map_err(|_| ())),
            }
        }
    })
}

fn is_busy(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<crate::lock::Error>(), Some(crate::lock::Error::Busy { .. }))
}

/// Reads the configuration again and, if it validates, puts it in use.
fn reload(
    path: &Path,
    config: &mut Arc<Config>,
    slots: &mut BTreeMap<String, Slot>,
    metrics: &Arc<Mutex<Metrics>>,
) -> Result<(), String> {
    let new = config::load_checked(path).map_err(|err| err.to_string())?;
    schedulable(&new)?;

    if new.daemon.metrics_listen != config.daemon.metrics_listen {
        tracing::warn!("[daemon] metrics_listen changed; the new address takes effect after a restart");
    }
    if new.daemon.state_dir != config.daemon.state_dir {
        tracing::warn!("[daemon] state_dir changed; the new folder takes effect after a restart");
    }
    for warning in &new.warnings {
        tracing::warn!("{warning}");
    }

    let now = Utc::now();
    let mut next = BTreeMap::new();
    for job in &new.jobs {
        let Some(schedule) = &job.schedule else { continue };
        let key = schedule_key(job);
        let slot = match slots.remove(&job.name) {
            Some(slot) if slot.schedule == key => slot,
            Some(slot) => {
                tracing::info!(job = %job.name, schedule = %key, "schedule changed");
                Slot { schedule: key, next_due: schedule.next_after(now), running: slot.running }
            }
            None => {
                tracing::info!(job = %job.name, schedule = %key, "new job scheduled");
                Slot { schedule: key, next_due: schedule.next_after(now), running: None }
            }
        };
        next.insert(job.name.clone(), slot);
    }
    // A job that left the configuration is not started again; a run of it
    // still going is left to finish.
    for (name, slot) in std::mem::take(slots) {
        tracing::info!(job = %name, "job no longer scheduled");
        if let Some(handle) = slot.running {
            next.insert(name, Slot { schedule: String::new(), next_due: None, running: Some(handle) });
        }
    }

    *slots = next;
    *config = Arc::new(new);
    if let Ok(mut metrics) = metrics.lock() {
        metrics.reset_next_due(slots.iter().map(|(name, slot)| (name.clone(), slot.next_due)));
        metrics.set_config(config.clone());
    }
    Ok(())
}

fn status_line(slots: &BTreeMap<String, Slot>) -> String {
    match slots.values().filter_map(|slot| slot.next_due).min() {
        Some(next) => format!("{} job(s) scheduled; next run {}", slots.len(), next.to_rfc3339()),
        None => format!("{} job(s) scheduled", slots.len()),
    }
}

fn monotonic_now() -> sd_notify::NotifyState<'static> {
    sd_notify::NotifyState::monotonic_usec_now().unwrap_or(sd_notify::NotifyState::Status("reloading"))
}

/// Tells systemd (when it started the daemon with Type=notify) about a
/// state change; does nothing elsewhere.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify the service manager");
    }
}
