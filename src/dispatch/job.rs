//! Jobs and what a call shares with the pool: a *job* is one chunk of tasks of one *call* (an
//! `apply`, a `map`, a stream); its results go back through the call's own channel.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::Error;
use crate::observe::{CallProgress, Observer};
use crate::proto::Body;
use crate::worker::{LocalChunk, LocalJob, Takeback};

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
    /// How many of its tasks have their outcome delivered: a process worker reports a job in
    /// batches of consecutive tasks.
    pub(super) delivered: usize,
    /// The worker it waits for (`order_tasks`), if only one may run it.
    pub(super) target: Option<usize>,
    /// Its number on the worker it was sent to, in the order of sending (wrapping).
    pub(super) on_worker: u8,
    /// It was sent as `hold`: the worker may hold its results a while.
    pub(super) hold: bool,
    /// The workers its first task killed before (`max_retries`), and how each died; behind one
    /// pointer, as jobs move often and this is rarely there.
    #[allow(clippy::box_collection)]
    pub(super) deaths: Option<Box<Vec<(usize, crate::error::Exit)>>>,
    /// Its times, if they are sampled for the pool's stats (boxed, for the same reason).
    pub(super) timing: Option<Box<Timing>>,
    /// When it was sent to its worker (`proto::deadline::coarse_us`), while a dashboard watches;
    /// 0 before, or when none does.
    pub(super) sent: u64,
}

/// When a job was queued, and how long its worker spent on it so far.
#[derive(Debug)]
pub(crate) struct Timing {
    pub submitted: std::time::Instant,
    pub busy: Duration,
}

impl Job {
    /// Its worker spent `busy` more on it (counted only when its times are sampled).
    pub(super) fn worked(&mut self, busy: Duration) {
        if let Some(t) = &mut self.timing {
            t.busy += busy;
        }
    }

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
            delivered: 0,
            target: None,
            on_worker: 0,
            hold: false,
            deaths: None,
            timing: None,
            sent: 0,
        }
    }

    /// The job of tasks `from..` of this one, whose inputs start `skip` bytes further into its
    /// body: what is left to run of a process job whose worker died.
    pub(super) fn rest(&self, from: usize, skip: usize) -> Option<Job> {
        let Payload::Remote {
            entry,
            body,
            skip: at,
        } = &self.payload
        else {
            return None;
        };
        (from < self.len).then(|| Job {
            call: self.call.clone(),
            seq: self.seq,
            first: self.first + from,
            len: self.len - from,
            payload: Payload::Remote {
                entry: *entry,
                body: body.clone(),
                skip: at + skip,
            },
            id: 0,
            delivered: 0,
            target: self.target,
            on_worker: 0,
            hold: false,
            deaths: None,
            timing: None,
            sent: 0,
        })
    }

    /// The job of tasks `from..` of this thread worker's job, whose inputs are `rest`: what it
    /// did not run (its worker's lifespan ran out, or a task ran past its deadline).
    pub(super) fn local_rest(&self, from: usize, rest: LocalJob) -> Job {
        let mut job = Job::new(
            self.call.clone(),
            self.seq,
            self.first + from,
            self.len - from,
            Payload::local(rest),
        );
        job.target = self.target;
        job
    }

    /// The job's call, once the job is done: its inputs are dropped first.
    pub(super) fn into_call(self) -> Arc<CallLink> {
        self.call
    }

    /// A process job's serialised inputs.
    pub(super) fn inputs(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Remote { body, skip, .. } => body.bytes().get(*skip..),
            Payload::Local { .. } => None,
        }
    }
}

pub(crate) enum Payload {
    /// For thread workers: the chunk is taken when sent; how the pool takes it back when a task
    /// runs past its deadline stays.
    Local {
        chunk: Option<LocalChunk>,
        takeback: Takeback,
    },
    /// For process workers; kept until the results arrive, so what has not run can be sent
    /// again if the worker dies. The job's inputs are `body` from byte `skip` on.
    Remote {
        entry: i64,
        body: Arc<Body>,
        skip: usize,
    },
}

impl Payload {
    pub(crate) fn local(job: LocalJob) -> Payload {
        Payload::Local {
            chunk: Some(job.chunk),
            takeback: job.takeback,
        }
    }
}

/// Decodes `count` results of a process worker's batch into the boxed `ChunkOut<R>` a thread
/// worker would have handed over: how many decoded, and why the next did not, if one did not.
pub(crate) type Decode =
    fn(bytes: &[u8], count: usize) -> (Box<dyn Any + Send>, usize, Option<String>);

/// Finds input `index` of a process job's inputs: its `Debug`, and where the input after it
/// starts.
pub(crate) type Locate = fn(inputs: &[u8], index: usize) -> Option<(String, usize)>;

