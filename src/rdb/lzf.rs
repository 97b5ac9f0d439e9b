//! Streaming LZF decompression, with the acceptance rules of Redis's
//! `lzf_decompress` plus the exact-length check Redis applies to RDB strings.
//!
//! The decoder keeps only the last 8 KiB of output (the longest LZF back
//! reference) plus one output chunk, so a string of any size decodes in bounded
//! memory.

/// Maximum distance of an LZF back reference: `(31 << 8) + 255 + 1`.
const WINDOW: usize = 8192;
/// Output produced per refill before the consumer must take it.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LzfError {
    /// The compressed data ends inside an instruction.
    Truncated,
    /// The output would grow past the declared uncompressed length.
    TooLong,
    /// A back reference points before the start of the output.
    BadReference { distance: usize, produced: u64 },
    /// All compressed bytes were used, but the output is shorter than declared.
    TooShort { produced: u64 },
}

impl std::fmt::Display for LzfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LzfError::Truncated => write!(f, "compressed data ends inside an instruction"),
            LzfError::TooLong => write!(f, "decompressed data is longer than the declared length"),
            LzfError::BadReference { distance, produced } => write!(
                f,
                "back reference of distance {distance} points before the start of the output ({produced} bytes produced)"
            ),
            LzfError::TooShort { produced } => {
                write!(f, "decompressed data is shorter than the declared length ({produced} bytes)")
            }
        }
    }
}

/// Pending work of the instruction being decoded.
#[derive(Clone, Copy)]
enum Pending {
    None,
    /// Literal bytes still to copy from the input.
    Literal(usize),
    /// Bytes still to copy from `distance` bytes back in the output.
    Copy {
        distance: usize,
        left: usize,
    },
}

pub(crate) struct LzfDecoder {
    /// Output history: the last `WINDOW` bytes already handed out, then the
    /// bytes produced but not yet handed out.
    out: Vec<u8>,
    /// Index in `out` of the first byte not yet handed out.
    handed: usize,
    produced: u64,
    declared: u64,
    pending: Pending,
}

impl LzfDecoder {
    pub(crate) fn new(declared: u64) -> Self {
        LzfDecoder {
            out: Vec::with_capacity(WINDOW + CHUNK + 512),
            handed: 0,
            produced: 0,
            declared,
            pending: Pending::None,
        }
    }

    /// Prepares the decoder for a new string, keeping its allocation.
    pub(crate) fn reset(&mut self, declared: u64) {
        self.out.clear();
        self.handed = 0;
        self.produced = 0;
        self.declared = declared;
        self.pending = Pending::None;
    }

    /// Bytes decoded but not yet taken by `take`.
    pub(crate) fn ready(&self) -> &[u8] {
        &self.out[self.handed..]
    }

    /// Marks `count` ready bytes as taken.
    pub(crate) fn take(&mut self, count: usize) {
        debug_assert!(count <= self.out.len() - self.handed);
        self.handed += count;
    }

    /// Returns whether the decoder stopped in the middle of an instruction.
    pub(crate) fn mid_instruction(&self) -> bool {
        !matches!(self.pending, Pending::None)
    }

    fn make_room(&mut self) {
        // Keep the window behind the oldest byte not yet handed out.
        if self.out.len() >= WINDOW + CHUNK {
            let keep_from = self.handed.saturating_sub(WINDOW);
            if keep_from > 0 {
                self.out.drain(..keep_from);
                self.handed -= keep_from;
            }
        }
    }

    /// Decodes from `input` (compressed bytes, possibly a partial view) until
    /// about one chunk of output is ready. Returns how many input bytes it used.
    /// `input_is_last` is true when `input` contains all remaining compressed
    /// bytes. Then an instruction cut off at the end of `input` is an error;
    /// otherwise the decoder waits for more input.
    pub(crate) fn decode(&mut self, input: &[u8], input_is_last: bool) -> Result<usize, LzfError> {
        self.make_room();
        let mut ip = 0;
        while self.out.len() - self.handed < CHUNK {
            match self.pending {
                Pending::Literal(left) => {
                    let take = left.min(input.len() - ip);
                    self.out.extend_from_slice(&input[ip..ip + take]);
                    ip += take;
                    self.produced += take as u64;
                    if take < left {
                        self.pending = Pending::Literal(left - take);
                        if input_is_last {
                            return Err(LzfError::Truncated);
                        }
                        return Ok(ip);
                    }
                    self.pending = Pending::None;
                }
                Pending::Copy { distance, left } => {
                    let step = left.min(CHUNK);
                    let from = self.out.len() - distance;
                    if distance >= step {
                        self.out.extend_from_within(from..from + step);
                    } else {
                        // Overlapping copy repeats the last `distance` bytes.
                        for index in 0..step {
                            let byte = self.out[from + index];
                            self.out.push(byte);
                        }
                    }
                    self.produced += step as u64;
                    self.pending =
                        if step < left { Pending::Copy { distance, left: left - step } } else { Pending::None };
                }
                Pending::None => {
                    if ip == input.len() {
                        return Ok(ip);
                    }
                    let ctrl = input[ip] as usize;
                    if ctrl < 32 {
                        let count = ctrl + 1;
                        if self.produced + count as u64 > self.declared {
                            return Err(LzfError::TooLong);
                        }
                        if input.len() - ip - 1 < count && input_is_last {
                            return Err(LzfError::Truncated);
                        }
                        ip += 1;
                        self.pending = Pending::Literal(count);
                    } else {
                        let mut len = ctrl >> 5;
                        let needed = if len == 7 { 3 } else { 2 };
                        if input.len() - ip < needed {
                            if input_is_last {
                                return Err(LzfError::Truncated);
                            }
                            return Ok(ip);
                        }
                        let mut pos = ip + 1;
                        if len == 7 {
                            len += input[pos] as usize;
                            pos += 1;
                        }
                        let distance = ((ctrl & 0x1f) << 8) + input[pos] as usize + 1;
                        pos += 1;
                        let count = len + 2;
                        if self.produced + count as u64 > self.declared {
                            return Err(LzfError::TooLong);
                        }
                        if distance as u64 > self.produced {
                            return Err(LzfError::BadReference { distance, produced: self.produced });
                        }
                        ip = pos;
                        self.pending = Pending::Copy { distance, left: count };
                    }
                }
            }
        }
        Ok(ip)
    }

