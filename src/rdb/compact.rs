//! Structure checks for the compact encodings Redis stores as single strings:
//! listpack, ziplist, intset and zipmap.
//!
//! Each check reads the encoding front to back through a `ValueReader`. It
//! accepts exactly what Redis's deep integrity validation accepts
//! (`lpValidateIntegrity`, `ziplistValidateIntegrity`, `intsetValidateIntegrity`
//! and `zipmapValidateIntegrity` in Redis 7.0): every length and offset inside
//! the encoding, the header counts, the back-length of every listpack entry and
//! the previous-entry length of every ziplist entry. Entry contents are skipped
//! or fingerprinted; nothing larger than an integer or a capped prefix is kept.
//!
//! Positions in error messages count bytes from the start of the decoded
//! string.

use std::io::Read;

use super::dedup::{Fingerprint, FingerprintKeys};
use super::value::ValueReader;

/// A failed structure check: the position inside the decoded string and what
/// was wrong there.
#[derive(Debug)]
pub(crate) struct CompactError {
    pub(crate) pos: u64,
    pub(crate) message: String,
    /// Reading the underlying file failed (not a structure problem).
    pub(crate) source: Option<super::Error>,
}

impl CompactError {
    pub(crate) fn new(pos: u64, message: impl Into<String>) -> Self {
        CompactError { pos, message: message.into(), source: None }
    }
}

impl From<super::Error> for CompactError {
    fn from(err: super::Error) -> Self {
        CompactError { pos: 0, message: String::new(), source: Some(err) }
    }
}

pub(crate) type CompactResult<T> = Result<T, CompactError>;

/// Handling of a string entry's content.
#[derive(Clone, Copy)]
pub(crate) enum Want<'k> {
    Skip,
    /// A fingerprint of the entry's text (integers as decimal text).
    Fingerprint(&'k FingerprintKeys),
    /// The first bytes of the text, up to this many.
    Prefix(usize),
}

/// One decoded element of a listpack or ziplist.
#[derive(Debug)]
pub(crate) enum Element {
    Int(i64),
    Str { len: u64, fingerprint: Option<Fingerprint>, prefix: Vec<u8> },
}

impl Element {
    /// Returns the element's value as Redis's `lpGetIntegerIfValid` reads it: integers
    /// as they are, strings only if they are a canonical 64-bit integer.
    pub(crate) fn as_integer(&self) -> Option<i64> {
        match self {
            Element::Int(value) => Some(*value),
            Element::Str { len, prefix, .. } if *len == prefix.len() as u64 => parse_i64(prefix),
            Element::Str { .. } => None,
        }
    }

    fn from_int(value: i64, want: Want<'_>) -> Element {
        match want {
            Want::Fingerprint(keys) => {
                Element::Str { len: 0, fingerprint: Some(keys.of(value.to_string().as_bytes())), prefix: Vec::new() }
            }
            _ => Element::Int(value),
        }
    }
}

/// Parses text the way Redis's `string2ll` does: no sign other than a leading
/// '-', no leading zeros, no spaces, within `i64`.
pub(crate) fn parse_i64(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() >= 21 {
        return None;
    }
    if text == b"0" {
        return Some(0);
    }
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add((digit - b'0') as u64)?;
    }
    if negative {
        if value > i64::MAX as u64 + 1 {
            return None;
        }
        Some((value as i64).wrapping_neg())
    } else {
        i64::try_from(value).ok()
    }
}

fn read_string_content<R: Read>(reader: &mut ValueReader<'_, R>, len: u64, want: Want<'_>) -> CompactResult<Element> {
    match want {
        Want::Skip => {
            reader.skip(len)?;
            Ok(Element::Str { len, fingerprint: None, prefix: Vec::new() })
        }
        Want::Fingerprint(keys) => {
            let mut builder = keys.start();
            reader.feed(len, &mut |chunk| builder.update(chunk))?;
            Ok(Element::Str { len, fingerprint: Some(builder.finish()), prefix: Vec::new() })
        }
        Want::Prefix(cap) => {
            let keep = len.min(cap as u64) as usize;
            let mut prefix = vec![0u8; keep];
            reader.read_exact(&mut prefix)?;
            reader.skip(len - keep as u64)?;
            Ok(Element::Str { len, fingerprint: None, prefix })
        }
    }
}

