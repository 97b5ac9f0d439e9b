//! Command-line interface: argument parsing, logging set-up, and the glue that
//! turns configuration into sources and targets for each command.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage error, 3 a backup
//! reached some of its targets but not all, 78 invalid configuration
//! (`EX_CONFIG`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::live::{self, OnConflict};

use crate::config::{self, Config, TargetKind};
use crate::manifest::Manifest;
use crate::pipeline;
use crate::rdb;
use crate::restore::{self, Backup};
use crate::source::RedisSource;
use crate::target::{FtpTarget, LocalTarget, S3Credentials, S3Target, Target};

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFIG: u8 = 78;
/// A backup was published on some of a job's targets but not on all.
pub const EXIT_PARTIAL: u8 = 3;
/// Another run of the job holds its lock (EX_TEMPFAIL in sysexits.h: try
/// again later).
pub const EXIT_LOCKED: u8 = 75;

/// Back up Redis (RDB snapshots) to verified, compressed backups, and restore them.
#[derive(Debug, Parser)]
#[command(name = "sessbackup", version, about, max_term_width = 100)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "SESSBACKUP_CONFIG", default_value = config::DEFAULT_PATH, value_name = "PATH")]
    pub config: PathBuf,

    /// Log level; RUST_LOG overrides it.
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Info, value_name = "LEVEL")]
    pub log_level: LogLevel,

    /// Log line format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogLevel {
    Off,
    Error,
    #[value(alias = "warning")]
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every job (or one) now: snapshot, check, compress and publish.
    Backup {
        /// Run only this job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Print the run reports as JSON on standard output.
        #[arg(long)]
        json: bool,
    },
    /// List published backups, newest first.
    List {
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download a backup and check it end to end against its manifest.
    Verify {
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// Backup id, or "latest".
        #[arg(default_value = "latest", value_name = "ID|latest")]
        backup: String,
        /// Print the verification as JSON.
        #[arg(long)]
        json: bool,
        /// Also load the backup into a scratch redis-server and compare its
        /// keys per database with the manifest.
        #[arg(long)]
        drill: bool,
        #[command(flatten)]
        scratch: ScratchArgs,
        /// Folder for the drill's copy of the RDB and the scratch server.
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
    },
    /// Verify a backup, then write its RDB file or load it into a server.
    Restore(Box<RestoreArgs>),
    /// Check a local RDB file, AOF file or multi-part AOF and describe it;
    /// needs no configuration.
    Inspect {
        /// RDB file, AOF file, AOF manifest, or appendonlydir/.
        file: PathBuf,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete the backups that the retention rules no longer keep, and
    /// staging files of interrupted uploads older than a day.
    Prune {
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// Print every decision, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Decide as if it were this time (RFC 3339), to see what a policy
        /// will do later.
        #[arg(long, value_name = "TIME")]
        now: Option<String>,
        /// Print the decisions as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run every job on its schedule until stopped (SIGTERM or SIGINT);
    /// SIGHUP reloads the configuration.
    Daemon,
    /// Validate the configuration file and report every problem.
    Check {
        /// Also connect to each job's Redis, and log in to each target and list it (writes nothing).
        #[arg(long)]
        probe: bool,
        /// Also check what `daemon` needs: at least one job with a schedule.
        #[arg(long)]
        daemon: bool,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["to", "into", "drill", "data_dir"])))]
pub struct RestoreArgs {
    #[arg(long, value_name = "NAME")]
    job: Option<String>,
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    /// Backup id, or "latest".
    #[arg(default_value = "latest", value_name = "ID|latest")]
    backup: String,
    /// Restore this local RDB file instead of a backup (checked first like
    /// a backup; needs no configuration).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["job", "target", "to"])]
    rdb: Option<PathBuf>,
    /// Rebuild the dataset from this AOF instead: a single AOF file, a
    /// multi-part AOF manifest, or its appendonlydir/ (needs no
    /// configuration). A scratch redis-server loads it and saves an RDB.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["job", "target", "rdb", "data_dir"])]
    aof: Option<PathBuf>,
    /// Rebuild from the AOF shipped with the backup (jobs with include_aof)
    /// instead of its RDB.
    #[arg(long, conflicts_with_all = ["rdb", "aof", "data_dir"])]
    from_aof: bool,
    /// With --aof or --from-aof: load the AOF up to its last whole command when its last
    /// file ends in the middle of one (the files are not changed).
    #[arg(long)]
    truncate_tail: bool,
    /// With --aof or --from-aof: stop at the first #TS: annotation after this time (RFC
    /// 3339, or Unix seconds); needs aof-timestamp-enabled on the source.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Write the RDB to this file (written atomically).
    #[arg(long, value_name = "FILE")]
    to: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long, requires = "to")]
    force: bool,
    /// Load the backup into this running server (redis://, rediss:// or
    /// unix://) with RESTORE, keeping expiry times.
    #[arg(long, value_name = "URL")]
    into: Option<String>,
    /// Empty every database of the server (FLUSHALL) before loading.
    #[arg(long, requires = "into")]
    flush: bool,
    /// Policy for keys that already exist on the server.
    #[arg(long, value_enum, default_value_t = OnConflict::Fail, requires = "into")]
    on_conflict: OnConflict,
    /// ACL user name for --into.
    #[arg(long, value_name = "NAME", requires = "into")]
    username: Option<String>,
    /// Environment variable with the password for --into.
    #[arg(long, value_name = "VARIABLE", requires = "into", conflicts_with = "password_file")]
    password_env: Option<String>,
    /// File with the password for --into.
    #[arg(long, value_name = "FILE", requires = "into")]
    password_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) trusted for a rediss:// URL.
    #[arg(long, value_name = "FILE", requires = "into")]
    tls_ca_file: Option<PathBuf>,
    /// Install into the data directory of a stopped Redis (its `dir`),
    /// moving the files it replaces to a sessbackup-aside-<time> folder.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Redis's dbfilename setting.
    #[arg(long, value_name = "NAME", default_value = "dump.rdb", requires = "data_dir")]
    dbfilename: String,
    /// Whether the server runs with appendonly yes; then the RDB also
    /// becomes the base of a new multi-part AOF. Default: yes if the data
    /// directory has an AOF.
    #[arg(long, value_enum, requires = "data_dir")]
    appendonly: Option<YesNo>,
    /// Redis's appenddirname setting.
    #[arg(long, value_name = "NAME", default_value = "appendonlydir", requires = "data_dir")]
    appenddirname: String,
    /// Redis's appendfilename setting.
    #[arg(long, value_name = "NAME", default_value = "appendonly.aof", requires = "data_dir")]
    appendfilename: String,
    /// Start a scratch redis-server on the verified RDB, compare its keys
    /// per database with the manifest, then stop it and remove its files.
    #[arg(long)]
    drill: bool,
    #[command(flatten)]
    scratch: ScratchArgs,
    /// Verify and check everything, print the plan, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Folder for the verified RDB copy that --into loads from (default: the
    /// system's temporary folder); it needs room for the whole RDB.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YesNo {
    Yes,
    No,
}

/// Options of the scratch redis-server that drills start.
#[derive(Debug, Clone, clap::Args)]
pub struct ScratchArgs {
    /// redis-server binary for drills, and whose version --data-dir checks
    /// (default: redis-server on PATH).
    #[arg(long, value_name = "PATH")]
    redis_server: Option<PathBuf>,
    /// How long the scratch server may take to load the RDB.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    load_timeout_secs: u64,
}

impl ScratchArgs {
    fn drill_options(&self, work_dir: &Path) -> crate::drill::DrillOptions {
        crate::drill::DrillOptions {
            redis_server: crate::scratch::find_redis_server(self.redis_server.as_deref()),
            work_dir: work_dir.to_path_buf(),
            load_timeout: std::time::Duration::from_secs(self.load_timeout_secs),
        }
    }
}

/// Parses arguments, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    crate::tls::ensure_crypto_provider();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(run(cli));
    ExitCode::from(code)
}

/// Progress bars only for a person watching a command that moves a backup,
/// and only when nothing on the terminal is meant for a machine.
fn wants_progress(cli: &Cli) -> bool {
    let json_output = match &cli.command {
        Command::Backup { json, .. } => *json,
        Command::Verify { json, .. } => *json,
        Command::Restore(_) => false,
        _ => return false,
    };
    crate::progress::terminal() && matches!(cli.log_format, LogFormat::Text) && !json_output
}

