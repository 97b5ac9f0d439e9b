//! Streaming RDB walker: checks an RDB file from its magic to its CRC-64
//! trailer and counts keys and expiries per database.
//!
//! The walker reads any `io::Read` once, front to back, with bounded memory: it
//! needs lengths, not values, so it skips value bytes after checking what Redis
//! checks about them. It accepts RDB versions 1 to 13 (`REDIS0001` to
//! `REDIS0013`) and Valkey's `VALKEY` magic. Its verdicts follow
//! `redis-check-rdb`, which loads every value with deep sanitisation. The
//! walker checks every opcode and length and decompresses LZF strings. It
//! checks the inside of ziplists, listpacks, intsets, zipmaps and stream
//! listpacks, duplicate members of sets, hashes and sorted sets, and the
//! CRC-64 trailer.
//!
//! It deliberately does not look for the same key twice in one database:
//! `redis-check-rdb` does not either, and it would need memory per key. A
//! server refuses such a file at load time.
//!
//! # Limitations
//! - Duplicate detection stops for a collection with more than
//!   [`dedup::MAX_TRACKED`] members (the summary counts such keys), so memory
//!   stays bounded.
//! - Module values are checked the way `redis-check-rdb` checks them without the
//!   module: their serialized opcodes are walked, their meaning is not.

mod compact;
mod dedup;
mod input;
mod lzf;
mod stream;
mod value;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};

use input::Input;
use lzf::LzfDecoder;
use value::{StringHeader, ValueReader};

/// Members per collection tracked by the duplicate check.
pub const MAX_DEDUP_MEMBERS: usize = dedup::MAX_TRACKED;

/// Newest RDB version written by Redis that the walker understands.
pub const MAX_REDIS_VERSION: u32 = 13;

/// The file's magic: Redis's `REDIS` or Valkey's `VALKEY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Redis,
    Valkey,
}

/// Result of the CRC-64 trailer check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "crc64")]
pub enum Checksum {
    /// The trailer matches the CRC-64 of the file.
    Verified(u64),
    /// The trailer is zero: the file was saved with `rdbchecksum no`.
    Disabled,
    /// RDB versions before 5 have no trailer.
    Absent,
}

/// Keys and keys with an expiry in one database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DbCounts {
    pub keys: u64,
    pub expires: u64,
}

/// Findings of a walk over a file. After a failed walk, the counts cover the
/// keys read before the error.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub format: Format,
    pub version: u32,
    /// AUX fields in file order (values longer than 256 bytes are cut, bytes
    /// that are not UTF-8 are replaced).
    pub aux: Vec<(String, String)>,
    pub databases: BTreeMap<u64, DbCounts>,
    /// Keys per value type, by Redis's type name (`string`, `hash`, …).
    pub types: BTreeMap<&'static str, u64>,
    pub functions: u64,
    pub module_aux: u64,
    pub checksum: Option<Checksum>,
    /// Bytes from the magic to the end of the trailer.
    pub rdb_bytes: u64,
    /// Bytes after the trailer, which Redis ignores when it loads the file.
    pub trailing_bytes: u64,
    /// Collections too large for the duplicate-member check.
    pub unchecked_collections: u64,
}

impl Summary {
    fn new() -> Self {
        Summary {
            format: Format::Redis,
            version: 0,
            aux: Vec::new(),
            databases: BTreeMap::new(),
            types: BTreeMap::new(),
            functions: 0,
            module_aux: 0,
            checksum: None,
            rdb_bytes: 0,
            trailing_bytes: 0,
            unchecked_collections: 0,
        }
    }

    pub fn keys(&self) -> u64 {
        self.databases.values().map(|db| db.keys).sum()
    }

    pub fn expires(&self) -> u64 {
        self.databases.values().map(|db| db.expires).sum()
    }

