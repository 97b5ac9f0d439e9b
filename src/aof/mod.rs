//! Append-only files: a single AOF file, or a Redis 7 multi-part set (a
//! manifest naming a base file and incremental files in `appendonlydir/`).
//!
//! This module finds the files and checks each one the way Redis would load
//! it: an RDB base or preamble with the RDB walker, the commands with
//! [`reader`]. It finds where a torn tail or a point in time cuts the set,
//! and lays out a copy of the set that a redis-server can load. It never
//! changes the files it reads.

pub mod capture;
pub mod reader;

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::rdb;

/// Kind of file in a multi-part manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    Base,
    /// A file of an earlier rewrite, kept until Redis deletes it; not loaded.
    History,
    Incr,
}

/// One `file <name> seq <n> type <b|h|i>` line of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub name: String,
    pub seq: u64,
    pub kind: FileType,
}

/// Parses a multi-part AOF manifest with the rules of redis-server 7.0
/// (`aofLoadManifestFromFile`). Lines that start with `#` are comments. Every
/// other line has key/value pairs with at least `file`, `seq` and `type`;
/// more keys, such as `startoffset`, are allowed. File names have no folder,
/// there is at most one base, and incremental files have rising sequence
/// numbers.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, String> {
    let mut entries = Vec::new();
    let mut bases = 0;
    let mut last_incr_seq = 0;
    for (index, raw) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        if raw.starts_with('#') {
            continue;
        }
        let line = raw.trim_matches([' ', '\t', '\r', '\n']);
        let fields = split_args(line).ok_or_else(|| format!("line {number}: unbalanced quotes in {line:?}"))?;
        if line.is_empty() || fields.len() < 6 || fields.len() % 2 != 0 {
            return Err(format!("line {number}: expected 'file <name> seq <n> type <b|h|i>', found {line:?}"));
        }
        let (mut name, mut seq, mut kind) = (None, 0u64, None);
        for pair in fields.chunks(2) {
            match pair[0].to_ascii_lowercase().as_str() {
                "file" => name = Some(pair[1].clone()),
                "seq" => seq = pair[1].parse().unwrap_or(0),
                "type" => kind = pair[1].chars().next(),
                _ => {}
            }
        }
        let name = name.filter(|name| !name.is_empty()).ok_or_else(|| format!("line {number}: no file name"))?;
        if name.contains('/') {
            return Err(format!("line {number}: file {name:?} is a path; a manifest names files in its own folder"));
        }
        if seq == 0 {
            return Err(format!("line {number}: file {name:?} has no valid seq"));
        }
        let kind = match kind {
            Some('b') => FileType::Base,
            Some('h') => FileType::History,
            Some('i') => FileType::Incr,
            other => {
                return Err(format!("line {number}: file {name:?} has unknown type {other:?}; expected b, h or i"));
            }
        };
        match kind {
            FileType::Base => {
                bases += 1;
                if bases > 1 {
                    return Err(format!("line {number}: a second base file, {name:?}"));
                }
            }
            FileType::Incr => {
                if seq <= last_incr_seq {
                    return Err(format!(
                        "line {number}: incremental file {name:?} has seq {seq}, not above {last_incr_seq}"
                    ));
                }
                last_incr_seq = seq;
            }
            FileType::History => {}
        }
        entries.push(ManifestEntry { name, seq, kind });
    }
    if entries.is_empty() {
        return Err("the manifest names no file".to_string());
    }
    Ok(entries)
}

