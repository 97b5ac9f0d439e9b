//! Retention against real targets: automatic pruning after a backup, and
//! `prune` with `--dry-run` and `--now`, on local, FTP and S3 targets.

mod common;

use common::{Redis, Setup, assert_exit, assert_success, fill_sessions, stdout};

fn prune_json(setup: &Setup, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["prune", "--json"];
    all.extend_from_slice(args);
    let output = setup.run(&all);
    assert_success(&output, "prune --json");
    serde_json::from_slice(&output.stdout).expect("prune --json prints JSON")
}

fn ids(setup: &Setup) -> Vec<String> {
    setup.list_json().iter().map(|entry| entry["id"].as_str().unwrap().to_string()).collect()
}

fn in_hours(hours: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::hours(hours)).to_rfc3339()
}

#[test]
fn prune_local_dry_run_then_real() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 200);
    let setup = Setup::new(&redis.url(), "timezone = \"Europe/Berlin\"\nretention = { keep_within = \"1h\" }");
    for _ in 0..3 {
        assert_success(&setup.run(&["backup"]), "backup");
    }
    // Every backup is younger than an hour, so the runs deleted nothing.
    let all = ids(&setup);
    assert_eq!(all.len(), 3);

    // An upload interrupted long ago left a staging file.
    let staging = setup.backups.join("sessions/.20200101T000000.000Z-0000abcd.rdb.zst.partial-0123456789abcdef");
    std::fs::write(&staging, b"half an upload").unwrap();

    let later = in_hours(3);
    let output = setup.run(&["prune", "--dry-run", "--now", &later]);
    assert_success(&output, "prune --dry-run");
    let text = stdout(&output);
    assert!(text.contains(&format!("keep   {}  (newest backup", all[0])), "{text}");
    assert!(text.contains(&format!("would delete {}", all[2])), "{text}");
    assert!(text.contains("dry run: 2 of 3 backup(s) would be deleted"), "{text}");
    assert_eq!(ids(&setup), all, "a dry run deleted something");
    assert!(staging.exists(), "a dry run removed a staging file");

    let outcomes = prune_json(&setup, &["--now", &later]);
    assert_eq!(outcomes.len(), 1);
    let outcome = &outcomes[0];
    assert_eq!(outcome["target"], "local");
    assert_eq!(outcome["dry_run"], false);
    let deleted: Vec<&str> = outcome["deleted"].as_array().unwrap().iter().map(|id| id.as_str().unwrap()).collect();
    assert_eq!(deleted, [all[1].as_str(), all[2].as_str()]);
    assert_eq!(outcome["staging_removed"].as_array().unwrap().len(), 1, "{outcome}");
    assert!(!staging.exists());
    assert_eq!(ids(&setup), [all[0].clone()]);
    // Neither artifact nor manifest of a deleted backup is left.
    let files = setup.backup_files();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|file| file.contains(&all[0])), "{files:?}");

    // Far in the future the newest backup is still kept.
    let outcomes = prune_json(&setup, &["--now", &in_hours(24 * 365 * 10)]);
    assert_eq!(outcomes[0]["deleted"].as_array().unwrap().len(), 0);
    assert_eq!(ids(&setup), [all[0].clone()]);
    assert_success(&setup.run(&["verify", "latest"]), "verify of the survivor");
}

#[test]
fn prune_without_rules_keeps_everything_and_checks_arguments() {
    let Some(redis) = Redis::start(&[]) else { return };
    let setup = Setup::new(&redis.url(), "");
    assert_success(&setup.run(&["backup"]), "backup");
    let output = setup.run(&["prune"]);
    assert_success(&output, "prune without rules");
    assert!(stdout(&output).contains("no retention rules; every backup is kept"), "{}", stdout(&output));
    assert_eq!(ids(&setup).len(), 1);

    let output = setup.run(&["prune", "--now", "yesterday"]);
    assert_exit(&output, 2, "prune with a bad --now");
    assert!(common::stderr(&output).contains("\"yesterday\""), "{}", common::stderr(&output));
    let output = setup.run(&["prune", "--target", "nas"]);
    assert_exit(&output, 2, "prune of an unknown target");
}

#[test]
fn keep_last_applies_after_each_backup() {
    let Some(redis) = Redis::start(&[]) else { return };
    fill_sessions(&redis, 100);
    let setup = Setup::new(&redis.url(), "retention = { keep_last = 2 }");
    let mut created = Vec::new();
    for _ in 0..4 {
        let output = setup.run(&["backup", "--json"]);
        assert_success(&output, "backup");
        let reports: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
        created.push(reports[0]["id"].as_str().unwrap().to_string());
    }
    created.reverse();
    assert_eq!(ids(&setup), created[..2]);

    // While backups fail, nothing is pruned.
    redis.shutdown();
    assert_exit(&setup.run(&["backup"]), 1, "backup of a stopped server");
    assert_eq!(ids(&setup), created[..2]);
}

#[test]
fn incomplete_backups_do_not_count() {
    let Some(redis) = Redis::start(&[]) else { return };
    let setup = Setup::new(&redis.url(), "retention = { keep_last = 1 }");
    assert_success(&setup.run(&["backup"]), "backup");
    let complete = ids(&setup);
    assert_eq!(complete.len(), 1);
    // A newer upload that never got its manifest (an interrupted run), and a
    // manifest that cannot be read.
    let folder = setup.backups.join("sessions");
    std::fs::write(folder.join("29991231T000000.000Z-0000abcd.rdb.zst"), b"no manifest").unwrap();
    std::fs::write(folder.join("29991231T000001.000Z-0000abcd.manifest.json"), b"{ damaged").unwrap();

    let output = setup.run(&["prune", "--json"]);
    assert_exit(&output, 1, "prune with an unreadable manifest");
    let outcomes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let decisions = outcomes[0]["decisions"].as_array().unwrap();
    // Only the complete backup is judged, and as the newest it is kept.
    assert_eq!(decisions.len(), 1, "{outcomes:?}");
    assert_eq!(decisions[0]["id"], complete[0].as_str());
    assert_eq!(decisions[0]["keep"], true);
    let problems = outcomes[0]["problems"].as_array().unwrap();
    assert!(problems.iter().any(|problem| problem.as_str().unwrap().contains("that backup is kept")), "{problems:?}");
    assert!(folder.join("29991231T000001.000Z-0000abcd.manifest.json").exists());
    assert_eq!(ids_lenient(&setup), complete);
}

/// Ids `list` shows, also when it exits with 1 for an unreadable manifest.
fn ids_lenient(setup: &Setup) -> Vec<String> {
    let output = setup.run(&["list", "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    listed.iter().map(|entry| entry["id"].as_str().unwrap().to_string()).collect()
}