fn init_logging(cli: &Cli) {
    crate::logging::set_json(matches!(cli.log_format, LogFormat::Json));
    if wants_progress(cli) {
        crate::progress::enable();
    }
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, filter};
    // The FTP library logs every transfer it abandons at warn level; the
    // target reports those failures itself, with their context.
    let levels = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},suppaftp=error", cli.log_level.directive())));
    // At debug and trace level the FTP library logs every command it sends,
    // PASS with the password included, so those levels stay off for it
    // whatever RUST_LOG sets.
    let no_secrets = filter::filter_fn(|metadata| {
        !(metadata.target().starts_with("suppaftp") && *metadata.level() > tracing::Level::INFO)
    });
    // Colour only for a person at a terminal; journald and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer().with_writer(|| crate::progress::LogWriter).with_ansi(ansi);
    let layer = match cli.log_format {
        LogFormat::Text => layer.with_target(false).boxed(),
        LogFormat::Json => layer.fmt_fields(JsonFields::new()).event_format(crate::logging::FlatJson).boxed(),
    };
    tracing_subscriber::registry().with(layer.with_filter(levels).with_filter(no_secrets)).init();
}

async fn run(cli: Cli) -> u8 {
    let result = match &cli.command {
        Command::Inspect { file, json } if is_aof(file) => return inspect_aof(file, *json),
        Command::Inspect { file, json } => return inspect(file, *json),
        Command::Restore(args) if args.aof.is_some() => {
            return finish(restore_aof(args).await);
        }
        Command::Restore(args) if args.rdb.is_some() => {
            return finish(restore_local_rdb(args).await);
        }
        Command::Check { probe, daemon } => return check(&cli.config, *probe, *daemon).await,
        _ => {
            let config = match config::load(&cli.config) {
                Ok(config) => config,
                Err(err) => {
                    crate::logging::error(&err.to_string());
                    return EXIT_CONFIG;
                }
            };
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            match cli.command {
                Command::Backup { job, json } => backup(&config, job.as_deref(), json).await,
                Command::List { job, target, json } => list(&config, job.as_deref(), target.as_deref(), json).await,
                Command::Verify { job, target, backup, json, drill, scratch, work_dir } => {
                    let drill = drill.then(|| scratch.drill_options(&work_dir.unwrap_or_else(std::env::temp_dir)));
                    verify(&config, job.as_deref(), target.as_deref(), &backup, json, drill).await
                }
                Command::Restore(args) => restore(&config, &args).await,
                Command::Prune { job, target, dry_run, now, json } => {
                    prune(&config, job.as_deref(), target.as_deref(), dry_run, now.as_deref(), json).await
                }
                Command::Daemon => Ok(crate::daemon::run(cli.config.clone(), config).await),
                Command::Inspect { .. } | Command::Check { .. } => unreachable!("handled above"),
            }
        }
    };
    finish(result)
}

/// Prints a command's error and returns its exit code.
fn finish(result: anyhow::Result<u8>) -> u8 {
    match result {
        Ok(code) => code,
        Err(err) => {
            crate::logging::error(&format!("{err:#}"));
            if err.downcast_ref::<UsageError>().is_some() { EXIT_USAGE } else { EXIT_FAILURE }
        }
    }
}

/// A command-line argument names something the configuration does not have.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Builds the target named `name`, reading the secrets it needs.
pub fn build_target(config: &Config, name: &str) -> anyhow::Result<Arc<dyn Target>> {
    let target = config.target(name).ok_or_else(|| anyhow!("target {name:?} is not defined in the configuration"))?;
    let context = |message: String| anyhow!("target {name}: {message}");
    Ok(match &target.kind {
        TargetKind::Local { path } => Arc::new(LocalTarget::new(target.name.clone(), path.clone())),
        TargetKind::Ftp(settings) => {
            let password = settings.password.as_ref().map(|source| source.resolve()).transpose().map_err(context)?;
            Arc::new(FtpTarget::new(target.name.clone(), settings.clone(), password).map_err(context)?)
        }
        TargetKind::S3(settings) => {
            let credentials = match (&settings.access_key_id, &settings.secret_access_key) {
                (Some(key_id), Some(secret)) => Some(S3Credentials {
                    access_key_id: key_id.resolve().map_err(context)?,
                    secret_access_key: secret.resolve().map_err(context)?,
                    session_token: settings
                        .session_token
                        .as_ref()
                        .map(|source| source.resolve())
                        .transpose()
                        .map_err(context)?,
                }),
                _ => None,
            };
            Arc::new(S3Target::new(target.name.clone(), settings, credentials).map_err(context)?)
        }
    })
}

async fn backup(config: &Config, job_name: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let jobs: Vec<&config::Job> = match job_name {
        Some(name) => vec![config.job(name).ok_or_else(|| unknown_job(config, name))?],
        None => config.jobs.iter().collect(),
    };
    let mut reports = Vec::new();
    let mut failed = false;
    let mut locked = false;
    let mut partial = false;
    for job in jobs {
        match backup_job(config, job).await {
            Ok(report) => {
                if !report.all_published() {
                    partial = true;
                }
                if !json {
                    print_run(&report);
                }
                reports.push(serde_json::to_value(&report).expect("reports serialize"));
            }
            Err(err) => {
                if matches!(err.downcast_ref::<crate::lock::Error>(), Some(crate::lock::Error::Busy { .. })) {
                    locked = true;
                } else {
                    failed = true;
                }
                // Standard error carries the log, which may be JSON: the
                // failure goes there as a log event and to standard output
                // with the other results.
                tracing::error!(job = %job.name, error = %format!("{err:#}"), "backup failed");
                if !json {
                    println!("{}: backup FAILED: {err:#}", job.name);
                }
                reports.push(serde_json::json!({ "job": job.name, "error": format!("{err:#}") }));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports).expect("JSON values serialize"));
    }
    Ok(if failed {
        EXIT_FAILURE
    } else if locked {
        EXIT_LOCKED
    } else if partial {
        EXIT_PARTIAL
    } else {
        0
    })
}

pub(crate) async fn backup_job(config: &Config, job: &config::Job) -> anyhow::Result<pipeline::RunReport> {
    // Held until the run ends: see the lock module for why runs of one job
    // must not overlap.
    let _lock = crate::lock::acquire(&crate::lock::state_folder(config.daemon.state_dir.as_deref()), &job.name)?;
    let password = match &job.redis.password {
        Some(source) => Some(source.resolve().map_err(|message| anyhow!(message))?),
        None => None,
    };
    let source = RedisSource::new(&job.redis, password, job.rdb_path.clone())?;
    // A target that cannot be set up (an unset password variable, say) fails
    // alone; the backup still goes to the others.
    let mut targets = Vec::new();
    let mut unusable = Vec::new();
    for name in &job.targets {
        match build_target(config, name) {
            Ok(target) => targets.push(target),
            Err(err) => {
                tracing::error!(target = %name, error = %format!("{err:#}"), "target cannot be used");
                unusable.push(pipeline::TargetOutcome {
                    target: name.clone(),
                    published: false,
                    error: Some(format!("{err:#}")),
                });
            }
        }
    }
    if targets.is_empty() {
        let errors: Vec<String> = unusable.into_iter().filter_map(|outcome| outcome.error).collect();
        bail!("no target of job {} can be used: {}", job.name, errors.join("; "));
    }
    let mut report = pipeline::run_backup(job, &source, &targets, unusable).await?;
    // Retention runs only where this backup arrived: while runs fail, old
    // backups must stay.
    for outcome in report.targets.iter().filter(|outcome| outcome.published) {
        let Some(policy) = policy_for(config, job, &outcome.target) else { continue };
        let Some(target) = targets.iter().find(|target| target.name() == outcome.target) else { continue };
        let span = tracing::info_span!("run", job = %job.name, backup_id = %report.id, phase = "prune");
        let pruned = crate::prune::prune(target, &job.name, policy, job.timezone, chrono::Utc::now(), false);
        match tracing::Instrument::instrument(pruned, span.clone()).await {
            Ok(pruned) => {
                let _entered = span.enter();
                tracing::info!(
                    target = %outcome.target,
                    deleted = pruned.deleted.len(),
                    kept = pruned.decisions.iter().filter(|decision| decision.keep).count(),
                    "retention applied"
                );
                for problem in &pruned.problems {
                    tracing::warn!(target = %outcome.target, "retention: {problem}");
                }
                report.pruned.push(pruned);
            }
            Err(err) => {
                let _entered = span.enter();
                tracing::warn!(target = %outcome.target, error = %err, "retention could not list the target")
            }
        }
    }
    Ok(report)
}

