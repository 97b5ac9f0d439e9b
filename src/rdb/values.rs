//! Checks of one value, by RDB value type.
//!
//! Each check consumes exactly the value's bytes and rejects what Redis's
//! `rdbLoadObject` rejects with deep sanitisation on (as `redis-check-rdb`
//! runs it), including empty collections, which Redis reports as "empty keys".

use std::io::Read;

use super::compact::{self, CompactError, Element, Listpack, Want, Ziplist};
use super::dedup::MemberSet;
use super::value::ValueReader;
use super::{Error, Format, Walker};

/// Lowest and highest version after Valkey's `VALKEY` magic that the walker reads.
pub(crate) const MIN_VALKEY_VERSION: u32 = 80;
pub(crate) const MAX_VALKEY_VERSION: u32 = 80;

/// Largest expire time a hash field may carry (`EB_EXPIRE_TIME_MAX`, 2^48 - 1 ms).
const FIELD_EXPIRE_MAX: u64 = (1 << 48) - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueType {
    String,
    List,
    Set,
    Zset,
    Hash,
    Zset2,
    ModulePreGa,
    Module2,
    HashZipmap,
    ListZiplist,
    SetIntset,
    ZsetZiplist,
    HashZiplist,
    ListQuicklist,
    StreamListpacks,
    HashListpack,
    ZsetListpack,
    ListQuicklist2,
    StreamListpacks2,
    SetListpack,
    StreamListpacks3,
    /// Redis 7.4 release candidates: hash with field expiry, absolute times.
    HashMetadataPreGa,
    HashListpackExPreGa,
    /// Redis 7.4+: hash with field expiry.
    HashMetadata,
    HashListpackEx,
    /// Redis 8.6 (RDB 13): stream with idempotent-producer data.
    StreamListpacks4,
    /// Valkey 9: hash whose fields may carry an expiry.
    ValkeyHash2,
}

impl ValueType {
    pub(crate) fn from_byte(byte: u8, format: Format) -> Option<ValueType> {
        use ValueType::*;
        Some(match (byte, format) {
            (0, _) => String,
            (1, _) => List,
            (2, _) => Set,
            (3, _) => Zset,
            (4, _) => Hash,
            (5, _) => Zset2,
            (6, _) => ModulePreGa,
            (7, _) => Module2,
            (9, _) => HashZipmap,
            (10, _) => ListZiplist,
            (11, _) => SetIntset,
            (12, _) => ZsetZiplist,
            (13, _) => HashZiplist,
            (14, _) => ListQuicklist,
            (15, _) => StreamListpacks,
            (16, _) => HashListpack,
            (17, _) => ZsetListpack,
            (18, _) => ListQuicklist2,
            (19, _) => StreamListpacks2,
            (20, _) => SetListpack,
            (21, _) => StreamListpacks3,
            (22, Format::Redis) => HashMetadataPreGa,
            (22, Format::Valkey) => ValkeyHash2,
            (23, Format::Redis) => HashListpackExPreGa,
            (24, Format::Redis) => HashMetadata,
            (25, Format::Redis) => HashListpackEx,
            (26, Format::Redis) => StreamListpacks4,
            _ => return None,
        })
    }