/// Splits a line into words like Redis's `sdssplitargs`: spaces separate,
/// double quotes allow escapes (`\n`, `\xHH`, …), single quotes allow `\'`.
/// Returns `None` for unbalanced quotes.
fn split_args(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { return Some(words) };
        let mut word = String::new();
        if first == '"' || first == '\'' {
            chars.next();
            loop {
                let c = chars.next()?;
                if c == first {
                    break;
                }
                if c == '\\' {
                    let escaped = chars.next()?;
                    word.push(match (first, escaped) {
                        ('"', 'n') => '\n',
                        ('"', 'r') => '\r',
                        ('"', 't') => '\t',
                        ('"', 'x') => {
                            let high = chars.next()?.to_digit(16)?;
                            let low = chars.next()?.to_digit(16)?;
                            char::from((high * 16 + low) as u8)
                        }
                        (_, other) => other,
                    });
                } else {
                    word.push(c);
                }
            }
            // A closing quote must be followed by a space or the end.
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return None;
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
}

/// A single AOF file, or a multi-part set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    #[serde(rename = "aof")]
    Single,
    #[serde(rename = "multi-part-aof")]
    MultiPart,
}

/// A file to load, in load order.
#[derive(Debug, Clone)]
pub struct AofFile {
    pub name: String,
    pub path: PathBuf,
    pub kind: FileType,
    pub seq: u64,
}

/// The files of an AOF, resolved from what the user named.
#[derive(Debug, Clone)]
pub struct AofSet {
    pub kind: Kind,
    pub manifest: Option<PathBuf>,
    /// Redis's `appendfilename`: the manifest's name without `.manifest`.
    pub appendfilename: String,
    /// The base (if any) first, then the incremental files; history files
    /// are left out, as Redis does not load them.
    pub files: Vec<AofFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("manifest {path} is invalid: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("manifest {manifest} names {name}, which does not exist in {folder}")]
    Missing { manifest: PathBuf, name: String, folder: PathBuf },
}

/// Resolves `path`: a manifest, a folder holding one (`appendonlydir/`, or
/// a data directory with `appendonlydir/` in it), or a single AOF file.
pub fn open(path: &Path) -> Result<AofSet, Error> {
    let open_error = |message: String| Error::Open { path: path.to_path_buf(), message };
    let meta = std::fs::metadata(path).map_err(|err| open_error(err.to_string()))?;
    if meta.is_dir() {
        let manifests = manifests_in(path).map_err(|err| open_error(err.to_string()))?;
        return match manifests.as_slice() {
            [manifest] => open_manifest(manifest),
            [] if path.join("appendonlydir").is_dir() => open(&path.join("appendonlydir")),
            [] if path.join("appendonly.aof").is_file() => open(&path.join("appendonly.aof")),
            [] => Err(open_error(
                "has no *.manifest file, appendonlydir/ or appendonly.aof; name the AOF file or its manifest"
                    .to_string(),
            )),
            several => Err(open_error(format!(
                "has several manifests ({}); name the one to use",
                several.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
            ))),
        };
    }
    if path.extension().is_some_and(|extension| extension == "manifest") {
        return open_manifest(path);
    }
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(AofSet {
        kind: Kind::Single,
        manifest: None,
        appendfilename: "appendonly.aof".to_string(),
        files: vec![AofFile { name, path: path.to_path_buf(), kind: FileType::Base, seq: 1 }],
    })
}

fn manifests_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|extension| extension == "manifest"))
        .collect();
    found.sort();
    Ok(found)
}

fn open_manifest(manifest: &Path) -> Result<AofSet, Error> {
    let text = std::fs::read_to_string(manifest)
        .map_err(|err| Error::Open { path: manifest.to_path_buf(), message: err.to_string() })?;
    let entries = parse_manifest(&text).map_err(|message| Error::Manifest { path: manifest.to_path_buf(), message })?;
    let folder = manifest.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let mut files = Vec::new();
    let ordered = entries
        .iter()
        .filter(|entry| entry.kind == FileType::Base)
        .chain(entries.iter().filter(|entry| entry.kind == FileType::Incr));
    for entry in ordered {
        let path = folder.join(&entry.name);
        if !path.is_file() {
            return Err(Error::Missing { manifest: manifest.to_path_buf(), name: entry.name.clone(), folder });
        }
        files.push(AofFile { name: entry.name.clone(), path, kind: entry.kind, seq: entry.seq });
    }
    let file_name = manifest.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(AofSet {
        kind: Kind::MultiPart,
        manifest: Some(manifest.to_path_buf()),
        appendfilename: file_name.strip_suffix(".manifest").unwrap_or(&file_name).to_string(),
        files,
    })
}

