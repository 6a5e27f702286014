//! The loop of a thread worker: it takes its jobs from the pool's queue itself and hands each
//! result straight to its call.
//!
//! A thread cannot be killed. When a task of a thread worker runs past its deadline, the pool
//! *abandons* the thread: it takes the finished results and the unstarted inputs of the chunk
//! out of the chunk's shared state (`Salvage`), fails the task, and starts another thread in the
//! slot. The abandoned thread sees [`Watch::cancelled`] (a task may check it through
//! `Worker::is_cancelled`), and once its task returns it hands nothing over and ends.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::catch::install_panic_hook;
use super::probe::{Measured, Probe};
use super::{Context, Exited, SetupCall, run_exit};
use crate::proto::Failure;
use crate::proto::deadline::Stamper;
use crate::sys::image::EntryFn;

/// What a thread worker's job runs: its tasks, on the worker's context, at most `budget` of
/// them (what is left of the worker's lifespan).
pub(crate) type LocalChunk = Box<dyn FnOnce(&mut Context, u64) -> LocalDone + Send>;

/// A job for a thread worker: its tasks, and how the pool takes it back when one of them runs
/// past its deadline.
pub(crate) struct LocalJob {
    pub chunk: LocalChunk,
    pub takeback: Takeback,
}

/// How the pool takes back a thread worker's job whose task ran past its deadline.
pub(crate) enum Takeback {
    /// It cannot: its tasks have no deadline.
    None,
    /// A job of one task: through the task's deadline word in the thread's [`Watch`]
    /// ([`Watch::take_task`]).
    Task,
    /// A job of several: its finished results and unstarted inputs are behind a lock.
    Chunk(Arc<dyn Salvage>),
}

impl Takeback {
    /// Whether the job's tasks have deadlines.
    pub(crate) fn is_timed(&self) -> bool {
        !matches!(self, Takeback::None)
    }
}

/// What a thread worker's chunk did.
pub(crate) struct LocalDone {
    /// A boxed `ChunkOut<R>` of the tasks that ran, or why the chunk could not run at all.
    pub out: Result<Box<dyn Any + Send>, String>,
    /// How many tasks ran (fewer than the chunk's when its budget ran out)...
    pub ran: usize,
    /// ...and how many of them failed.
    pub failed: usize,
    /// Tasks among the worker's slowest (insights): their index in the chunk, and what they
    /// used.
    pub slow: Vec<(u32, Measured)>,
    /// The tasks it did not run, to queue again.
    pub rest: Option<LocalJob>,
    /// The pool took the chunk over (its task ran past its deadline): there is nothing to hand
    /// over.
    pub abandoned: bool,
}

/// What a job cost its thread worker.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spent {
    /// From when it took the job to when it finished it.
    pub busy: Duration,
    /// Processor time, when measured (insights on).
    pub cpu: Duration,
}

impl LocalDone {
    /// A chunk that could not run at all.
    pub(crate) fn failed(why: String) -> LocalDone {
        LocalDone {
            out: Err(why),
            ran: 0,
            failed: 0,
            slow: Vec::new(),
            rest: None,
            abandoned: false,
        }
    }

    /// A chunk the pool took over (its task ran past its deadline): nothing to hand over.
    pub(crate) fn abandoned() -> LocalDone {
        LocalDone {
            out: Ok(Box::new(())),
            ran: 0,
            failed: 0,
            slow: Vec::new(),
            rest: None,
            abandoned: true,
        }
    }
}

/// A chunk whose tasks have deadlines keeps its inputs and results where the pool can reach
/// them: if a task runs past its deadline, the pool takes what finished and what did not start.
pub(crate) trait Salvage: Send + Sync {
    /// If the task running is still the one whose deadline word is `word`: marks the chunk
    /// abandoned and returns its finished results (a boxed `ChunkOut<R>`), how many tasks
    /// finished, and the tasks not started.
    fn salvage(&self, word: u64) -> Option<Salvaged>;
}

/// What the pool took back from an abandoned chunk.
pub(crate) struct Salvaged {
    pub out: Box<dyn Any + Send>,
    pub finished: usize,
    /// How many of the finished tasks failed.
    pub failed: usize,
    pub rest: Option<LocalJob>,
}

