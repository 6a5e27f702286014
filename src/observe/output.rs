//! What process workers print, relayed through the pool so that it never garbles the bars.
//!
//! When a pool's bars can be seen (this process's stderr is a terminal and it is not itself a
//! worker), each process worker's standard output and error are pipes to the pool. The pool
//! reads them line by line: a line of stderr is printed above the bars with the worker's id
//! (`[w1] ...`); a line of stdout too when stdout is the same terminal, or else passed on as it
//! is, so that output redirected to a file stays what the program wrote. A worker's own
//! workers (a nested pool) write into the same pipes, so their lines come through it.

use std::io::{IsTerminal, Write};

use indicatif::MultiProgress;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Which of a worker's streams.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Relays the lines worker `slot` writes on `stream` (read from `from`) until it ends.
pub(crate) async fn relay(
    from: impl AsyncRead + Unpin,
    slot: usize,
    stream: Stream,
    bars: MultiProgress,
) {
    relay_keeping(from, slot, stream, bars, None).await
}

/// The last lines a stream brought, for an error that says why a worker never started.
#[derive(Debug, Default)]
pub(crate) struct Tail(std::sync::Mutex<std::collections::VecDeque<String>>);

/// How many lines a [`Tail`] keeps.
const TAIL_LINES: usize = 8;

impl Tail {
    fn push(&self, line: String) {
        let mut lines = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The lines kept, joined with `; `.
    pub(crate) fn text(&self) -> String {
        let lines = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// [`relay`], keeping the last lines in `tail` as well while anyone holds it (the worker's
/// start: once it started, nobody reads it, and lines are no longer kept).
pub(crate) async fn relay_keeping(
    from: impl AsyncRead + Unpin,
    slot: usize,
    stream: Stream,
    bars: MultiProgress,
    tail: Option<std::sync::Weak<Tail>>,
) {
    let mut tail = tail;
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match from.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if let Some(kept) = &tail {
            match kept.upgrade() {
                Some(kept) => kept.push(String::from_utf8_lossy(&line).trim_end().to_owned()),
                None => tail = None,
            }
        }
        print(&line, slot, stream, &bars);
    }
}

fn print(line: &[u8], slot: usize, stream: Stream, bars: &MultiProgress) {
    let text = String::from_utf8_lossy(line);
    match stream {
        Stream::Stderr if !bars.is_hidden() => {
            let _ = bars.println(format!("[w{slot}] {text}"));
        }
        Stream::Stdout if !bars.is_hidden() && std::io::stdout().is_terminal() => {
            bars.suspend(|| {
                let _ = writeln!(std::io::stdout(), "[w{slot}] {text}");
            });
        }
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(line).and_then(|()| out.write_all(b"\n"));
        }
        Stream::Stderr => {
            let _ = writeln!(std::io::stderr(), "[w{slot}] {text}");
        }
    }
}