/// Findings for one file of the set.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileReport {
    pub name: String,
    /// "base" or "incr" (a single AOF file counts as its own base).
    pub role: FileType,
    /// "rdb" when the file starts with an RDB (a base, or a preamble),
    /// else "resp".
    pub format: &'static str,
    pub bytes: u64,
    pub rdb_version: Option<u32>,
    /// Keys in the RDB part.
    pub rdb_keys: Option<u64>,
    /// When the RDB part was written (its `ctime`, Unix seconds).
    pub rdb_ctime: Option<i64>,
    pub commands: u64,
    pub first_timestamp: Option<i64>,
    pub last_timestamp: Option<i64>,
}

/// A torn tail or corruption, where it is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub file: String,
    pub offset: u64,
    pub message: String,
    /// The file ends early (a torn tail) rather than holding wrong bytes.
    pub torn: bool,
}

/// Stopping point of a load: the file (by index in [`AofSet::files`]) and the
/// byte offset in it. Later files are left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Cut {
    pub file: usize,
    pub offset: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    pub kind: Kind,
    pub files: Vec<FileReport>,
    /// Commands loaded, up to `cut` if there is one.
    pub commands: u64,
    pub problem: Option<Problem>,
    /// Stopping point of a load: a torn tail that may be dropped, or the
    /// first `#TS:` annotation after `until`.
    pub cut: Option<Cut>,
    /// `until` was given, but no file has `#TS:` annotations.
    pub no_timestamps: bool,
    /// `until` is earlier than the base's RDB `ctime`: the AOF cannot go
    /// back that far.
    pub until_before_base: Option<i64>,
}

impl Inspection {
    pub fn valid(&self) -> bool {
        self.problem.is_none()
    }
}

/// Reads every file of `set` to its end. With `until` (Unix seconds), the
/// load stops at the first `#TS:` annotation later than it.
pub fn inspect(set: &AofSet, until: Option<i64>) -> Inspection {
    let mut inspection = Inspection {
        kind: set.kind,
        files: Vec::new(),
        commands: 0,
        problem: None,
        cut: None,
        no_timestamps: false,
        until_before_base: None,
    };
    let mut any_timestamp = false;
    let last = set.files.len().saturating_sub(1);
    for (index, file) in set.files.iter().enumerate() {
        let (report, outcome) = inspect_file(file, until);
        any_timestamp |= report.first_timestamp.is_some();
        if let (Some(until), Some(ctime)) = (until, report.rdb_ctime)
            && ctime > until
        {
            inspection.until_before_base = Some(ctime);
        }
        inspection.commands += report.commands;
        inspection.files.push(report);
        match outcome {
            FileOutcome::Whole => {}
            FileOutcome::Until(offset) => {
                inspection.cut = Some(Cut { file: index, offset });
                break;
            }
            FileOutcome::Torn { valid_up_to, message } => {
                let message = if index == last {
                    message
                } else {
                    format!("{message}; only the last file of a set may end early, this one is followed by others")
                };
                inspection.problem =
                    Some(Problem { file: file.name.clone(), offset: valid_up_to, message, torn: index == last });
                if index == last {
                    inspection.cut = Some(Cut { file: index, offset: valid_up_to });
                }
                break;
            }
            FileOutcome::Invalid { offset, message } => {
                inspection.problem = Some(Problem { file: file.name.clone(), offset, message, torn: false });
                break;
            }
        }
    }
    inspection.no_timestamps = until.is_some() && !any_timestamp;
    inspection
}

pub(crate) enum FileOutcome {
    Whole,
    /// Stopped at the annotation at this offset, later than `until`.
    Until(u64),
    Torn {
        valid_up_to: u64,
        message: String,
    },
    Invalid {
        offset: u64,
        message: String,
    },
}