    /// Returns the encoding's name, for messages.
    pub(crate) fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            String => "string",
            List => "list (linked)",
            Set => "set (hashtable)",
            Zset => "sorted set (text scores)",
            Hash => "hash (hashtable)",
            Zset2 => "sorted set",
            ModulePreGa => "module (pre-release format)",
            Module2 => "module",
            HashZipmap => "hash (zipmap)",
            ListZiplist => "list (ziplist)",
            SetIntset => "set (intset)",
            ZsetZiplist => "sorted set (ziplist)",
            HashZiplist => "hash (ziplist)",
            ListQuicklist => "list (quicklist of ziplists)",
            StreamListpacks => "stream",
            HashListpack => "hash (listpack)",
            ZsetListpack => "sorted set (listpack)",
            ListQuicklist2 => "list (quicklist)",
            StreamListpacks2 => "stream (v2)",
            SetListpack => "set (listpack)",
            StreamListpacks3 => "stream (v3)",
            HashMetadataPreGa => "hash with field expiry (7.4 pre-release)",
            HashListpackExPreGa => "hash listpack with field expiry (7.4 pre-release)",
            HashMetadata => "hash with field expiry",
            HashListpackEx => "hash listpack with field expiry",
            StreamListpacks4 => "stream (v4)",
            ValkeyHash2 => "hash with field expiry (Valkey)",
        }
    }

    /// Returns the Redis data type, as the `TYPE` command names it.
    pub(crate) fn type_name(self) -> &'static str {
        use ValueType::*;
        match self {
            String => "string",
            List | ListZiplist | ListQuicklist | ListQuicklist2 => "list",
            Set | SetIntset | SetListpack => "set",
            Zset | Zset2 | ZsetZiplist | ZsetListpack => "zset",
            Hash | HashZipmap | HashZiplist | HashListpack | HashMetadataPreGa | HashListpackExPreGa | HashMetadata
            | HashListpackEx | ValkeyHash2 => "hash",
            ModulePreGa | Module2 => "module",
            StreamListpacks | StreamListpacks2 | StreamListpacks3 | StreamListpacks4 => "stream",
        }
    }
}

/// Findings of a value check besides its verdict.
pub(crate) struct Checked {
    /// False when a collection was too large for the duplicate check.
    pub(crate) dedup_complete: bool,
}

const COMPLETE: Checked = Checked { dedup_complete: true };

fn empty_key(offset: u64) -> Error {
    Error::at(offset, "empty collection (Redis rejects keys with no elements)")
}

/// Turns a structure-check failure into a walker error at the string's offset.
pub(crate) fn compact_error(string_offset: u64, what: &str, err: CompactError) -> Error {
    match err.source {
        Some(source) => source,
        None => Error::at(
            string_offset,
            format!("invalid {what} at byte {} of the encoded value: {}", err.pos, err.message),
        ),
    }
}

/// Skips one value by its layout alone, for a file that a full walk already
/// accepted: strings are skipped by their stored length (LZF strings stay
/// compressed) and encoded collections are not opened. Types whose layout
/// has more than lengths and strings get the full check.
pub(crate) fn skim_value<R: Read>(walker: &mut Walker<R>, kind: ValueType) -> Result<Checked, Error> {
    use ValueType::*;
    match kind {
        String | HashZipmap | ListZiplist | SetIntset | ZsetZiplist | HashZiplist | HashListpack | ZsetListpack
        | SetListpack => walker.skip_stored_string("a value")?,
        List | Set | ListQuicklist => {
            for _ in 0..walker.read_len("an element count")? {
                walker.skip_stored_string("an element")?;
            }
        }
        Hash => {
            for _ in 0..walker.read_len("a field count")? {
                walker.skip_stored_string("a hash field")?;
                walker.skip_stored_string("a hash value")?;
            }
        }
        Zset2 => {
            for _ in 0..walker.read_len("a member count")? {
                walker.skip_stored_string("a sorted set member")?;
                walker.skip_bytes(8, "a score")?;
            }
        }
        ListQuicklist2 => {
            for _ in 0..walker.read_len("a node count")? {
                walker.read_len("a node container")?;
                walker.skip_stored_string("a quicklist node")?;
            }
        }
        _ => return check_value(walker, kind),
    }
    Ok(COMPLETE)
}

