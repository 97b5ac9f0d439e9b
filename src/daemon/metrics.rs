//! Prometheus metrics of the daemon, served as text at `/metrics`.
//!
//! The text format needs a few lines per series, so it is written here
//! directly. Runs update one struct behind a mutex when they end, and each
//! scrape reads it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::pipeline::RunReport;

/// Outcomes a run is counted under.
const RESULTS: [&str; 4] = ["success", "partial", "failure", "skipped"];

pub struct Metrics {
    started: DateTime<Utc>,
    config: Arc<Config>,
    jobs: BTreeMap<String, JobMetrics>,
}

#[derive(Default)]
struct JobMetrics {
    last_run_start: Option<DateTime<Utc>>,
    last_run_duration: Option<Duration>,
    /// Whether the last run published on every target.
    last_run_success: Option<bool>,
    last_success: Option<DateTime<Utc>>,
    rdb_bytes: Option<u64>,
    artifact_bytes: Option<u64>,
    keys: Option<u64>,
    runs: BTreeMap<&'static str, u64>,
    next_due: Option<DateTime<Utc>>,
    targets: BTreeMap<String, TargetMetrics>,
}

#[derive(Default)]
struct TargetMetrics {
    last_success: Option<DateTime<Utc>>,
    failures: u64,
    pruned: u64,
}

impl Metrics {
    pub fn new(started: DateTime<Utc>, config: Arc<Config>) -> Metrics {
        Metrics { started, config, jobs: BTreeMap::new() }
    }

    pub fn set_config(&mut self, config: Arc<Config>) {
        self.config = config;
    }

    fn job(&mut self, job: &str) -> &mut JobMetrics {
        self.jobs.entry(job.to_string()).or_default()
    }

    /// Records the last success from before this process started.
    pub fn seed_success(&mut self, job: &str, at: DateTime<Utc>) {
        self.job(job).last_success = Some(at);
    }

    pub fn set_next_due(&mut self, job: &str, next: Option<DateTime<Utc>>) {
        self.job(job).next_due = next;
    }

    pub fn reset_next_due(&mut self, jobs: impl Iterator<Item = (String, Option<DateTime<Utc>>)>) {
        for metrics in self.jobs.values_mut() {
            metrics.next_due = None;
        }
        for (job, next) in jobs {
            self.job(&job).next_due = next;
        }
    }

    /// Counts a due run that did not start, because the previous one was
    /// still going or another process held the job's lock.
    pub fn skipped(&mut self, job: &str) {
        *self.job(job).runs.entry("skipped").or_default() += 1;
    }

    /// Records a finished run: its report, or `Err` when it failed before
    /// any target got the backup.
    pub fn record(&mut self, job: &str, started: DateTime<Utc>, took: Duration, result: Result<&RunReport, ()>) {
        let now = Utc::now();
        let targets: Vec<String> = self.config.job(job).map(|job| job.targets.clone()).unwrap_or_default();
        let metrics = self.job(job);
        metrics.last_run_start = Some(started);
        metrics.last_run_duration = Some(took);
        match result {
            Ok(report) => {
                let all = report.all_published();
                metrics.last_run_success = Some(all);
                *metrics.runs.entry(if all { "success" } else { "partial" }).or_default() += 1;
                if all {
                    metrics.last_success = Some(now);
                }
                metrics.rdb_bytes = Some(report.rdb_bytes);
                metrics.artifact_bytes = Some(report.artifact_bytes);
                metrics.keys = Some(report.keys);
                for outcome in &report.targets {
                    let target = metrics.targets.entry(outcome.target.clone()).or_default();
                    if outcome.published {
                        target.last_success = Some(now);
                    } else {
                        target.failures += 1;
                    }
                }
                for pruned in &report.pruned {
                    metrics.targets.entry(pruned.target.clone()).or_default().pruned += pruned.deleted.len() as u64;
                }
            }
            Err(()) => {
                metrics.last_run_success = Some(false);
                *metrics.runs.entry("failure").or_default() += 1;
                for target in targets {
                    metrics.targets.entry(target).or_default().failures += 1;
                }
            }
        }
    }

    /// Returns whether `job` is overdue at `now`: its `alert_after` has passed since
    /// the first scheduled time after its last success (or after the daemon
    /// started, when it never succeeded). `None` for jobs without
    /// `alert_after`.
    fn overdue(&self, job: &crate::config::Job, now: DateTime<Utc>) -> Option<bool> {
        let alert_after = job.alert_after?;
        let since = self.jobs.get(&job.name).and_then(|metrics| metrics.last_success).unwrap_or(self.started);
        let due = job.schedule.as_ref().and_then(|schedule| schedule.next_after(since)).unwrap_or(since);
        Some(now > due + alert_after)
    }