fn print_run(report: &pipeline::RunReport) {
    for outcome in &report.targets {
        match &outcome.error {
            None => println!(
                "{} {}: published to {} ({} RDB, {} compressed, {} keys)",
                report.job,
                report.id,
                outcome.target,
                human_bytes(report.rdb_bytes),
                human_bytes(report.artifact_bytes),
                report.keys
            ),
            Some(error) => println!("{} {}: NOT published to {}: {error}", report.job, report.id, outcome.target),
        }
    }
    for pruned in &report.pruned {
        if !pruned.deleted.is_empty() {
            println!("{}: retention deleted {} backup(s) on {}", report.job, pruned.deleted.len(), pruned.target);
        }
    }
}

fn unknown_job(config: &Config, name: &str) -> anyhow::Error {
    let known: Vec<&str> = config.jobs.iter().map(|job| job.name.as_str()).collect();
    UsageError(format!("job {name:?} is not defined; jobs in the configuration: {}", known.join(", "))).into()
}

/// A target by name, built, or the reason it cannot be.
type Candidate = (String, anyhow::Result<Arc<dyn Target>>);

/// Lists the targets to search, in order. With a name, that target alone,
/// and an error at once if it cannot be built. With a job, its targets.
/// Otherwise every job's targets in job order, then targets no job uses.
fn candidate_targets(config: &Config, job: Option<&str>, target: Option<&str>) -> anyhow::Result<Vec<Candidate>> {
    if let Some(name) = target {
        if config.target(name).is_none() {
            let known: Vec<&str> = config.targets.iter().map(|target| target.name.as_str()).collect();
            let message = format!("target {name:?} is not defined; targets in the configuration: {}", known.join(", "));
            return Err(UsageError(message).into());
        }
        return Ok(vec![(name.to_string(), Ok(build_target(config, name)?))]);
    }
    let names: Vec<&str> = match job.and_then(|name| config.job(name)) {
        Some(job) => job.targets.iter().map(String::as_str).collect(),
        None => {
            let mut names: Vec<&str> = Vec::new();
            let used = config.jobs.iter().flat_map(|job| job.targets.iter().map(String::as_str));
            let unused = config.targets.iter().map(|target| target.name.as_str());
            for name in used.chain(unused) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            names
        }
    };
    Ok(names.into_iter().map(|name| (name.to_string(), build_target(config, name))).collect())
}

async fn list(config: &Config, job: Option<&str>, target: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let mut rows = Vec::new();
    let mut searched = Vec::new();
    let mut unreadable = 0;
    let mut unreachable = 0;
    for (_, built) in candidate_targets(config, job, target)? {
        // One unreachable target does not hide the backups on the others.
        let (target, (backups, warnings)) = match list_target(built, job).await {
            Ok(listed) => listed,
            Err(err) => {
                crate::logging::error(&format!("{err:#}"));
                unreachable += 1;
                continue;
            }
        };
        for warning in &warnings {
            crate::logging::warn(warning);
        }
        unreadable += warnings.len();
        searched.push(target.to_string());
        rows.extend(backups);
    }

    // Newest first; copies of one backup keep the search order of targets
    // (the sort is stable).
    rows.sort_by(|a, b| b.manifest.id.cmp(&a.manifest.id));
    // A manifest that cannot be read hides a backup, so the exit code reports it.
    if unreadable > 0 {
        crate::logging::error(&format!(
            "{unreadable} manifest(s) could not be read; the backups they describe are not listed"
        ));
    }
    let code = if unreadable > 0 || unreachable > 0 { EXIT_FAILURE } else { 0 };

    if json {
        let values: Vec<serde_json::Value> = rows.iter().map(list_entry).collect();
        println!("{}", serde_json::to_string_pretty(&values).expect("JSON values serialize"));
        return Ok(code);
    }
    if rows.is_empty() {
        if searched.is_empty() {
            return Ok(code);
        }
        println!(
            "no backups found{} on {}",
            job.map(|job| format!(" of job {job}")).unwrap_or_default(),
            searched.join(", ")
        );
        return Ok(code);
    }
    println!(
        "{:<29} {:<16} {:<12} {:<20} {:>10} {:>10} {:>10}",
        "ID", "JOB", "TARGET", "CREATED", "RDB", "ARTIFACT", "KEYS"
    );
    for backup in &rows {
        let manifest = &backup.manifest;
        println!(
            "{:<29} {:<16} {:<12} {:<20} {:>10} {:>10} {:>10}",
            manifest.id,
            manifest.job,
            backup.target.name(),
            manifest.created_at,
            human_bytes(manifest.rdb.bytes),
            human_bytes(manifest.artifact.bytes),
            manifest.rdb.keys
        );
    }
    Ok(code)
}

fn list_entry(backup: &Backup) -> serde_json::Value {
    let manifest: &Manifest = &backup.manifest;
    serde_json::json!({
        "id": manifest.id,
        "job": manifest.job,
        "target": backup.target.name(),
        "created_at": manifest.created_at,
        "finished_at": manifest.finished_at,
        "rdb_bytes": manifest.rdb.bytes,
        "artifact_bytes": manifest.artifact.bytes,
        "rdb_sha256": manifest.rdb.sha256,
        "artifact_sha256": manifest.artifact.sha256,
        "keys": manifest.rdb.keys,
        "expires": manifest.rdb.expires,
        "rdb_version": manifest.rdb.version,
        "redis_version": manifest.redis.version,
        "aof": manifest.aof.is_some(),
    })
}

/// Lists the backups on a target, if it could be built.
async fn list_target(
    built: anyhow::Result<Arc<dyn Target>>,
    job: Option<&str>,
) -> anyhow::Result<(Arc<dyn Target>, (Vec<Backup>, Vec<String>))> {
    let target = built?;
    let listed = restore::list_backups(&target, job).await?;
    Ok((target, listed))
}

/// Finds the backup to verify or restore: the newest, or the one with id
/// `which`. With a named target, only there. Otherwise every candidate
/// target is searched; the newest backup wins, and of equal copies the one
/// on the earliest target. Targets that cannot be reached are skipped with a
/// warning, so another copy can still be restored.
async fn select_backup(
    config: &Config,
    job: Option<&str>,
    target: Option<&str>,
    which: &str,
) -> anyhow::Result<Backup> {
    if let Some(name) = job
        && config.job(name).is_none()
        && target.is_none()
    {
        tracing::warn!(job = name, "job is not in the configuration; searching every target");
    }
    let mut searched = Vec::new();
    let mut unreachable = Vec::new();
    let mut jobs = std::collections::BTreeSet::new();
    let mut newest: Option<Backup> = None;
    for (name, built) in candidate_targets(config, job, target)? {
        let (_, (backups, warnings)) = match list_target(built, job).await {
            Ok(listed) => listed,
            Err(err) if target.is_none() => {
                tracing::warn!("{err:#}; searching the other targets");
                unreachable.push(format!("{err:#}"));
                continue;
            }
            Err(err) => return Err(err),
        };
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        searched.push(name);
        if which != "latest" {
            if let Some(backup) = backups.into_iter().find(|backup| backup.manifest.id == which) {
                announce(&backup);
                return Ok(backup);
            }
            continue;
        }
        jobs.extend(backups.iter().map(|backup| backup.manifest.job.clone()));
        if let Some(first) = backups.into_iter().next()
            && newest.as_ref().is_none_or(|current| first.manifest.id > current.manifest.id)
        {
            newest = Some(first);
        }
    }
    if jobs.len() > 1 {
        let jobs = jobs.into_iter().collect::<Vec<_>>().join(", ");
        return Err(
            UsageError(format!("the targets have backups of several jobs ({jobs}); pass --job to choose one")).into()
        );
    }
    if let Some(backup) = newest {
        announce(&backup);
        return Ok(backup);
    }

    let what = if which == "latest" { "no backup".to_string() } else { format!("no backup with id {which}") };
    let of_job = job.map(|job| format!(" of job {job}")).unwrap_or_default();
    if searched.is_empty() {
        bail!("{what}{of_job} found: no target could be listed ({})", unreachable.join("; "));
    }
    let skipped = if unreachable.is_empty() {
        String::new()
    } else {
        format!(" ({} more could not be listed: {})", unreachable.len(), unreachable.join("; "))
    };
    bail!(
        "{what}{of_job} found on target(s) {}{skipped}; run `sessbackup list` to see what exists",
        searched.join(", ")
    )
}

