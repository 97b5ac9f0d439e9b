//! Sequential access to the content of one RDB string, plain or LZF-compressed.
//!
//! Compact encodings (ziplist, listpack, intset, zipmap) are stored as RDB
//! strings. `ValueReader` hands their bytes to the structure checks in order,
//! without ever holding the whole string, and remembers the last eight bytes it
//! passed so a check can look backwards the way Redis's listpack code does.

use std::io::Read;

use super::Error;
use super::input::Input;
use super::lzf::LzfDecoder;

/// Storage form of an RDB string, read from its length prefix.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StringHeader {
    /// An integer stored in 1, 2 or 4 bytes; its content is the decimal text.
    Int(i64),
    /// `len` plain bytes follow.
    Raw(u64),
    /// `compressed` bytes of LZF data follow that expand to `len` bytes.
    Lzf { compressed: u64, len: u64 },
}

enum Body {
    Raw {
        left: u64,
    },
    Lzf {
        compressed_left: u64,
    },
    /// Integer-encoded strings: the decimal text, already in memory.
    Text {
        text: Vec<u8>,
        next: usize,
    },
}

pub(crate) struct ValueReader<'a, R> {
    input: &'a mut Input<R>,
    lzf: &'a mut LzfDecoder,
    body: Body,
    len: u64,
    pos: u64,
    /// The last eight bytes handed out; the most recent is the lowest byte.
    tail: u64,
    /// File offset of the string's length prefix, for error messages.
    string_offset: u64,
}

impl<'a, R: Read> ValueReader<'a, R> {
    pub(crate) fn new(
        input: &'a mut Input<R>,
        lzf: &'a mut LzfDecoder,
        header: StringHeader,
        string_offset: u64,
    ) -> Self {
        let (body, len) = match header {
            StringHeader::Int(value) => {
                let text = value.to_string().into_bytes();
                let len = text.len() as u64;
                (Body::Text { text, next: 0 }, len)
            }
            StringHeader::Raw(len) => (Body::Raw { left: len }, len),
            StringHeader::Lzf { compressed, len } => {
                lzf.reset(len);
                (Body::Lzf { compressed_left: compressed }, len)
            }
        };
        ValueReader { input, lzf, body, len, pos: 0, tail: 0, string_offset }
    }

    /// Total content length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Content bytes consumed so far.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Returns the byte handed out `back` positions before the most recent one
    /// (`back == 0` is the most recent). Valid for `back < 8` and `back < pos`.
    pub(crate) fn tail_byte(&self, back: usize) -> u8 {
        debug_assert!(back < 8);
        (self.tail >> (8 * back)) as u8
    }

    fn note_tail(&mut self, chunk: &[u8]) {
        if chunk.len() >= 8 {
            let mut last = [0u8; 8];
            last.copy_from_slice(&chunk[chunk.len() - 8..]);
            self.tail = u64::from_be_bytes(last);
        } else {
            for &byte in chunk {
                self.tail = (self.tail << 8) | byte as u64;
            }
        }
    }

    /// Hands the next run of at most `max` content bytes to `sink`, returning
    /// how many were handed over (0 only when the content is exhausted).
    fn next_chunk(&mut self, max: u64, sink: &mut dyn FnMut(&[u8])) -> Result<usize, Error> {
        let max = max.min(self.len - self.pos);
        if max == 0 {
            return Ok(0);
        }
        let count = match &mut self.body {
            Body::Raw { left } => {
                let chunk = self.input.next_chunk(max.min(*left), "string content")?;
                *left -= chunk.len() as u64;
                sink(chunk);
                let count = chunk.len();
                let mut tail = self.tail;
                if count >= 8 {
                    let mut last = [0u8; 8];
                    last.copy_from_slice(&chunk[count - 8..]);
                    tail = u64::from_be_bytes(last);
                } else {
                    for &byte in chunk {
                        tail = (tail << 8) | byte as u64;
                    }
                }
                self.tail = tail;
                count
            }
            Body::Text { text, next } => {
                let take = (text.len() - *next).min(max as usize);
                let chunk = text[*next..*next + take].to_vec();
                *next += take;
                sink(&chunk);
                self.note_tail(&chunk);
                take
            }
            Body::Lzf { .. } => {
                self.refill_lzf()?;
                let ready = self.lzf.ready();
                let take = ready.len().min(max as usize);
                if take == 0 {
                    return Err(Error::at(
                        self.string_offset,
                        "invalid LZF-compressed string: decompressed data is shorter than the declared length",
                    ));
                }
                let chunk: &[u8] = &ready[..take];
                sink(chunk);
                let mut tail = self.tail;
                if take >= 8 {
                    let mut last = [0u8; 8];
                    last.copy_from_slice(&chunk[take - 8..]);
                    tail = u64::from_be_bytes(last);
                } else {
                    for &byte in chunk {
                        tail = (tail << 8) | byte as u64;
                    }
                }
                self.tail = tail;
                self.lzf.take(take);
                take
            }
        };
        self.pos += count as u64;
        Ok(count)
    }