    /// Value of an AUX field, if the file has it.
    pub fn aux_field(&self, name: &str) -> Option<&str> {
        self.aux.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// Kind of failure: an invalid file, or a failed read.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ErrorKind {
    /// The bytes do not form a valid RDB file.
    Invalid,
    /// Reading the input failed; nothing is known about the rest of the file.
    Io,
    /// The consumer of [`walk_records`] stopped the walk.
    Stopped,
}

/// A rejected file: the byte offset where the problem was found and what was
/// expected there.
#[derive(Debug)]
pub struct Error {
    pub offset: u64,
    pub message: String,
    pub kind: ErrorKind,
}

impl Error {
    pub(crate) fn at(offset: u64, message: impl Into<String>) -> Self {
        Error { offset, message: message.into(), kind: ErrorKind::Invalid }
    }

    fn io(offset: u64, err: io::Error) -> Self {
        Error { offset, message: format!("read failed: {err}"), kind: ErrorKind::Io }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offset {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for Error {}

/// A failed walk: the error and what was read before it.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    pub partial: Box<Summary>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for Failure {}

/// Walks a whole RDB file from `reader`.
pub fn walk<R: Read>(reader: R) -> Result<Summary, Failure> {
    let mut walker = Walker::new(reader);
    match walker.run() {
        Ok(()) => Ok(walker.summary),
        Err(error) => Err(Failure { error, partial: Box::new(walker.summary) }),
    }
}

/// Receives records from a walk; an error stops it.
pub type RecordSink = Box<dyn FnMut(Record) -> Result<(), String>>;

/// A key or function library, as [`walk_records`] meets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Key(KeyRecord),
    /// The source code of a function library (`FUNCTION LOAD` takes it).
    Function(Vec<u8>),
}

/// One key with its value in the form `DUMP` returns and `RESTORE` takes:
/// the value type byte, the value as the RDB file encodes it, the file's RDB
/// version (2 bytes, little-endian) and the CRC-64 of all that (8 bytes,
/// little-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub db: u64,
    pub key: Vec<u8>,
    /// Absolute expiry time in Unix milliseconds.
    pub expire_at_ms: Option<i64>,
    /// Redis's name of the value type (`string`, `hash`, …).
    pub type_name: &'static str,
    pub payload: Vec<u8>,
}

/// Walks a whole RDB file like [`walk`] and hands every key and function
/// library to `on_record` in file order, after its value was checked. An
/// error from `on_record` stops the walk with [`ErrorKind::Stopped`].
pub fn walk_records<R: Read>(
    reader: R,
    on_record: impl FnMut(Record) -> Result<(), String> + 'static,
) -> Result<Summary, Failure> {
    let mut walker = Walker::new(reader);
    walker.on_record = Some(Box::new(on_record));
    match walker.run() {
        Ok(()) => Ok(walker.summary),
        Err(error) => Err(Failure { error, partial: Box::new(walker.summary) }),
    }
}

/// Hands every key and function library of `reader` to `on_record` like
/// [`walk_records`], for a file that [`walk`] or a verification already
/// accepted (such as a verified restore copy). It reads values by their
/// layout only, keeps LZF strings compressed and skips the CRC-64, which
/// makes it several times cheaper. `RESTORE` checks each payload's own
/// CRC-64 again.
pub fn walk_checked_records(
    reader: impl Read,
    on_record: impl FnMut(Record) -> Result<(), String> + 'static,
) -> Result<Summary, Failure> {
    let mut walker = Walker::new(reader);
    walker.on_record = Some(Box::new(on_record));
    walker.skim = true;
    walker.input.skip_checksum();
    match walker.run() {
        Ok(()) => Ok(walker.summary),
        Err(error) => Err(Failure { error, partial: Box::new(walker.summary) }),
    }
}

/// Walks the RDB part at the start of `reader` (an AOF base or an AOF with
/// an RDB preamble) up to its CRC-64 trailer, like [`walk_records`], and
/// returns the summary with the bytes that follow: the buffered ones and
/// the reader, which continues after them.
pub fn walk_preamble<R: Read>(reader: R, on_record: Option<RecordSink>) -> Result<(Summary, Vec<u8>, R), Failure> {
    let mut walker = Walker::new(reader);
    walker.on_record = on_record;
    walker.stop_after_trailer = true;
    match walker.run() {
        Ok(()) => {
            let (rest, reader) = walker.input.into_rest();
            Ok((walker.summary, rest, reader))
        }
        Err(error) => Err(Failure { error, partial: Box::new(walker.summary) }),
    }
}

// Opcodes that can appear where a value type is expected.
/// Redis 8.6+: module metadata attached to the next key.
const OPCODE_KEY_META: u8 = 243;
/// Valkey 9+: a cluster slot import in progress (same byte as `OPCODE_KEY_META`).
const OPCODE_SLOT_IMPORT: u8 = 243;
const OPCODE_SLOT_INFO: u8 = 244;
const OPCODE_FUNCTION2: u8 = 245;
const OPCODE_FUNCTION_PRE_GA: u8 = 246;
const OPCODE_MODULE_AUX: u8 = 247;
const OPCODE_IDLE: u8 = 248;
const OPCODE_FREQ: u8 = 249;
const OPCODE_AUX: u8 = 250;
const OPCODE_RESIZEDB: u8 = 251;
const OPCODE_EXPIRETIME_MS: u8 = 252;
const OPCODE_EXPIRETIME: u8 = 253;
const OPCODE_SELECTDB: u8 = 254;
const OPCODE_EOF: u8 = 255;

// Module value opcodes (`RDB_MODULE_OPCODE_*`).
const MODULE_OPCODE_EOF: u64 = 0;
const MODULE_OPCODE_SINT: u64 = 1;
const MODULE_OPCODE_UINT: u64 = 2;
const MODULE_OPCODE_FLOAT: u64 = 3;
const MODULE_OPCODE_DOUBLE: u64 = 4;
const MODULE_OPCODE_STRING: u64 = 5;

const AUX_VALUE_BYTES: usize = 256;
const AUX_FIELDS_KEPT: usize = 64;
/// Bytes of a key kept for error messages.
const KEY_PREFIX_BYTES: usize = 64;

pub(crate) struct Walker<R> {
    input: Input<R>,
    lzf: LzfDecoder,
    keys: dedup::FingerprintKeys,
    summary: Summary,
    /// Receives every key and function library, for `walk_records`.
    on_record: Option<RecordSink>,
    /// End at the trailer and leave what follows unread, for `walk_preamble`.
    stop_after_trailer: bool,
    /// Skip values by layout only, for `walk_checked_records`.
    skim: bool,
}

/// A length read with `rdbLoadLen`: plain lengths, or the 6-bit value of an
/// encoded length, which Redis accepts wherever it reads a length.
enum Length {
    Plain(u64),
    Encoded(u8),
}

impl<R: Read> Walker<R> {
    fn new(reader: R) -> Self {
        Walker {
            input: Input::new(reader),
            lzf: LzfDecoder::new(0),
            keys: dedup::FingerprintKeys::new(),
            summary: Summary::new(),
            on_record: None,
            stop_after_trailer: false,
            skim: false,
        }
    }