fn announce(backup: &Backup) {
    crate::logging::note(&format!(
        "using backup {} of job {} on target {}",
        backup.manifest.id,
        backup.manifest.job,
        backup.target.name()
    ));
}

async fn verify(
    config: &Config,
    job: Option<&str>,
    target: Option<&str>,
    which: &str,
    json: bool,
    drill: Option<crate::drill::DrillOptions>,
) -> anyhow::Result<u8> {
    let backup = select_backup(config, job, target, which).await?;
    // A drill needs the RDB on disk; plain verification streams it.
    let scratch = match &drill {
        Some(options) => {
            Some(tempfile::Builder::new().prefix(".sessbackup-drill-").tempdir_in(&options.work_dir).map_err(
                |err| anyhow!("cannot create a folder in {}: {err}; pass --work-dir", options.work_dir.display()),
            )?)
        }
        None => None,
    };
    let sink = match &scratch {
        Some(folder) => {
            let path = folder.path().join("dump.rdb");
            Some(std::fs::File::create(&path).map_err(|err| anyhow!("cannot create {}: {err}", path.display()))?)
        }
        None => None,
    };
    let verification = restore::verify(&backup, sink).await;
    let drilled = match (&drill, &scratch) {
        (Some(options), Some(folder)) if verification.ok() => Some(
            crate::drill::drill(&folder.path().join("dump.rdb"), &backup.manifest.rdb.databases, options)
                .await
                .map_err(|err| anyhow!("drill failed: {err}")),
        ),
        _ => None,
    };
    let drill_ok = drilled.as_ref().is_none_or(|result| result.as_ref().is_ok_and(|report| report.ok));
    if json {
        let mut value = serde_json::to_value(&verification).expect("verification serializes");
        value["ok"] = (verification.ok() && drill_ok).into();
        match &drilled {
            Some(Ok(report)) => value["drill"] = serde_json::to_value(report).expect("drill reports serialize"),
            Some(Err(err)) => value["drill"] = serde_json::json!({ "ok": false, "error": format!("{err:#}") }),
            None => {}
        }
        println!("{}", serde_json::to_string_pretty(&value).expect("JSON values serialize"));
    } else {
        for check in &verification.checks {
            let mark = if check.ok { "ok  " } else { "FAIL" };
            if check.ok {
                println!("{mark} {}: {}", check.what, check.actual);
            } else {
                println!("{mark} {}: expected {}, found {}", check.what, check.expected, check.actual);
            }
        }
        for error in &verification.errors {
            println!("FAIL {error}");
        }
        println!(
            "backup {} on {}: {}",
            verification.id,
            verification.target,
            if verification.ok() { "verified" } else { "FAILED verification" }
        );
        match &drilled {
            Some(Ok(report)) => print_drill(report),
            Some(Err(err)) => println!("FAIL {err:#}"),
            None => {}
        }
    }
    Ok(if verification.ok() && drill_ok { 0 } else { EXIT_FAILURE })
}

fn print_drill(report: &crate::drill::DrillReport) {
    for db in &report.databases {
        let mark = if db.ok { "ok  " } else { "FAIL" };
        let expired = match (db.expired_before_start, db.expired_when_counted) {
            (_, 0) => String::new(),
            (before, when) if before == when => format!(" ({before} had expired, which Redis drops)"),
            (before, when) => format!(" ({before} to {when} had expired, which Redis drops)"),
        };
        println!("{mark} drill db{}: {} keys expected, {} loaded{expired}", db.db, db.expected, db.loaded);
    }
    println!(
        "drill: redis-server {} loaded the RDB in {} ms: {}",
        report.server_version,
        report.load_ms,
        if report.ok { "passed" } else { "FAILED" }
    );
}

async fn restore(config: &Config, args: &RestoreArgs) -> anyhow::Result<u8> {
    if args.from_aof {
        return restore_backup_aof(config, args).await;
    }
    if args.truncate_tail || args.until.is_some() {
        return Err(UsageError("--truncate-tail and --until apply to --aof and --from-aof".to_string()).into());
    }
    if let Some(to) = &args.to {
        return restore_to_file(config, args, to).await;
    }
    if let Some(dir) = &args.data_dir {
        return restore_data_dir(config, args, dir).await;
    }
    if args.drill {
        return restore_drill(config, args).await;
    }
    restore_into(config, args).await
}

async fn restore_data_dir(config: &Config, args: &RestoreArgs, dir: &Path) -> anyhow::Result<u8> {
    let (job, target) = (args.job.as_deref(), args.target.as_deref());
    let layout = data_dir_layout(args, dir)?;
    let plan = check_data_dir(args, &layout)?;
    let backup = select_backup(config, job, target, &args.backup).await?;
    check_server_loads(backup.manifest.rdb.version, args)?;
    if args.dry_run {
        let verification = restore::verify_rdb(&backup, None).await;
        if !verification.ok() {
            bail!("backup {} failed verification:\n  {}", verification.id, verification.problems().join("\n  "));
        }
        print_data_dir_plan(&layout, &plan, true);
        return Ok(0);
    }

    let staging = staging_in(dir)?;
    let verified = staging.path().join(&layout.dbfilename);
    restore::restore_to_file(&backup, &verified, false).await?;
    println!(
        "verified backup {} of job {} from target {}",
        backup.manifest.id,
        backup.manifest.job,
        backup.target.name()
    );
    install_data_dir(&layout, &verified, backup.manifest.rdb.keys)
}

/// Selects the backup `args` name and verifies it into a scratch folder;
/// returns the backup, the folder (removed when dropped) and the RDB copy.
async fn verified_copy(config: &Config, args: &RestoreArgs) -> anyhow::Result<(Backup, tempfile::TempDir, PathBuf)> {
    let backup = select_backup(config, args.job.as_deref(), args.target.as_deref(), &args.backup).await?;
    let scratch = work_folder(args)?;
    let copy = scratch.path().join("dump.rdb");
    restore::restore_to_file(&backup, &copy, false).await?;
    Ok((backup, scratch, copy))
}

async fn restore_drill(config: &Config, args: &RestoreArgs) -> anyhow::Result<u8> {
    let (backup, _scratch, copy) = verified_copy(config, args).await?;
    println!(
        "verified backup {} of job {} from target {}",
        backup.manifest.id,
        backup.manifest.job,
        backup.target.name()
    );
    run_drill(&copy, &backup.manifest.rdb.databases, args).await
}

async fn restore_into(config: &Config, args: &RestoreArgs) -> anyhow::Result<u8> {
    let server = into_server(args)?;
    let (backup, _scratch, copy) = verified_copy(config, args).await?;
    println!(
        "verified backup {} of job {} from target {} ({} keys, RDB version {})",
        backup.manifest.id,
        backup.manifest.job,
        backup.target.name(),
        backup.manifest.rdb.keys,
        backup.manifest.rdb.version
    );
    let highest_db = backup.manifest.rdb.databases.iter().map(|db| db.db).max().unwrap_or(0);
    load_into(&copy, backup.manifest.rdb.version, highest_db, &server, args).await
}

