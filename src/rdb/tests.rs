//! Walker tests on RDB files assembled byte by byte.

use super::*;

/// Builds an RDB file: magic, body, EOF opcode and a correct CRC-64 trailer.
struct Rdb {
    bytes: Vec<u8>,
}

impl Rdb {
    fn new(version: u32) -> Self {
        Rdb { bytes: format!("REDIS{version:04}").into_bytes() }
    }

    fn valkey() -> Self {
        Rdb { bytes: b"VALKEY080".to_vec() }
    }

    fn raw(mut self, bytes: &[u8]) -> Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    fn len(mut self, len: u64) -> Self {
        push_len(&mut self.bytes, len);
        self
    }

    fn string(mut self, text: &[u8]) -> Self {
        push_string(&mut self.bytes, text);
        self
    }

    fn aux(self, key: &str, value: &str) -> Self {
        self.raw(&[OPCODE_AUX]).string(key.as_bytes()).string(value.as_bytes())
    }

    fn select(self, db: u64) -> Self {
        self.raw(&[OPCODE_SELECTDB]).len(db)
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes.push(OPCODE_EOF);
        let crc = input::CRC64.checksum(&self.bytes);
        self.bytes.extend_from_slice(&crc.to_le_bytes());
        self.bytes
    }

    fn finish_without_checksum(mut self) -> Vec<u8> {
        self.bytes.push(OPCODE_EOF);
        self.bytes.extend_from_slice(&[0; 8]);
        self.bytes
    }
}

