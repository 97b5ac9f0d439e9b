//! The walker on RDB files written by a real redis-server, and a differential
//! test against `redis-check-rdb` on thousands of damaged copies.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Redis;
use sessbackup::rdb;

/// Fills a server with every value type in several encodings and saves it.
fn rich_rdb(redis: &Redis) -> Vec<u8> {
    let commands: Vec<Vec<String>> = vec![
        vec!["CONFIG", "SET", "set-max-intset-entries", "64"],
        vec!["CONFIG", "SET", "list-compress-depth", "1"],
        vec!["CONFIG", "SET", "list-max-listpack-size", "16"],
    ]
    .into_iter()
    .map(|args| args.into_iter().map(String::from).collect())
    .collect();
    let mut connection = redis.connection();
    for args in commands {
        let mut command = redis::cmd(&args[0]);
        for arg in &args[1..] {
            command.arg(arg);
        }
        command.query::<()>(&mut connection).unwrap();
    }
    let mut pipe = redis::pipe();
    pipe.cmd("SET").arg("string:int").arg("12345").ignore();
    pipe.cmd("SET").arg("string:short").arg("hello").ignore();
    pipe.cmd("SET").arg("string:compressible").arg("session-data ".repeat(400)).ignore();
    pipe.cmd("SET").arg("string:ttl").arg("v").arg("EX").arg(3600).ignore();
    pipe.cmd("SET").arg("string:pttl").arg("v").arg("PX").arg(99_999_999).ignore();
    for index in 0..300 {
        pipe.cmd("RPUSH").arg("list:long").arg(format!("element-{index}-{}", "x".repeat(index % 50))).ignore();
    }
    pipe.cmd("RPUSH").arg("list:short").arg("a").arg("1").arg("-7").arg("b").ignore();
    pipe.cmd("SADD").arg("set:intset").arg(1).arg(-5).arg(70000).arg(5_000_000_000i64).ignore();
    for index in 0..100 {
        pipe.cmd("SADD").arg("set:big").arg(index).ignore();
        pipe.cmd("SADD").arg("set:strings").arg(format!("member-{index}")).ignore();
        pipe.cmd("ZADD").arg("zset:big").arg(index as f64 * 1.5).arg(format!("m{index}")).ignore();
        pipe.cmd("HSET").arg("hash:big").arg(format!("field-{index}")).arg("y".repeat(index)).ignore();
    }
    pipe.cmd("ZADD").arg("zset:small").arg(1).arg("a").arg(2.5).arg("b").arg("-inf").arg("c").ignore();
    pipe.cmd("HSET").arg("hash:small").arg("name").arg("ada").arg("age").arg(36).ignore();
    for index in 0..50 {
        pipe.cmd("XADD").arg("stream:events").arg("*").arg("type").arg("login").arg("user").arg(index).ignore();
    }
    pipe.cmd("XADD").arg("stream:events").arg("*").arg("other").arg("field-set").ignore();
    pipe.cmd("XGROUP").arg("CREATE").arg("stream:events").arg("workers").arg("0").ignore();
    pipe.cmd("XGROUP").arg("CREATE").arg("stream:events").arg("auditors").arg("$").ignore();
    pipe.cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("alice")
        .arg("COUNT")
        .arg(5)
        .arg("STREAMS")
        .arg("stream:events")
        .arg(">")
        .ignore();
    pipe.cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("bob")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg("stream:events")
        .arg(">")
        .ignore();
    pipe.cmd("SELECT").arg(3).ignore();
    pipe.cmd("SET").arg("db3:key").arg("v").ignore();
    pipe.cmd("HSET").arg("db3:hash").arg("f").arg("v").ignore();
    pipe.cmd("SELECT").arg(0).ignore();
    pipe.query::<()>(&mut connection).unwrap();
    // Delete some stream entries so nodes carry deleted-entry counts.
    let ids: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg("stream:events").arg("-").arg("+").arg("COUNT").arg(3).query(&mut connection).unwrap();
    for (id, _) in ids {
        redis::cmd("XDEL").arg("stream:events").arg(id).query::<()>(&mut connection).unwrap();
    }
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("#!lua name=sessions\nredis.register_function('touch', function(keys, args) return 1 end)")
        .query::<String>(&mut connection)
        .unwrap();
    let _: String = redis.cmd(&["SAVE"]);
    std::fs::read(redis.rdb_path()).unwrap()
}

fn check_rdb_available() -> bool {
    let found = Command::new("redis-check-rdb").arg("--version").output().is_ok();
    if !found {
        if std::env::var("SESSBACKUP_REQUIRE_SERVERS").as_deref() == Ok("1") {
            panic!("redis-check-rdb is not installed and SESSBACKUP_REQUIRE_SERVERS=1");
        }
        common::say("SKIPPED: redis-check-rdb not found on PATH (install redis-tools)");
    }
    found
}