/// Refuses an RDB version that the installed redis-server cannot load, when
/// its version can be read: the server would not start on the new files.
fn check_server_loads(rdb_version: u32, args: &RestoreArgs) -> anyhow::Result<()> {
    let binary = crate::scratch::find_redis_server(args.scratch.redis_server.as_deref());
    let Some((major, minor)) = crate::datadir::binary_version(&binary) else {
        println!("note: could not run {binary} to read its version; make sure it loads RDB version {rdb_version}");
        return Ok(());
    };
    let info = std::collections::HashMap::from([("redis_version".to_string(), format!("{major}.{minor}.0"))]);
    if let Some(highest) = live::server_rdb_version(&info)
        && rdb_version > highest
    {
        bail!(
            "the backup is RDB version {rdb_version} (Redis {} or newer wrote it), but {binary} is Redis \
             {major}.{minor}, which loads RDB versions up to {highest}, so the server would not start on it; \
             upgrade Redis first, or name the binary the server runs with --redis-server",
            live::first_release_with(rdb_version)
        );
    }
    Ok(())
}

fn data_dir_layout(args: &RestoreArgs, dir: &Path) -> anyhow::Result<crate::datadir::Layout> {
    let appendonly = match args.appendonly {
        Some(choice) => choice == YesNo::Yes,
        None => {
            let found = [&args.appenddirname, &args.appendfilename]
                .into_iter()
                .map(|name| dir.join(name))
                .find(|path| path.symlink_metadata().is_ok());
            if let Some(path) = &found {
                println!(
                    "{} exists, so the server runs with appendonly yes; pass --appendonly no if it does not",
                    path.display()
                );
            }
            found.is_some()
        }
    };
    Ok(crate::datadir::Layout {
        dir: dir.to_path_buf(),
        dbfilename: args.dbfilename.clone(),
        appendonly,
        appenddirname: args.appenddirname.clone(),
        appendfilename: args.appendfilename.clone(),
    })
}

/// Refuses a directory a server uses, or an AOF layout the server's version
/// cannot load, and returns the install plan.
fn check_data_dir(args: &RestoreArgs, layout: &crate::datadir::Layout) -> anyhow::Result<crate::datadir::Plan> {
    let holders = crate::datadir::servers_using(&layout.dir);
    if !holders.is_empty() {
        return Err(crate::datadir::Error::InUse(holders).into());
    }
    if layout.appendonly {
        let binary = crate::scratch::find_redis_server(args.scratch.redis_server.as_deref());
        let version = crate::datadir::binary_version(&binary);
        let legacy =
            layout.dir.join(&layout.appendfilename).is_file() && !layout.dir.join(&layout.appenddirname).exists();
        if version.is_some_and(|(major, _)| major < 7) || (version.is_none() && legacy) {
            let found = match version {
                Some((major, minor)) => format!("{binary} is Redis {major}.{minor}"),
                None => format!("{} is a single-file AOF", layout.dir.join(&layout.appendfilename).display()),
            };
            bail!(
                "{found}, which predates multi-part AOF (Redis 7.0), so the backup cannot become an AOF base. \
                 Instead:\n  1. sessbackup restore ... --data-dir {dir} --appendonly no\n  2. start Redis with \
                 appendonly no, so that it loads {dbfilename}\n  3. redis-cli CONFIG SET appendonly yes, and wait \
                 until INFO persistence shows aof_rewrite_in_progress:0\n  4. set appendonly yes in redis.conf \
                 for the next start",
                dir = layout.dir.display(),
                dbfilename = layout.dbfilename,
            );
        }
        if version.is_none() {
            println!("note: could not run {binary} to read its version; the AOF base needs Redis 7.0 or newer");
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let stamp = crate::manifest::new_backup_id(now);
    let stamp = stamp.split('-').next().unwrap_or(&stamp);
    Ok(crate::datadir::plan(layout, stamp)?)
}

/// Creates a private folder inside `dir`, so that the verified file can be
/// renamed into place (renames do not cross file systems).
fn staging_in(dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(".sessbackup-restore-")
        .tempdir_in(dir)
        .map_err(|err| anyhow!("cannot create a folder in {}: {err}", dir.display()))
}

fn print_data_dir_plan(layout: &crate::datadir::Layout, plan: &crate::datadir::Plan, dry_run: bool) {
    let (move_verb, install_verb) = if dry_run { ("would move", "would install") } else { ("moved", "installed") };
    if dry_run {
        println!("dry run: nothing was changed in {}", layout.dir.display());
    }
    for path in &plan.moved {
        println!("{move_verb} {} to {}/", path.display(), plan.aside.display());
    }
    for path in &plan.installed {
        println!("{install_verb} {}", path.display());
    }
}

fn install_data_dir(layout: &crate::datadir::Layout, verified: &Path, keys: u64) -> anyhow::Result<u8> {
    // A server may have started while the backup downloaded.
    let plan = {
        let holders = crate::datadir::servers_using(&layout.dir);
        if !holders.is_empty() {
            return Err(crate::datadir::Error::InUse(holders).into());
        }
        let now = time::OffsetDateTime::now_utc();
        let stamp = crate::manifest::new_backup_id(now);
        crate::datadir::plan(layout, stamp.split('-').next().unwrap_or(&stamp))?
    };
    crate::datadir::install(layout, &plan, verified)?;
    print_data_dir_plan(layout, &plan, false);
    println!(
        "start Redis with dir {}, dbfilename {} and appendonly {}; it should report {keys} keys (fewer if some expired)",
        layout.dir.display(),
        layout.dbfilename,
        if layout.appendonly { "yes" } else { "no" }
    );
    Ok(0)
}

async fn run_drill(rdb: &Path, expected: &[crate::manifest::DatabaseCounts], args: &RestoreArgs) -> anyhow::Result<u8> {
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let options = args.scratch.drill_options(&work_dir);
    if args.dry_run {
        println!("dry run: would start {} on a copy of the RDB and compare its keys", options.redis_server);
        return Ok(0);
    }
    let report = crate::drill::drill(rdb, expected, &options).await.map_err(|err| anyhow!("drill failed: {err}"))?;
    print_drill(&report);
    Ok(if report.ok { 0 } else { EXIT_FAILURE })
}

/// Tells an AOF from an RDB file: a folder or manifest is a multi-part AOF;
/// a file that starts with a command or an annotation, or is named *.aof,
/// is an AOF (which may start with an RDB preamble).
fn is_aof(path: &Path) -> bool {
    if path.is_dir() || path.extension().is_some_and(|extension| extension == "manifest" || extension == "aof") {
        return true;
    }
    let mut first = [0u8; 1];
    std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut first))
        .is_ok_and(|()| first[0] == b'*' || first[0] == b'#')
}

fn inspect_aof(path: &Path, json: bool) -> u8 {
    let set = match crate::aof::open(path) {
        Ok(set) => set,
        Err(err) => {
            if json {
                let value = serde_json::json!({
                    "file": path.display().to_string(),
                    "valid": false,
                    "error": { "message": err.to_string() },
                });
                println!("{}", serde_json::to_string_pretty(&value).expect("JSON values serialize"));
            } else {
                crate::logging::error(&err.to_string());
            }
            return EXIT_FAILURE;
        }
    };
    let inspection = crate::aof::inspect(&set, None);
    if json {
        let mut value = serde_json::json!({
            "file": path.display().to_string(),
            "kind": set.kind,
            "valid": inspection.valid(),
            "commands": inspection.commands,
            "files": inspection.files,
        });
        if let Some(manifest) = &set.manifest {
            value["manifest"] = manifest.display().to_string().into();
        }
        if let Some(problem) = &inspection.problem {
            value["error"] = serde_json::json!({
                "file": problem.file,
                "offset": problem.offset,
                "message": problem.message,
                "torn_tail": problem.torn,
            });
        }
        println!("{}", serde_json::to_string_pretty(&value).expect("JSON values serialize"));
    } else {
        match &set.manifest {
            Some(manifest) => println!("multi-part AOF: {}", manifest.display()),
            None => println!("AOF file: {}", path.display()),
        }
        for file in &inspection.files {
            let role = match file.role {
                crate::aof::FileType::Base if set.kind == crate::aof::Kind::MultiPart => "base",
                crate::aof::FileType::Base => "file",
                _ => "incr",
            };
            let rdb = match (file.rdb_version, file.rdb_keys) {
                (Some(version), Some(keys)) => format!("RDB version {version} with {keys} keys, then "),
                _ => String::new(),
            };
            let times = match (file.first_timestamp, file.last_timestamp) {
                (Some(first), Some(last)) => format!(", #TS: {first} to {last}"),
                _ => String::new(),
            };
            println!("{role} {}: {} bytes, {rdb}{} commands{times}", file.name, file.bytes, file.commands);
        }
        println!("total: {} commands", inspection.commands);
        match &inspection.problem {
            None => println!("verdict: valid"),
            Some(problem) if problem.torn => println!(
                "verdict: INVALID: torn tail in {} at offset {}: {}; restore --aof --truncate-tail loads it up to \
                 there",
                problem.file, problem.offset, problem.message
            ),
            Some(problem) => {
                println!("verdict: INVALID: {} at offset {}: {}", problem.file, problem.offset, problem.message)
            }
        }
    }
    if inspection.valid() { 0 } else { EXIT_FAILURE }
}