// ---------------------------------------------------------------- listpack

const LP_HEADER: u64 = 6;
const LP_EOF: u8 = 0xFF;

/// Reads the entries of one listpack in order.
pub(crate) struct Listpack<'r, 'a, R> {
    reader: &'r mut ValueReader<'a, R>,
    size: u64,
    numele: u16,
    count: u64,
    ended: bool,
}

/// Size of the entry header (encoding byte plus length bytes) for a first byte,
/// or 0 if the byte is not a valid listpack encoding.
fn lp_header_bytes(first: u8) -> u64 {
    match first {
        0x00..=0x7F => 1, // 7-bit unsigned integer
        0x80..=0xBF => 1, // string up to 63 bytes
        0xC0..=0xDF => 1, // 13-bit signed integer
        0xE0..=0xEF => 2, // string up to 4095 bytes
        0xF0 => 5,        // string with a 32-bit length
        0xF1..=0xF4 => 1, // 16, 24, 32 and 64-bit integers
        0xFF => 1,        // end of listpack
        _ => 0,
    }
}

/// Bytes a listpack back-length takes for an entry of `len` bytes, as
/// Redis's `lpEncodeBacklen` computes it.
fn lp_backlen_bytes(len: u64) -> u64 {
    match len {
        0..=127 => 1,
        128..=16382 => 2,
        16383..=2097150 => 3,
        2097151..=268435454 => 4,
        _ => 5,
    }
}

impl<'r, 'a, R: Read> Listpack<'r, 'a, R> {
    /// Checks the header: the string must hold at least a header and the end
    /// byte, and the declared total size must equal the string's length.
    pub(crate) fn open(reader: &'r mut ValueReader<'a, R>) -> CompactResult<Self> {
        let size = reader.len();
        if size < LP_HEADER + 1 {
            return Err(CompactError::new(0, format!("listpack of {size} bytes is shorter than its 7-byte minimum")));
        }
        let mut header = [0u8; 6];
        reader.read_exact(&mut header)?;
        let declared = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
        if declared != size {
            return Err(CompactError::new(
                0,
                format!("listpack header declares {declared} bytes, expected the string length {size}"),
            ));
        }
        let numele = u16::from_le_bytes([header[4], header[5]]);
        Ok(Listpack { reader, size, numele, count: 0, ended: false })
    }

    /// Reads the next entry, or returns `None` at the end byte.
    pub(crate) fn next(&mut self, want: Want<'_>) -> CompactResult<Option<Element>> {
        if self.ended {
            return Ok(None);
        }
        let start = self.reader.pos();
        let last = self.size - 1;
        if start > last {
            return Err(CompactError::new(start, "listpack entry starts past the end of the listpack"));
        }
        let first = self.reader.read_u8()?;
        if first == LP_EOF {
            self.ended = true;
            return Ok(None);
        }
        let header_bytes = lp_header_bytes(first);
        if header_bytes == 0 {
            return Err(CompactError::new(start, format!("invalid listpack entry encoding 0x{first:02x}")));
        }
        if start + header_bytes > last {
            return Err(CompactError::new(start, "listpack entry header runs past the end of the listpack"));
        }
        let mut extra = [0u8; 4];
        let extra = &mut extra[..(header_bytes - 1) as usize];
        self.reader.read_exact(extra)?;

        // Entry length without the back-length, and the integer payload size.
        let (entry_len, int_bytes, str_len) = match first {
            0x00..=0x7F => (1, 0, None),
            0x80..=0xBF => {
                let len = (first & 0x3F) as u64;
                (1 + len, 0, Some(len))
            }
            0xC0..=0xDF => (2, 1, None),
            0xE0..=0xEF => {
                let len = (((first & 0x0F) as u64) << 8) | extra[0] as u64;
                (2 + len, 0, Some(len))
            }
            0xF0 => {
                let len = u32::from_le_bytes([extra[0], extra[1], extra[2], extra[3]]) as u64;
                (5 + len, 0, Some(len))
            }
            0xF1 => (3, 2, None),
            0xF2 => (4, 3, None),
            0xF3 => (5, 4, None),
            0xF4 => (9, 8, None),
            _ => unreachable!("encoding validated above"),
        };
        let backlen_bytes = lp_backlen_bytes(entry_len);
        if start + entry_len + backlen_bytes > last {
            return Err(CompactError::new(
                start,
                format!("listpack entry of {} bytes runs past the end of the listpack", entry_len + backlen_bytes),
            ));
        }

        let element = match str_len {
            Some(len) => read_string_content(self.reader, len, want)?,
            None => {
                let mut payload = [0u8; 8];
                self.reader.read_exact(&mut payload[..int_bytes])?;
                Element::from_int(lp_decode_int(first, &payload), want)
            }
        };

        let mut backlen = [0u8; 5];
        self.reader.read_exact(&mut backlen[..backlen_bytes as usize])?;
        // Decode backwards from the last byte, as Redis does: the walk may go
        // past the back-length into the entry's own bytes when the back-length
        // is malformed, and at most five bytes are read.
        let mut value: u64 = 0;
        let mut shift = 0;
        let mut back = 0;
        let decoded = loop {
            let byte = self.reader.tail_byte(back);
            value |= ((byte & 127) as u64) << shift;
            if byte & 128 == 0 {
                break Some(value);
            }
            shift += 7;
            back += 1;
            if shift > 28 {
                break None;
            }
        };
        if decoded != Some(entry_len) {
            return Err(CompactError::new(
                start,
                format!("listpack entry back-length does not match its size {entry_len}"),
            ));
        }
        self.count += 1;
        Ok(Some(element))
    }

