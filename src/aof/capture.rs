//! Capturing a live multi-part AOF for a backup.
//!
//! Redis keeps appending to the last incremental file and, after a rewrite,
//! deletes the files the new base replaces. A capture opens every file the
//! manifest names and notes its size, then reads the manifest again: if it
//! changed meanwhile, it starts over. The open files stay readable even
//! after Redis deletes them, so the set can be read at leisure, exactly as
//! it was. This needs no write access to Redis's folder, unlike hard links.
//! The last file is cut after its last whole command, so the capture never
//! ends inside a command that Redis was still writing.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{FileOutcome, FileType, Kind};
use crate::manifest::AofFileInfo;

/// Attempts before a capture gives up on a manifest that keeps changing.
const ATTEMPTS: usize = 5;

/// A file of the set, held open.
pub struct HeldFile {
    pub name: String,
    pub kind: FileType,
    file: File,
    /// Bytes to ship: the size when it was opened, cut after the last whole
    /// command for the last file.
    pub bytes: u64,
}

/// A consistent multi-part AOF set, held open.
pub struct Held {
    pub appendfilename: String,
    /// A manifest naming exactly the held files (base, then incremental).
    pub manifest: Vec<u8>,
    pub files: Vec<HeldFile>,
}

impl Held {
    /// Bytes of all files, for sizing uploads.
    pub fn total_bytes(&self) -> u64 {
        self.manifest.len() as u64 + self.files.iter().map(|file| file.bytes).sum::<u64>()
    }
}

/// Holds the multi-part AOF in `dir` (an `appendonlydir/` or its manifest).
pub fn hold(dir: &Path) -> Result<Held, String> {
    let mut last_error = String::new();
    for _ in 0..ATTEMPTS {
        match hold_once(dir) {
            Ok(Some(held)) => return Ok(held),
            // The manifest changed while the files were opened: a rewrite.
            Ok(None) => last_error = "the AOF manifest kept changing (rewrites in progress)".to_string(),
            Err(err) => return Err(err),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Err(format!("cannot capture the AOF in {}: {last_error}", dir.display()))
}

fn hold_once(dir: &Path) -> Result<Option<Held>, String> {
    let set = match super::open(dir) {
        Ok(set) => set,
        // A file the manifest names was deleted by a rewrite: try again.
        Err(super::Error::Missing { .. }) => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let manifest_path = match (set.kind, &set.manifest) {
        (Kind::MultiPart, Some(path)) => path.clone(),
        _ => {
            return Err(format!(
                "{} is a single-file AOF; include_aof ships the multi-part AOF of Redis 7.0 and newer",
                dir.display()
            ));
        }
    };
    let before = std::fs::read(&manifest_path).map_err(|err| format!("{}: {err}", manifest_path.display()))?;
    let mut files = Vec::new();
    for file in &set.files {
        let handle = match File::open(&file.path) {
            Ok(handle) => handle,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(format!("cannot open {}: {err}", file.path.display())),
        };
        let bytes = handle.metadata().map_err(|err| format!("{}: {err}", file.path.display()))?.len();
        files.push(HeldFile { name: file.name.clone(), kind: file.kind, file: handle, bytes });
    }
    let after = std::fs::read(&manifest_path).map_err(|err| format!("{}: {err}", manifest_path.display()))?;
    if before != after {
        return Ok(None);
    }

    // Check every held file as Redis would load it; the last one may end in
    // a command still being written, which is left out.
    let last = files.len().saturating_sub(1);
    for (index, held) in files.iter_mut().enumerate() {
        let (_, outcome) = super::check_stream(&held.name, held.kind, held.reader(), held.bytes, None);
        match outcome {
            FileOutcome::Whole => {}
            FileOutcome::Torn { valid_up_to, .. } if index == last && held.kind == FileType::Incr => {
                held.bytes = valid_up_to;
            }
            FileOutcome::Torn { valid_up_to, message } | FileOutcome::Invalid { offset: valid_up_to, message } => {
                return Err(format!("the AOF file {} is invalid at offset {valid_up_to}: {message}", held.name));
            }
            FileOutcome::Until(_) => unreachable!("no time limit was given"),
        }
    }

    let mut manifest = String::new();
    for (held, entry) in files.iter().zip(&set.files) {
        let kind = if held.kind == FileType::Base { 'b' } else { 'i' };
        manifest.push_str(&format!("file {} seq {} type {kind}\n", super::quote_name(&held.name), entry.seq));
    }
    Ok(Some(Held { appendfilename: set.appendfilename, manifest: manifest.into_bytes(), files }))
}

impl HeldFile {
    /// Reads the held bytes from the start, without moving the file's offset.
    fn reader(&self) -> AtReader<'_> {
        AtReader { file: &self.file, position: 0, end: self.bytes }
    }
}

/// Reads a range of a file with positioned reads.
struct AtReader<'a> {
    file: &'a File,
    position: u64,
    end: u64,
}

impl Read for AtReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.position);
        if left == 0 {
            return Ok(0);
        }
        let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = self.file.read_at(&mut out[..want], self.position)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ended at {} bytes, {} were held", self.position, self.end),
            ));
        }
        self.position += read as u64;
        Ok(read)
    }
}

/// Hashes what passes through.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(out)?;
        self.hash.update(&out[..read]);
        Ok(read)
    }
}

/// Writes the held set as a tar archive of `appendonlydir/`: the manifest
/// first, then the files in load order. Returns what each entry holds.
pub fn write_archive<W: Write>(held: &Held, out: W) -> io::Result<(Vec<AofFileInfo>, W)> {
    let mut builder = tar::Builder::new(out);
    let mut infos = Vec::new();
    let manifest_name = format!("{}.manifest", held.appendfilename);
    append(&mut builder, &manifest_name, held.manifest.len() as u64, &held.manifest[..])?;
    infos.push(AofFileInfo {
        name: manifest_name,
        kind: "manifest".to_string(),
        bytes: held.manifest.len() as u64,
        sha256: hex::encode(Sha256::digest(&held.manifest)),
    });
    for file in &held.files {
        let mut reader = Hashing { inner: file.reader(), hash: Sha256::new() };
        append(&mut builder, &file.name, file.bytes, &mut reader)?;
        infos.push(AofFileInfo {
            name: file.name.clone(),
            kind: if file.kind == FileType::Base { "base" } else { "incr" }.to_string(),
            bytes: file.bytes,
            sha256: hex::encode(reader.hash.finalize()),
        });
    }
    Ok((infos, builder.into_inner()?))
}

fn append<W: Write>(builder: &mut tar::Builder<W>, name: &str, bytes: u64, data: impl Read) -> io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(bytes);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, format!("appendonlydir/{name}"), data)
}
