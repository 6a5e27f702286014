//! The pool's engine: the job queue, one driver task per worker, and what happens when a worker
//! fails.
//!
//! - A *job* is one chunk of tasks of one *call* (an `apply`, a `map`, a stream). Calls push jobs
//!   without waiting ([`Core::submit`]); they bound themselves (`max_tasks_active`), so the queue
//!   never holds more than the calls allowed.
//! - Each process worker slot has a *driver* task that starts the worker, then reads its events,
//!   and a *writer* task that feeds it up to `depth` jobs (more while they are known to be tiny).
//!   Reading and writing are separate tasks so a worker blocked on writing a large result never
//!   deadlocks against us writing a large input.
//! - A thread worker takes its jobs from the queue itself (waiting on a condition variable) and
//!   hands each result straight to its call; its driver task only waits for it to leave.
//! - A worker processes its jobs in order, so when it dies, the oldest job in flight is the one it
//!   was running: that job fails with the exit status; the others (still unread in the pipe) go
//!   back to the front of the queue. The worker is replaced under the same id.
//! - User-facing futures only wait on their call's channel; no user future ever holds a lock, a
//!   permit or a half-written frame, so one that stops being polled cannot wedge a worker.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{Error, Exit, Kind, Stage};
use crate::proto::body::ARENA_MIN;
use crate::proto::frame;
use crate::proto::{Body, Failure, FromWorker, Span, ToWorker};
use crate::start::{Connected, Pool, Process, Rx, Spec, Start, StartMethod, Tx};
use crate::task::Entry;
use crate::worker::{LocalChunk, LocalNext, LocalQueue};

/// One chunk of one call.
pub(crate) struct Job {
    pub call: Arc<CallLink>,
    /// Position of the chunk in its call.
    pub seq: u64,
    /// Index of the chunk's first task in its call.
    pub first: usize,
    pub len: usize,
    pub payload: Payload,
    id: u64,
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
    tx: tokio::sync::mpsc::UnboundedSender<Completion>,
}