/// Parses --until: RFC 3339 or Unix seconds.
fn parse_until(text: &str) -> anyhow::Result<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|at| at.unix_timestamp())
        .map_err(|_| {
            UsageError(format!("--until {text:?} is not a time; use RFC 3339 (2026-12-04T19:30:00Z) or Unix seconds"))
                .into()
        })
}

async fn restore_aof(args: &RestoreArgs) -> anyhow::Result<u8> {
    let path = args.aof.as_deref().expect("called with --aof");
    rebuild_from_aof(path, args).await
}

/// Verifies a backup's AOF archive, unpacks it into a private folder and
/// rebuilds from it like --aof.
async fn restore_backup_aof(config: &Config, args: &RestoreArgs) -> anyhow::Result<u8> {
    let backup = select_backup(config, args.job.as_deref(), args.target.as_deref(), &args.backup).await?;
    if backup.manifest.aof.is_none() {
        bail!(
            "backup {} has no AOF: its job did not set include_aof when it was taken; restore its RDB instead",
            backup.manifest.id
        );
    }
    let scratch = work_folder(args)?;
    let mut verification = restore::Verification {
        id: backup.manifest.id.clone(),
        job: backup.manifest.job.clone(),
        target: backup.target.name().to_string(),
        checks: Vec::new(),
        errors: Vec::new(),
    };
    restore::verify_aof(&backup, Some(scratch.path().to_path_buf()), &mut verification).await;
    if !verification.ok() {
        bail!(
            "the AOF of backup {} on target {} failed verification, nothing was changed:\n  {}",
            verification.id,
            verification.target,
            verification.problems().join("\n  ")
        );
    }
    println!(
        "verified the AOF of backup {} of job {} from target {}",
        backup.manifest.id,
        backup.manifest.job,
        backup.target.name()
    );
    rebuild_from_aof(&scratch.path().join("appendonlydir"), args).await
}

/// Rebuilds a dataset from an AOF in a scratch server, then writes, drills
/// or loads the RDB it saves.
async fn rebuild_from_aof(path: &Path, args: &RestoreArgs) -> anyhow::Result<u8> {
    if args.data_dir.is_some() {
        bail!("an AOF restore works with --to, --into or --drill");
    }
    let until = args.until.as_deref().map(parse_until).transpose()?;
    let set = crate::aof::open(path)?;
    let inspection = crate::aof::inspect(&set, until);
    if let Some(problem) = &inspection.problem {
        if !(problem.torn && args.truncate_tail) {
            let advice = if problem.torn {
                "; pass --truncate-tail to load it up to the last whole command"
            } else {
                "; the files were not changed"
            };
            bail!("{} at offset {}: {}{advice}", problem.file, problem.offset, problem.message);
        }
        println!(
            "torn tail in {} at offset {}: loading up to there ({})",
            problem.file, problem.offset, problem.message
        );
    }
    if let (Some(until), Some(ctime)) = (until, inspection.until_before_base) {
        bail!(
            "the AOF's base was written at {ctime} (its RDB ctime), after --until {until}: an AOF cannot go back \
             before its last rewrite; use an older backup"
        );
    }
    if let Some(single) = set.files.first().filter(|_| set.kind == crate::aof::Kind::Single)
        && single.name.contains(".incr.")
    {
        bail!(
            "{} is an incremental file of a multi-part AOF, without its base; pass its manifest or appendonlydir/",
            path.display()
        );
    }
    if inspection.no_timestamps {
        bail!("{} has no #TS: annotations (aof-timestamp-enabled was off), so --until cannot cut it", path.display());
    }
    if let (Some(until), Some(cut)) = (until, inspection.cut.filter(|_| inspection.problem.is_none())) {
        println!("stopping at the first annotation after {until}: {} offset {}", set.files[cut.file].name, cut.offset);
    }
    println!(
        "checked {} ({} file(s), {} commands to replay)",
        path.display(),
        inspection.files.len(),
        inspection.commands
    );

    let scratch_args = &args.scratch;
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let options = scratch_args.drill_options(&work_dir);
    if args.dry_run {
        println!("dry run: would rebuild the dataset in {} and {}", options.redis_server, aof_mode(args));
        return Ok(0);
    }
    let server = crate::scratch::ScratchServer::start(
        &options.redis_server,
        &work_dir,
        crate::scratch::Dataset::Aof(&set, inspection.cut),
        &[],
        options.load_timeout,
    )
    .await?;
    let rebuilt = server.save().await?;
    let checked = rebuilt.clone();
    let summary = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&checked)?;
        Ok::<_, std::io::Error>(rdb::walk(std::io::BufReader::with_capacity(256 * 1024, file)))
    })
    .await
    .expect("walker thread panicked")?
    .map_err(|failure| anyhow!("the RDB saved by the scratch server is invalid: {failure}"))?;
    let counts: Vec<String> = summary.databases.iter().map(|(db, counts)| format!("db{db}={}", counts.keys)).collect();
    println!(
        "rebuilt {} keys ({})",
        summary.keys(),
        if counts.is_empty() { "empty".to_string() } else { counts.join(" ") }
    );

    if let Some(to) = &args.to {
        crate::fsutil::install_copy(&rebuilt, to, args.force)?;
        println!("wrote {} (RDB version {}), checked", to.display(), summary.version);
        return Ok(0);
    }
    if args.drill {
        let report = crate::drill::drill(&rebuilt, &crate::manifest::database_counts(&summary), &options)
            .await
            .map_err(|err| anyhow!("drill failed: {err}"))?;
        print_drill(&report);
        return Ok(if report.ok { 0 } else { EXIT_FAILURE });
    }
    let target = into_server(args)?;
    let highest_db = summary.databases.keys().max().copied().unwrap_or(0);
    load_into(&rebuilt, summary.version, highest_db, &target, args).await
}

fn aof_mode(args: &RestoreArgs) -> String {
    match (&args.to, &args.into) {
        (Some(to), _) => format!("write its RDB to {}", to.display()),
        (None, Some(url)) => format!("load it into {}", crate::config::redact_url(url)),
        (None, None) => "drill it".to_string(),
    }
}

