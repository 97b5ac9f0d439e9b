//! Checks of stream values: the listpack nodes with their entry layout, the
//! stream metadata, and the consumer groups with their pending-entry lists.

use std::collections::HashMap;
use std::io::Read;

use super::compact::{self, CompactError, Element, Listpack, Want};
use super::dedup::{MAX_TRACKED, MemberSet};
use super::values::compact_error;
use super::{Error, Walker};

/// Entry flag: the entry uses the master entry's field names.
const FLAG_SAME_FIELDS: i64 = 1 << 1;

/// Checks a stream value of the given layout version (1 for
/// `RDB_TYPE_STREAM_LISTPACKS` up to 4 for `RDB_TYPE_STREAM_LISTPACKS_4`).
pub(crate) fn check_stream<R: Read>(walker: &mut Walker<R>, version: u8) -> Result<(), Error> {
    let nodes = walker.read_len("a stream node count")?;
    let mut node_keys = MemberSet::default();
    for _ in 0..nodes {
        let key_offset = walker.input.offset();
        let (node_key, node_key_len) = walker.read_string_prefix("a stream node key", 16)?;
        if node_key_len != 16 {
            return Err(Error::at(
                key_offset,
                format!("stream node key is {node_key_len} bytes, expected 16 (a stream ID)"),
            ));
        }
        let mut high = [0u8; 8];
        let mut low = [0u8; 8];
        high.copy_from_slice(&node_key[..8]);
        low.copy_from_slice(&node_key[8..]);
        if !node_keys.insert((u64::from_be_bytes(high), u64::from_be_bytes(low))) {
            return Err(Error::at(key_offset, "stream node key appears twice"));
        }
        check_node_listpack(walker)?;
    }

    let meta_offset = walker.input.offset();
    let length = walker.read_len("a stream length")?;
    walker.read_len("a stream last ID")?;
    walker.read_len("a stream last ID")?;
    if version >= 2 {
        walker.read_len("a stream first ID")?;
        walker.read_len("a stream first ID")?;
        walker.read_len("a stream maximum deleted ID")?;
        walker.read_len("a stream maximum deleted ID")?;
        walker.read_len("a stream entries-added counter")?;
    }
    if length > 0 && nodes == 0 {
        return Err(Error::at(meta_offset, format!("stream length is {length} but the stream has no nodes")));
    }

    let groups = walker.read_len("a stream consumer group count")?;
    let mut group_names = MemberSet::default();
    for _ in 0..groups {
        check_consumer_group(walker, version, &mut group_names)?;
    }
    if version >= 4 {
        check_idempotent_producers(walker)?;
    }
    Ok(())
}

/// Checks one node's listpack the way Redis's `streamValidateListpackIntegrity`
/// does: the master entry (counts, field names, a zero terminator), then every
/// entry with its flags, ID, fields, values and trailing entry count.
fn check_node_listpack<R: Read>(walker: &mut Walker<R>) -> Result<(), Error> {
    let string_offset = walker.input.offset();
    let mut reader = walker.open_string("a stream node listpack")?;
    let result = (|| -> compact::CompactResult<()> {
        let mut node = NodeEntries { listpack: Listpack::open(&mut reader)?, index: 0 };
        let mut entries = node.integer("the entry count")?;
        let deleted = node.integer("the deleted entry count")?;
        let master_fields = node.integer("the master field count")?;
        node.skip_many(master_fields, "a master field name")?;
        let terminator = node.integer("the master entry terminator")?;
        if terminator != 0 {
            return Err(CompactError::new(0, format!("master entry terminator is {terminator}, expected 0")));
        }

        // Redis counts with signed integers and loops until the count reaches
        // zero; a negative count therefore runs until the listpack ends.
        entries = entries.wrapping_add(deleted);
        while entries != 0 {
            entries = entries.wrapping_sub(1);
            let flags = node.integer("entry flags")?;
            node.integer("an entry ID")?;
            node.integer("an entry ID")?;
            let mut fields = master_fields;
            let mut extra_fields: i64 = 3;
            if flags & FLAG_SAME_FIELDS == 0 {
                fields = node.integer("an entry field count")?;
                node.skip_many(fields, "a field name")?;
                extra_fields = extra_fields.wrapping_add(fields).wrapping_add(1);
            }
            node.skip_many(fields, "a field value")?;
            let lp_count = node.integer("an entry's element count")?;
            let expected = fields.wrapping_add(extra_fields);
            if lp_count != expected {
                return Err(CompactError::new(0, format!("entry's element count is {lp_count}, expected {expected}")));
            }
        }
        if node.listpack.next(Want::Skip)?.is_some() {
            return Err(CompactError::new(0, "listpack has entries after the last stream entry"));
        }
        node.listpack.close_lenient()
    })();
    result.map_err(|err| compact_error(string_offset, "stream node listpack", err))?;
    reader.finish()
}

/// Entries of one node listpack, read in order and numbered for messages.
struct NodeEntries<'r, 'a, R> {
    listpack: Listpack<'r, 'a, R>,
    index: u64,
}

impl<R: Read> NodeEntries<'_, '_, R> {
    fn missing(&self, what: &str) -> CompactError {
        CompactError::new(0, format!("listpack ends where entry {} ({what}) was expected", self.index))
    }

    /// Reads the next entry as an integer, as `lpGetIntegerIfValid` does.
    fn integer(&mut self, what: &str) -> compact::CompactResult<i64> {
        let element = self.listpack.next(Want::Prefix(32))?.ok_or_else(|| self.missing(what))?;
        let index = self.index;
        self.index += 1;
        element.as_integer().ok_or_else(|| CompactError::new(0, format!("entry {index} ({what}) is not an integer")))
    }