/// The deadline word of a task the pool took over (no word is this: see `proto::deadline`).
const TAKEN: u64 = u64::MAX;

/// What a thread worker and the pool share about the task it runs.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// The pool has given up on the task that runs (`Worker::is_cancelled`).
    pub cancelled: AtomicBool,
    /// The deadline word of the task that runs (see `proto::deadline`); 0 when none.
    pub deadline: AtomicU64,
    /// The pool replaced this thread: it leaves once its task returns.
    pub abandoned: AtomicBool,
    /// It counts among the abandoned threads the pool bounds (see `LocalQueue::abandoned_left`).
    pub counted: AtomicBool,
    /// The time deadlines count from.
    pub epoch_us: u64,
    /// It started its exit function.
    pub exiting: tokio::sync::Notify,
    /// Its lifespan is over: it is not its slot's worker any more.
    pub retired: AtomicBool,
    /// How long its set-up (`worker_init`) took, in nanoseconds.
    init_ns: AtomicU64,
}

impl Watch {
    pub(crate) fn new(epoch_us: u64) -> Watch {
        Watch {
            epoch_us,
            ..Watch::default()
        }
    }

    /// The pool takes over a one-task job whose task has the deadline word `word`, if the task
    /// has not finished (the thread then finds the word changed, and hands nothing over).
    pub(crate) fn take_task(&self, word: u64) -> bool {
        word != 0
            && self
                .deadline
                .compare_exchange(word, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// A one-task job's task finished: `false` if the pool took it over first.
    pub(crate) fn task_finished(&self, word: u64) -> bool {
        self.deadline
            .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// The pool gives up on this thread: it leaves once its task (or its exit function) returns,
    /// and is counted among the abandoned threads until it does.
    pub(crate) fn abandon(&self, count: &AtomicUsize) {
        self.cancelled.store(true, Ordering::Relaxed);
        if !self.counted.swap(true, Ordering::AcqRel) {
            count.fetch_add(1, Ordering::AcqRel);
        }
        self.abandoned.store(true, Ordering::Release);
    }

    /// How long its set-up took.
    pub(crate) fn init_time(&self) -> Duration {
        Duration::from_nanos(self.init_ns.load(Ordering::Relaxed))
    }

    /// The deadline word of the running task, and its epoch.
    pub(crate) fn deadline(&self) -> (u64, u64) {
        (self.deadline.load(Ordering::Acquire), self.epoch_us)
    }
}

/// What a thread worker does next.
pub(crate) enum LocalNext {
    Job(u64, LocalChunk),
    /// Run the exit function and leave.
    Shutdown,
    /// Leave at once (the pool was dropped, or it abandoned this thread).
    Stop,
}

/// The pool as a thread worker sees it: it takes its jobs from the queue itself and hands the
/// results straight to their calls, with no task in between. Each call names the worker by its
/// slot and its `Watch` (a slot's thread may have been replaced).
pub(crate) trait LocalQueue: Send + Sync {
    /// Blocks until there is something to do.
    fn next(&self, slot: usize, watch: &Watch) -> LocalNext;
    /// Job `id` finished as `done` says. Hands back the next job when one is ready at once (and
    /// the worker wants `more`), so that a busy worker takes the pool's lock once per job, not
    /// twice.
    fn done(
        &self,
        slot: usize,
        watch: &Watch,
        id: u64,
        done: LocalDone,
        spent: Spent,
        more: bool,
    ) -> Option<(u64, LocalChunk)>;
    /// The worker's lifespan is over: it leaves its slot, and runs its exit function next.
    fn retire(&self, slot: usize, watch: &Watch);
    /// The worker ran its exit function and dropped its state; this is its exit result.
    fn left(&self, slot: usize, watch: &Watch, exit: Result<Exited, Failure>);
    /// An abandoned thread ended.
    fn abandoned_left(&self, watch: &Watch);
}

/// How a thread worker ended.
#[derive(Debug)]
pub(crate) enum ThreadEnd {
    /// After shutdown: its exit result went to [`LocalQueue::left`].
    Done,
    /// Stopped (the pool was dropped, or its set-up failed).
    Stopped,
    /// Its lifespan is over: its slot is free, and it runs its exit function; this fires once
    /// its exit result went to [`LocalQueue::left`].
    Retired(tokio::sync::oneshot::Receiver<()>),
}

/// The loop of a thread worker.
pub(crate) struct ThreadWorker {
    pub id: usize,
    /// What it measures of its tasks for insights: 0 nothing, 1 their times.
    pub insights: u8,
    /// It retires after this many tasks.
    pub lifespan: Option<u64>,
    pub shared: Arc<dyn Any + Send + Sync>,
    pub setup: EntryFn,
    pub exit: Option<EntryFn>,
    pub queue: Arc<dyn LocalQueue>,
    pub watch: Arc<Watch>,
    /// Where set-up reports, when the pool waits for it.
    pub ready: Option<tokio::sync::oneshot::Sender<Result<(), Failure>>>,
    pub ended: tokio::sync::oneshot::Sender<ThreadEnd>,
}

impl ThreadWorker {
    pub(crate) fn run(self) {
        install_panic_hook();
        let ThreadWorker {
            id,
            insights,
            lifespan,
            shared,
            setup,
            exit,
            queue,
            watch,
            ready,
            ended,
        } = self;
        let mut ended = Some(ended);
        // How it ends: an abandoned thread is no longer the pool's worker, and says so.
        let leave = |ended: Option<tokio::sync::oneshot::Sender<ThreadEnd>>, how: ThreadEnd| match (
            watch.is_abandoned(),
            ended,
        ) {
            (true, _) => queue.abandoned_left(&watch),
            (false, Some(ended)) => drop(ended.send(how)),
            (false, None) => {}
        };
        let mut cx = Context {
            id,
            shared: Some(shared),
            state: None,
            stamper: Stamper::new(watch.epoch_us),
            watch: watch.clone(),
            // Threads share one resident set: their peak memory says nothing of a task.
            probe: (insights > 0).then(|| Probe::new(false)),
        };
        let mut call = SetupCall::new(false);
        let t0 = Instant::now();
        setup(&mut cx, &[], &mut call);
        watch
            .init_ns
            .store(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let result = call.result;
        let failed = result.is_err();
        // Without a waiting pool (no `worker_init`), a failed set-up just ends the thread, and
        // the pool replaces it.
        let heard = ready.is_none_or(|r| r.send(result).is_ok());
        if !heard || failed || watch.is_abandoned() {
            return leave(ended, ThreadEnd::Stopped);
        }
        let mut left = lifespan.unwrap_or(u64::MAX);
        let mut next_job = None;
        loop {
            let next = match next_job.take() {
                Some((job, chunk)) => LocalNext::Job(job, chunk),
                None => queue.next(id, &watch),
            };
            let retired = match next {
                LocalNext::Job(job, chunk) => {
                    let t0 = Instant::now();
                    let done = chunk(&mut cx, left);
                    let busy = t0.elapsed();
                    let cpu = cx.probe.as_mut().map_or(Duration::ZERO, |p| {
                        p.batch_done(busy, done.ran as u32);
                        p.take_cpu()
                    });
                    let spent = Spent { busy, cpu };
                    left = left.saturating_sub(done.ran as u64);
                    next_job = queue.done(id, &watch, job, done, spent, left > 0);
                    if next_job.is_none() && watch.is_abandoned() {
                        return leave(ended, ThreadEnd::Stopped);
                    }
                    if left > 0 {
                        continue;
                    }
                    // Its life is over: the slot goes to its successor now, its exit function
                    // runs after.
                    queue.retire(id, &watch);
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    leave(ended.take(), ThreadEnd::Retired(rx));
                    Some(tx)
                }
                LocalNext::Shutdown => None,
                LocalNext::Stop => return leave(ended, ThreadEnd::Stopped),
            };
            let none = || Ok(Exited::Bytes(Vec::new()));
            let result = exit.map_or_else(none, |f| run_exit(f, &mut cx, true));
            queue.left(id, &watch, result);
            // The state is dropped when this returns, on this thread, after the pool was told.
            return match retired {
                Some(told) => {
                    let _ = told.send(());
                    if watch.is_abandoned() {
                        queue.abandoned_left(&watch);
                    }
                }
                None => leave(ended, ThreadEnd::Done),
            };
        }
    }
}