    /// Renders the metrics in the Prometheus text format.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let jobs: Vec<&crate::config::Job> = self.config.jobs.iter().collect();
        let per_job = |value: &dyn Fn(&JobMetrics) -> Option<f64>| -> Vec<(String, f64)> {
            jobs.iter()
                .filter_map(|job| self.jobs.get(&job.name).and_then(value).map(|v| (labels(&[("job", &job.name)]), v)))
                .collect()
        };
        family(
            "sessbackup_last_success_timestamp_seconds",
            "gauge",
            "End of the last run that published on every target (Unix time).",
            per_job(&|m| m.last_success.map(seconds)),
        );
        family(
            "sessbackup_last_run_timestamp_seconds",
            "gauge",
            "Start of the last run (Unix time).",
            per_job(&|m| m.last_run_start.map(seconds)),
        );
        family(
            "sessbackup_last_run_duration_seconds",
            "gauge",
            "Duration of the last run.",
            per_job(&|m| m.last_run_duration.map(|d| d.as_secs_f64())),
        );
        family(
            "sessbackup_last_run_success",
            "gauge",
            "1 if the last run published on every target, else 0.",
            per_job(&|m| m.last_run_success.map(|ok| if ok { 1.0 } else { 0.0 })),
        );
        family(
            "sessbackup_last_backup_rdb_bytes",
            "gauge",
            "Size of the RDB file of the last backup.",
            per_job(&|m| m.rdb_bytes.map(|v| v as f64)),
        );
        family(
            "sessbackup_last_backup_artifact_bytes",
            "gauge",
            "Size of the compressed artifact of the last backup.",
            per_job(&|m| m.artifact_bytes.map(|v| v as f64)),
        );
        family(
            "sessbackup_last_backup_keys",
            "gauge",
            "Keys in the last backup, all databases.",
            per_job(&|m| m.keys.map(|v| v as f64)),
        );
        family(
            "sessbackup_next_run_timestamp_seconds",
            "gauge",
            "When the next scheduled run is due (Unix time).",
            per_job(&|m| m.next_due.map(seconds)),
        );
        let mut runs = Vec::new();
        for job in &jobs {
            for result in RESULTS {
                let count = self.jobs.get(&job.name).and_then(|m| m.runs.get(result)).copied().unwrap_or(0);
                runs.push((labels(&[("job", &job.name), ("result", result)]), count as f64));
            }
        }
        family("sessbackup_runs_total", "counter", "Runs by result: success, partial, failure, skipped.", runs);

        let mut target_success = Vec::new();
        let mut target_failures = Vec::new();
        let mut target_pruned = Vec::new();
        for job in &jobs {
            for target in &job.targets {
                let metrics = self.jobs.get(&job.name).and_then(|m| m.targets.get(target));
                let names = labels(&[("job", &job.name), ("target", target)]);
                if let Some(at) = metrics.and_then(|m| m.last_success) {
                    target_success.push((names.clone(), seconds(at)));
                }
                target_failures.push((names.clone(), metrics.map_or(0, |m| m.failures) as f64));
                target_pruned.push((names, metrics.map_or(0, |m| m.pruned) as f64));
            }
        }
        family(
            "sessbackup_target_last_success_timestamp_seconds",
            "gauge",
            "Last time a backup was published on the target (Unix time).",
            target_success,
        );
        family(
            "sessbackup_target_failures_total",
            "counter",
            "Runs whose backup did not reach the target.",
            target_failures,
        );
        family(
            "sessbackup_target_pruned_backups_total",
            "counter",
            "Backups deleted from the target by retention.",
            target_pruned,
        );
        let overdue: Vec<(String, f64)> = jobs
            .iter()
            .filter_map(|job| {
                self.overdue(job, now).map(|late| (labels(&[("job", &job.name)]), if late { 1.0 } else { 0.0 }))
            })
            .collect();
        family(
            "sessbackup_overdue",
            "gauge",
            "1 when no run succeeded within alert_after of the time one was due (jobs with alert_after only).",
            overdue,
        );
        family(
            "sessbackup_daemon_start_timestamp_seconds",
            "gauge",
            "When the daemon started (Unix time).",
            vec![(String::new(), seconds(self.started))],
        );
        out
    }
}