    /// Checks the end: the end byte is the string's last byte and the header's
    /// element count (unless it is 65535, "unknown") matches.
    pub(crate) fn close(mut self) -> CompactResult<u64> {
        while self.next(Want::Skip)?.is_some() {}
        let end = self.reader.pos() - 1;
        if end != self.size - 1 {
            return Err(CompactError::new(end, "listpack end byte is not the last byte of the listpack"));
        }
        if self.numele != u16::MAX && self.numele as u64 != self.count {
            return Err(CompactError::new(
                0,
                format!("listpack header counts {} entries, found {}", self.numele, self.count),
            ));
        }
        Ok(self.count)
    }

    /// Checks the end the way Redis checks stream listpacks: the last byte must
    /// be the end byte, but entries after an early end byte are not examined
    /// and the header count is not compared.
    pub(crate) fn close_lenient(self) -> CompactResult<()> {
        let left = self.size - self.reader.pos();
        self.reader.skip(left)?;
        if self.reader.tail_byte(0) != LP_EOF {
            return Err(CompactError::new(self.size - 1, "listpack does not end with the end byte 0xff"));
        }
        Ok(())
    }
}

fn lp_decode_int(first: u8, payload: &[u8; 8]) -> i64 {
    let (unsigned, negative_start, negative_max): (u64, u64, u64) = match first {
        0x00..=0x7F => return (first & 0x7F) as i64,
        0xC0..=0xDF => ((((first & 0x1F) as u64) << 8) | payload[0] as u64, 1 << 12, 8191),
        0xF1 => (u16::from_le_bytes([payload[0], payload[1]]) as u64, 1 << 15, u16::MAX as u64),
        0xF2 => (u32::from_le_bytes([payload[0], payload[1], payload[2], 0]) as u64, 1 << 23, u32::MAX as u64 >> 8),
        0xF3 => (u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as u64, 1 << 31, u32::MAX as u64),
        0xF4 => (u64::from_le_bytes(*payload), 1 << 63, u64::MAX),
        _ => unreachable!("not an integer encoding"),
    };
    if unsigned >= negative_start { -((negative_max - unsigned) as i64) - 1 } else { unsigned as i64 }
}

// ----------------------------------------------------------------- ziplist

const ZL_HEADER: u64 = 10;
const ZL_END: u8 = 0xFF;

/// Reads the entries of one ziplist in order.
pub(crate) struct Ziplist<'r, 'a, R> {
    reader: &'r mut ValueReader<'a, R>,
    size: u64,
    tail_offset: u64,
    declared_count: u16,
    count: u64,
    previous_size: u64,
    previous_start: Option<u64>,
    ended: bool,
}