/// Restores a local RDB file given with --rdb: checks it, then loads it.
async fn restore_local_rdb(args: &RestoreArgs) -> anyhow::Result<u8> {
    let path = args.rdb.as_deref().expect("called with --rdb");
    if args.truncate_tail || args.until.is_some() {
        return Err(UsageError("--truncate-tail and --until apply to --aof and --from-aof".to_string()).into());
    }
    if let Some(dir) = &args.data_dir {
        let layout = data_dir_layout(args, dir)?;
        let plan = check_data_dir(args, &layout)?;
        // A dry run checks the file in place; a real one checks the copy it installs.
        let staging = if args.dry_run { None } else { Some(staging_in(dir)?) };
        let verified = match &staging {
            Some(staging) => staging.path().join(&layout.dbfilename),
            None => path.to_path_buf(),
        };
        if staging.is_some() {
            std::fs::copy(path, &verified).map_err(|err| anyhow!("cannot copy {}: {err}", path.display()))?;
        }
        let checked = verified.clone();
        let summary = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&checked)?;
            Ok::<_, std::io::Error>(rdb::walk(std::io::BufReader::with_capacity(256 * 1024, file)))
        })
        .await
        .expect("walker thread panicked")
        .map_err(|err| anyhow!("cannot read {}: {err}", path.display()))?
        .map_err(|failure| anyhow!("{} is not a valid RDB file: {failure}; nothing was changed", path.display()))?;
        check_server_loads(summary.version, args)?;
        if args.dry_run {
            print_data_dir_plan(&layout, &plan, true);
            return Ok(0);
        }
        return install_data_dir(&layout, &verified, summary.keys());
    }
    if args.drill {
        let file = std::fs::File::open(path).map_err(|err| anyhow!("cannot open {}: {err}", path.display()))?;
        let summary =
            tokio::task::spawn_blocking(move || rdb::walk(std::io::BufReader::with_capacity(256 * 1024, file)))
                .await
                .expect("walker thread panicked")
                .map_err(|failure| anyhow!("{} is not a valid RDB file: {failure}", path.display()))?;
        println!("checked {} ({} keys, RDB version {})", path.display(), summary.keys(), summary.version);
        return run_drill(path, &crate::manifest::database_counts(&summary), args).await;
    }
    let server = into_server(args)?;
    let file = std::fs::File::open(path).map_err(|err| anyhow!("cannot open {}: {err}", path.display()))?;
    let summary = tokio::task::spawn_blocking(move || rdb::walk(std::io::BufReader::with_capacity(256 * 1024, file)))
        .await
        .expect("walker thread panicked")
        .map_err(|failure| anyhow!("{} is not a valid RDB file: {failure}; nothing was loaded", path.display()))?;
    println!("checked {} ({} keys, RDB version {})", path.display(), summary.keys(), summary.version);
    let highest_db = summary.databases.keys().max().copied().unwrap_or(0);
    load_into(path, summary.version, highest_db, &server, args).await
}

/// Builds the source for the server named by --into, with the credentials the options name.
fn into_server(args: &RestoreArgs) -> anyhow::Result<RedisSource> {
    let Some(url) = &args.into else { unreachable!("clap requires a mode, and --rdb supports --into and --drill") };
    let password = match (&args.password_env, &args.password_file) {
        (Some(variable), _) => {
            Some(config::SecretSource::Env { variable: variable.clone(), key: "--password-env".to_string() })
        }
        (None, Some(path)) => {
            Some(config::SecretSource::File { path: path.clone(), key: "--password-file".to_string() })
        }
        (None, None) => None,
    };
    let settings = config::RedisSettings::from_url(url, args.username.clone(), password, args.tls_ca_file.clone())
        .map_err(|message| UsageError(format!("--into: {message}")))?;
    let password = match &settings.password {
        Some(source) => Some(source.resolve().map_err(|message| anyhow!(message))?),
        None => None,
    };
    Ok(RedisSource::new(&settings, password, None)?)
}

/// Creates a private folder for a verified copy of the RDB, removed when dropped.
fn work_folder(args: &RestoreArgs) -> anyhow::Result<tempfile::TempDir> {
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix(".sessbackup-restore-")
        .tempdir_in(&work_dir)
        .map_err(|err| anyhow!("cannot create a folder in {}: {err}; pass --work-dir", work_dir.display()))
}

async fn load_into(
    path: &Path,
    rdb_version: u32,
    highest_db: u64,
    server: &RedisSource,
    args: &RestoreArgs,
) -> anyhow::Result<u8> {
    let options = live::LoadOptions { flush: args.flush, on_conflict: args.on_conflict, dry_run: args.dry_run };
    let report = live::load(path, rdb_version, highest_db, server, options).await?;
    print_load_report(&report, server.display_url(), args);
    // A dry run fails where the real run would refuse.
    let refused = report.dry_run && !args.flush && report.existing > 0 && args.on_conflict == OnConflict::Fail;
    Ok(if report.failed > 0 || refused { EXIT_FAILURE } else { 0 })
}

fn print_load_report(report: &live::LoadReport, url: &str, args: &RestoreArgs) {
    if report.dry_run {
        println!("dry run: nothing was changed on {url} (Redis {})", report.server_version);
        if args.flush {
            println!("would empty every database (FLUSHALL), then load the keys");
        } else {
            println!(
                "{} key(s) of the backup exist on the server; --on-conflict {} would {}",
                report.existing,
                args.on_conflict.to_possible_value().expect("no skipped values").get_name(),
                match args.on_conflict {
                    OnConflict::Fail if report.existing > 0 => "refuse the restore",
                    OnConflict::Fail => "load every key",
                    OnConflict::Replace => "overwrite them",
                    OnConflict::Skip => "keep them as they are",
                }
            );
        }
        return;
    }
    // A rate over a few milliseconds means nothing.
    let rate = match report.load_ms {
        0..100 => String::new(),
        ms => format!(" ({:.0} keys/s)", report.loaded as f64 / (ms as f64 / 1000.0)),
    };
    println!(
        "loaded {} key(s) into {url} (Redis {}) in {:.1} s{rate}{}; skipped {} already expired, {} existing; {} \
         failed{}",
        report.loaded,
        report.server_version,
        report.load_ms as f64 / 1000.0,
        if report.flushed { " after emptying it" } else { "" },
        report.skipped_expired,
        report.skipped_existing,
        report.failed,
        if report.functions_loaded > 0 {
            format!("; {} function library(ies)", report.functions_loaded)
        } else {
            String::new()
        }
    );
    for failure in &report.failures {
        println!("  failed: {failure}");
    }
    if report.failed > report.failures.len() as u64 {
        println!("  … and {} more", report.failed - report.failures.len() as u64);
    }
}

async fn restore_to_file(config: &Config, args: &RestoreArgs, to: &Path) -> anyhow::Result<u8> {
    // Checked before anything is downloaded, and again when the file is placed.
    if to.is_dir() {
        bail!(
            "{} is a directory; give the path of the file to write, for example {}",
            to.display(),
            to.join("dump.rdb").display()
        );
    }
    if !args.force && to.symlink_metadata().is_ok() {
        bail!("{} exists; pass --force to replace it", to.display());
    }
    let backup = select_backup(config, args.job.as_deref(), args.target.as_deref(), &args.backup).await?;
    if args.dry_run {
        let verification = restore::verify_rdb(&backup, None).await;
        if !verification.ok() {
            bail!("backup {} failed verification:\n  {}", verification.id, verification.problems().join("\n  "));
        }
        println!("dry run: backup {} verified; would write its RDB to {}", verification.id, to.display());
        return Ok(0);
    }
    let verification = restore::restore_to_file(&backup, to, args.force).await?;
    println!(
        "restored backup {} of job {} from {} to {} ({} keys, {}), verified",
        verification.id,
        verification.job,
        verification.target,
        to.display(),
        backup.manifest.rdb.keys,
        human_bytes(backup.manifest.rdb.bytes)
    );
    Ok(0)
}