fn seconds(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

/// Renders `{name="value",…}` with the values escaped as the text format
/// requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(name, value)| {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{name}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A running metrics server; it stops when dropped.
pub struct Server {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `address` and serves `/metrics` from `metrics`.
pub async fn serve(address: SocketAddr, metrics: Arc<Mutex<Metrics>>) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(address = %listener.local_addr()?, "serving metrics at /metrics");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, std::convert::Infallible>(respond(&request, &metrics)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                // A client that goes away mid-request is not worth a log line.
                let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            });
        }
    });
    Ok(Server { task })
}

fn respond(
    request: &hyper::Request<hyper::body::Incoming>,
    metrics: &Mutex<Metrics>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET | &hyper::Method::HEAD, "/metrics") => {
            let text = metrics.lock().map(|metrics| metrics.render(Utc::now())).unwrap_or_default();
            (200, "text/plain; version=0.0.4; charset=utf-8", text)
        }
        (_, "/metrics") => (405, "text/plain; charset=utf-8", "only GET is served here\n".to_string()),
        _ => (404, "text/plain; charset=utf-8", "metrics are at /metrics\n".to_string()),
    };
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Arc<Config> {
        let text = format!(
            "[[job]]\nname = \"sessions\"\nredis_url = \"redis://127.0.0.1:6379/\"\nschedule = \"0 2 * * *\"\n{extra}\ntargets = [\"local\"]\n\
             [[target]]\nname = \"local\"\ntype = \"local\"\npath = \"/var/backups/sessbackup\"\n"
        );
        Arc::new(crate::config::parse(&text).unwrap())
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn overdue_counts_from_next_due_time() {
        let mut metrics = Metrics::new(at("2026-12-01T00:00:00Z"), config("alert_after = \"6h\""));
        metrics.seed_success("sessions", at("2026-12-04T02:00:30Z"));
        // Next due 2026-12-05T02:00; overdue after 08:00.
        assert!(metrics.render(at("2026-12-05T07:59:00Z")).contains("sessbackup_overdue{job=\"sessions\"} 0"));
        assert!(metrics.render(at("2026-12-05T08:01:00Z")).contains("sessbackup_overdue{job=\"sessions\"} 1"));
    }

    #[test]
    fn overdue_without_success_counts_from_start() {
        let metrics = Metrics::new(at("2026-12-05T03:00:00Z"), config("alert_after = \"1h\""));
        assert!(metrics.render(at("2026-12-06T02:59:00Z")).contains("sessbackup_overdue{job=\"sessions\"} 0"));
        assert!(metrics.render(at("2026-12-06T03:01:00Z")).contains("sessbackup_overdue{job=\"sessions\"} 1"));
    }

    #[test]
    fn no_overdue_series_without_alert_after() {
        let metrics = Metrics::new(at("2026-12-05T03:00:00Z"), config(""));
        let text = metrics.render(at("2027-12-05T03:00:00Z"));
        assert!(!text.contains("sessbackup_overdue{"), "{text}");
        assert!(text.contains("sessbackup_runs_total{job=\"sessions\",result=\"failure\"} 0"), "{text}");
        assert!(text.contains("sessbackup_target_failures_total{job=\"sessions\",target=\"local\"} 0"), "{text}");
    }

    #[test]
    fn failures_count_on_every_target_of_the_job() {
        let mut metrics = Metrics::new(at("2026-12-05T03:00:00Z"), config(""));
        metrics.record("sessions", at("2026-12-05T03:00:00Z"), Duration::from_secs(2), Err(()));
        metrics.skipped("sessions");
        let text = metrics.render(at("2026-12-05T03:10:00Z"));
        assert!(text.contains("sessbackup_runs_total{job=\"sessions\",result=\"failure\"} 1"), "{text}");
        assert!(text.contains("sessbackup_runs_total{job=\"sessions\",result=\"skipped\"} 1"), "{text}");
        assert!(text.contains("sessbackup_target_failures_total{job=\"sessions\",target=\"local\"} 1"), "{text}");
        assert!(text.contains("sessbackup_last_run_success{job=\"sessions\"} 0"), "{text}");
        assert!(text.contains("sessbackup_last_run_duration_seconds{job=\"sessions\"} 2"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("job", "a\"b\\c")]), "{job=\"a\\\"b\\\\c\"}");
    }
}