    /// Skips `count` entries; a count below one skips nothing.
    fn skip_many(&mut self, count: i64, what: &str) -> compact::CompactResult<()> {
        let mut done = 0;
        while done < count {
            match self.listpack.next(Want::Skip)? {
                Some(Element::Int(_)) | Some(Element::Str { .. }) => {}
                None => return Err(self.missing(what)),
            }
            self.index += 1;
            done += 1;
        }
        Ok(())
    }
}

fn read_stream_id<R: Read>(walker: &mut Walker<R>, wanted: &str) -> Result<[u8; 16], Error> {
    walker.input.read_array::<16>(wanted)
}

fn check_consumer_group<R: Read>(
    walker: &mut Walker<R>,
    version: u8,
    group_names: &mut MemberSet,
) -> Result<(), Error> {
    let name_offset = walker.input.offset();
    let name = walker.fingerprint_string("a consumer group name")?;
    if !group_names.insert(name) {
        return Err(Error::at(name_offset, "consumer group name appears twice in one stream"));
    }
    walker.read_len("a consumer group last delivered ID")?;
    walker.read_len("a consumer group last delivered ID")?;
    if version >= 2 {
        walker.read_len("a consumer group entries-read counter")?;
    }

    // Global pending-entry list: IDs with delivery time and count. The IDs are
    // remembered (up to a limit) so consumer lists can be checked against them.
    let pending = walker.read_len("a pending-entry list size")?;
    let mut global: HashMap<[u8; 16], bool> = HashMap::new();
    let mut tracking = true;
    for _ in 0..pending {
        let id_offset = walker.input.offset();
        let id = read_stream_id(walker, "a pending entry ID")?;
        walker.input.read_array::<8>("a pending entry delivery time")?;
        walker.read_len("a pending entry delivery count")?;
        if tracking {
            if global.len() >= MAX_TRACKED {
                tracking = false;
                global = HashMap::new();
            } else if global.insert(id, false).is_some() {
                return Err(Error::at(id_offset, "pending entry ID appears twice in a consumer group"));
            }
        }
    }

    let consumers = walker.read_len("a consumer count")?;
    let mut consumer_names = MemberSet::default();
    let mut owned = MemberSet::default();
    for _ in 0..consumers {
        let consumer_offset = walker.input.offset();
        let consumer = walker.fingerprint_string("a consumer name")?;
        if !consumer_names.insert(consumer) {
            return Err(Error::at(consumer_offset, "consumer name appears twice in a consumer group"));
        }
        walker.input.read_array::<8>("a consumer seen time")?;
        if version >= 3 {
            walker.input.read_array::<8>("a consumer active time")?;
        }
        let count = walker.read_len("a consumer pending-entry count")?;
        owned.clear();
        for _ in 0..count {
            let id_offset = walker.input.offset();
            let id = read_stream_id(walker, "a consumer pending entry ID")?;
            if tracking {
                match global.get_mut(&id) {
                    Some(claimed) => *claimed = true,
                    None => {
                        return Err(Error::at(
                            id_offset,
                            "consumer pending entry is missing from the group's pending-entry list",
                        ));
                    }
                }
            }
            let mut high = [0u8; 8];
            let mut low = [0u8; 8];
            high.copy_from_slice(&id[..8]);
            low.copy_from_slice(&id[8..]);
            if !owned.insert((u64::from_be_bytes(high), u64::from_be_bytes(low))) {
                return Err(Error::at(id_offset, "pending entry appears twice in one consumer's list"));
            }
        }
    }
    if tracking && global.values().any(|claimed| !claimed) {
        return Err(Error::at(name_offset, "consumer group has a pending entry that no consumer owns"));
    }
    Ok(())
}

/// The idempotent-producer tail of a version 4 stream (Redis 8.6, RDB 13):
/// the IDMP duration and size limits, every producer with its recorded
/// message IDs, and two counters.
fn check_idempotent_producers<R: Read>(walker: &mut Walker<R>) -> Result<(), Error> {
    let offset = walker.input.offset();
    let duration = walker.read_len("a stream IDMP duration")?;
    if !(1..=86_400).contains(&duration) {
        return Err(Error::at(offset, format!("stream IDMP duration {duration} is outside 1 to 86400 seconds")));
    }
    let offset = walker.input.offset();
    let max_entries = walker.read_len("a stream IDMP maximum entry count")?;
    if !(1..=10_000).contains(&max_entries) {
        return Err(Error::at(offset, format!("stream IDMP maximum entry count {max_entries} is outside 1 to 10000")));
    }
    let producers = walker.read_len("a stream IDMP producer count")?;
    let mut producer_ids = MemberSet::default();
    for _ in 0..producers {
        let producer_offset = walker.input.offset();
        let producer = walker.fingerprint_string("a stream IDMP producer ID")?;
        if !producer_ids.insert(producer) {
            return Err(Error::at(producer_offset, "stream IDMP producer ID appears twice"));
        }
        let entries = walker.read_len("a stream IDMP entry count")?;
        for _ in 0..entries {
            // Redis drops a repeated message ID of one producer without error.
            walker.skip_string("a stream IDMP message ID")?;
            walker.read_len("a stream IDMP entry stream ID")?;
            walker.read_len("a stream IDMP entry stream ID")?;
        }
    }
    walker.read_len("a stream IDMP added counter")?;
    walker.read_len("a stream IDMP duplicates counter")?;
    Ok(())
}