/// Runs redis-check-rdb; `None` if it did not finish in time.
fn redis_check_rdb(path: &Path) -> Option<(bool, String)> {
    let mut child =
        Command::new("redis-check-rdb").arg(path).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut raw = Vec::new();
            std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut raw).unwrap();
            return Some((status.success(), String::from_utf8_lossy(&raw).into_owned()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn every_encoding_from_redis_is_accepted() {
    let Some(redis) = Redis::start(&[]) else { return };
    let bytes = rich_rdb(&redis);
    let summary =
        rdb::walk(&bytes[..]).unwrap_or_else(|failure| panic!("walker rejected a file Redis wrote: {failure}"));
    let keyspace = redis.keyspace();
    let expected: Vec<(u64, u64, u64)> =
        summary.databases.iter().map(|(db, counts)| (*db, counts.keys, counts.expires)).collect();
    assert_eq!(expected, keyspace);
    assert_eq!(summary.functions, 1);
    assert!(matches!(summary.checksum, Some(rdb::Checksum::Verified(_))));
    for kind in ["string", "list", "set", "zset", "hash", "stream"] {
        assert!(summary.types.contains_key(kind), "no {kind} key in {:?}", summary.types);
    }
    assert_eq!(summary.aux_field("redis-ver"), Some("7.0.15"));
}

#[test]
fn records_match_dump_of_redis() {
    let Some(redis) = Redis::start(&[]) else { return };
    let bytes = rich_rdb(&redis);
    let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&records);
    let summary = rdb::walk_records(std::io::Cursor::new(bytes), move |record| {
        sink.lock().unwrap().push(record);
        Ok(())
    })
    .unwrap();
    let records = records.lock().unwrap().clone();
    assert_eq!(records.iter().filter(|record| matches!(record, rdb::Record::Key(_))).count() as u64, summary.keys());

    // Reading a checked file by layout alone gives the same records.
    let skimmed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&skimmed);
    rdb::walk_checked_records(std::io::Cursor::new(std::fs::read(redis.rdb_path()).unwrap()), move |record| {
        sink.lock().unwrap().push(record);
        Ok(())
    })
    .unwrap();
    assert!(*skimmed.lock().unwrap() == records, "walk_checked_records differs from walk_records");

    let mut connection = redis.connection();
    for record in &records {
        match record {
            rdb::Record::Key(key) => {
                let name = String::from_utf8_lossy(&key.key).into_owned();
                redis::cmd("SELECT").arg(key.db).query::<()>(&mut connection).unwrap();
                let dumped: Vec<u8> = redis::cmd("DUMP").arg(&key.key).query(&mut connection).unwrap();
                assert_eq!(key.payload, dumped, "payload of {name} differs from DUMP");
                let expire: i64 = redis::cmd("PEXPIRETIME").arg(&key.key).query(&mut connection).unwrap();
                assert_eq!(key.expire_at_ms.unwrap_or(-1), expire, "expiry of {name}");
                let kind: String = redis::cmd("TYPE").arg(&key.key).query(&mut connection).unwrap();
                assert_eq!(key.type_name, kind, "type of {name}");
            }
            rdb::Record::Function(code) => {
                let code = String::from_utf8(code.clone()).unwrap();
                assert!(code.starts_with("#!lua name=sessions"), "{code}");
            }
        }
    }
}

#[test]
fn stopped_consumer_stops_walk() {
    let Some(redis) = Redis::start(&[]) else { return };
    let bytes = rich_rdb(&redis);
    let failure = rdb::walk_records(&bytes[..], |_| Err("the receiver is gone".to_string())).unwrap_err();
    assert_eq!(failure.error.kind, rdb::ErrorKind::Stopped);
    assert_eq!(failure.error.message, "the receiver is gone");
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// Recomputes the CRC-64 trailer so damage is judged by structure, not by the checksum.
fn fix_checksum(bytes: &mut [u8]) {
    let end = bytes.len() - 8;
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_REDIS).checksum(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}

/// Differences from redis-check-rdb 7.0.15 that are expected: it reads RDB
/// versions up to 10 only, so it rejects the value types and opcodes of later
/// versions, which the walker accepts in any version, as Redis 7.4+ does.
fn known_difference(check_output: &str) -> bool {
    check_output.contains("Invalid object type") || check_output.contains("Can't handle RDB format version")
}

#[test]
fn damaged_copies_agree_with_redis_check_rdb() {
    let Some(redis) = Redis::start(&[]) else { return };
    if !check_rdb_available() {
        return;
    }
    let original = rich_rdb(&redis);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mutated.rdb");
    let mut rng = Rng(0x5e55_bac4_0000_0001);
    let iterations: usize =
        std::env::var("SESSBACKUP_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let mut disagreements = Vec::new();
    let mut rejected = 0;
    for iteration in 0..iterations {
        let mut bytes = original.clone();
        let kind = rng.below(4);
        match kind {
            0 => {
                let at = 9 + rng.below(bytes.len() - 17);
                bytes[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = 9 + rng.below(bytes.len() - 17);
                bytes[at] = rng.next() as u8;
            }
            2 => {
                let at = 9 + rng.below(bytes.len() - 17);
                let value = [0x00, 0x01, 0x3f, 0x40, 0x7f, 0x80, 0xc0, 0xc3, 0xfe, 0xff][rng.below(10)];
                bytes[at] = value;
            }
            _ => {
                let at = 9 + rng.below(bytes.len() - 17);
                let len = 1 + rng.below(16);
                bytes.drain(at..(at + len).min(bytes.len() - 8));
            }
        }
        fix_checksum(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();

        let ours = rdb::walk(&bytes[..]);
        let Some((theirs, output)) = redis_check_rdb(&path) else { continue };
        if ours.is_err() {
            rejected += 1;
        }
        if ours.is_ok() != theirs {
            if ours.is_ok() && known_difference(&output) {
                continue;
            }
            let ours = match &ours {
                Ok(summary) => format!("valid ({} keys)", summary.keys()),
                Err(failure) => format!("invalid: {failure}"),
            };
            let theirs_line = output.lines().filter(|line| line.contains("[offset")).collect::<Vec<_>>().join(" | ");
            disagreements.push(format!(
                "iteration {iteration} (mutation {kind}): walker {ours}; redis-check-rdb {theirs} {theirs_line}"
            ));
        }
    }
    assert!(
        rejected > iterations / 4,
        "too few damaged copies were rejected ({rejected}); the mutations are not reaching the structure"
    );
    assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements.join("\n"));
}
