//! Jobs and what a call shares with the pool: a *job* is one chunk of tasks of one *call* (an
//! `apply`, a `map`, a stream); its results go back through the call's own channel.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::Error;
use crate::proto::Body;
use crate::worker::LocalChunk;

/// One chunk of one call.
pub(crate) struct Job {
    pub call: Arc<CallLink>,
    /// Position of the chunk in its call.
    pub seq: u64,
    /// Index of the chunk's first task in its call.
    pub first: usize,
    pub len: usize,
    pub payload: Payload,
    /// Assigned by the queue.
    pub(super) id: u64,
}

impl Job {
    pub(crate) fn new(
        call: Arc<CallLink>,
        seq: u64,
        first: usize,
        len: usize,
        payload: Payload,
    ) -> Job {
        Job {
            call,
            seq,
            first,
            len,
            payload,
            id: 0,
        }
    }
}

pub(crate) enum Payload {
    /// For thread workers; taken when sent.
    Local(Option<LocalChunk>),
    /// For process workers; kept until the result arrives, so the job can be sent again if the
    /// worker dies before reading it.
    Remote {
        entry: i64,
        count: u32,
        body: Arc<Body>,
    },
}

/// Turns a process worker's serialised results for a chunk of `count` tasks into the boxed
/// `ChunkOut<R>` a thread worker would have handed over.
pub(crate) type Decode = fn(bytes: &[u8], count: usize) -> Result<Box<dyn Any + Send>, String>;

/// What a call shares with the pool: its cancellation flag, where its results go, how to decode
/// them, and how long its tasks take.
pub(crate) struct CallLink {
    cancelled: AtomicBool,
    /// Measured nanoseconds per task (moving average); 0 until a chunk has finished.
    ns_per_task: AtomicU64,
    decode: Decode,
    tx: UnboundedSender<Completion>,
}

impl CallLink {
    pub(crate) fn new(decode: Decode) -> (Arc<CallLink>, UnboundedReceiver<Completion>) {
        let (tx, rx) = unbounded_channel();
        (
            Arc::new(CallLink {
                cancelled: AtomicBool::new(false),
                decode,
                ns_per_task: AtomicU64::new(0),
                tx,
            }),
            rx,
        )
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the call cancelled; `false` if it already was.
    pub(super) fn cancel(&self) -> bool {
        !self.cancelled.swap(true, Ordering::AcqRel)
    }

    /// Measured nanoseconds per task, 0 while unknown.
    pub(super) fn ns_per_task(&self) -> u64 {
        self.ns_per_task.load(Ordering::Relaxed)
    }

    fn observe(&self, busy: Duration, len: usize) {
        if len == 0 {
            return;
        }
        let sample = (busy.as_nanos() as u64 / len as u64).max(1);
        let old = self.ns_per_task.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample * 3) / 10
        };
        self.ns_per_task.store(new, Ordering::Relaxed);
    }
}

/// A finished job.
pub(crate) struct Completion {
    pub first: usize,
    pub len: usize,
    /// The worker that ran it, if one did.
    pub worker: Option<usize>,
    pub outcome: Outcome,
    /// Time the worker spent running the chunk.
    pub busy: Duration,
}

pub(crate) enum Outcome {
    /// A boxed `ChunkOut<R>`: handed over by a thread worker, or decoded by a process worker's
    /// driver straight from its read buffer.
    Local(Box<dyn Any + Send>),
    /// Every task of the chunk failed with this error.
    Failed(Error),
}

/// Hands `job`'s result to its call. `outcome` makes it, unless the call was cancelled and
/// nobody would read it (a process worker's results are then never decoded).
pub(super) fn deliver(
    mut job: Job,
    worker: Option<usize>,
    outcome: impl FnOnce(&Job) -> Outcome,
    busy: Duration,
) {
    // The inputs go first: a caller that sees the result finds their arena block free.
    job.payload = Payload::Local(None);
    job.call.observe(busy, job.len);
    if job.call.is_cancelled() {
        return;
    }
    let outcome = outcome(&job);
    let _ = job.call.tx.send(Completion {
        first: job.first,
        len: job.len,
        worker,
        outcome,
        busy,
    });
}

/// Decodes a process worker's results for `job` straight from the read buffer, with the decoder
/// of its call: a large result is never first copied into a buffer of its own, whose fresh pages
/// cost more than the copy.
pub(super) fn decode(job: &Job, slot: usize, bytes: &[u8]) -> Outcome {
    match (job.call.decode)(bytes, job.len) {
        Ok(out) => Outcome::Local(out),
        Err(e) => {
            Outcome::Failed(Error::codec("could not deserialise a result", e).with_worker(slot))
        }
    }
}