impl<'r, 'a, R: Read> Ziplist<'r, 'a, R> {
    pub(crate) fn open(reader: &'r mut ValueReader<'a, R>) -> CompactResult<Self> {
        let size = reader.len();
        if size < ZL_HEADER + 1 {
            return Err(CompactError::new(0, format!("ziplist of {size} bytes is shorter than its 11-byte minimum")));
        }
        let mut header = [0u8; 10];
        reader.read_exact(&mut header)?;
        let declared = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
        if declared != size {
            return Err(CompactError::new(
                0,
                format!("ziplist header declares {declared} bytes, expected the string length {size}"),
            ));
        }
        let tail_offset = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64;
        if tail_offset > size - 1 {
            return Err(CompactError::new(4, format!("ziplist tail offset {tail_offset} is past its end")));
        }
        let declared_count = u16::from_le_bytes([header[8], header[9]]);
        Ok(Ziplist {
            reader,
            size,
            tail_offset,
            declared_count,
            count: 0,
            previous_size: 0,
            previous_start: None,
            ended: false,
        })
    }

    pub(crate) fn next(&mut self, want: Want<'_>) -> CompactResult<Option<Element>> {
        if self.ended {
            return Ok(None);
        }
        let start = self.reader.pos();
        let last = self.size - 1;
        let first = self.reader.read_u8()?;
        if first == ZL_END {
            self.ended = true;
            return Ok(None);
        }

        // Length of the previous entry: one byte, or 0xFE and four bytes.
        let prev_len_bytes = if first < 254 { 1 } else { 5 };
        if start + prev_len_bytes > last {
            return Err(CompactError::new(start, "ziplist entry header runs past the end of the ziplist"));
        }
        let prev_len = if prev_len_bytes == 1 {
            first as u64
        } else {
            let mut bytes = [0u8; 4];
            self.reader.read_exact(&mut bytes)?;
            u32::from_le_bytes(bytes) as u64
        };

        let encoding = self.reader.read_u8()?;
        let (len_bytes, int_bytes) = match encoding {
            0x00..=0x3F => (1, None),
            0x40..=0x7F => (2, None),
            0x80..=0xBF => (5, None),
            0xC0 => (1, Some(2)),
            0xD0 => (1, Some(4)),
            0xE0 => (1, Some(8)),
            0xF0 => (1, Some(3)),
            0xFE => (1, Some(1)),
            0xF1..=0xFD => (1, Some(0)),
            _ => {
                return Err(CompactError::new(start, format!("invalid ziplist entry encoding 0x{encoding:02x}")));
            }
        };
        if start + prev_len_bytes + len_bytes > last {
            return Err(CompactError::new(start, "ziplist entry header runs past the end of the ziplist"));
        }
        let mut len_extra = [0u8; 4];
        self.reader.read_exact(&mut len_extra[..(len_bytes - 1) as usize])?;
        let data_len = match (encoding, int_bytes) {
            (_, Some(bytes)) => bytes,
            (0x00..=0x3F, None) => (encoding & 0x3F) as u64,
            (0x40..=0x7F, None) => (((encoding & 0x3F) as u64) << 8) | len_extra[0] as u64,
            _ => u32::from_be_bytes(len_extra) as u64,
        };
        let header_size = prev_len_bytes + len_bytes;
        if start + header_size + data_len > last {
            return Err(CompactError::new(
                start,
                format!("ziplist entry of {} bytes runs past the end of the ziplist", header_size + data_len),
            ));
        }
        if prev_len > start || start - prev_len < ZL_HEADER {
            return Err(CompactError::new(
                start,
                format!("ziplist entry's previous-entry length {prev_len} points before the first entry"),
            ));
        }
        if prev_len != self.previous_size {
            return Err(CompactError::new(
                start,
                format!(
                    "ziplist entry's previous-entry length is {prev_len}, expected {} (the size of the previous entry)",
                    self.previous_size
                ),
            ));
        }

        let element = match int_bytes {
            None => read_string_content(self.reader, data_len, want)?,
            Some(bytes) => {
                let mut payload = [0u8; 8];
                self.reader.read_exact(&mut payload[..bytes as usize])?;
                let value = match encoding {
                    0xFE => payload[0] as i8 as i64,
                    0xC0 => i16::from_le_bytes([payload[0], payload[1]]) as i64,
                    0xF0 => (i32::from_le_bytes([0, payload[0], payload[1], payload[2]]) >> 8) as i64,
                    0xD0 => i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as i64,
                    0xE0 => i64::from_le_bytes(payload),
                    _ => ((encoding & 0x0F) as i64) - 1,
                };
                Element::from_int(value, want)
            }
        };

        self.previous_size = header_size + data_len;
        self.previous_start = Some(start);
        self.count += 1;
        Ok(Some(element))
    }