    fn run(&mut self) -> Result<(), Error> {
        self.read_magic()?;
        let mut db: u64 = 0;
        let mut expire_at_ms: Option<i64> = None;
        loop {
            let opcode_offset = self.input.offset();
            let opcode = self.input.read_u8("an opcode or value type")?;
            match opcode {
                OPCODE_EXPIRETIME => {
                    let seconds = i32::from_le_bytes(self.input.read_array::<4>("an expire time in seconds")?);
                    expire_at_ms = Some(seconds as i64 * 1000);
                }
                OPCODE_EXPIRETIME_MS => {
                    expire_at_ms =
                        Some(i64::from_le_bytes(self.input.read_array::<8>("an expire time in milliseconds")?));
                }
                OPCODE_FREQ => {
                    self.input.read_u8("an LFU frequency")?;
                }
                OPCODE_IDLE => {
                    self.read_len("an LRU idle time")?;
                }
                OPCODE_EOF => break,
                OPCODE_SELECTDB => {
                    db = self.read_len("a database number")?;
                }
                OPCODE_RESIZEDB => {
                    self.read_len("a database size hint")?;
                    self.read_len("an expires size hint")?;
                }
                OPCODE_SLOT_INFO => {
                    self.read_len("a cluster slot id")?;
                    self.read_len("a cluster slot size")?;
                    self.read_len("a cluster slot expires size")?;
                }
                OPCODE_AUX => self.read_aux()?,
                OPCODE_MODULE_AUX => self.read_module_aux(opcode_offset)?,
                OPCODE_FUNCTION2 => {
                    if self.on_record.is_some() {
                        let (code, _) = self.read_string_prefix("a function library", usize::MAX)?;
                        self.emit(opcode_offset, Record::Function(code))?;
                    } else {
                        self.skip_string("a function library")?;
                    }
                    self.summary.functions += 1;
                }
                OPCODE_FUNCTION_PRE_GA => {
                    self.skip_string("a function library name")?;
                    self.skip_string("a function engine name")?;
                    if self.read_len("a function description flag")? != 0 {
                        self.skip_string("a function description")?;
                    }
                    self.skip_string("a function library body")?;
                    self.summary.functions += 1;
                }
                OPCODE_KEY_META if self.summary.format == Format::Redis => {
                    self.read_key_meta(opcode_offset)?;
                    // Redis reads key metadata as a prefix of the value type.
                    let type_offset = self.input.offset();
                    let byte = self.input.read_u8("a value type after key metadata")?;
                    let Some(kind) = values::ValueType::from_byte(byte, self.summary.format) else {
                        return Err(Error::at(
                            type_offset,
                            format!("key metadata is followed by 0x{byte:02x}, expected a value type"),
                        ));
                    };
                    self.read_key_value(db, byte, kind, expire_at_ms.take())?;
                }
                OPCODE_SLOT_IMPORT if self.summary.format == Format::Valkey => {
                    self.read_slot_import(opcode_offset)?;
                }
                _ => {
                    let Some(kind) = values::ValueType::from_byte(opcode, self.summary.format) else {
                        return Err(Error::at(
                            opcode_offset,
                            format!(
                                "unknown opcode or value type 0x{opcode:02x} ({opcode}); expected an RDB opcode or \
                                 a value type this walker knows"
                            ),
                        ));
                    };
                    self.read_key_value(db, opcode, kind, expire_at_ms.take())?;
                }
            }
        }
        self.read_trailer()
    }

