//! Checks the RDB walker against a corpus of real RDB files written by others,
//! with the verdicts `redis-check-rdb` 7.0.15 gave on them.
//!
//! The corpus lives outside the repository. Its folder contains `oracle.tsv`, one
//! row per file: path, kind, RDB version, expected verdict, keys read and keys
//! with expiry (`?` where 7.0.15 could not read the file, `-` where it does not
//! apply). Set `SESSBACKUP_FIXTURES` to the folder; by default the test looks
//! in `../shared/fixtures` next to the repository. When the folder is missing
//! the test prints that it checked nothing, and fails if
//! `SESSBACKUP_REQUIRE_FIXTURES=1`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use sessbackup::rdb;

/// Files where the walker's verdict differs from redis-check-rdb 7.0.15 on
/// purpose, with the reason.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[];

fn fixtures_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SESSBACKUP_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    };
    dir.join("oracle.tsv").is_file().then_some(dir)
}

struct Row {
    file: String,
    kind: String,
    expected_valid: bool,
    keys: Option<u64>,
    expires: Option<u64>,
}

fn read_oracle(dir: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("oracle.tsv")).expect("read oracle.tsv");
    let mut rows = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.starts_with("file\t") || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert!(fields.len() >= 6, "oracle row with fewer than 6 columns: {line}");
        rows.push(Row {
            file: fields[0].to_string(),
            kind: fields[1].to_string(),
            expected_valid: match fields[3] {
                "valid" => true,
                "invalid" => false,
                other => panic!("unknown verdict {other:?} in oracle row: {line}"),
            },
            keys: fields[4].parse().ok(),
            expires: fields[5].parse().ok(),
        });
    }
    rows
}

#[test]
fn walker_agrees_with_redis_check_rdb() {
    let Some(dir) = fixtures_dir() else {
        let message = "RDB fixture corpus not found: set SESSBACKUP_FIXTURES to the folder holding oracle.tsv; \
                       NOTHING WAS CHECKED";
        if std::env::var("SESSBACKUP_REQUIRE_FIXTURES").as_deref() == Ok("1") {
            panic!("{message}");
        }
        use std::io::Write;
        // Written straight to stderr: the harness hides eprintln! of passing tests.
        let _ = writeln!(std::io::stderr().lock(), "warning: {message}");
        return;
    };

    let mut checked = 0;
    let mut failures = Vec::new();
    for row in read_oracle(&dir) {
        if row.kind != "rdb" && row.kind != "aof-rdb-preamble" {
            continue;
        }
        let file = File::open(dir.join(&row.file)).unwrap_or_else(|err| panic!("open {}: {err}", row.file));
        let result = rdb::walk(BufReader::new(file));
        checked += 1;

        let known = KNOWN_DIFFERENCES.iter().find(|(file, _)| *file == row.file);
        let agrees = match &result {
            Ok(summary) => {
                row.expected_valid
                    && row.keys.is_none_or(|keys| keys == summary.keys())
                    && row.expires.is_none_or(|expires| expires == summary.expires())
            }
            Err(_) => !row.expected_valid,
        };
        if agrees == known.is_some() {
            let got = match &result {
                Ok(summary) => format!("valid, {} keys, {} with expiry", summary.keys(), summary.expires()),
                Err(failure) => format!("invalid: {failure}"),
            };
            let expected = format!(
                "{}, keys {:?}, expires {:?}",
                if row.expected_valid { "valid" } else { "invalid" },
                row.keys,
                row.expires
            );
            failures.push(match known {
                Some((_, reason)) => format!("{}: listed as a known difference ({reason}) but agrees: {got}", row.file),
                None => format!("{}: expected {expected}, got {got}", row.file),
            });
        }
    }
    assert!(checked > 0, "oracle.tsv in {} lists no RDB files", dir.display());
    assert!(failures.is_empty(), "{} of {checked} files disagree:\n{}", failures.len(), failures.join("\n"));
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "checked {checked} RDB files from {}", dir.display());
}
