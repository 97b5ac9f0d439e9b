//! Buffered byte input for the RDB walker.
//!
//! `Input` reads from any `io::Read` through a fixed buffer, tracks the absolute
//! offset of every byte, and keeps the CRC-64 of everything consumed so far. The
//! checksum is brought up to date lazily, one buffer at a time, because hashing a
//! byte at a time would dominate the walk.

use std::io::{self, Read};

use crc::{Crc, Digest, Table};

use super::Error;

/// CRC-64 with the Jones polynomial, reflected, zero init: the checksum Redis
/// appends to RDB files (`CRC-64/REDIS` in the CRC catalogue).
pub(crate) static CRC64: Crc<u64, Table<16>> = Crc::<u64, Table<16>>::new(&crc::CRC_64_REDIS);

const BUFFER_BYTES: usize = 256 * 1024;

pub(crate) struct Input<R> {
    reader: R,
    buf: Box<[u8]>,
    /// First unconsumed byte in `buf`.
    start: usize,
    /// End of valid data in `buf`.
    end: usize,
    /// Bytes of `buf` before this index are already in `crc`.
    crc_done: usize,
    /// Absolute offset of `buf[0]` in the stream.
    base: u64,
    crc: Digest<'static, u64, Table<16>>,
    /// The reader returned 0 bytes: the stream ended.
    reader_done: bool,
    /// Bytes consumed since `start_recording`, while recording.
    record: Option<Vec<u8>>,
    /// Bytes of `buf` before this index are already in `record`.
    record_done: usize,
    /// Keep no checksum (the file was checked before).
    no_checksum: bool,
}

impl<R: Read> Input<R> {
    pub(crate) fn new(reader: R) -> Self {
        Input {
            reader,
            buf: vec![0u8; BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            crc_done: 0,
            base: 0,
            crc: CRC64.digest(),
            reader_done: false,
            record: None,
            record_done: 0,
            no_checksum: false,
        }
    }

    /// Absolute offset of the next byte to be consumed.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Makes at least `need` bytes available unless the stream ends first, and
    /// returns how many are available (which may be fewer at the end).
    fn fill(&mut self, need: usize) -> Result<usize, Error> {
        debug_assert!(need <= self.buf.len());
        while self.end - self.start < need && !self.reader_done {
            if self.start > 0 && self.buf.len() - self.start < need.max(BUFFER_BYTES / 4) {
                // Move the unconsumed tail to the front; the consumed part leaves the
                // buffer, so it must enter the checksum first.
                if !self.no_checksum {
                    self.crc.update(&self.buf[self.crc_done..self.start]);
                }
                if let Some(record) = &mut self.record {
                    record.extend_from_slice(&self.buf[self.record_done..self.start]);
                }
                self.record_done = 0;
                self.buf.copy_within(self.start..self.end, 0);
                self.base += self.start as u64;
                self.end -= self.start;
                self.start = 0;
                self.crc_done = 0;
            }
            let read = loop {
                match self.reader.read(&mut self.buf[self.end..]) {
                    Ok(read) => break read,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => return Err(Error::io(self.offset(), err)),
                }
            };
            if read == 0 {
                self.reader_done = true;
            }
            self.end += read;
        }
        Ok(self.end - self.start)
    }

    fn eof_error(&self, wanted: &str) -> Error {
        Error::at(self.base + self.end as u64, format!("unexpected end of file while reading {wanted}"))
    }

    pub(crate) fn read_u8(&mut self, wanted: &str) -> Result<u8, Error> {
        if self.start == self.end && self.fill(1)? == 0 {
            return Err(self.eof_error(wanted));
        }
        let byte = self.buf[self.start];
        self.start += 1;
        Ok(byte)
    }

    pub(crate) fn read_array<const N: usize>(&mut self, wanted: &str) -> Result<[u8; N], Error> {
        if self.end - self.start < N && self.fill(N)? < N {
            return Err(self.eof_error(wanted));
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.start..self.start + N]);
        self.start += N;
        Ok(out)
    }

    /// Reads exactly `out.len()` bytes.
    pub(crate) fn read_exact(&mut self, out: &mut [u8], wanted: &str) -> Result<(), Error> {
        let mut done = 0;
        while done < out.len() {
            let chunk = self.next_chunk((out.len() - done) as u64, wanted)?;
            out[done..done + chunk.len()].copy_from_slice(chunk);
            done += chunk.len();
        }
        Ok(())
    }

    /// Returns the next run of up to `max` bytes and consumes it.
    pub(crate) fn next_chunk(&mut self, max: u64, wanted: &str) -> Result<&[u8], Error> {
        if self.start == self.end && self.fill(1)? == 0 {
            return Err(self.eof_error(wanted));
        }
        let take = (self.end - self.start).min(usize::try_from(max).unwrap_or(usize::MAX));
        let begin = self.start;
        self.start += take;
        Ok(&self.buf[begin..begin + take])
    }

    /// Returns up to `max` unconsumed bytes without consuming them, reading more
    /// if fewer than `max` are buffered. The slice is shorter only at the end of
    /// the stream.
    pub(crate) fn peek(&mut self, max: usize) -> Result<&[u8], Error> {
        let max = max.min(self.buf.len() / 2);
        if self.end - self.start < max {
            self.fill(max)?;
        }
        let take = (self.end - self.start).min(max);
        Ok(&self.buf[self.start..self.start + take])
    }

    /// Consumes `count` bytes that a previous `peek` returned.
    pub(crate) fn consume(&mut self, count: usize) {
        debug_assert!(count <= self.end - self.start);
        self.start += count;
    }

    /// Consumes `count` bytes without looking at them.
    pub(crate) fn skip(&mut self, count: u64, wanted: &str) -> Result<(), Error> {
        let mut left = count;
        while left > 0 {
            let chunk = self.next_chunk(left, wanted)?;
            left -= chunk.len() as u64;
        }
        Ok(())
    }

    /// Returns the CRC-64 of every byte consumed so far.
    pub(crate) fn checksum(&mut self) -> u64 {
        self.crc.update(&self.buf[self.crc_done..self.start]);
        self.crc_done = self.start;
        self.crc.clone().finalize()
    }

    /// Stops keeping the CRC-64 of consumed bytes.
    pub(crate) fn skip_checksum(&mut self) {
        self.no_checksum = true;
    }

    /// Starts keeping a copy of every byte consumed from here on, after
    /// `prefix`.
    pub(crate) fn start_recording(&mut self, prefix: Vec<u8>) {
        self.record = Some(prefix);
        self.record_done = self.start;
    }

    /// Stops recording and returns the bytes consumed since
    /// `start_recording` (empty if it was not called).
    pub(crate) fn take_recording(&mut self) -> Vec<u8> {
        let mut record = self.record.take().unwrap_or_default();
        record.extend_from_slice(&self.buf[self.record_done..self.start]);
        record
    }

    /// Returns the buffered bytes not consumed yet and the reader, which
    /// continues after them.
    pub(crate) fn into_rest(self) -> (Vec<u8>, R) {
        (self.buf[self.start..self.end].to_vec(), self.reader)
    }

    /// Counts the bytes left in the stream after the current position,
    /// reading (and discarding) them.
    pub(crate) fn count_remaining(&mut self) -> Result<u64, Error> {
        let mut total = 0u64;
        loop {
            let available = self.fill(1)?;
            if available == 0 {
                return Ok(total);
            }
            total += available as u64;
            self.start = self.end;
            self.crc_done = self.start;
        }
    }
}