fn inspect_file(file: &AofFile, until: Option<i64>) -> (FileReport, FileOutcome) {
    let bytes = std::fs::metadata(&file.path).map_or(0, |meta| meta.len());
    match File::open(&file.path) {
        Ok(handle) => check_stream(&file.name, file.kind, handle, bytes, until),
        Err(err) => {
            let (report, _) = check_stream(&file.name, file.kind, io::empty(), bytes, None);
            (report, FileOutcome::Invalid { offset: 0, message: format!("cannot open {}: {err}", file.path.display()) })
        }
    }
}

/// Checks one file of a set read from `handle`, `bytes` long.
pub(crate) fn check_stream(
    name: &str,
    kind: FileType,
    mut handle: impl Read,
    bytes: u64,
    until: Option<i64>,
) -> (FileReport, FileOutcome) {
    let mut report = FileReport {
        name: name.to_string(),
        role: kind,
        format: "resp",
        bytes,
        rdb_version: None,
        rdb_keys: None,
        rdb_ctime: None,
        commands: 0,
        first_timestamp: None,
        last_timestamp: None,
    };
    let invalid = |offset: u64, message: String| FileOutcome::Invalid { offset, message };
    let mut magic = [0u8; 6];
    let peeked = read_up_to(&mut handle, &mut magic);
    let starts_with_rdb = magic[..peeked].starts_with(b"REDIS") || magic[..peeked].starts_with(b"VALKEY");
    let head = magic[..peeked].to_vec();
    let stream = io::Cursor::new(head).chain(handle);

    if !starts_with_rdb {
        let outcome = read_commands(BufReader::with_capacity(256 * 1024, stream), 0, until, &mut report);
        return (report, outcome);
    }
    report.format = "rdb";
    match rdb::walk_preamble(stream, None) {
        Ok((summary, buffered, remaining)) => {
            report.rdb_version = Some(summary.version);
            report.rdb_keys = Some(summary.keys());
            report.rdb_ctime = summary.aux_field("ctime").and_then(|ctime| ctime.parse().ok());
            let rest = BufReader::with_capacity(256 * 1024, io::Cursor::new(buffered).chain(remaining));
            let outcome = read_commands(rest, summary.rdb_bytes, until, &mut report);
            (report, outcome)
        }
        Err(failure) => {
            let kind =
                if failure.error.message.contains("unexpected end of file") { "is cut off" } else { "is invalid" };
            (report, invalid(failure.error.offset, format!("the RDB part {kind}: {}", failure.error.message)))
        }
    }
}

/// Reads the commands of a file from `rest`, which starts at `start`.
fn read_commands(rest: impl io::BufRead, start: u64, until: Option<i64>, report: &mut FileReport) -> FileOutcome {
    let mut stopped_at = None;
    let mut commands_before = 0;
    let mut timestamps: (Option<i64>, Option<i64>) = (None, None);
    let result = reader::read(rest, start, |event| {
        match event {
            reader::Event::Timestamp { offset, unix_secs } => {
                timestamps.0.get_or_insert(unix_secs);
                timestamps.1 = Some(unix_secs);
                if until.is_some_and(|until| unix_secs > until) {
                    stopped_at = Some(offset);
                    return Err("until".to_string());
                }
            }
            reader::Event::Command(_) => commands_before += 1,
        }
        Ok(())
    });
    report.first_timestamp = timestamps.0;
    report.last_timestamp = timestamps.1;
    match result {
        Ok(tally) => {
            report.commands = tally.commands;
            FileOutcome::Whole
        }
        Err(reader::Error::Stopped(_)) => {
            report.commands = commands_before;
            FileOutcome::Until(stopped_at.expect("set before stopping"))
        }
        Err(reader::Error::Torn { valid_up_to, commands, message }) => {
            report.commands = commands;
            FileOutcome::Torn { valid_up_to, message }
        }
        Err(reader::Error::Corrupt { offset, message }) | Err(reader::Error::Io { offset, message }) => {
            report.commands = commands_before;
            FileOutcome::Invalid { offset, message }
        }
    }
}

fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(read) => filled += read,
        }
    }
    filled
}

/// Lays out in `folder` an `appendonlydir/` with the files of `set` up to
/// `cut` and a manifest naming them. The file at the cut is copied up to its
/// offset; the others are hard-linked, or copied across file systems.
/// Returns the `appendfilename` a redis-server must use to load the copy.
pub fn stage(set: &AofSet, cut: Option<Cut>, folder: &Path) -> io::Result<String> {
    let dir = folder.join("appendonlydir");
    std::fs::create_dir(&dir)?;
    let last = cut.map_or(set.files.len().saturating_sub(1), |cut| cut.file);
    let mut manifest = String::new();
    for (index, file) in set.files.iter().enumerate().take(last + 1) {
        // A single file becomes the base of a one-file set. Redis detects an
        // RDB preamble by the first bytes, not by the name.
        let name = match set.kind {
            Kind::Single => format!("{}.1.base.aof", set.appendfilename),
            Kind::MultiPart => file.name.clone(),
        };
        let staged = dir.join(&name);
        match cut.filter(|cut| cut.file == index) {
            Some(cut) => {
                let mut source = File::open(&file.path)?.take(cut.offset);
                let mut target = File::create(&staged)?;
                io::copy(&mut source, &mut target)?;
            }
            None => {
                if std::fs::hard_link(&file.path, &staged).is_err() {
                    std::fs::copy(&file.path, &staged)?;
                }
            }
        }
        let kind = match (set.kind, file.kind) {
            (Kind::Single, _) | (_, FileType::Base) => 'b',
            _ => 'i',
        };
        manifest.push_str(&format!("file {} seq {} type {kind}\n", quote_name(&name), file.seq));
    }
    std::fs::write(dir.join(format!("{}.manifest", set.appendfilename)), manifest)?;
    Ok(set.appendfilename.clone())
}

/// Quotes a file name for a manifest line when it has spaces or quotes.
pub(crate) fn quote_name(name: &str) -> String {
    if name.chars().any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\') {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_of_redis_parses() {
        let entries = parse_manifest(
            "file appendonly.aof.2.base.rdb seq 2 type b\nfile appendonly.aof.2.incr.aof seq 2 type i\n",
        )
        .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            ManifestEntry { name: "appendonly.aof.2.base.rdb".to_string(), seq: 2, kind: FileType::Base }
        );
        assert_eq!(entries[1].kind, FileType::Incr);
    }

    #[test]
    fn extra_keys_and_comments_are_allowed() {
        let entries =
            parse_manifest("# written by hand\nfile a.1.incr.aof seq 1 type i startoffset 0 endoffset 238129\r\n")
                .unwrap();
        assert_eq!(entries, vec![ManifestEntry { name: "a.1.incr.aof".to_string(), seq: 1, kind: FileType::Incr }]);
    }

    #[test]
    fn quoted_names_parse() {
        let entries = parse_manifest("file \"my aof.1.base.rdb\" seq 1 type b\n").unwrap();
        assert_eq!(entries[0].name, "my aof.1.base.rdb");
        assert_eq!(quote_name("my aof.1.base.rdb"), "\"my aof.1.base.rdb\"");
    }

    #[test]
    fn invalid_manifests_are_rejected() {
        for (text, expected) in [
            ("", "names no file"),
            ("file a seq 1\n", "expected 'file <name> seq <n> type <b|h|i>'"),
            ("file ../a seq 1 type b\n", "is a path"),
            ("file a seq x type b\n", "no valid seq"),
            ("file a seq 1 type z\n", "unknown type"),
            ("file a seq 1 type b\nfile b seq 2 type b\n", "a second base file"),
            ("file a seq 3 type i\nfile b seq 2 type i\n", "not above 3"),
            ("file \"a seq 1 type b\n", "unbalanced quotes"),
            ("\n", "expected 'file"),
        ] {
            let err = parse_manifest(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