pub(crate) fn check_value<R: Read>(walker: &mut Walker<R>, kind: ValueType) -> Result<Checked, Error> {
    use ValueType::*;
    let offset = walker.input.offset();
    match kind {
        String => {
            walker.skip_string("a string value")?;
            Ok(COMPLETE)
        }
        List => {
            let len = walker.read_len("a list length")?;
            if len == 0 {
                return Err(empty_key(offset));
            }
            for _ in 0..len {
                walker.skip_string("a list element")?;
            }
            Ok(COMPLETE)
        }
        Set => check_members(walker, offset, "set member", "a set length", 1),
        Hash => check_members(walker, offset, "hash field", "a hash length", 2),
        Zset | Zset2 => check_zset(walker, offset, kind == Zset2),
        ModulePreGa => Err(Error::at(
            offset,
            "module value in the pre-release format (type 6) cannot be checked; Redis refuses it too",
        )),
        Module2 => {
            walker.read_len("a module id")?;
            walker.skip_module_value()?;
            Ok(COMPLETE)
        }
        HashZipmap => {
            let string_offset = walker.input.offset();
            let mut members = MemberSet::default();
            let (mut reader, keys) = walker.open_string_with_keys("a zipmap")?;
            compact::check_zipmap(&mut reader, keys, &mut |field| members.insert(field))
                .map_err(|err| compact_error(string_offset, "zipmap", err))?;
            reader.finish()?;
            Ok(Checked { dedup_complete: !members.gave_up() })
        }
        ListZiplist => {
            let count = check_ziplist(walker, 1, false)?;
            if count.entries == 0 {
                return Err(empty_key(offset));
            }
            Ok(COMPLETE)
        }
        ZsetZiplist | HashZiplist => {
            let count = check_ziplist(walker, 2, true)?;
            if count.entries == 0 {
                return Err(empty_key(offset));
            }
            Ok(Checked { dedup_complete: count.dedup_complete })
        }
        SetIntset => {
            let string_offset = walker.input.offset();
            let mut reader = walker.open_string("an intset")?;
            compact::check_intset(&mut reader).map_err(|err| compact_error(string_offset, "intset", err))?;
            reader.finish()?;
            Ok(COMPLETE)
        }
        ListQuicklist | ListQuicklist2 => check_quicklist(walker, offset, kind == ListQuicklist2),
        HashListpack | ZsetListpack => check_listpack_value(walker, offset, 2, false),
        SetListpack => check_listpack_value(walker, offset, 1, false),
        HashListpackExPreGa => check_listpack_value(walker, offset, 3, true),
        HashListpackEx => {
            walker.input.read_array::<8>("a hash minimum field expire time")?;
            check_listpack_value(walker, offset, 3, true)
        }
        HashMetadataPreGa | HashMetadata => check_hash_metadata(walker, offset, kind == HashMetadata),
        ValkeyHash2 => check_valkey_hash2(walker, offset),
        StreamListpacks | StreamListpacks2 | StreamListpacks3 | StreamListpacks4 => {
            let version = match kind {
                StreamListpacks => 1,
                StreamListpacks2 => 2,
                StreamListpacks3 => 3,
                _ => 4,
            };
            super::stream::check_stream(walker, version)?;
            Ok(COMPLETE)
        }
    }
}

/// Plain sets (one string per member) and hashes (field and value strings):
/// every member or field must be unique.
fn check_members<R: Read>(
    walker: &mut Walker<R>,
    offset: u64,
    what: &str,
    len_wanted: &str,
    strings_per_member: u64,
) -> Result<Checked, Error> {
    let len = walker.read_len(len_wanted)?;
    if len == 0 {
        return Err(empty_key(offset));
    }
    let mut members = MemberSet::default();
    for _ in 0..len {
        let member_offset = walker.input.offset();
        let fingerprint = walker.fingerprint_string(what)?;
        if !members.insert(fingerprint) {
            return Err(Error::at(member_offset, format!("duplicate {what}")));
        }
        for _ in 1..strings_per_member {
            walker.skip_string("a hash value")?;
        }
    }
    Ok(Checked { dedup_complete: !members.gave_up() })
}

