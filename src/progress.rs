//! Progress bars for a person at a terminal: one per target while a backup
//! uploads, one while a restore or verify downloads. Never shown when
//! standard error is not a terminal, with JSON logs or with JSON output.
//!
//! Log lines printed while bars are shown go through [`LogWriter`], which
//! clears the bars, writes the line and draws them again.

use std::io::{self, Read, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Turns progress bars on for this process; call once, before any bar.
pub fn enable() {
    let _ = BARS.set(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
}

/// Returns whether standard error is a terminal, which bars need.
pub fn terminal() -> bool {
    io::IsTerminal::is_terminal(&io::stderr())
}

/// Adds a bar of bytes for `label`, with a length when the total is known,
/// else a counter. Returns `None` when bars are off.
pub fn bytes(label: &str, total: Option<u64>) -> Option<ProgressBar> {
    let bars = BARS.get()?;
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::no_length().with_style(
            ProgressStyle::with_template("{prefix:>12} {spinner} {bytes} sent, {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    let bar = bars.add(bar.with_prefix(label.to_string()));
    Some(bar)
}

/// A reader that advances `bar` by what passes through.
pub struct ProgressReader<R> {
    inner: R,
    bar: Option<ProgressBar>,
}

impl<R> ProgressReader<R> {
    pub fn new(inner: R, bar: Option<ProgressBar>) -> Self {
        ProgressReader { inner, bar }
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(out)?;
        if let Some(bar) = &self.bar {
            bar.inc(read as u64);
        }
        Ok(read)
    }
}

impl<R> Drop for ProgressReader<R> {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Standard error for log lines, kept clear of the bars.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars.suspend(|| io::stderr().write_all(buf)).map(|()| buf.len()),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
