//! Writes the keys of an RDB file as `RESTORE … ABSTTL` commands in RESP,
//! for `redis-cli --pipe`. scripts/bench uses it to compare
//! `restore --into` with redis-cli on the same keys.
//!
//! Usage: cargo run --release --example rdb_to_restore -- dump.rdb > restore.resp

use std::io::{BufWriter, Write};

use sessbackup::rdb;

fn write_bulk(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    write!(out, "${}\r\n", bytes.len())?;
    out.write_all(bytes)?;
    out.write_all(b"\r\n")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: rdb_to_restore FILE.rdb > OUT.resp")?;
    let file = std::fs::File::open(&path)?;
    let out = std::sync::Arc::new(std::sync::Mutex::new(BufWriter::with_capacity(1 << 20, std::io::stdout())));
    let sink = std::sync::Arc::clone(&out);
    let mut db = None;
    rdb::walk_records(std::io::BufReader::with_capacity(1 << 20, file), move |record| {
        let rdb::Record::Key(key) = record else { return Ok(()) };
        let mut out = sink.lock().expect("not poisoned");
        let mut write = || -> std::io::Result<()> {
            if db != Some(key.db) {
                out.write_all(b"*2\r\n")?;
                write_bulk(&mut *out, b"SELECT")?;
                write_bulk(&mut *out, key.db.to_string().as_bytes())?;
                db = Some(key.db);
            }
            out.write_all(b"*5\r\n")?;
            write_bulk(&mut *out, b"RESTORE")?;
            write_bulk(&mut *out, &key.key)?;
            write_bulk(&mut *out, key.expire_at_ms.unwrap_or(0).to_string().as_bytes())?;
            write_bulk(&mut *out, &key.payload)?;
            write_bulk(&mut *out, b"ABSTTL")
        };
        write().map_err(|err| err.to_string())
    })?;
    out.lock().expect("not poisoned").flush()?;
    Ok(())
}