    pub(crate) fn close(mut self) -> CompactResult<u64> {
        while self.next(Want::Skip)?.is_some() {}
        let end = self.reader.pos() - 1;
        if end != self.size - 1 {
            return Err(CompactError::new(end, "ziplist end byte is not the last byte of the ziplist"));
        }
        if let Some(previous_start) = self.previous_start
            && previous_start != self.tail_offset
        {
            return Err(CompactError::new(
                4,
                format!(
                    "ziplist tail offset is {}, expected {previous_start} (the start of the last entry)",
                    self.tail_offset
                ),
            ));
        }
        if self.declared_count != u16::MAX && self.declared_count as u64 != self.count {
            return Err(CompactError::new(
                8,
                format!("ziplist header counts {} entries, found {}", self.declared_count, self.count),
            ));
        }
        Ok(self.count)
    }
}

// ------------------------------------------------------------------ intset

/// Checks an intset: a valid width (2, 4 or 8 bytes), a size that matches its
/// count, at least one member, and members in strictly ascending order.
/// Returns the member count.
pub(crate) fn check_intset<R: Read>(reader: &mut ValueReader<'_, R>) -> CompactResult<u64> {
    let size = reader.len();
    if size < 8 {
        return Err(CompactError::new(0, format!("intset of {size} bytes is shorter than its 8-byte header")));
    }
    let mut header = [0u8; 8];
    reader.read_exact(&mut header)?;
    let width = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
    if !matches!(width, 2 | 4 | 8) {
        return Err(CompactError::new(0, format!("intset member width is {width}, expected 2, 4 or 8")));
    }
    let count = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64;
    if 8 + count * width != size {
        return Err(CompactError::new(
            4,
            format!("intset of {count} members of {width} bytes does not fill its {size} bytes"),
        ));
    }
    if count == 0 {
        return Err(CompactError::new(4, "intset is empty"));
    }
    let mut previous: Option<i64> = None;
    let mut buf = [0u8; 8];
    for index in 0..count {
        let member = &mut buf[..width as usize];
        reader.read_exact(member)?;
        let value = match width {
            2 => i16::from_le_bytes([member[0], member[1]]) as i64,
            4 => i32::from_le_bytes([member[0], member[1], member[2], member[3]]) as i64,
            _ => i64::from_le_bytes(buf),
        };
        if let Some(previous) = previous
            && value <= previous
        {
            return Err(CompactError::new(
                8 + index * width,
                format!("intset member {value} is not greater than the previous member {previous}"),
            ));
        }
        previous = Some(value);
    }
    Ok(count)
}

// ------------------------------------------------------------------ zipmap

const ZIPMAP_BIGLEN: u8 = 254;
const ZIPMAP_END: u8 = 0xFF;