    /// Decodes more LZF output if none is ready and compressed input remains.
    fn refill_lzf(&mut self) -> Result<(), Error> {
        let Body::Lzf { compressed_left } = &mut self.body else {
            return Ok(());
        };
        while self.lzf.ready().is_empty() && *compressed_left > 0 {
            let want = (*compressed_left).min(64 * 1024) as usize;
            let here = self.input.offset();
            let view = self.input.peek(want)?;
            if view.len() < want {
                // Redis reads the whole compressed blob before decoding it, so a
                // file that ends inside it is a truncated file.
                return Err(Error::at(
                    here + view.len() as u64,
                    "unexpected end of file inside an LZF-compressed string",
                ));
            }
            let is_last = want as u64 == *compressed_left;
            let used = self
                .lzf
                .decode(view, is_last)
                .map_err(|err| Error::at(self.string_offset, format!("invalid LZF-compressed string: {err}")))?;
            self.input.consume(used);
            *compressed_left -= used as u64;
            if used == 0 && self.lzf.ready().is_empty() {
                // The view holds at least 64 KiB or all remaining input, and one
                // instruction needs at most 33 bytes, so this cannot happen.
                return Err(Error::at(self.string_offset, "LZF decoder made no progress (internal error)"));
            }
        }
        Ok(())
    }

    /// Reads exactly `out.len()` content bytes.
    pub(crate) fn read_exact(&mut self, out: &mut [u8]) -> Result<(), Error> {
        if (out.len() as u64) > self.len - self.pos {
            return Err(Error::at(self.string_offset, "read past the end of a string (internal error)"));
        }
        let mut done = 0;
        while done < out.len() {
            let want = (out.len() - done) as u64;
            let got = self.next_chunk(want, &mut |chunk| {
                out[done..done + chunk.len()].copy_from_slice(chunk);
            })?;
            done += got;
        }
        Ok(())
    }

    pub(crate) fn read_u8(&mut self) -> Result<u8, Error> {
        let mut byte = [0u8; 1];
        self.read_exact(&mut byte)?;
        Ok(byte[0])
    }

    /// Hands the next `count` content bytes to `sink`.
    pub(crate) fn feed(&mut self, count: u64, sink: &mut dyn FnMut(&[u8])) -> Result<(), Error> {
        if count > self.len - self.pos {
            return Err(Error::at(self.string_offset, "read past the end of a string (internal error)"));
        }
        let mut left = count;
        while left > 0 {
            left -= self.next_chunk(left, sink)? as u64;
        }
        Ok(())
    }

    pub(crate) fn skip(&mut self, count: u64) -> Result<(), Error> {
        self.feed(count, &mut |_| {})
    }

    /// Consumes whatever content is left and, for LZF strings, checks that the
    /// compressed data decodes to exactly the declared length.
    pub(crate) fn finish(mut self) -> Result<(), Error> {
        let left = self.len - self.pos;
        self.skip(left)?;
        if let Body::Lzf { compressed_left } = self.body {
            if self.len == 0 {
                // Redis's decoder returns 0 for a zero-length target whatever the
                // input, and 0 equals the declared length, so the string loads.
                return self.input.skip(compressed_left, "LZF-compressed string");
            }
            if compressed_left > 0 {
                // Output is complete but compressed bytes remain: Redis's
                // decoder would run past the declared length.
                let used = {
                    let view = self.input.peek(compressed_left.min(64 * 1024) as usize)?;
                    let is_last = view.len() as u64 == compressed_left;
                    self.lzf.decode(view, is_last)
                }
                .map_err(|err| Error::at(self.string_offset, format!("invalid LZF-compressed string: {err}")))?;
                self.input.consume(used);
                return Err(Error::at(
                    self.string_offset,
                    "invalid LZF-compressed string: compressed data continues after the declared length",
                ));
            }
            self.lzf
                .finish()
                .map_err(|err| Error::at(self.string_offset, format!("invalid LZF-compressed string: {err}")))?;
        }
        Ok(())
    }
}
