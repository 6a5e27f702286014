//! Feeding a call: where its inputs come from, how they are cut into chunks, and how a chunk is
//! turned into what a worker receives.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::dispatch::Payload;
use crate::error::Error;
use crate::proto::body::{Encoding, Stop, encode_body};
use crate::proto::describe;
use crate::sys::shm::Arena;
use crate::task::{Call, Input, Output, local_job};

/// What a call needs to know to encode its chunks: the pool's arena (process pools), whether its
/// workers are threads (inputs are moved, not serialised), how many bytes a chunk's inputs may
/// take (what a frame holds besides its header), and its tasks' timeout.
pub(crate) struct Feed<'a> {
    pub arena: Option<&'a Arc<Arena>>,
    pub local: bool,
    pub budget: usize,
    /// How long each task may run, in microseconds (0: no limit): a thread worker's chunk with
    /// deadlines is built so that the pool can take it back.
    pub timeout_us: u64,
}

/// What encoding the front of a call's pulled inputs gave.
pub(crate) enum Encoded {
    /// A job of the first `taken` inputs, which left the buffer.
    Job { payload: Payload, taken: usize },
    /// The first input alone failed, and left the buffer: it cannot be serialised, or it is
    /// larger than a frame.
    Failed(Error),
}

/// Turns the inputs at the front of `items` into what a worker receives: moved for thread
/// workers, or else serialised (large bodies into the arena), as many as fit in a frame.
pub(crate) type Encode<A> = fn(&Feed<'_>, &mut Vec<A>) -> Encoded;

pub(crate) fn encoder<T, S, W, A, R>() -> Encode<A>
where
    T: Call<S, W, A, R>,
    S: 'static,
    W: 'static,
    A: Input,
    R: Output,
{
    |feed, items| {
        if feed.local {
            let items = std::mem::take(items);
            let taken = items.len();
            let payload = Payload::local(local_job::<T, S, W, A, R>(items, feed.timeout_us));
            return Encoded::Job { payload, taken };
        }
        let Encoding { body, taken, stop } = encode_body(items, feed.arena, feed.budget);
        if taken == 0 {
            let e = match stop {
                Some(Stop::Error(e)) => Error::codec("could not serialise a task input", e),
                Some(Stop::TooLarge(n)) => Error::codec(
                    "could not send a task input",
                    format!("it takes {n} bytes, more than max_frame_len allows"),
                ),
                Some(Stop::Budget) | None => {
                    Error::codec("could not send a task input", "it does not fit in a frame")
                }
            };
            let input = items.remove(0);
            return Encoded::Failed(e.with_input(describe(&input)));
        }
        items.drain(..taken);
        Encoded::Job {
            payload: Payload::Remote {
                entry: crate::task::chunk::<T, S, W, A, R>().offset,
                body: Arc::new(body),
                skip: 0,
            },
            taken,
        }
    }
}

/// Options shared by every call that takes many inputs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Options {
    pub chunk_size: Option<usize>,
    pub n_splits: Option<usize>,
    pub max_tasks_active: Option<usize>,
    pub reorder_window: Option<usize>,
    pub len: Option<usize>,
    pub task_timeout: Option<Duration>,
    pub progress_bar: bool,
}

