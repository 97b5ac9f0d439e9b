//! Reader for the command part of an AOF file: RESP arrays of bulk strings,
//! as Redis appends them, with `#` annotation lines between commands.
//!
//! It follows what redis-server 7.0 accepts when it loads an AOF
//! (`loadSingleAppendOnlyFile`): a line that starts with `#` is skipped
//! (`#TS:<unix seconds>` marks time when `aof-timestamp-enabled` is on),
//! every command is `*<argc>\r\n` followed by `argc` times
//! `$<len>\r\n<bytes>\r\n`. Running out of input inside a command is a torn
//! tail; any other deviation is corruption. A `MULTI` without its `EXEC` at
//! the end counts as a torn tail from the `MULTI` on, as Redis reverts it.

use std::io::{self, BufRead, Read};

/// Maximum length of a count, length or annotation line, as in Redis.
const MAX_LINE: usize = 1024;

/// One command, with the offset of its `*` in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub offset: u64,
    pub args: Vec<Vec<u8>>,
}

impl Command {
    /// Returns whether the command's name is `name`, ignoring case.
    pub fn is(&self, name: &str) -> bool {
        self.args.first().is_some_and(|first| first.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// An item of the file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Command(Command),
    /// A `#TS:` annotation: the time of the commands that follow.
    Timestamp {
        offset: u64,
        unix_secs: i64,
    },
}

/// Findings of a read that reached the end of the input.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Complete commands, not counting those of a trailing unfinished `MULTI`.
    pub commands: u64,
    /// Offset just after the last complete command (or of the trailing
    /// `MULTI`): where a torn file would be cut.
    pub valid_up_to: u64,
    /// Offset where the input ended.
    pub end: u64,
    pub first_timestamp: Option<i64>,
    pub last_timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input ended inside a command (or inside `MULTI … EXEC`).
    #[error("torn tail at offset {valid_up_to}: {message}")]
    Torn { valid_up_to: u64, commands: u64, message: String },
    #[error("offset {offset}: {message}")]
    Corrupt { offset: u64, message: String },
    #[error("offset {offset}: read failed: {message}")]
    Io { offset: u64, message: String },
    /// The consumer stopped the read.
    #[error("{0}")]
    Stopped(String),
}

/// Reads commands from `reader`, whose first byte is at `start` in the file,
/// and hands each event to `on_event`.
pub fn read<R: BufRead>(
    reader: R,
    start: u64,
    mut on_event: impl FnMut(Event) -> Result<(), String>,
) -> Result<Tally, Error> {
    let mut input = Counted { inner: reader, offset: start };
    let mut tally = Tally { valid_up_to: start, end: start, ..Tally::default() };
    // Offset and command count before an unfinished MULTI.
    let mut open_multi: Option<(u64, u64)> = None;
    loop {
        let offset = input.offset;
        let Some(line) = input.line()? else { break };
        if line.first() == Some(&b'#') {
            if let Some(unix_secs) = parse_timestamp(&line) {
                tally.first_timestamp.get_or_insert(unix_secs);
                tally.last_timestamp = Some(unix_secs);
                on_event(Event::Timestamp { offset, unix_secs }).map_err(Error::Stopped)?;
            }
            continue;
        }
        let torn = |tally: &Tally, message: String| Error::Torn {
            valid_up_to: tally.valid_up_to,
            commands: tally.commands,
            message,
        };
        if !line.ends_with(b"\n") {
            return Err(torn(&tally, format!("the command at offset {offset} is cut off in its first line")));
        }
        if line.first() != Some(&b'*') {
            return Err(Error::Corrupt {
                offset,
                message: format!("expected '*' to start a command, found {:?}", shown(&line)),
            });
        }
        let argc = parse_number(&line[1..])
            .filter(|argc| *argc >= 1)
            .ok_or_else(|| Error::Corrupt { offset, message: format!("invalid argument count {:?}", shown(&line)) })?;
        let mut args = Vec::with_capacity(argc.min(64) as usize);
        for index in 0..argc {
            let arg_offset = input.offset;
            let Some(line) = input.line()? else {
                return Err(torn(&tally, format!("the command at offset {offset} ends before argument {}", index + 1)));
            };
            if !line.ends_with(b"\n") {
                return Err(torn(
                    &tally,
                    format!("the command at offset {offset} is cut off in argument {}", index + 1),
                ));
            }
            if line.first() != Some(&b'$') {
                return Err(Error::Corrupt {
                    offset: arg_offset,
                    message: format!("expected '$' and a length, found {:?}", shown(&line)),
                });
            }
            let len = parse_number(&line[1..]).ok_or_else(|| Error::Corrupt {
                offset: arg_offset,
                message: format!("invalid argument length {:?}", shown(&line)),
            })?;
            let data_offset = input.offset;
            let Some(arg) = input.bytes(len)? else {
                return Err(torn(
                    &tally,
                    format!("the command at offset {offset} is cut off: argument {} needs {len} bytes", index + 1),
                ));
            };
            match input.bytes(2)? {
                Some(end) if end == b"\r\n" => {}
                Some(end) => {
                    return Err(Error::Corrupt {
                        offset: data_offset + len,
                        message: format!("expected \\r\\n after {len} bytes of argument data, found {:?}", shown(&end)),
                    });
                }
                None => {
                    return Err(torn(
                        &tally,
                        format!("the command at offset {offset} is cut off after argument {}", index + 1),
                    ));
                }
            }
            args.push(arg);
        }
        let command = Command { offset, args };
        if command.is("multi") {
            open_multi = Some((offset, tally.commands));
        } else if command.is("exec") {
            open_multi = None;
        }
        tally.commands += 1;
        tally.valid_up_to = input.offset;
        on_event(Event::Command(command)).map_err(Error::Stopped)?;
    }
    tally.end = input.offset;
    if let Some((multi_offset, commands)) = open_multi {
        return Err(Error::Torn {
            valid_up_to: multi_offset,
            commands,
            message: format!("the MULTI at offset {multi_offset} has no EXEC before the end"),
        });
    }
    Ok(tally)
}

/// Parses `#TS:<unix seconds>` with its line ending.
fn parse_timestamp(line: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(line.strip_prefix(b"#TS:")?).ok()?;
    text.trim_end_matches(['\r', '\n']).parse().ok()
}

/// Parses the decimal number of a `*` or `$` line, which must end in `\r\n`.
fn parse_number(rest: &[u8]) -> Option<u64> {
    let digits = rest.strip_suffix(b"\r\n")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Bytes for a message: at most 40, lossily decoded.
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(40)]).into_owned()
}