/// What a call shares with the pool: its cancellation flag, where its results go, how to decode
/// them and find its inputs, and how long its tasks take.
pub(crate) struct CallLink {
    cancelled: AtomicBool,
    /// How far the call has got: what its bar, the pool's stats and the dashboard read.
    pub(crate) progress: Arc<CallProgress>,
    /// The pool's counters.
    pool: Arc<Observer>,
    /// How long each of its tasks may run, in microseconds (0: no limit); set before its first
    /// job is submitted.
    timeout_us: AtomicU64,
    /// Measured nanoseconds per task (moving average); 0 until a chunk has finished.
    ns_per_task: AtomicU64,
    pub(super) decode: Decode,
    pub(super) locate: Locate,
    tx: UnboundedSender<Completion>,
}

impl CallLink {
    pub(crate) fn new(
        decode: Decode,
        locate: Locate,
        pool: Arc<Observer>,
        progress: Arc<CallProgress>,
    ) -> (Arc<CallLink>, UnboundedReceiver<Completion>) {
        let (tx, rx) = unbounded_channel();
        (
            Arc::new(CallLink {
                cancelled: AtomicBool::new(false),
                progress,
                pool,
                timeout_us: AtomicU64::new(0),
                decode,
                locate,
                ns_per_task: AtomicU64::new(0),
                tx,
            }),
            rx,
        )
    }

    /// Sets the deadline of every task of the call, before its first job is submitted.
    pub(crate) fn set_timeout(&self, timeout: Option<Duration>) {
        let us = crate::proto::deadline::timeout_us(timeout);
        self.timeout_us.store(us, Ordering::Relaxed);
    }

    /// How long each task may run, in microseconds; 0: no limit.
    pub(crate) fn timeout_us(&self) -> u64 {
        self.timeout_us.load(Ordering::Relaxed)
    }

    /// How long each task may run.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        Some(self.timeout_us())
            .filter(|&t| t != 0)
            .map(Duration::from_micros)
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
        if len == 0 || busy.is_zero() {
            return;
        }
        let sample = (busy.as_nanos() as u64 / len as u64).max(1);
        let old = self.ns_per_task.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample * 3) / 10
        };
        // Written only when it moved by more than a sixteenth: the workers that deliver side by
        // side would otherwise take this cache line from each other, and from whoever reads the
        // call, at every batch.
        if new.abs_diff(old) > old / 16 {
            self.ns_per_task.store(new, Ordering::Relaxed);
        }
    }

    /// Hands the outcome of tasks `first..first + len` (indices in the call) to the call, of
    /// which `failed` failed. `outcome` makes it, unless the call was cancelled and nobody would
    /// read it (a process worker's results are then never decoded).
    pub(super) fn deliver(
        &self,
        first: usize,
        len: usize,
        worker: Option<usize>,
        failed: usize,
        outcome: impl FnOnce() -> Outcome,
        busy: Duration,
    ) {
        self.observe(busy, len);
        self.pool.counters.finished(worker, len, failed, 0, busy);
        if self.is_cancelled() {
            return;
        }
        let _ = self.tx.send(Completion {
            first,
            len,
            failed,
            worker,
            outcome: outcome(),
            busy,
        });
    }

    /// Fails tasks `first..first + len` (indices in the call) with `e`.
    pub(super) fn deliver_failure(
        &self,
        first: usize,
        len: usize,
        worker: Option<usize>,
        e: Error,
    ) {
        let timed_out = if e.is_timeout() { len } else { 0 };
        self.pool
            .counters
            .finished(worker, len, len, timed_out, Duration::ZERO);
        if self.is_cancelled() {
            return;
        }
        let _ = self.tx.send(Completion {
            first,
            len,
            failed: len,
            worker,
            outcome: Outcome::Failed(e),
            busy: Duration::ZERO,
        });
    }
}

/// Finished tasks of a job.
pub(crate) struct Completion {
    pub first: usize,
    pub len: usize,
    /// How many of them failed.
    pub failed: usize,
    /// The worker that ran them, if one did.
    pub worker: Option<usize>,
    pub outcome: Outcome,
    /// Time the worker spent running them.
    pub busy: Duration,
}

pub(crate) enum Outcome {
    /// A boxed `ChunkOut<R>`: handed over by a thread worker, or decoded by a process worker's
    /// driver straight from its journal.
    Local(Box<dyn Any + Send>),
    /// Every task failed with this error.
    Failed(Error),
}

/// Fails every task of `job` with `e` (each with its own index).
pub(super) fn fail(job: Job, worker: Option<usize>, e: Error) {
    let (first, len) = (job.first + job.delivered, job.len - job.delivered);
    let call = job.call.clone();
    // The inputs go first: a caller that sees the error finds their arena block free.
    drop(job);
    let e = match worker {
        Some(w) => e.with_worker(w),
        None => e,
    };
    call.deliver_failure(first, len, worker, e);
}