    /// Checks the end state once every compressed byte was given to `decode`.
    pub(crate) fn finish(&self) -> Result<(), LzfError> {
        if self.mid_instruction() {
            return Err(LzfError::Truncated);
        }
        if self.produced != self.declared {
            return Err(LzfError::TooShort { produced: self.produced });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(data: &[u8], declared: u64, split: usize) -> Result<Vec<u8>, LzfError> {
        let mut decoder = LzfDecoder::new(declared);
        let mut output = Vec::new();
        let mut pos = 0;
        let mut window = split;
        loop {
            let end = (pos + window).min(data.len());
            let is_last = end == data.len();
            let used = decoder.decode(&data[pos..end], is_last)?;
            pos += used;
            output.extend_from_slice(decoder.ready());
            let ready = decoder.ready().len();
            decoder.take(ready);
            if pos == data.len() && !decoder.mid_instruction() {
                break;
            }
            if used == 0 && ready == 0 {
                if is_last {
                    break;
                }
                // An instruction is split across the window: offer more input.
                window += 1;
            } else {
                window = split;
            }
        }
        decoder.finish()?;
        Ok(output)
    }

    #[test]
    fn literal_and_back_reference() {
        // "abcabcabc": literal "abc", then copy 6 bytes from distance 3.
        let data = [2, b'a', b'b', b'c', (4 << 5), 2];
        for split in 1..=data.len() {
            assert_eq!(decode_all(&data, 9, split).unwrap(), b"abcabcabc");
        }
    }

    #[test]
    fn long_back_reference_uses_extra_byte() {
        // literal "x", then copy 7 + 10 + 2 = 19 bytes from distance 1.
        let data = [0, b'x', (7 << 5), 10, 0];
        assert_eq!(decode_all(&data, 20, 64).unwrap(), vec![b'x'; 20]);
    }

    #[test]
    fn reference_before_start_is_rejected() {
        let data = [0, b'x', (1 << 5), 5];
        assert!(matches!(decode_all(&data, 4, 64), Err(LzfError::BadReference { .. })));
    }

    #[test]
    fn output_longer_than_declared_is_rejected() {
        let data = [2, b'a', b'b', b'c'];
        assert_eq!(decode_all(&data, 2, 64), Err(LzfError::TooLong));
    }

    #[test]
    fn output_shorter_than_declared_is_rejected() {
        let data = [2, b'a', b'b', b'c'];
        assert_eq!(decode_all(&data, 4, 64), Err(LzfError::TooShort { produced: 3 }));
    }

    #[test]
    fn truncated_literal_is_rejected() {
        let data = [5, b'a', b'b'];
        assert_eq!(decode_all(&data, 6, 64), Err(LzfError::Truncated));
    }

    #[test]
    fn truncated_reference_is_rejected() {
        let data = [0, b'a', (7 << 5)];
        assert_eq!(decode_all(&data, 20, 64), Err(LzfError::Truncated));
    }

    #[test]
    fn large_output_keeps_window() {
        // 100 KiB of a repeating 3-byte pattern: literal then many max-length copies.
        let mut data = vec![2, b'a', b'b', b'c'];
        let mut total = 3usize;
        while total + 264 <= 100 * 1024 {
            data.extend_from_slice(&[(7 << 5), 255, 2]);
            total += 264;
        }
        let out = decode_all(&data, total as u64, 1000).unwrap();
        assert_eq!(out.len(), total);
        assert!(out.chunks(3).all(|chunk| chunk == &b"abc"[..chunk.len()]));
    }
}