/// Where a call's inputs come from.
pub(crate) trait Source<A> {
    /// Pulls up to `max` items into `out`. `Ready(true)` when the input is exhausted.
    fn pull(&mut self, cx: &mut Context<'_>, max: usize, out: &mut Vec<A>) -> Poll<bool>;
    fn size_hint(&self) -> (usize, Option<usize>);
}

pub(crate) struct IterSource<I>(pub I);

impl<I: Iterator> Source<I::Item> for IterSource<I> {
    fn pull(&mut self, _cx: &mut Context<'_>, max: usize, out: &mut Vec<I::Item>) -> Poll<bool> {
        for _ in 0..max {
            match self.0.next() {
                Some(a) => out.push(a),
                None => return Poll::Ready(true),
            }
        }
        Poll::Ready(false)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

pub(crate) struct StreamSource<St>(pub St);

impl<St: Stream + Unpin> Source<St::Item> for StreamSource<St> {
    fn pull(&mut self, cx: &mut Context<'_>, max: usize, out: &mut Vec<St::Item>) -> Poll<bool> {
        let before = out.len();
        while out.len() - before < max {
            match std::pin::Pin::new(&mut self.0).poll_next(cx) {
                Poll::Ready(Some(a)) => out.push(a),
                Poll::Ready(None) => return Poll::Ready(true),
                // Never wait to fill a chunk: send what is there.
                Poll::Pending if out.len() > before => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(false)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

/// A chunk size the caller chose.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fixed {
    /// `chunk_size(n)`.
    Size(usize),
    /// `n_splits`: `len` inputs in `min(splits, len)` chunks whose sizes differ by at most one
    /// (the first `len % chunks` of them one larger).
    Splits { base: usize, larger: usize },
}

impl Fixed {
    /// `len` inputs in `splits` chunks (at least one).
    pub(crate) fn splits(len: usize, splits: usize) -> Fixed {
        let chunks = splits.min(len).max(1);
        Fixed::Splits {
            base: (len / chunks).max(1),
            larger: len % chunks,
        }
    }

    /// The size of chunk `seq`.
    fn size(self, seq: u64) -> usize {
        match self {
            Fixed::Size(n) => n,
            Fixed::Splits { base, larger } => base + usize::from(seq < larger as u64),
        }
    }
}

/// Chunk sizes: fixed, derived from a known length, or adapted to measured task times.
#[derive(Default)]
pub(crate) struct Chunker {
    /// Set by the caller (`chunk_size`, `n_splits`): never changes.
    pub fixed: Option<Fixed>,
    /// The default for an input of known length: chunks are at least this large.
    pub floor: Option<usize>,
    /// Estimated nanoseconds per task (exponential moving average), for adaptive sizing.
    ns_per_task: Option<f64>,
    /// Serialised bytes per input, from the last chunk (process workers only).
    bytes_per_task: Option<usize>,
}

/// Adaptive chunks aim at this much work each: long enough to hide a hand-off, short enough to
/// spread work evenly and keep the reorder window small.
const TARGET_CHUNK: Duration = Duration::from_millis(2);
const MAX_ADAPTIVE_CHUNK: usize = 16 * 1024;
/// Chunks not set by the caller carry at most this many bytes of inputs (at least one input):
/// a worker starts sooner, work spreads more evenly, and less memory is in flight.
const MAX_CHUNK_BYTES: usize = 4 << 20;

impl Chunker {
    /// The size of chunk `seq` of the call.
    pub(crate) fn size(&self, seq: u64) -> usize {
        if let Some(fixed) = self.fixed {
            return fixed.size(seq);
        }
        let adaptive = self.ns_per_task.map_or(1, |ns| {
            ((TARGET_CHUNK.as_nanos() as f64 / ns.max(1.0)) as usize).clamp(1, MAX_ADAPTIVE_CHUNK)
        });
        // A known length gives MPIRE's chunk size; tasks measured to be tiny get larger chunks.
        let size = self.floor.map_or(adaptive, |f| f.max(adaptive));
        match self.bytes_per_task {
            Some(b) if b > 0 => size.min((MAX_CHUNK_BYTES / b).max(1)),
            _ => size,
        }
    }

    pub(crate) fn observe_bytes(&mut self, bytes: usize, len: usize) {
        if let Some(per) = bytes.checked_div(len) {
            self.bytes_per_task = Some(per);
        }
    }

    pub(crate) fn observe(&mut self, busy: Duration, len: usize) {
        if self.fixed.is_some() || len == 0 || busy.is_zero() {
            return;
        }
        let sample = busy.as_nanos() as f64 / len as f64;
        self.ns_per_task = Some(match self.ns_per_task {
            None => sample,
            Some(avg) => 0.7 * avg + 0.3 * sample,
        });
    }
}