fn check_zset<R: Read>(walker: &mut Walker<R>, offset: u64, binary_scores: bool) -> Result<Checked, Error> {
    let len = walker.read_len("a sorted set length")?;
    if len == 0 {
        return Err(empty_key(offset));
    }
    let mut members = MemberSet::default();
    for _ in 0..len {
        let member_offset = walker.input.offset();
        let fingerprint = walker.fingerprint_string("a sorted set member")?;
        let score_offset = walker.input.offset();
        let score = if binary_scores {
            f64::from_le_bytes(walker.input.read_array::<8>("a sorted set score")?)
        } else {
            read_text_double(walker)?
        };
        if score.is_nan() {
            return Err(Error::at(score_offset, "sorted set score is NaN"));
        }
        if !members.insert(fingerprint) {
            return Err(Error::at(member_offset, "duplicate sorted set member"));
        }
    }
    Ok(Checked { dedup_complete: !members.gave_up() })
}

/// A score of RDB versions before 8: a length byte (253 NaN, 254 +inf,
/// 255 -inf) and that many bytes of text that C's `sscanf("%lg")` must accept.
fn read_text_double<R: Read>(walker: &mut Walker<R>) -> Result<f64, Error> {
    let offset = walker.input.offset();
    let len = walker.input.read_u8("a sorted set score length")?;
    match len {
        253 => return Ok(f64::NAN),
        254 => return Ok(f64::INFINITY),
        255 => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    let mut text = vec![0u8; len as usize];
    walker.input.read_exact(&mut text, "a sorted set score")?;
    parse_c_double(&text).ok_or_else(|| {
        Error::at(offset, format!("sorted set score {:?} is not a number", String::from_utf8_lossy(&text)))
    })
}

/// Parses the longest prefix of `text` that is a number, after leading
/// whitespace, as `sscanf("%lg")` does. Hexadecimal floats are not accepted.
fn parse_c_double(text: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(text).ok().or_else(|| {
        let valid = std::str::from_utf8(text).err()?.valid_up_to();
        std::str::from_utf8(&text[..valid]).ok()
    })?;
    let trimmed = text.trim_start();
    // A terminating NUL ends the C string.
    let trimmed = trimmed.split('\0').next().unwrap_or("");
    (1..=trimmed.len())
        .rev()
        .filter(|&end| trimmed.is_char_boundary(end))
        .find_map(|end| trimmed[..end].parse::<f64>().ok())
}

struct ZiplistCount {
    entries: u64,
    dedup_complete: bool,
}

/// Checks one ziplist string. With `pairs`, even entries are fields that must
/// be unique and the entry count must be even.
fn check_ziplist<R: Read>(walker: &mut Walker<R>, tuple: u64, pairs: bool) -> Result<ZiplistCount, Error> {
    let string_offset = walker.input.offset();
    let (mut reader, keys) = walker.open_string_with_keys("a ziplist")?;
    let mut members = MemberSet::default();
    let result = (|| -> compact::CompactResult<u64> {
        let mut ziplist = Ziplist::open(&mut reader)?;
        let mut index: u64 = 0;
        loop {
            let is_field = pairs && index.is_multiple_of(tuple);
            let want = if is_field { Want::Fingerprint(keys) } else { Want::Skip };
            let Some(element) = ziplist.next(want)? else {
                break;
            };
            if is_field
                && let Element::Str { fingerprint: Some(fingerprint), .. } = element
                && !members.insert(fingerprint)
            {
                return Err(CompactError::new(0, format!("duplicate field in entry {index}")));
            }
            index += 1;
        }
        let count = ziplist.close()?;
        if pairs && count % 2 != 0 {
            return Err(CompactError::new(
                0,
                format!("{count} entries, expected an even number of field-value entries"),
            ));
        }
        Ok(count)
    })();
    let entries = result.map_err(|err| compact_error(string_offset, "ziplist", err))?;
    reader.finish()?;
    Ok(ZiplistCount { entries, dedup_complete: !members.gave_up() })
}

/// Checks one listpack string with tuples of `tuple` entries whose first entry
/// must be unique (1 for sets, 2 for hashes and sorted sets, 3 for hashes
/// with field expiry, where the third entry is the expire time).
fn check_listpack_string<R: Read>(
    walker: &mut Walker<R>,
    tuple: u64,
    dedup: bool,
    field_expiry: bool,
) -> Result<(u64, bool), Error> {
    let string_offset = walker.input.offset();
    let (mut reader, keys) = walker.open_string_with_keys("a listpack")?;
    let mut members = MemberSet::default();
    let result = (|| -> compact::CompactResult<u64> {
        let mut listpack = Listpack::open(&mut reader)?;
        let mut index: u64 = 0;
        let mut last_expire: i64 = -1;
        loop {
            let position = index % tuple;
            let want = if dedup && position == 0 { Want::Fingerprint(keys) } else { Want::Skip };
            let Some(element) = listpack.next(want)? else {
                break;
            };
            if dedup && position == 0 {
                if let Element::Str { fingerprint: Some(fingerprint), .. } = element
                    && !members.insert(fingerprint)
                {
                    return Err(CompactError::new(0, format!("duplicate member in entry {index}")));
                }
            } else if field_expiry && position == 2 {
                let Element::Int(expire) = element else {
                    return Err(CompactError::new(0, format!("field expire time in entry {index} is not an integer")));
                };
                if expire < 0 || expire as u64 > FIELD_EXPIRE_MAX {
                    return Err(CompactError::new(
                        0,
                        format!("field expire time {expire} in entry {index} is out of range"),
                    ));
                }
                // Fields with an expiry come first, in ascending order; fields
                // without one (0) follow.
                if expire != 0 && (last_expire == 0 || expire < last_expire) {
                    return Err(CompactError::new(
                        0,
                        format!("field expire time {expire} in entry {index} is out of order"),
                    ));
                }
                last_expire = expire;
            }
            index += 1;
        }
        let count = listpack.close()?;
        if count % tuple != 0 {
            return Err(CompactError::new(0, format!("{count} entries, expected a multiple of {tuple}")));
        }
        Ok(count)
    })();
    let entries = result.map_err(|err| compact_error(string_offset, "listpack", err))?;
    reader.finish()?;
    Ok((entries, !members.gave_up()))
}

fn check_listpack_value<R: Read>(
    walker: &mut Walker<R>,
    offset: u64,
    tuple: u64,
    field_expiry: bool,
) -> Result<Checked, Error> {
    let (entries, dedup_complete) = check_listpack_string(walker, tuple, true, field_expiry)?;
    if entries == 0 {
        return Err(empty_key(offset));
    }
    Ok(Checked { dedup_complete })
}

fn check_quicklist<R: Read>(walker: &mut Walker<R>, offset: u64, version2: bool) -> Result<Checked, Error> {
    let nodes = walker.read_len("a quicklist node count")?;
    if nodes == 0 {
        return Err(empty_key(offset));
    }
    let mut elements: u64 = 0;
    for _ in 0..nodes {
        let node_offset = walker.input.offset();
        let packed = if version2 {
            match walker.read_len("a quicklist node container")? {
                1 => false,
                2 => true,
                other => {
                    return Err(Error::at(
                        node_offset,
                        format!("quicklist node container is {other}, expected 1 (plain) or 2 (packed)"),
                    ));
                }
            }
        } else {
            true
        };
        let string_offset = walker.input.offset();
        let header = walker.read_string_header("a quicklist node")?;
        let node_len = match header {
            super::value::StringHeader::Int(value) => value.to_string().len() as u64,
            super::value::StringHeader::Raw(len) => len,
            super::value::StringHeader::Lzf { len, .. } => len,
        };
        if node_len == 0 {
            return Err(Error::at(string_offset, "quicklist node is an empty string"));
        }
        let reader = ValueReader::new(&mut walker.input, &mut walker.lzf, header, string_offset);
        if !packed {
            reader.finish()?;
            elements += 1;
            continue;
        }
        let mut reader = reader;
        let count = if version2 {
            let result = (|| -> compact::CompactResult<u64> { Listpack::open(&mut reader)?.close() })();
            result.map_err(|err| compact_error(string_offset, "listpack", err))?
        } else {
            let result = (|| -> compact::CompactResult<u64> { Ziplist::open(&mut reader)?.close() })();
            result.map_err(|err| compact_error(string_offset, "ziplist", err))?
        };
        reader.finish()?;
        // Redis skips empty nodes; a list left with no elements is an empty key.
        elements += count;
    }
    if elements == 0 {
        return Err(empty_key(offset));
    }
    Ok(COMPLETE)
}

/// Hashes with field expiry, hashtable form (Redis 7.4): optionally a minimum
/// expire time, then per field a TTL length, the field and the value.
fn check_hash_metadata<R: Read>(walker: &mut Walker<R>, offset: u64, relative_ttl: bool) -> Result<Checked, Error> {
    let mut min_expire: u64 = 0;
    if relative_ttl {
        let min_offset = walker.input.offset();
        min_expire = u64::from_le_bytes(walker.input.read_array::<8>("a hash minimum field expire time")?);
        if min_expire > FIELD_EXPIRE_MAX + 1 {
            return Err(Error::at(min_offset, format!("hash minimum field expire time {min_expire} is out of range")));
        }
    }
    let len = walker.read_len("a hash length")?;
    if len == 0 {
        return Err(empty_key(offset));
    }
    let mut members = MemberSet::default();
    for _ in 0..len {
        let ttl_offset = walker.input.offset();
        let ttl = walker.read_len("a hash field TTL")?;
        let expire_at = if relative_ttl && ttl != 0 { ttl.wrapping_add(min_expire).wrapping_sub(1) } else { ttl };
        if expire_at > FIELD_EXPIRE_MAX {
            return Err(Error::at(ttl_offset, format!("hash field expire time {expire_at} is out of range")));
        }
        let field_offset = walker.input.offset();
        let fingerprint = walker.fingerprint_string("a hash field")?;
        walker.skip_string("a hash value")?;
        if !members.insert(fingerprint) {
            return Err(Error::at(field_offset, "duplicate hash field"));
        }
    }
    Ok(Checked { dedup_complete: !members.gave_up() })
}

/// Valkey 9's hash whose fields may expire: per field the field, the value
/// and an absolute expire time in milliseconds (8 bytes, -1 for none).
fn check_valkey_hash2<R: Read>(walker: &mut Walker<R>, offset: u64) -> Result<Checked, Error> {
    let len = walker.read_len("a hash length")?;
    if len == 0 {
        return Err(empty_key(offset));
    }
    let mut members = MemberSet::default();
    for _ in 0..len {
        let field_offset = walker.input.offset();
        let fingerprint = walker.fingerprint_string("a hash field")?;
        walker.skip_string("a hash value")?;
        let expire_offset = walker.input.offset();
        let expire = i64::from_le_bytes(walker.input.read_array::<8>("a hash field expire time")?);
        // -1 means the field has no expiry; anything below is invalid.
        if expire < -1 {
            return Err(Error::at(expire_offset, format!("hash field expire time {expire} is invalid")));
        }
        if !members.insert(fingerprint) {
            return Err(Error::at(field_offset, "duplicate hash field"));
        }
    }
    Ok(Checked { dedup_complete: !members.gave_up() })
}

#[cfg(test)]
mod tests {
    use super::parse_c_double;

    #[test]
    fn text_scores_parse_like_sscanf() {
        assert_eq!(parse_c_double(b"1.5"), Some(1.5));
        assert_eq!(parse_c_double(b" 2e3xyz"), Some(2000.0));
        assert_eq!(parse_c_double(b"inf"), Some(f64::INFINITY));
        assert_eq!(parse_c_double(b"-7"), Some(-7.0));
        assert_eq!(parse_c_double(b"abc"), None);
        assert_eq!(parse_c_double(b""), None);
    }
}