fn push_len(out: &mut Vec<u8>, len: u64) {
    if len < 64 {
        out.push(len as u8);
    } else if len < 16384 {
        out.push(0x40 | (len >> 8) as u8);
        out.push(len as u8);
    } else if len <= u32::MAX as u64 {
        out.push(0x80);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

fn push_string(out: &mut Vec<u8>, text: &[u8]) {
    push_len(out, text.len() as u64);
    out.extend_from_slice(text);
}

/// Builds a listpack of the given strings, all encoded as strings.
fn listpack(items: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for item in items {
        let start = body.len();
        if item.len() < 64 {
            body.push(0x80 | item.len() as u8);
        } else {
            body.push(0xE0 | (item.len() >> 8) as u8);
            body.push(item.len() as u8);
        }
        body.extend_from_slice(item);
        let entry_len = (body.len() - start) as u64;
        push_backlen(&mut body, entry_len);
    }
    let total = 6 + body.len() + 1;
    let mut out = Vec::new();
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(items.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
    out.push(0xFF);
    out
}

fn push_backlen(out: &mut Vec<u8>, len: u64) {
    if len <= 127 {
        out.push(len as u8);
    } else {
        out.push((len >> 7) as u8);
        out.push((len & 127) as u8 | 128);
    }
}

/// Builds a ziplist of small strings.
fn ziplist(items: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    let mut previous = 0usize;
    let mut tail = 10usize;
    for item in items {
        tail = 10 + body.len();
        let start = body.len();
        body.push(previous as u8);
        body.push(item.len() as u8);
        body.extend_from_slice(item);
        previous = body.len() - start;
    }
    let total = 10 + body.len() + 1;
    let mut out = Vec::new();
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(tail as u32).to_le_bytes());
    out.extend_from_slice(&(items.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
    out.push(0xFF);
    out
}

fn walk_bytes(bytes: &[u8]) -> Result<Summary, Failure> {
    walk(bytes)
}

fn error_message(bytes: &[u8]) -> String {
    match walk_bytes(bytes) {
        Ok(summary) => panic!("expected an error, file was accepted: {summary:?}"),
        Err(failure) => failure.to_string(),
    }
}

fn session_file() -> Vec<u8> {
    Rdb::new(10)
        .aux("redis-ver", "7.0.15")
        .aux("ctime", "1764873600")
        .select(0)
        .raw(&[OPCODE_EXPIRETIME_MS])
        .raw(&1_900_000_000_000u64.to_le_bytes())
        .raw(&[0])
        .string(b"sess:1")
        .string(b"{\"user\":42}")
        .raw(&[16])
        .string(b"user:42")
        .string(&listpack(&[b"name", b"ada", b"role", b"admin"]))
        .select(1)
        .raw(&[0])
        .string(b"counter")
        .raw(&[0xC0, 7])
        .finish()
}

#[test]
fn valid_file_counts_keys_per_database() {
    let summary = walk_bytes(&session_file()).unwrap();
    assert_eq!(summary.version, 10);
    assert_eq!(summary.keys(), 3);
    assert_eq!(summary.expires(), 1);
    assert_eq!(summary.databases[&0], DbCounts { keys: 2, expires: 1 });
    assert_eq!(summary.databases[&1], DbCounts { keys: 1, expires: 0 });
    assert_eq!(summary.aux_field("redis-ver"), Some("7.0.15"));
    assert!(matches!(summary.checksum, Some(Checksum::Verified(_))));
    assert_eq!(summary.types["hash"], 1);
    assert_eq!(summary.types["string"], 2);
}

#[test]
fn every_truncation_is_rejected() {
    let file = session_file();
    for len in 0..file.len() {
        assert!(walk_bytes(&file[..len]).is_err(), "truncated to {len} bytes but accepted");
    }
}

#[test]
fn every_bit_flip_is_rejected() {
    let file = session_file();
    for index in 0..file.len() {
        for bit in 0..8 {
            let mut damaged = file.clone();
            damaged[index] ^= 1 << bit;
            assert!(walk_bytes(&damaged).is_err(), "flip of bit {bit} at byte {index} was accepted");
        }
    }
}

#[test]
fn checksum_mismatch_names_both_values() {
    let mut file = session_file();
    let last = file.len() - 1;
    file[last] ^= 0x01;
    let message = error_message(&file);
    assert!(message.contains("CRC-64 mismatch"), "{message}");
}

#[test]
fn zero_trailer_means_checksum_disabled() {
    let file = Rdb::new(9).select(0).raw(&[0]).string(b"k").string(b"v").finish_without_checksum();
    let summary = walk_bytes(&file).unwrap();
    assert_eq!(summary.checksum, Some(Checksum::Disabled));
}

#[test]
fn old_versions_have_no_trailer() {
    let mut file = Rdb::new(4).select(0).raw(&[0]).string(b"k").string(b"v").bytes;
    file.push(OPCODE_EOF);
    let summary = walk_bytes(&file).unwrap();
    assert_eq!(summary.checksum, Some(Checksum::Absent));
    assert_eq!(summary.keys(), 1);
}

#[test]
fn trailing_bytes_are_counted() {
    let mut file = session_file();
    let rdb_len = file.len() as u64;
    file.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    let summary = walk_bytes(&file).unwrap();
    assert_eq!(summary.rdb_bytes, rdb_len);
    assert_eq!(summary.trailing_bytes, 14);
}

#[test]
fn unsupported_version_is_rejected() {
    let message = error_message(&Rdb::new(14).finish());
    assert!(message.contains("version 14"), "{message}");
    let message = error_message(&Rdb::new(0).finish());
    assert!(message.contains("version 0"), "{message}");
}

#[test]
fn wrong_magic_is_rejected() {
    let message = error_message(b"RUDIS0010\xff");
    assert!(message.contains("wrong signature"), "{message}");
}

#[test]
fn unknown_opcode_names_offset() {
    let file = Rdb::new(10).raw(&[8]).finish();
    let message = error_message(&file);
    assert!(message.starts_with("offset 9:"), "{message}");
    assert!(message.contains("0x08"), "{message}");
}

#[test]
fn empty_list_is_rejected() {
    let file = Rdb::new(10).raw(&[1]).string(b"list").len(0).finish();
    let message = error_message(&file);
    assert!(message.contains("empty collection"), "{message}");
    assert!(message.contains("key \"list\""), "{message}");
}

#[test]
fn duplicate_set_member_is_rejected() {
    let file = Rdb::new(10).raw(&[2]).string(b"set").len(2).string(b"a").string(b"a").finish();
    assert!(error_message(&file).contains("duplicate set member"));
}

#[test]
fn integer_encoded_and_text_members_collide() {
    // Redis compares set members as text: "7" and the integer 7 are one member.
    let file = Rdb::new(10).raw(&[2]).string(b"set").len(2).string(b"7").raw(&[0xC0, 7]).finish();
    assert!(error_message(&file).contains("duplicate set member"));
}

#[test]
fn listpack_hash_with_duplicate_field_is_rejected() {
    let file = Rdb::new(10).raw(&[16]).string(b"h").string(&listpack(&[b"f", b"1", b"f", b"2"])).finish();
    let message = error_message(&file);
    assert!(message.contains("invalid listpack"), "{message}");
    assert!(message.contains("duplicate"), "{message}");
}

#[test]
fn listpack_hash_with_odd_entries_is_rejected() {
    let file = Rdb::new(10).raw(&[16]).string(b"h").string(&listpack(&[b"f", b"1", b"g"])).finish();
    assert!(error_message(&file).contains("multiple of 2"));
}

#[test]
fn listpack_with_wrong_count_is_rejected() {
    let mut encoded = listpack(&[b"a", b"b"]);
    encoded[4] = 3;
    let file = Rdb::new(10).raw(&[20]).string(b"s").string(&encoded).finish();
    assert!(error_message(&file).contains("counts 3 entries, found 2"));
}

#[test]
fn listpack_with_bad_backlen_is_rejected() {
    let mut encoded = listpack(&[b"abc"]);
    // Entry: 0x83 'a' 'b' 'c' backlen(4) at byte 6 + 4.
    encoded[10] = 5;
    let file = Rdb::new(10).raw(&[20]).string(b"s").string(&encoded).finish();
    assert!(error_message(&file).contains("back-length"));
}

#[test]
fn long_listpack_strings_are_checked() {
    let long = vec![b'x'; 300];
    let file = Rdb::new(10).raw(&[16]).string(b"h").string(&listpack(&[b"f", &long])).finish();
    assert_eq!(walk_bytes(&file).unwrap().keys(), 1);
}

#[test]
fn ziplist_hash_is_accepted_and_checked() {
    let encoded = ziplist(&[b"f", b"v", b"g", b"w"]);
    let file = Rdb::new(9).raw(&[13]).string(b"h").string(&encoded).finish();
    assert_eq!(walk_bytes(&file).unwrap().keys(), 1);

    let mut wrong_prevlen = encoded.clone();
    wrong_prevlen[10 + 3] = 9;
    let file = Rdb::new(9).raw(&[13]).string(b"h").string(&wrong_prevlen).finish();
    assert!(error_message(&file).contains("previous-entry length"));

    let mut wrong_tail = encoded;
    wrong_tail[4] = 10;
    let file = Rdb::new(9).raw(&[13]).string(b"h").string(&wrong_tail).finish();
    assert!(error_message(&file).contains("tail offset"));
}

#[test]
fn intset_must_ascend() {
    let mut encoded = Vec::new();
    encoded.extend_from_slice(&2u32.to_le_bytes());
    encoded.extend_from_slice(&2u32.to_le_bytes());
    encoded.extend_from_slice(&5i16.to_le_bytes());
    encoded.extend_from_slice(&3i16.to_le_bytes());
    let file = Rdb::new(9).raw(&[11]).string(b"s").string(&encoded).finish();
    assert!(error_message(&file).contains("not greater than the previous member"));
}

#[test]
fn lzf_string_is_decompressed_and_checked() {
    // "abcabcabc" as LZF: literal "abc", then a 6-byte copy from distance 3.
    let compressed = [2, b'a', b'b', b'c', 4 << 5, 2];
    let good = Rdb::new(10).raw(&[0]).string(b"k").raw(&[0xC3]).len(6).len(9).raw(&compressed).finish();
    assert_eq!(walk_bytes(&good).unwrap().keys(), 1);

    let too_long = Rdb::new(10).raw(&[0]).string(b"k").raw(&[0xC3]).len(6).len(10).raw(&compressed).finish();
    assert!(error_message(&too_long).contains("shorter than the declared length"));
}

#[test]
fn lzf_compressed_listpack_is_checked_inside() {
    // A listpack stored as one LZF literal run (LZF literals hold up to 32 bytes).
    let encoded = listpack(&[b"m"]);
    assert!(encoded.len() <= 32);
    let mut compressed = vec![(encoded.len() - 1) as u8];
    compressed.extend_from_slice(&encoded);
    let file = Rdb::new(11)
        .raw(&[20])
        .string(b"s")
        .raw(&[0xC3])
        .len(compressed.len() as u64)
        .len(encoded.len() as u64)
        .raw(&compressed)
        .finish();
    assert_eq!(walk_bytes(&file).unwrap().keys(), 1);
}

#[test]
fn zset_nan_score_is_rejected() {
    let file = Rdb::new(10).raw(&[5]).string(b"z").len(1).string(b"m").raw(&f64::NAN.to_le_bytes()).finish();
    assert!(error_message(&file).contains("NaN"));
}

#[test]
fn non_numeric_text_score_rejected() {
    let file = Rdb::new(6).raw(&[3]).string(b"z").len(1).string(b"m").raw(&[3]).raw(b"abc").finish();
    assert!(error_message(&file).contains("is not a number"));
}

#[test]
fn module_value_opcodes_are_walked() {
    let module_id: u64 = 0x1234_5678_9abc_d000;
    let file = Rdb::new(9)
        .raw(&[7])
        .string(b"m")
        .len(module_id)
        .len(2)
        .len(99)
        .len(5)
        .string(b"payload")
        .len(4)
        .raw(&1.0f64.to_le_bytes())
        .len(0)
        .finish();
    let summary = walk_bytes(&file).unwrap();
    assert_eq!(summary.types["module"], 1);
}

#[test]
fn pre_release_module_format_is_rejected() {
    let file = Rdb::new(8).raw(&[6]).string(b"m").len(1).finish();
    assert!(error_message(&file).contains("pre-release"));
}

#[test]
fn module_aux_requires_uint_when() {
    let good = Rdb::new(9).raw(&[OPCODE_MODULE_AUX]).len(1 << 10).len(2).len(2).len(0).finish();
    assert_eq!(walk_bytes(&good).unwrap().module_aux, 1);
    let bad = Rdb::new(9).raw(&[OPCODE_MODULE_AUX]).len(1 << 10).len(1).len(2).len(0).finish();
    assert!(error_message(&bad).contains("'when' opcode"));
}

#[test]
fn key_metadata_must_precede_a_value_type() {
    let good = Rdb::new(13)
        .raw(&[OPCODE_KEY_META])
        .len(1)
        .raw(&[1, 2, 3, 4])
        .len(2)
        .len(7)
        .len(0)
        .raw(&[0])
        .string(b"k")
        .string(b"v")
        .finish();
    assert_eq!(walk_bytes(&good).unwrap().keys(), 1);

    let bad = Rdb::new(13).raw(&[OPCODE_KEY_META]).len(0).raw(&[OPCODE_SELECTDB]).len(0).finish();
    assert!(error_message(&bad).contains("expected a value type"));
}

#[test]
fn hash_with_field_expiry_checks_ranges() {
    let good = Rdb::new(12)
        .raw(&[24])
        .string(b"h")
        .raw(&1_800_000_000_000u64.to_le_bytes())
        .len(2)
        .len(1)
        .string(b"a")
        .string(b"1")
        .len(0)
        .string(b"b")
        .string(b"2")
        .finish();
    assert_eq!(walk_bytes(&good).unwrap().keys(), 1);

    let bad = Rdb::new(12)
        .raw(&[24])
        .string(b"h")
        .raw(&(1u64 << 48).to_le_bytes())
        .len(1)
        .len(5)
        .string(b"a")
        .string(b"1")
        .finish();
    assert!(error_message(&bad).contains("out of range"));
}

#[test]
fn valkey_hash_with_field_expiry() {
    let good =
        Rdb::valkey().raw(&[22]).string(b"h").len(1).string(b"f").string(b"v").raw(&(-1i64).to_le_bytes()).finish();
    let summary = walk_bytes(&good).unwrap();
    assert_eq!(summary.format, Format::Valkey);
    assert_eq!(summary.version, 80);

    let bad =
        Rdb::valkey().raw(&[22]).string(b"h").len(1).string(b"f").string(b"v").raw(&(-2i64).to_le_bytes()).finish();
    assert!(error_message(&bad).contains("expire time -2"));
}

/// Builds a stream node listpack with master fields ["f"] and one entry that
/// uses them, with integer-encoded counts.
fn stream_node() -> Vec<u8> {
    let mut body = Vec::new();
    let ints: [i64; 10] = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    let push_int = |body: &mut Vec<u8>, value: i64| {
        body.push(value as u8);
        body.push(1);
    };
    // count=1, deleted=0, master fields=1
    for value in &ints[..3] {
        push_int(&mut body, *value);
    }
    // field name "f"
    body.extend_from_slice(&[0x81, b'f', 2]);
    // master terminator 0
    push_int(&mut body, 0);
    // entry: flags=2 (same fields), ms=0, seq=0, value "v", lp-count = 1 + 3
    push_int(&mut body, 2);
    push_int(&mut body, 0);
    push_int(&mut body, 0);
    body.extend_from_slice(&[0x81, b'v', 2]);
    push_int(&mut body, 4);
    let total = 6 + body.len() + 1;
    let mut out = Vec::new();
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&10u16.to_le_bytes());
    out.extend_from_slice(&body);
    out.push(0xFF);
    out
}

fn stream_file(version: u32, stream_type: u8, tail: impl FnOnce(Rdb) -> Rdb) -> Vec<u8> {
    let rdb = Rdb::new(version)
        .raw(&[stream_type])
        .string(b"events")
        .len(1)
        .string(&[0u8; 16])
        .string(&stream_node())
        .len(1)
        .len(5)
        .len(0)
        .len(0)
        .len(0)
        .len(0)
        .len(0)
        .len(1)
        .len(1)
        .string(b"group")
        .len(5)
        .len(0)
        .len(1)
        .len(1)
        .raw(&[7u8; 16])
        .raw(&0u64.to_le_bytes())
        .len(1)
        .len(1)
        .string(b"alice")
        .raw(&0u64.to_le_bytes())
        .raw(&0u64.to_le_bytes())
        .len(1)
        .raw(&[7u8; 16]);
    tail(rdb).finish()
}

#[test]
fn stream_with_consumer_group_is_accepted() {
    let file = stream_file(11, 21, |rdb| rdb);
    let summary = walk_bytes(&file).unwrap();
    assert_eq!(summary.types["stream"], 1);
}

#[test]
fn stream_version_four_reads_idempotent_producers() {
    let file = stream_file(13, 26, |rdb| {
        rdb.len(100).len(10).len(1).string(b"producer").len(1).string(b"msg-1").len(5).len(0).len(1).len(0)
    });
    assert_eq!(walk_bytes(&file).unwrap().keys(), 1);

    let bad = stream_file(13, 26, |rdb| rdb.len(0).len(10).len(0).len(0).len(0));
    assert!(error_message(&bad).contains("IDMP duration 0"));
}

#[test]
fn consumer_entry_missing_from_group_is_rejected() {
    let mut file = stream_file(11, 21, |rdb| rdb);
    // The consumer's pending ID is the last 16 bytes before EOF and the trailer.
    let at = file.len() - 9 - 16;
    file[at] = 8;
    let crc_end = file.len() - 8;
    let crc = input::CRC64.checksum(&file[..crc_end]);
    file[crc_end..].copy_from_slice(&crc.to_le_bytes());
    assert!(error_message(&file).contains("missing from the group"));
}

#[test]
fn stream_entry_count_mismatch_is_rejected() {
    let mut node = stream_node();
    // The last entry's lp-count (4) is the third byte from the end.
    let at = node.len() - 3;
    node[at] = 5;
    let file = Rdb::new(10)
        .raw(&[15])
        .string(b"s")
        .len(1)
        .string(&[0u8; 16])
        .string(&node)
        .len(1)
        .len(0)
        .len(0)
        .len(0)
        .finish();
    assert!(error_message(&file).contains("element count is 5, expected 4"));
}

#[test]
fn partial_counts_survive_failure() {
    let file = Rdb::new(10).raw(&[0]).string(b"a").string(b"1").raw(&[1]).string(b"b").len(0).finish();
    let failure = walk_bytes(&file).unwrap_err();
    assert_eq!(failure.partial.keys(), 1);
    assert_eq!(failure.error.kind, ErrorKind::Invalid);
}

#[test]
fn module_names_decode_like_redis() {
    // Nine characters of six bits each above a ten-bit version.
    let mut id: u64 = 0;
    for &index in &[0u64, 1, 2, 3, 4, 5, 6, 7, 8] {
        id = (id << 6) | index;
    }
    assert_eq!(module_type_name(id << 10), "ABCDEFGHI");
}

/// A small deterministic generator (xorshift64*), so a failing input can be rebuilt.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let valid = session_file();
    let prefixes: [&[u8]; 4] = [b"REDIS0010", b"REDIS0013", b"VALKEY080", b"REDIS0003"];
    for iteration in 0..20_000 {
        let mut bytes = prefixes[iteration % prefixes.len()].to_vec();
        let len = (rng.next() % 300) as usize;
        if iteration % 3 == 0 {
            // Start like a real file, then continue with noise.
            bytes = valid[..(9 + (rng.next() as usize) % (valid.len() - 9))].to_vec();
        }
        for _ in 0..len {
            let byte = rng.next() as u8;
            // Bias towards opcodes, type bytes and length prefixes.
            bytes.push(match rng.next() % 4 {
                0 => [0x00, 0x01, 0x0e, 0x10, 0x12, 0x15, 0x40, 0x80, 0xc3, 0xfe, 0xff][byte as usize % 11],
                _ => byte,
            });
        }
        let result = std::panic::catch_unwind(|| walk_bytes(&bytes));
        assert!(result.is_ok(), "walker panicked on iteration {iteration}: {bytes:02x?}");
    }
}