/// Checks a zipmap (Redis 2.x hash encoding) and its fields for duplicates.
/// `on_field` receives each field's fingerprint and returns `false` for a
/// duplicate. Returns the number of field-value pairs.
pub(crate) fn check_zipmap<R: Read>(
    reader: &mut ValueReader<'_, R>,
    keys: &FingerprintKeys,
    on_field: &mut dyn FnMut(Fingerprint) -> bool,
) -> CompactResult<u64> {
    let size = reader.len();
    if size < 2 {
        return Err(CompactError::new(0, format!("zipmap of {size} bytes is shorter than its 2-byte minimum")));
    }
    let last = size - 1;
    let declared_count = reader.read_u8()?;
    let mut count: u64 = 0;
    // Approximate size of the listpack Redis builds from the zipmap: Redis
    // refuses the hash once that would pass 1 GiB.
    let mut converted_bytes: u64 = 0;
    loop {
        let start = reader.pos();
        let first = reader.read_u8()?;
        if first == ZIPMAP_END {
            break;
        }
        let field_len = read_zipmap_len(reader, first, start, last)?;
        let field_start = reader.pos();
        if field_start + field_len > last {
            return Err(CompactError::new(start, "zipmap field runs past the end of the zipmap"));
        }
        let mut builder = keys.start();
        reader.feed(field_len, &mut |chunk| builder.update(chunk))?;
        let field = builder.finish();

        let value_start = reader.pos();
        let value_first = reader.read_u8()?;
        let value_len = read_zipmap_len(reader, value_first, value_start, last)?;
        let free = reader.read_u8()? as u32;
        // Redis adds the value length and the free-space byte in 32 bits, so a
        // length near 4 GiB wraps around. The walker does the same, so that it
        // accepts the same files.
        let skip = (value_len as u32).wrapping_add(free) as u64;
        if reader.pos() + skip > last {
            return Err(CompactError::new(value_start, "zipmap value runs past the end of the zipmap"));
        }
        reader.skip(skip)?;
        count += 1;

        converted_bytes += field_len + value_len + 22;
        if !on_field(field) || converted_bytes > (1 << 30) {
            return Err(CompactError::new(start, "zipmap has a duplicate field or a length too big for a hash"));
        }
    }
    // Redis stops at the first end byte and only requires the last byte of the
    // string to be an end byte too. It never reads the bytes in between.
    let left = size - reader.pos();
    reader.skip(left)?;
    if reader.tail_byte(0) != ZIPMAP_END {
        return Err(CompactError::new(last, "zipmap does not end with the end byte 0xff"));
    }
    if count == 0 {
        return Err(CompactError::new(0, "zipmap is empty"));
    }
    if declared_count != ZIPMAP_BIGLEN && declared_count as u64 != count {
        return Err(CompactError::new(0, format!("zipmap header counts {declared_count} pairs, found {count}")));
    }
    Ok(count)
}

/// Reads a zipmap length whose first byte was `first`: the byte itself below
/// 254, else a 32-bit little-endian length.
fn read_zipmap_len<R: Read>(reader: &mut ValueReader<'_, R>, first: u8, start: u64, last: u64) -> CompactResult<u64> {
    let encoded_bytes = if first < ZIPMAP_BIGLEN { 1 } else { 5 };
    if start + encoded_bytes > last {
        return Err(CompactError::new(start, "zipmap length runs past the end of the zipmap"));
    }
    if first < ZIPMAP_BIGLEN {
        return Ok(first as u64);
    }
    let mut bytes = [0u8; 4];
    reader.read_exact(&mut bytes)?;
    Ok(u32::from_le_bytes(bytes) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_i64_matches_redis_rules() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"012"), None);
        assert_eq!(parse_i64(b"-0"), None);
        assert_eq!(parse_i64(b" 1"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"-"), None);
    }

    #[test]
    fn listpack_integers_decode_signed() {
        assert_eq!(lp_decode_int(0x05, &[0; 8]), 5);
        // 13-bit: 0x1FFF is -1.
        assert_eq!(lp_decode_int(0xDF, &[0xFF, 0, 0, 0, 0, 0, 0, 0]), -1);
        assert_eq!(lp_decode_int(0xF1, &[0x00, 0x80, 0, 0, 0, 0, 0, 0]), -32768);
        assert_eq!(lp_decode_int(0xF2, &[0xFF, 0xFF, 0x7F, 0, 0, 0, 0, 0]), 8388607);
        assert_eq!(lp_decode_int(0xF3, &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]), -1);
        assert_eq!(lp_decode_int(0xF4, &(-5i64).to_le_bytes()), -5);
    }

    #[test]
    fn backlen_sizes_match_redis_encoder() {
        assert_eq!(lp_backlen_bytes(127), 1);
        assert_eq!(lp_backlen_bytes(128), 2);
        assert_eq!(lp_backlen_bytes(16382), 2);
        assert_eq!(lp_backlen_bytes(16383), 3);
        assert_eq!(lp_backlen_bytes(2097151), 4);
        assert_eq!(lp_backlen_bytes(268435455), 5);
    }
}