/// A reader that counts the offset of what it has consumed.
struct Counted<R> {
    inner: R,
    offset: u64,
}

impl<R: BufRead> Counted<R> {
    fn io(&self, err: io::Error) -> Error {
        Error::Io { offset: self.offset, message: err.to_string() }
    }

    /// Reads a line with its `\n`, or what is left before the end of input
    /// (without `\n`); `None` at the end of input. Lines are at most
    /// [`MAX_LINE`] bytes, like Redis's.
    fn line(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut line = Vec::new();
        let read = (&mut self.inner).take(MAX_LINE as u64).read_until(b'\n', &mut line).map_err(|err| self.io(err))?;
        self.offset += read as u64;
        if read == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\n") && read == MAX_LINE {
            return Err(Error::Corrupt {
                offset: self.offset - read as u64,
                message: format!("line longer than {MAX_LINE} bytes: {:?}", shown(&line)),
            });
        }
        Ok(Some(line))
    }

    /// Reads exactly `len` bytes, or returns `None` if the input ends first.
    /// Memory grows with the bytes actually read, whatever `len` claims.
    fn bytes(&mut self, len: u64) -> Result<Option<Vec<u8>>, Error> {
        let mut out = Vec::with_capacity(len.min(64 * 1024) as usize);
        let read = (&mut self.inner).take(len).read_to_end(&mut out).map_err(|err| self.io(err))?;
        self.offset += read as u64;
        Ok((read as u64 == len).then_some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(bytes: &[u8]) -> (Result<Tally, Error>, Vec<Event>) {
        let mut events = Vec::new();
        let result = read(bytes, 0, |event| {
            events.push(event);
            Ok(())
        });
        (result, events)
    }

    const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n";

    #[test]
    fn commands_and_timestamps_are_read() {
        let input = [b"#TS:1700000000\r\n".as_slice(), SET, b"*1\r\n$4\r\nPING\r\n"].concat();
        let (result, events) = collect(&input);
        let tally = result.unwrap();
        assert_eq!(tally.commands, 2);
        assert_eq!(tally.valid_up_to, input.len() as u64);
        assert_eq!(tally.first_timestamp, Some(1_700_000_000));
        assert_eq!(events[0], Event::Timestamp { offset: 0, unix_secs: 1_700_000_000 });
        let Event::Command(command) = &events[1] else { panic!("{events:?}") };
        assert_eq!(command.offset, 16);
        assert_eq!(command.args, vec![b"SET".to_vec(), b"k".to_vec(), b"v1".to_vec()]);
    }

    #[test]
    fn cut_command_is_torn_tail() {
        for cut in 1..SET.len() {
            let input = [SET, &SET[..cut]].concat();
            let (result, _) = collect(&input);
            match result {
                Err(Error::Torn { valid_up_to, commands, .. }) => {
                    assert_eq!(valid_up_to, SET.len() as u64, "cut at {cut}");
                    assert_eq!(commands, 1, "cut at {cut}");
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn open_multi_is_torn_tail() {
        let multi = b"*1\r\n$5\r\nMULTI\r\n";
        let input = [SET, multi.as_slice(), SET].concat();
        let (result, _) = collect(&input);
        assert_eq!(
            result.unwrap_err(),
            Error::Torn {
                valid_up_to: SET.len() as u64,
                commands: 1,
                message: format!("the MULTI at offset {} has no EXEC before the end", SET.len()),
            }
        );
        let closed = [input.as_slice(), b"*1\r\n$4\r\nEXEC\r\n"].concat();
        assert_eq!(collect(&closed).0.unwrap().commands, 4);
    }

    #[test]
    fn garbage_in_middle_is_corruption() {
        let input = [SET, b"+OK\r\n".as_slice(), SET].concat();
        let (result, _) = collect(&input);
        assert_eq!(
            result.unwrap_err(),
            Error::Corrupt {
                offset: SET.len() as u64,
                message: "expected '*' to start a command, found \"+OK\\r\\n\"".to_string()
            }
        );
    }

    #[test]
    fn wrong_length_is_corruption() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nkey\r\n";
        let (result, _) = collect(input);
        assert!(matches!(result, Err(Error::Corrupt { offset: 18, .. })), "{result:?}");
    }

    #[test]
    fn hostile_length_needs_no_memory() {
        let input = b"*1\r\n$99999999999\r\nabc";
        let (result, _) = collect(input);
        assert!(matches!(result, Err(Error::Torn { valid_up_to: 0, .. })), "{result:?}");
    }

    #[test]
    fn zero_arguments_are_corruption() {
        let (result, _) = collect(b"*0\r\n");
        assert!(matches!(result, Err(Error::Corrupt { offset: 0, .. })), "{result:?}");
    }

    #[test]
    fn empty_input_is_valid() {
        let (result, events) = collect(b"");
        assert_eq!(result.unwrap().commands, 0);
        assert!(events.is_empty());
    }
}