fn inspect(path: &Path, json: bool) -> u8 {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) => {
            crate::logging::error(&format!("cannot open {}: {err}", path.display()));
            return EXIT_FAILURE;
        }
    };
    let result = rdb::walk(std::io::BufReader::with_capacity(256 * 1024, file));
    let (summary, error) = match &result {
        Ok(summary) => (summary, None),
        Err(failure) => (failure.partial.as_ref(), Some(&failure.error)),
    };
    if json {
        let mut value = serde_json::json!({
            "file": path.display().to_string(),
            "kind": "rdb",
            "valid": error.is_none(),
            "format": summary.format,
            "rdb_version": summary.version,
            "keys": summary.keys(),
            "expires": summary.expires(),
            "databases": crate::manifest::database_counts(summary),
            "types": summary.types,
            "aux": summary.aux.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "functions": summary.functions,
            "module_aux": summary.module_aux,
            "checksum": crate::manifest::checksum_name(summary.checksum),
            "rdb_bytes": summary.rdb_bytes,
            "trailing_bytes": summary.trailing_bytes,
            "unchecked_collections": summary.unchecked_collections,
        });
        if let Some(rdb::Checksum::Verified(crc)) = summary.checksum {
            value["crc64"] = format!("{crc:016x}").into();
        }
        if let Some(error) = error {
            value["checksum"] = serde_json::Value::Null;
            value["error"] = serde_json::json!({ "offset": error.offset, "message": error.message });
        }
        println!("{}", serde_json::to_string_pretty(&value).expect("JSON values serialize"));
    } else {
        println!("file: {}", path.display());
        if summary.version > 0 {
            let format = match summary.format {
                rdb::Format::Redis => "Redis",
                rdb::Format::Valkey => "Valkey",
            };
            println!("format: {format} RDB version {}", summary.version);
        }
        for (key, value) in &summary.aux {
            println!("aux {key}: {value}");
        }
        for (db, counts) in &summary.databases {
            println!("db {db}: {} keys, {} with expiry", counts.keys, counts.expires);
        }
        let types: Vec<String> = summary.types.iter().map(|(name, count)| format!("{name} {count}")).collect();
        if !types.is_empty() {
            println!("types: {}", types.join(", "));
        }
        if summary.functions > 0 {
            println!("function libraries: {}", summary.functions);
        }
        println!("total: {} keys, {} with expiry", summary.keys(), summary.expires());
        if error.is_none() {
            match summary.checksum {
                Some(rdb::Checksum::Verified(crc)) => {
                    println!("checksum: CRC-64 {crc:016x} verified")
                }
                Some(rdb::Checksum::Disabled) => {
                    println!("checksum: none (saved with rdbchecksum no)")
                }
                _ => println!("checksum: none (RDB version {} has no checksum)", summary.version),
            }
            if summary.trailing_bytes > 0 {
                println!("note: {} bytes after the checksum (Redis ignores them)", summary.trailing_bytes);
            }
            if summary.unchecked_collections > 0 {
                println!(
                    "note: {} collections have more than {} members and were not checked for duplicates",
                    summary.unchecked_collections,
                    rdb::MAX_DEDUP_MEMBERS
                );
            }
        }
        match error {
            None => println!("verdict: valid"),
            Some(error) => println!("verdict: INVALID at offset {}: {}", error.offset, error.message),
        }
    }
    match error {
        None => 0,
        Some(_) => EXIT_FAILURE,
    }
}

/// Returns the retention policy of a job on a target: the target's, else the job's.
fn policy_for<'c>(config: &'c Config, job: &'c config::Job, target: &str) -> Option<&'c crate::retention::Policy> {
    config.target(target).and_then(|target| target.retention.as_ref()).or(job.retention.as_ref())
}

async fn prune(
    config: &Config,
    job_name: Option<&str>,
    target_name: Option<&str>,
    dry_run: bool,
    now: Option<&str>,
    json: bool,
) -> anyhow::Result<u8> {
    let now = match now {
        None => chrono::Utc::now(),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|at| at.with_timezone(&chrono::Utc))
            .map_err(|_| UsageError(format!("--now {text:?} is not an RFC 3339 time, such as 2026-12-04T19:30:00Z")))?,
    };
    let jobs: Vec<&config::Job> = match job_name {
        Some(name) => vec![config.job(name).ok_or_else(|| unknown_job(config, name))?],
        None => config.jobs.iter().collect(),
    };
    if let Some(name) = target_name
        && config.target(name).is_none()
    {
        let known: Vec<&str> = config.targets.iter().map(|target| target.name.as_str()).collect();
        return Err(UsageError(format!(
            "target {name:?} is not defined; targets in the configuration: {}",
            known.join(", ")
        ))
        .into());
    }
    let mut failed = false;
    let mut outcomes = Vec::new();
    for job in jobs {
        for name in job.targets.iter().filter(|name| target_name.is_none_or(|wanted| wanted == name.as_str())) {
            let Some(policy) = policy_for(config, job, name) else {
                if !json {
                    println!("job {} on {name}: no retention rules; every backup is kept", job.name);
                }
                continue;
            };
            let target = build_target(config, name)?;
            match crate::prune::prune(&target, &job.name, policy, job.timezone, now, dry_run).await {
                Ok(outcome) => {
                    failed |= !outcome.problems.is_empty();
                    if !json {
                        print_prune(&outcome);
                    }
                    outcomes.push(outcome);
                }
                Err(err) => {
                    failed = true;
                    crate::logging::error(&format!("job {} on {name}: {err}", job.name));
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&outcomes).expect("outcomes serialize"));
    }
    Ok(if failed { EXIT_FAILURE } else { 0 })
}

fn print_prune(outcome: &crate::prune::Outcome) {
    let verb = if outcome.dry_run { "would delete" } else { "delete" };
    println!("job {} on {}:", outcome.job, outcome.target);
    for decision in &outcome.decisions {
        if decision.keep {
            println!("  keep   {}  ({})", decision.id, decision.reasons.join(", "));
        } else {
            println!("  {verb} {}", decision.id);
        }
    }
    for name in &outcome.staging_removed {
        println!("  removed staging file {name}");
    }
    for problem in &outcome.problems {
        println!("  problem: {problem}");
    }
    let deleting = outcome.decisions.iter().filter(|decision| !decision.keep).count();
    if outcome.dry_run {
        println!("  dry run: {deleting} of {} backup(s) would be deleted", outcome.decisions.len());
    } else {
        println!("  deleted {} of {} backup(s)", outcome.deleted.len(), outcome.decisions.len());
    }
}

/// Connects to a job's Redis and reads its version and role; for a job
/// with include_aof, also finds its AOF.
async fn probe_job(job: &config::Job) -> anyhow::Result<crate::source::ServerInfo> {
    let password =
        job.redis.password.as_ref().map(|source| source.resolve()).transpose().map_err(|message| anyhow!(message))?;
    let source = RedisSource::new(&job.redis, password, job.rdb_path.clone())?;
    let info = source.probe().await?;
    // A job that ships the AOF needs a server that writes one.
    if job.include_aof {
        source.aof_location(job.aof_path.as_deref()).await?;
    }
    Ok(info)
}

async fn check(path: &Path, probe: bool, daemon: bool) -> u8 {
    let config = match config::load_checked(path) {
        Ok(config) => config,
        Err(err) => {
            crate::logging::error(&err.to_string());
            return EXIT_CONFIG;
        }
    };
    if daemon && let Err(message) = crate::daemon::schedulable(&config) {
        crate::logging::error(&message);
        return EXIT_CONFIG;
    }
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    let mut failed = false;
    if probe {
        for job in &config.jobs {
            match probe_job(job).await {
                Ok(info) => println!(
                    "job {}: Redis {} ({}) reachable at {}",
                    job.name,
                    info.version,
                    info.role,
                    job.redis.display_url()
                ),
                Err(err) => {
                    failed = true;
                    crate::logging::error(&format!("job {}: {err:#}", job.name));
                }
            }
        }
        for target in &config.targets {
            match list_target(build_target(&config, &target.name), None).await {
                Ok((_, (backups, warnings))) => {
                    println!("target {}: reachable, {} backup(s) listed", target.name, backups.len());
                    for warning in warnings {
                        println!("warning: {warning}");
                    }
                }
                Err(err) => {
                    failed = true;
                    crate::logging::error(&format!("{err:#}"));
                }
            }
        }
    }
    let source = if path.exists() {
        format!("configuration {}", path.display())
    } else {
        format!("configuration from SESSBACKUP_* variables (no file at {})", path.display())
    };
    println!("{source} is valid: {} job(s), {} target(s)", config.jobs.len(), config.targets.len());
    if failed { EXIT_FAILURE } else { 0 }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn candidate_names(config: &Config, job: Option<&str>) -> Vec<String> {
        candidate_targets(config, job, None).unwrap().into_iter().map(|(name, _)| name).collect()
    }

    #[test]
    fn search_order_follows_jobs() {
        let mut text = String::from(
            "[[job]]\nname = \"one\"\nredis_url = \"redis://127.0.0.1:6379/\"\ntargets = [\"c\", \"a\"]\n\
             [[job]]\nname = \"two\"\nredis_url = \"redis://127.0.0.1:6380/\"\ntargets = [\"b\", \"c\"]\n",
        );
        for name in ["a", "b", "c", "d"] {
            text.push_str(&format!("[[target]]\nname = \"{name}\"\ntype = \"local\"\npath = \"/srv/{name}\"\n"));
        }
        let config = config::parse(&text).unwrap();
        assert_eq!(candidate_names(&config, Some("one")), ["c", "a"]);
        assert_eq!(candidate_names(&config, Some("two")), ["b", "c"]);
        assert_eq!(candidate_names(&config, None), ["c", "a", "b", "d"]);
    }

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