    /// Hands a record to the consumer, if there is one.
    fn emit(&mut self, offset: u64, record: Record) -> Result<(), Error> {
        if let Some(on_record) = &mut self.on_record {
            on_record(record).map_err(|message| Error { offset, message, kind: ErrorKind::Stopped })?;
        }
        Ok(())
    }

    fn read_magic(&mut self) -> Result<(), Error> {
        let magic = self.input.read_array::<9>("the 9-byte RDB magic")?;
        let (format, digits) = if &magic[..5] == b"REDIS" {
            (Format::Redis, &magic[5..])
        } else if &magic[..6] == b"VALKEY" {
            (Format::Valkey, &magic[6..])
        } else if magic[..4] == [0x28, 0xB5, 0x2F, 0xFD] {
            return Err(Error::at(
                0,
                "this is a zstd-compressed file, not an RDB file; decompress it first (`zstd -d`), or let \
                 `sessbackup restore` write the RDB",
            ));
        } else {
            return Err(Error::at(
                0,
                format!(
                    "wrong signature {:?}; expected \"REDIS\" or \"VALKEY\" followed by a version number",
                    String::from_utf8_lossy(&magic)
                ),
            ));
        };
        let version = std::str::from_utf8(digits)
            .ok()
            .filter(|text| text.bytes().all(|byte| byte.is_ascii_digit()))
            .and_then(|text| text.parse::<u32>().ok())
            .ok_or_else(|| {
                Error::at(0, format!("RDB version {:?} is not a number", String::from_utf8_lossy(digits)))
            })?;
        let supported = match format {
            Format::Redis => (1..=MAX_REDIS_VERSION).contains(&version),
            Format::Valkey => (values::MIN_VALKEY_VERSION..=values::MAX_VALKEY_VERSION).contains(&version),
        };
        if !supported {
            let range = match format {
                Format::Redis => format!("1 to {MAX_REDIS_VERSION}"),
                Format::Valkey => format!("{} to {}", values::MIN_VALKEY_VERSION, values::MAX_VALKEY_VERSION),
            };
            return Err(Error::at(
                5,
                format!("cannot handle RDB format version {version}; this walker reads versions {range}"),
            ));
        }
        self.summary.format = format;
        self.summary.version = version;
        Ok(())
    }