impl CallLink {
    pub(crate) fn new(
        decode: Decode,
    ) -> (
        Arc<CallLink>,
        tokio::sync::mpsc::UnboundedReceiver<Completion>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
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
    pub seq: u64,
    pub first: usize,
    pub len: usize,
    pub worker: usize,
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

/// Pool-wide settings the engine needs.
pub(crate) struct Settings {
    pub method: StartMethod,
    pub workers: usize,
    pub depth: usize,
    pub order_tasks: bool,
}

pub(crate) struct Core {
    pub(crate) settings: Settings,
    pub(crate) spec: Spec,
    start: Box<dyn Start>,
    st: Mutex<State>,
    /// Per slot: there may be a job for this slot's writer.
    wake: Vec<Notify>,
    /// Per slot: a job in flight there was cancelled; kill the worker.
    kill: Vec<Notify>,
    stop: Notify,
    stopped: AtomicBool,
    drivers: Mutex<Vec<JoinHandle<()>>>,
    /// Thread workers wait here for jobs (with the state lock)...
    local_cv: Condvar,
    /// ...after spinning briefly on this, which changes whenever they are woken.
    local_gen: AtomicU64,
    /// How many thread workers wait on `local_cv`; changed only under the state lock.
    local_sleepers: AtomicUsize,
    /// An exit result was stored, or the pool broke.
    exited: Notify,
}

struct State {
    global: VecDeque<Job>,
    targeted: Vec<VecDeque<Job>>,
    inflight: Vec<VecDeque<Job>>,
    pids: Vec<Option<u32>>,
    closing: bool,
    broken: Option<Error>,
    exits: Vec<Option<Result<Vec<u8>, Error>>>,
    next_id: u64,
}

/// A worker may hold more than `depth` chunks while they add up to at most this many tasks...
pub(crate) const SMALL_WINDOW: usize = 64;
/// ...and at most this much work, by the call's measured task time.
const SMALL_WINDOW_WORK: Duration = Duration::from_micros(200);
/// How long an idle thread worker watches for work before it blocks.
const LOCAL_SPIN: Duration = Duration::from_micros(100);

enum Next {
    Jobs(Vec<(u64, Outgoing)>),
    Shutdown,
    Stop,
}

enum Outgoing {
    Local(LocalChunk),
    Remote {
        entry: i64,
        count: u32,
        /// Where the inputs are in the arena; the writer holds no reference to the block, so it
        /// is freed as soon as its job is.
        span: Option<Span>,
        /// Inputs that travel in the frame.
        inline: Option<Arc<Body>>,
    },
}

impl Core {
    pub(crate) fn new(settings: Settings, spec: Spec, start: Box<dyn Start>) -> Arc<Core> {
        let n = settings.workers;
        Arc::new(Core {
            settings,
            spec,
            start,
            st: Mutex::new(State {
                global: VecDeque::new(),
                targeted: (0..n).map(|_| VecDeque::new()).collect(),
                inflight: (0..n).map(|_| VecDeque::new()).collect(),
                pids: vec![None; n],
                closing: false,
                broken: None,
                exits: (0..n).map(|_| None).collect(),
                next_id: 0,
            }),
            wake: (0..n).map(|_| Notify::new()).collect(),
            kill: (0..n).map(|_| Notify::new()).collect(),
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            drivers: Mutex::new(Vec::new()),
            local_cv: Condvar::new(),
            local_gen: AtomicU64::new(0),
            local_sleepers: AtomicUsize::new(0),
            exited: Notify::new(),
        })
    }

    /// Tells every worker (its writer task, or the thread itself) to look at the queue again.
    fn wake_all(&self) {
        if self.is_local() {
            self.wake_local(true);
        } else {
            for w in &self.wake {
                w.notify_one();
            }
        }
    }

    /// After a job was queued for `slot` (or for any worker, `None`) under the state lock.
    fn wake_queued(&self, slot: Option<usize>) {
        match (self.is_local(), slot) {
            (false, Some(slot)) => self.wake[slot].notify_one(),
            (false, None) => self.wake_all(),
            // A thread worker registers as a sleeper under the state lock, before it waits: if
            // it did so before our push, we see it; if after, it saw the job. Only then is the
            // condition variable worth a system call (std's `notify_all` always makes one).
            (true, _) => self.wake_local(self.local_sleepers.load(Ordering::SeqCst) > 0),
        }
    }

    /// Tells thread workers to look at the queue again: those spinning always, those blocked
    /// when `blocked` (a change that did not go through `wake_queued`'s lock discipline must
    /// wake them all).
    fn wake_local(&self, blocked: bool) {
        self.local_gen.fetch_add(1, Ordering::Release);
        if blocked {
            self.local_cv.notify_all();
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_local(&self) -> bool {
        self.settings.method == StartMethod::Threading
    }

    /// Starts worker `slot` and performs its handshake.
    pub(crate) async fn start_worker(self: &Arc<Self>, slot: usize) -> Result<Connected, Error> {
        let pool: Pool = self.clone();
        let link = self
            .start
            .launch(slot, &self.spec, &pool)
            .await
            .map_err(|e| e.with_worker(slot))?;
        crate::start::connect(link, slot, &self.spec).await
    }

    /// Starts the driver tasks for connected workers.
    pub(crate) fn run(self: &Arc<Self>, workers: Vec<Connected>) {
        {
            let mut st = self.state();
            for (slot, conn) in workers.iter().enumerate() {
                st.pids[slot] = conn.pid();
            }
        }
        let mut drivers = self.drivers.lock().unwrap_or_else(PoisonError::into_inner);
        for (slot, conn) in workers.into_iter().enumerate() {
            drivers.push(tokio::spawn(drive(self.clone(), slot, conn)));
        }
    }

    /// Queues a job. Fails if the pool is shut down or broken.
    pub(crate) fn submit(&self, mut job: Job) -> Result<(), Error> {
        let mut st = self.state();
        if self.stopped.load(Ordering::Acquire) || st.closing {
            return Err(Error::closed());
        }
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        st.next_id += 1;
        job.id = st.next_id;
        if self.settings.order_tasks {
            let slot = (job.seq % self.settings.workers as u64) as usize;
            st.targeted[slot].push_back(job);
            drop(st);
            self.wake_queued(Some(slot));
        } else {
            st.global.push_back(job);
            drop(st);
            self.wake_queued(None);
        }
        Ok(())
    }

    /// Cancels a call: its queued jobs are dropped, and workers running one of its jobs are
    /// killed and replaced (thread workers cannot be killed; their results are discarded).
    pub(crate) fn cancel(&self, call: &Arc<CallLink>) {
        if call.cancelled.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut st = self.state();
        st.global.retain(|j| !Arc::ptr_eq(&j.call, call));
        for q in &mut st.targeted {
            q.retain(|j| !Arc::ptr_eq(&j.call, call));
        }
        if self.is_local() {
            return;
        }
        let running: Vec<usize> = (0..self.settings.workers)
            .filter(|&s| {
                st.inflight[s]
                    .front()
                    .is_some_and(|j| Arc::ptr_eq(&j.call, call))
            })
            .collect();
        drop(st);
        for s in running {
            self.kill[s].notify_one();
        }
    }

    /// Whether the job a worker is running belongs to a cancelled call.
    fn running_cancelled(&self, slot: usize) -> bool {
        self.state().inflight[slot]
            .front()
            .is_some_and(|j| j.call.is_cancelled())
    }

    /// Moves the next job for `slot` in flight, if its window has room: a worker holds up to
    /// `depth` chunks, or more while they add up to at most [`SMALL_WINDOW`] tasks (so tiny chunks
    /// travel many to a write, and the worker never waits for the next one).
    fn take_job(&self, st: &mut State, slot: usize) -> Option<(u64, Outgoing)> {
        loop {
            let from_targeted = !st.targeted[slot].is_empty();
            let next = if from_targeted {
                st.targeted[slot].front()
            } else {
                st.global.front()
            }?;
            if !next.call.is_cancelled() && st.inflight[slot].len() >= self.settings.depth {
                // Beyond `depth` chunks only for tasks known to be tiny: at most SMALL_WINDOW
                // tasks and SMALL_WINDOW_WORK of work queued, so that a worker never hoards work
                // another one could be doing.
                let tasks: usize =
                    st.inflight[slot].iter().map(|j| j.len).sum::<usize>() + next.len;
                let ns = next.call.ns_per_task.load(Ordering::Relaxed);
                if ns == 0
                    || tasks > SMALL_WINDOW
                    || tasks as u64 * ns > SMALL_WINDOW_WORK.as_nanos() as u64
                {
                    return None;
                }
            }
            let mut job = if from_targeted {
                st.targeted[slot].pop_front()
            } else {
                st.global.pop_front()
            }?;
            if job.call.is_cancelled() {
                continue;
            }
            let send = match &mut job.payload {
                Payload::Local(chunk) => Outgoing::Local(chunk.take()?),
                Payload::Remote { entry, count, body } => Outgoing::Remote {
                    entry: *entry,
                    count: *count,
                    span: body.span(),
                    inline: body.span().is_none().then(|| body.clone()),
                },
            };
            let id = job.id;
            st.inflight[slot].push_back(job);
            return Some((id, send));
        }
    }

    /// Waits until `slot` may take jobs, and takes as many as its window allows.
    async fn next_jobs(&self, slot: usize) -> Next {
        loop {
            let notified = self.wake[slot].notified();
            {
                if self.stopped.load(Ordering::Acquire) {
                    return Next::Stop;
                }
                let mut st = self.state();
                let mut batch = Vec::new();
                while let Some(job) = self.take_job(&mut st, slot) {
                    batch.push(job);
                }
                if !batch.is_empty() {
                    return Next::Jobs(batch);
                }
                if st.closing
                    && st.global.is_empty()
                    && st.targeted[slot].is_empty()
                    && st.inflight[slot].is_empty()
                {
                    return Next::Shutdown;
                }
            }
            notified.await;
        }
    }

    /// Job `id`, the oldest in flight on process worker `slot`, is done: its window has room
    /// again, then `outcome` makes its result (decoded only now, after the writer was told, with
    /// the decoder of the job's call).
    fn complete(
        &self,
        slot: usize,
        id: u64,
        outcome: impl FnOnce(&Job) -> Outcome,
        busy: Duration,
    ) -> Result<(), Error> {
        let job = land(&mut self.state(), slot, id)
            .ok_or_else(|| Error::new(Kind::Protocol(format!("result for unknown job {id}"))))?;
        // A writer's window has room again (or, when closing, it may now send the shutdown).
        self.wake[slot].notify_one();
        deliver(job, slot, outcome, busy);
        Ok(())
    }

    /// After a worker ended: fails the job it was running and queues the rest again.
    fn fail_inflight(&self, slot: usize, head: Error) {
        let (first, rest) = {
            let mut st = self.state();
            let mut jobs = std::mem::take(&mut st.inflight[slot]);
            let first = jobs.pop_front();
            let mut rest = Vec::new();
            while let Some(job) = jobs.pop_back() {
                match job.payload {
                    Payload::Remote { .. } => st.global.push_front(job),
                    Payload::Local(_) => rest.push(job),
                }
            }
            (first, rest)
        };
        if let Some(job) = first {
            let e = head.clone().with_worker(slot).with_task(job.first);
            deliver(job, slot, |_| Outcome::Failed(e), Duration::ZERO);
        }
        for job in rest {
            let e = head.clone().with_worker(slot).with_task(job.first);
            deliver(job, slot, |_| Outcome::Failed(e), Duration::ZERO);
        }
        self.wake_all();
    }

    /// Marks the pool broken (a replacement worker cannot start): every queued job fails.
    fn break_pool(&self, e: Error) {
        let jobs: Vec<Job> = {
            let mut st = self.state();
            st.broken.get_or_insert(e.clone());
            self.exited.notify_waiters();
            let mut jobs: Vec<Job> = st.global.drain(..).collect();
            for q in &mut st.targeted {
                jobs.extend(q.drain(..));
            }
            jobs
        };
        for job in jobs {
            let slot = usize::MAX;
            deliver(job, slot, |_| Outcome::Failed(e.clone()), Duration::ZERO);
        }
        self.wake_all();
    }

    /// Records a worker's exit result (or the panic of its exit function).
    fn store_exit(&self, slot: usize, r: Result<Vec<u8>, Failure>) -> Ended {
        let r = r.map_err(|failure| {
            Error::new(Kind::Panic {
                failure,
                during: Stage::Exit,
            })
            .with_worker(slot)
        });
        self.state().exits[slot] = Some(r);
        self.exited.notify_waiters();
        Ended::Done
    }

    /// Chunks waiting in the queue, and chunks in flight on workers.
    pub(crate) fn load(&self) -> (usize, usize) {
        let st = self.state();
        let queued = st.global.len() + st.targeted.iter().map(VecDeque::len).sum::<usize>();
        (queued, st.inflight.iter().map(VecDeque::len).sum())
    }

    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        self.state().pids.clone()
    }

    /// Stops taking jobs, lets the queued ones finish, runs the exit functions and waits for every
    /// worker to leave. Returns the exit results in worker order.
    pub(crate) async fn shutdown(&self) -> Result<Vec<Result<Vec<u8>, Error>>, Error> {
        self.state().closing = true;
        self.wake_all();
        if self.is_local() {
            // A thread worker reports its exit itself: waiting for that, rather than for its
            // driver, saves a hand-off. The thread then drops its state and ends, possibly
            // after this returned.
            loop {
                let exited = self.exited.notified();
                {
                    let st = self.state();
                    if st.broken.is_some() || st.exits.iter().all(Option::is_some) {
                        break;
                    }
                }
                exited.await;
            }
        } else {
            let drivers: Vec<JoinHandle<()>> =
                std::mem::take(&mut *self.drivers.lock().unwrap_or_else(PoisonError::into_inner));
            for d in drivers {
                let _ = d.await;
            }
        }
        let mut st = self.state();
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        Ok(st
            .exits
            .iter_mut()
            .enumerate()
            .map(|(slot, e)| {
                e.take()
                    .unwrap_or_else(|| Err(Error::closed().with_worker(slot)))
            })
            .collect())
    }

    /// Kills every worker and fails every job (the pool was dropped).
    pub(crate) fn stop(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let jobs: Vec<(usize, Job)> = {
            let mut st = self.state();
            let mut jobs: Vec<(usize, Job)> =
                st.global.drain(..).map(|j| (usize::MAX, j)).collect();
            for (slot, q) in st.targeted.iter_mut().enumerate() {
                jobs.extend(q.drain(..).map(|j| (slot, j)));
            }
            for (slot, q) in st.inflight.iter_mut().enumerate() {
                jobs.extend(q.drain(..).map(|j| (slot, j)));
            }
            jobs
        };
        for (slot, job) in jobs {
            deliver(
                job,
                slot,
                |_| Outcome::Failed(Error::closed()),
                Duration::ZERO,
            );
        }
        self.stop.notify_waiters();
        self.wake_all();
        for d in self
            .drivers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            d.abort();
        }
    }
}

/// Takes job `id` out of `slot`'s flight, if it is the oldest there.
fn land(st: &mut State, slot: usize, id: u64) -> Option<Job> {
    match st.inflight[slot].front() {
        Some(j) if j.id == id => st.inflight[slot].pop_front(),
        _ => None,
    }
}

/// Hands `job`'s result to its call. `outcome` makes it, unless the call was cancelled and
/// nobody would read it (a process worker's results are then never decoded).
fn deliver(mut job: Job, worker: usize, outcome: impl FnOnce(&Job) -> Outcome, busy: Duration) {
    // The inputs go first: a caller that sees the result finds their arena block free.
    job.payload = Payload::Local(None);
    job.call.observe(busy, job.len);
    if job.call.is_cancelled() {
        return;
    }
    let outcome = outcome(&job);
    let _ = job.call.tx.send(Completion {
        seq: job.seq,
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
fn decode(job: &Job, slot: usize, bytes: &[u8]) -> Outcome {
    match (job.call.decode)(bytes, job.len) {
        Ok(out) => Outcome::Local(out),
        Err(e) => {
            Outcome::Failed(Error::codec("could not deserialise a result", e).with_worker(slot))
        }
    }
}

/// How one worker's life ended.
enum Ended {
    /// It ran its exit function and left.
    Done,
    /// It died or was killed; replace it.
    Died,
    /// The pool was dropped.
    Stopped,
}

/// Runs worker `slot` for the pool's whole life, replacing it whenever it dies.
async fn drive(core: Arc<Core>, slot: usize, first: Connected) {
    let mut conn = Some(first);
    let mut failures = 0u32;
    loop {
        if core.stopped.load(Ordering::Acquire) {
            return;
        }
        let c = match conn.take() {
            Some(c) => c,
            None => match core.start_worker(slot).await {
                Ok(c) => {
                    failures = 0;
                    c
                }
                Err(e) => {
                    failures += 1;
                    // A failing worker_init, or a start that keeps failing, breaks the pool
                    // rather than leaving its callers waiting forever.
                    if e.is_init() || failures >= 5 {
                        core.break_pool(e);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20 << failures)).await;
                    continue;
                }
            },
        };
        match serve(&core, slot, c).await {
            Ended::Done | Ended::Stopped => return,
            Ended::Died => {}
        }
    }
}

enum Why {
    Exit(Result<Vec<u8>, Failure>),
    Died,
    Broken(String),
    Cancelled,
    Stopped,
}

enum Event {
    /// Job `id`'s serialised results are `rx.body(body)`, until the next read.
    Done {
        id: u64,
        body: std::ops::Range<usize>,
        busy: Duration,
    },
    Exit(Result<Vec<u8>, Failure>),
    Eof,
    Broken(String),
}

/// The next event of a process worker. Cancel-safe: each await is one read.
async fn event(rx: &mut Rx) -> Event {
    match rx.next::<FromWorker>().await {
        Ok(Some(frame)) => match frame.header {
            FromWorker::Done { id, busy_ns } => Event::Done {
                id,
                body: frame.body,
                busy: Duration::from_nanos(busy_ns),
            },
            FromWorker::Exit(None) => Event::Exit(Ok(rx.body(frame.body).to_vec())),
            FromWorker::Exit(Some(fail)) => Event::Exit(Err(fail)),
            FromWorker::Fatal(m) => Event::Broken(m),
            other => Event::Broken(format!("unexpected message {other:?}")),
        },
        Ok(None) => Event::Eof,
        Err(e) => Event::Broken(e.to_string()),
    }
}

impl Tx {
    async fn send_jobs(&mut self, jobs: Vec<(u64, Outgoing)>) -> std::io::Result<()> {
        let Tx { io, buf } = self;
        buf.clear();
        for (id, job) in jobs {
            let Outgoing::Remote {
                entry,
                count,
                span,
                inline,
            } = job
            else {
                continue;
            };
            let header = ToWorker::Task {
                id,
                entry,
                count,
                arena: span,
            };
            let inline = inline.as_deref().map_or(&[][..], Body::inline);
            if inline.len() > ARENA_MIN {
                frame::encode_head(buf, &header, inline.len());
                frame::write_parts(io, buf, inline).await?;
                buf.clear();
            } else {
                frame::encode(buf, &header, inline);
            }
        }
        if !buf.is_empty() {
            frame::write_parts(io, buf, &[]).await?;
        }
        Ok(())
    }

    async fn send_shutdown(&mut self, exit: Option<Entry>) -> std::io::Result<()> {
        self.buf.clear();
        frame::encode(
            &mut self.buf,
            &ToWorker::Shutdown {
                exit: exit.map(|e| e.offset),
            },
            &[],
        );
        frame::write_parts(&mut self.io, &self.buf, &[]).await
    }
}

async fn write_loop(core: Arc<Core>, slot: usize, mut tx: Tx) {
    loop {
        let batch = match core.next_jobs(slot).await {
            Next::Jobs(batch) => batch,
            Next::Shutdown => {
                let _ = tx.send_shutdown(core.spec.exit).await;
                // Keep the channel open until the worker has answered.
                std::future::pending::<()>().await;
                return;
            }
            Next::Stop => return,
        };
        if tx.send_jobs(batch).await.is_err() {
            return; // the driver sees the worker's end
        }
    }
}

/// Serves one incarnation of a worker until it leaves.
async fn serve(core: &Arc<Core>, slot: usize, conn: Connected) -> Ended {
    core.state().pids[slot] = conn.pid();
    match conn {
        Connected::Thread { ended } => serve_thread(core, slot, ended).await,
        Connected::Process { tx, rx, proc } => serve_process(core, slot, tx, rx, proc).await,
    }
}

/// A thread worker runs by itself (see `ThreadWorker`); wait for it to leave.
async fn serve_thread(
    core: &Arc<Core>,
    slot: usize,
    ended: tokio::sync::oneshot::Receiver<crate::worker::ThreadEnd>,
) -> Ended {
    match ended.await {
        Ok(true) => Ended::Done,
        Ok(false) => Ended::Stopped,
        Err(_) => {
            // The thread ended without saying so: something outside a task panicked.
            core.fail_inflight(
                slot,
                Error::new(Kind::WorkerDied {
                    exit: Exit::Unknown,
                    during: Stage::Task,
                }),
            );
            Ended::Died
        }
    }
}

async fn serve_process(
    core: &Arc<Core>,
    slot: usize,
    tx: Tx,
    mut rx: Rx,
    mut proc: Box<dyn Process>,
) -> Ended {
    let writer = tokio::spawn(write_loop(core.clone(), slot, tx));
    let why = {
        let mut exited = std::pin::pin!(proc.wait());
        'events: loop {
            let stop = core.stop.notified();
            if core.stopped.load(Ordering::Acquire) {
                break 'events Why::Stopped;
            }
            tokio::select! {
                biased;
                _ = stop => break 'events Why::Stopped,
                ev = event(&mut rx) => match ev {
                    Event::Done { id, body, busy } => {
                        let bytes = rx.body(body);
                        if let Err(e) = core.complete(slot, id, |job| decode(job, slot, bytes), busy) {
                            break 'events Why::Broken(e.to_string());
                        }
                    }
                    Event::Exit(r) => break 'events Why::Exit(r),
                    Event::Eof => break 'events Why::Died,
                    Event::Broken(m) => break 'events Why::Broken(m),
                },
                _ = core.kill[slot].notified() => {
                    if core.running_cancelled(slot) {
                        break 'events Why::Cancelled;
                    }
                }
                _ = &mut exited => {
                    // Read what the worker wrote before it ended, then treat it as dead.
                    loop {
                        match tokio::time::timeout(Duration::from_millis(200), event(&mut rx)).await {
                            Ok(Event::Done { id, body, busy }) => {
                                let bytes = rx.body(body);
                                let _ = core.complete(slot, id, |job| decode(job, slot, bytes), busy);
                            }
                            Ok(Event::Exit(r)) => break 'events Why::Exit(r),
                            _ => break 'events Why::Died,
                        }
                    }
                }
            }
        }
    };
    finish(core, slot, writer, proc, why).await
}

async fn finish(
    core: &Arc<Core>,
    slot: usize,
    writer: JoinHandle<()>,
    mut proc: Box<dyn Process>,
    why: Why,
) -> Ended {
    // Stop the writer for good before touching the jobs in flight: a writer still running could
    // otherwise move a job into flight after they were requeued, and it would be lost. After an
    // orderly exit nothing is in flight, and the writer is parked for good: no need to wait.
    writer.abort();
    if !matches!(why, Why::Exit(_)) {
        let _ = writer.await;
        proc.kill();
    }
    // A worker that ran its exit function leaves by itself; do not wait forever.
    let exit = match tokio::time::timeout(Duration::from_secs(10), proc.wait()).await {
        Ok(exit) => exit,
        Err(_) => {
            proc.kill();
            proc.wait().await
        }
    };
    core.state().pids[slot] = None;
    match why {
        Why::Exit(r) => core.store_exit(slot, r),
        Why::Stopped => Ended::Stopped,
        Why::Cancelled => {
            core.fail_inflight(slot, Error::new(Kind::Cancelled));
            Ended::Died
        }
        Why::Broken(m) => {
            core.fail_inflight(slot, Error::new(Kind::Protocol(m)));
            Ended::Died
        }
        Why::Died => {
            core.fail_inflight(
                slot,
                Error::new(Kind::WorkerDied {
                    exit,
                    during: Stage::Task,
                }),
            );
            Ended::Died
        }
    }
}

impl LocalQueue for Core {
    fn next(&self, slot: usize) -> LocalNext {
        let mut st = self.state();
        let mut spun = false;
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return LocalNext::Stop;
            }
            if let Some((id, job)) = self.take_job(&mut st, slot) {
                if let Outgoing::Local(chunk) = job {
                    return LocalNext::Job(id, chunk);
                }
            } else if st.closing
                && st.global.is_empty()
                && st.targeted[slot].is_empty()
                && st.inflight[slot].is_empty()
            {
                return LocalNext::Shutdown;
            }
            if !spun {
                // Work often comes back within a wake-up's time (about 30 µs across cores on a
                // VM): watch for it briefly before blocking, so the submitter need not wake us.
                spun = true;
                let seen = self.local_gen.load(Ordering::Acquire);
                drop(st);
                let until = Instant::now() + LOCAL_SPIN;
                while self.local_gen.load(Ordering::Acquire) == seen && Instant::now() < until {
                    std::thread::yield_now();
                }
                st = self.state();
                continue;
            }
            self.local_sleepers.fetch_add(1, Ordering::SeqCst);
            st = self
                .local_cv
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
            self.local_sleepers.fetch_sub(1, Ordering::SeqCst);
            spun = false;
        }
    }

    fn done(
        &self,
        slot: usize,
        id: u64,
        out: Result<Box<dyn std::any::Any + Send>, String>,
        busy: Duration,
    ) -> Option<(u64, LocalChunk)> {
        let outcome = match out {
            Ok(b) => Outcome::Local(b),
            Err(m) => Outcome::Failed(Error::new(Kind::Protocol(m))),
        };
        let (job, next) = {
            let mut st = self.state();
            let job = land(&mut st, slot, id);
            let next = match self.stopped.load(Ordering::Acquire) {
                true => None,
                false => match self.take_job(&mut st, slot) {
                    Some((id, Outgoing::Local(chunk))) => Some((id, chunk)),
                    _ => None,
                },
            };
            (job, next)
        };
        if let Some(job) = job {
            deliver(job, slot, |_| outcome, busy);
        }
        next
    }

    fn left(&self, slot: usize, exit: Result<Vec<u8>, Failure>) {
        self.store_exit(slot, exit);
    }
}
