//! The systemd units in `systemd/`: `systemd-analyze verify` accepts them,
//! the two services share their settings, and the daemon's stop timeout
//! leaves room for its shutdown timeout.
//!
//! A missing `systemd-analyze` skips the verify tests with a message on
//! standard error; `SESSBACKUP_REQUIRE_SERVERS=1` turns that skip into a
//! failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const UNITS: [&str; 3] = ["sessbackup.service", "sessbackup-backup.service", "sessbackup-backup.timer"];

/// Where the units expect the binary (the README installs it there).
const INSTALLED_BINARY: &str = "/usr/local/bin/sessbackup";

fn read_unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("failed to read {}: {err}", path.display()))
}

/// Returns whether systemd-analyze runs; prints a skip message when not.
fn systemd_analyze_available() -> bool {
    let found = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|out| out.status.success());
    if !found {
        if std::env::var("SESSBACKUP_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!("systemd-analyze not found and SESSBACKUP_REQUIRE_SERVERS=1; install the systemd package");
        }
        common::say("SKIPPED: systemd-analyze not found; install the systemd package");
    }
    found
}

/// Writes the units into `dir` with every command path replaced by `binary`,
/// and returns their paths. verify reports a command that is not an
/// executable file, and the installed binary may be missing or older than
/// this build.
fn write_units(dir: &Path, binary: &Path) -> Vec<PathBuf> {
    UNITS
        .iter()
        .map(|name| {
            let mut text = read_unit(name);
            if name.ends_with(".service") {
                assert!(text.contains(INSTALLED_BINARY), "{name} does not run {INSTALLED_BINARY}");
                text = text.replace(INSTALLED_BINARY, binary.to_str().unwrap());
            }
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

/// Runs `systemd-analyze verify` on `units`.
fn verify(units: &[PathBuf]) -> Output {
    Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units)
        // A debug log level in the caller's environment would print lines
        // that are not problems, and another log target would hide them.
        .env_remove("SYSTEMD_LOG_LEVEL")
        .env("SYSTEMD_LOG_TARGET", "console")
        .output()
        .expect("failed to run systemd-analyze")
}

/// Returns everything verify printed: problems go to standard error.
fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Returns the lines of a unit's `[Service]` section that set something
/// (no comments, no blank lines).
fn service_settings(text: &str) -> Vec<&str> {
    let mut in_service = false;
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            settings.push(line);
        }
    }
    settings
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if !systemd_analyze_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = write_units(dir.path(), Path::new(env!("CARGO_BIN_EXE_sessbackup")));

    let output = verify(&units);
    let text = printed(&output);

    assert!(output.status.success(), "systemd-analyze verify failed ({}):\n{text}", output.status);
    // Every printed line counts as a problem. systemd 252 (Debian 12) prints
    // nothing for these units, also in a container that systemd did not boot
    // and for a User=, Group= or SupplementaryGroups= that does not exist on
    // this machine, so there is no host noise to filter out.
    assert!(text.trim().is_empty(), "systemd-analyze verify reported problems:\n{text}");
}

#[test]
fn verify_reports_unknown_key() {
    if !systemd_analyze_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = write_units(dir.path(), Path::new(env!("CARGO_BIN_EXE_sessbackup")));
    let daemon = &units[0];
    let broken = std::fs::read_to_string(daemon).unwrap().replacen("[Service]\n", "[Service]\nTypo=1\n", 1);
    std::fs::write(daemon, broken).unwrap();

    let output = verify(&units);
    let text = printed(&output);

    // systemd 252 exits 0 after an unknown key, so only the output shows it,
    // and the test of the real units must fail on any output.
    assert!(text.contains("Unknown key 'Typo' in section [Service]"), "unknown key not reported:\n{text}");
    assert!(text.contains("sessbackup.service"), "report does not name the unit:\n{text}");
}

#[test]
fn verify_reports_missing_executable() {
    if !systemd_analyze_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing").join("sessbackup");
    let units = write_units(dir.path(), &missing);

    let output = verify(&units);
    let text = printed(&output);

    assert!(!output.status.success(), "verify accepted a missing executable:\n{text}");
    assert!(
        text.contains(&format!("Command {} is not executable", missing.display())),
        "missing executable not reported:\n{text}"
    );
}

#[test]
fn backup_service_shares_daemon_settings() {
    let daemon = read_unit("sessbackup.service");
    let daemon_settings = service_settings(&daemon);
    let backup = read_unit("sessbackup-backup.service");
    let backup_settings = service_settings(&backup);
    assert!(backup_settings.contains(&"User=sessbackup"), "{backup_settings:?}");

    // User, state folder, credentials and hardening must match, so that the
    // timer's runs take the same locks and read the same secrets.
    for setting in backup_settings {
        if setting.starts_with("Type=") || setting.starts_with("ExecStart=") {
            continue;
        }
        assert!(
            daemon_settings.contains(&setting),
            "sessbackup.service lacks {setting:?} of sessbackup-backup.service"
        );
    }
}

#[test]
fn stop_timeout_exceeds_shutdown_timeout() {
    let daemon = read_unit("sessbackup.service");
    let value = service_settings(&daemon)
        .into_iter()
        .find_map(|setting| setting.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec= missing from sessbackup.service");
    let seconds: u64 = value
        .strip_suffix('s')
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("TimeoutStopSec={value} is not a number of seconds such as 90s"));

    let shutdown_timeout = sessbackup::config::Daemon::default().shutdown_timeout;
    assert!(
        Duration::from_secs(seconds) > shutdown_timeout,
        "TimeoutStopSec={value} leaves no time after the default shutdown timeout of {shutdown_timeout:?}"
    );
}