    fn read_trailer(&mut self) -> Result<(), Error> {
        if self.skim && self.summary.version >= 5 {
            self.input.read_array::<8>("the CRC-64 trailer")?;
            self.summary.rdb_bytes = self.input.offset();
            return Ok(());
        }
        // Valkey's own versions start far above 5, and every one has a trailer.
        if self.summary.version >= 5 {
            let computed = self.input.checksum();
            let trailer_offset = self.input.offset();
            let stored = u64::from_le_bytes(self.input.read_array::<8>("the CRC-64 trailer")?);
            self.summary.checksum = Some(if stored == 0 {
                Checksum::Disabled
            } else if stored != computed {
                return Err(Error::at(
                    trailer_offset,
                    format!("CRC-64 mismatch: the trailer says {stored:016x}, the file's bytes give {computed:016x}"),
                ));
            } else {
                Checksum::Verified(stored)
            });
        } else {
            self.summary.checksum = Some(Checksum::Absent);
        }
        self.summary.rdb_bytes = self.input.offset();
        if !self.stop_after_trailer {
            self.summary.trailing_bytes = self.input.count_remaining()?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ primitives

    fn read_length(&mut self, wanted: &str) -> Result<Length, Error> {
        let offset = self.input.offset();
        let first = self.input.read_u8(wanted)?;
        Ok(match first >> 6 {
            0 => Length::Plain((first & 0x3F) as u64),
            1 => {
                let second = self.input.read_u8(wanted)?;
                Length::Plain((((first & 0x3F) as u64) << 8) | second as u64)
            }
            3 => Length::Encoded(first & 0x3F),
            _ => match first {
                0x80 => Length::Plain(u32::from_be_bytes(self.input.read_array::<4>(wanted)?) as u64),
                0x81 => Length::Plain(u64::from_be_bytes(self.input.read_array::<8>(wanted)?)),
                _ => {
                    return Err(Error::at(
                        offset,
                        format!("unknown length encoding 0x{first:02x} while reading {wanted}"),
                    ));
                }
            },
        })
    }

    pub(crate) fn read_len(&mut self, wanted: &str) -> Result<u64, Error> {
        Ok(match self.read_length(wanted)? {
            Length::Plain(len) => len,
            Length::Encoded(value) => value as u64,
        })
    }

    pub(crate) fn read_string_header(&mut self, wanted: &str) -> Result<StringHeader, Error> {
        let offset = self.input.offset();
        Ok(match self.read_length(wanted)? {
            Length::Plain(len) => StringHeader::Raw(len),
            Length::Encoded(0) => StringHeader::Int(self.input.read_u8(wanted)? as i8 as i64),
            Length::Encoded(1) => StringHeader::Int(i16::from_le_bytes(self.input.read_array::<2>(wanted)?) as i64),
            Length::Encoded(2) => StringHeader::Int(i32::from_le_bytes(self.input.read_array::<4>(wanted)?) as i64),
            Length::Encoded(3) => {
                let compressed = self.read_len(wanted)?;
                let len = self.read_len(wanted)?;
                StringHeader::Lzf { compressed, len }
            }
            Length::Encoded(other) => {
                return Err(Error::at(offset, format!("unknown string encoding {other} while reading {wanted}")));
            }
        })
    }

    /// Opens a string for sequential reading of its content.
    pub(crate) fn open_string(&mut self, wanted: &str) -> Result<ValueReader<'_, R>, Error> {
        let offset = self.input.offset();
        let header = self.read_string_header(wanted)?;
        Ok(ValueReader::new(&mut self.input, &mut self.lzf, header, offset))
    }

    /// Opens a string like `open_string` and also lends the fingerprint keys.
    pub(crate) fn open_string_with_keys(
        &mut self,
        wanted: &str,
    ) -> Result<(ValueReader<'_, R>, &dedup::FingerprintKeys), Error> {
        let offset = self.input.offset();
        let header = self.read_string_header(wanted)?;
        Ok((ValueReader::new(&mut self.input, &mut self.lzf, header, offset), &self.keys))
    }

    /// Skips a string as stored: an LZF string by its compressed length,
    /// without decompressing it.
    pub(crate) fn skip_stored_string(&mut self, wanted: &str) -> Result<(), Error> {
        match self.read_string_header(wanted)? {
            StringHeader::Raw(len) => self.input.skip(len, wanted),
            StringHeader::Lzf { compressed, .. } => self.input.skip(compressed, wanted),
            StringHeader::Int(_) => Ok(()),
        }
    }

    pub(crate) fn skip_bytes(&mut self, count: u64, wanted: &str) -> Result<(), Error> {
        self.input.skip(count, wanted)
    }

    pub(crate) fn skip_string(&mut self, wanted: &str) -> Result<u64, Error> {
        let reader = self.open_string(wanted)?;
        let len = reader.len();
        reader.finish()?;
        Ok(len)
    }

    /// Reads a string, keeping at most `cap` bytes; returns them and the full length.
    pub(crate) fn read_string_prefix(&mut self, wanted: &str, cap: usize) -> Result<(Vec<u8>, u64), Error> {
        let mut reader = self.open_string(wanted)?;
        let len = reader.len();
        let keep = len.min(cap as u64);
        // The length comes from the file: grow with the bytes actually read,
        // so a hostile length cannot allocate more than the file holds.
        let mut prefix = Vec::with_capacity(keep.min(64 * 1024) as usize);
        reader.feed(keep, &mut |chunk| prefix.extend_from_slice(chunk))?;
        reader.finish()?;
        Ok((prefix, len))
    }

    /// Reads a string and returns the fingerprint of its text.
    pub(crate) fn fingerprint_string(&mut self, wanted: &str) -> Result<dedup::Fingerprint, Error> {
        let offset = self.input.offset();
        let header = self.read_string_header(wanted)?;
        let mut builder = self.keys.start();
        let mut reader = ValueReader::new(&mut self.input, &mut self.lzf, header, offset);
        let len = reader.len();
        reader.feed(len, &mut |chunk| builder.update(chunk))?;
        reader.finish()?;
        Ok(builder.finish())
    }

    // ------------------------------------------------------------- sections

    fn read_aux(&mut self) -> Result<(), Error> {
        let (key, _) = self.read_string_prefix("an AUX field name", AUX_VALUE_BYTES)?;
        let (value, _) = self.read_string_prefix("an AUX field value", AUX_VALUE_BYTES)?;
        if self.summary.aux.len() < AUX_FIELDS_KEPT {
            self.summary
                .aux
                .push((String::from_utf8_lossy(&key).into_owned(), String::from_utf8_lossy(&value).into_owned()));
        }
        Ok(())
    }

    fn read_module_aux(&mut self, offset: u64) -> Result<(), Error> {
        let module_id = self.read_len("a module id")?;
        let when_opcode = self.read_len("a module aux 'when' opcode")?;
        self.read_len("a module aux 'when' value")?;
        if when_opcode != MODULE_OPCODE_UINT {
            return Err(Error::at(
                offset,
                format!(
                    "module aux data for module type '{}' has 'when' opcode {when_opcode}, expected {MODULE_OPCODE_UINT}",
                    module_type_name(module_id)
                ),
            ));
        }
        self.skip_module_value()?;
        self.summary.module_aux += 1;
        Ok(())
    }

    /// Walks a module value's opcodes to its end marker, as `redis-check-rdb`
    /// does for modules it has not loaded.
    pub(crate) fn skip_module_value(&mut self) -> Result<(), Error> {
        loop {
            let opcode = self.read_len("a module value opcode")?;
            match opcode {
                MODULE_OPCODE_EOF => return Ok(()),
                MODULE_OPCODE_SINT | MODULE_OPCODE_UINT => {
                    self.read_len("a module integer")?;
                }
                MODULE_OPCODE_STRING => {
                    self.skip_string("a module string")?;
                }
                MODULE_OPCODE_FLOAT => {
                    self.input.read_array::<4>("a module float")?;
                }
                MODULE_OPCODE_DOUBLE => {
                    self.input.read_array::<8>("a module double")?;
                }
                // redis-check-rdb 7.0 reads the next opcode after an unknown
                // one, so an unknown opcode carries no payload. A runaway
                // value ends at the end of the file with an error.
                _ => {}
            }
        }
    }

    /// Key metadata (Redis 8.6, RDB 13): a class count, then per class a
    /// 4-byte class spec and a module-serialized value ending in an end marker.
    fn read_key_meta(&mut self, offset: u64) -> Result<(), Error> {
        let classes = self.read_len("a key metadata class count")?;
        if classes > 7 {
            return Err(Error::at(offset, format!("key metadata names {classes} classes, at most 7 are possible")));
        }
        for _ in 0..classes {
            self.input.read_array::<4>("a key metadata class spec")?;
            self.skip_module_value()?;
        }
        Ok(())
    }

    /// Valkey's slot import record: a 40-byte job name and slot ranges.
    fn read_slot_import(&mut self, offset: u64) -> Result<(), Error> {
        let name_len = self.skip_string("a slot import job name")?;
        if name_len != 40 {
            return Err(Error::at(offset, format!("slot import job name is {name_len} bytes, expected 40")));
        }
        let ranges = self.read_len("a slot import range count")?;
        for _ in 0..ranges {
            let range_offset = self.input.offset();
            let start = self.read_len("a slot import range start")?;
            let end = self.read_len("a slot import range end")?;
            if start > end || end > 16383 {
                return Err(Error::at(range_offset, format!("slot import range {start}-{end} is not within 0-16383")));
            }
        }
        Ok(())
    }

    fn read_key_value(
        &mut self,
        db: u64,
        type_byte: u8,
        kind: values::ValueType,
        expire_at_ms: Option<i64>,
    ) -> Result<(), Error> {
        let key_offset = self.input.offset();
        let recording = self.on_record.is_some();
        let cap = if recording { usize::MAX } else { KEY_PREFIX_BYTES };
        let (key, key_len) = self.read_string_prefix("a key", cap)?;
        let value_offset = self.input.offset();
        if recording {
            // The payload starts with the type byte and continues with the
            // value's bytes as they are read.
            self.input.start_recording(vec![type_byte]);
        }
        let checked = if self.skim { values::skim_value(self, kind) } else { values::check_value(self, kind) };
        let value = if recording { self.input.take_recording() } else { Vec::new() };
        let checked = checked.map_err(|err| {
            let key = &key[..key.len().min(KEY_PREFIX_BYTES)];
            let mut shown = printable(key);
            if key_len > key.len() as u64 {
                shown.push('…');
            }
            Error {
                offset: err.offset,
                message: format!(
                    "{} (key \"{shown}\" at offset {key_offset}, {} value at offset {value_offset})",
                    err.message,
                    kind.name()
                ),
                kind: err.kind,
            }
        })?;
        if !checked.dedup_complete {
            self.summary.unchecked_collections += 1;
        }
        let counts = self.summary.databases.entry(db).or_default();
        counts.keys += 1;
        if expire_at_ms.is_some() {
            counts.expires += 1;
        }
        *self.summary.types.entry(kind.type_name()).or_default() += 1;
        if recording {
            let payload = dump_payload(value, self.summary.version);
            let record = KeyRecord { db, key, expire_at_ms, type_name: kind.type_name(), payload };
            self.emit(key_offset, Record::Key(record))?;
        }
        Ok(())
    }
}

/// Completes a `DUMP` payload from the value type byte and the encoded value
/// (`typed_value`): appends the RDB version and the CRC-64 of everything
/// before it.
fn dump_payload(typed_value: Vec<u8>, rdb_version: u32) -> Vec<u8> {
    let mut payload = typed_value;
    payload.reserve(10);
    payload.extend_from_slice(&(rdb_version as u16).to_le_bytes());
    let crc = input::CRC64.checksum(&payload);
    payload.extend_from_slice(&crc.to_le_bytes());
    payload
}

/// Redis's 9-character module type name from a module id.
pub(crate) fn module_type_name(module_id: u64) -> String {
    const CHARSET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = module_id >> 10;
    let mut name = [0u8; 9];
    for slot in name.iter_mut().rev() {
        *slot = CHARSET[(id & 63) as usize];
        id >>= 6;
    }
    String::from_utf8_lossy(&name).into_owned()
}

/// Renders key bytes for a message: printable ASCII as is, the rest escaped.
pub(crate) fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(byte as char);
            }
            0x20..=0x7E => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests;
