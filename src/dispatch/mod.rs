//! The pool's engine: the job queue, the workers' slots and drivers, and what happens when a
//! worker fails. `README.md` in this folder explains the queue, the windows and the wake-ups.
//!
//! - [`job`]: jobs and what a call shares with the pool;
//! - [`queue`]: which job goes to which worker, and when;
//! - [`sleep`]: how thread workers wait for jobs and are woken;
//! - [`driver`]: one process worker's writer and reader;
//! - [`settle`]: what a process worker that ended mid-work leaves behind;
//! - [`watchdog`]: task deadlines, and abandoning a late thread;
//! - [`slot`]: one worker slot for the pool's life: start, serve, replace, successors.
//!
//! User-facing futures only wait on their call's channel; no user future ever holds a lock, a
//! permit or a half-written frame, so one that stops being polled cannot wedge a worker.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{Error, Kind, Stage};
use crate::observe::Observer;
use crate::observe::Stats;
use crate::observe::meters::QueueDepth;
use crate::observe::stats::{Cause as RestartCause, Counters};
use crate::observe::view::WorkerView;
use crate::observe::{registry, trace};
use crate::proto::Failure;
use crate::start::{Connected, Pool, Spec, Start, StartMethod};
use crate::worker::{Exited, Watch};

mod driver;
mod job;
mod queue;
mod settle;
mod sleep;
mod slot;
mod watchdog;

pub(crate) use job::{CallLink, Completion, Job, Locate, Outcome, Payload};
pub(crate) use queue::SMALL_WINDOW;

/// A worker slot that fails to start this many times in a row breaks the pool.
const START_ATTEMPTS: u32 = 5;

use queue::Queue;
use sleep::Sleep;

/// Pool-wide settings the engine needs.
pub(crate) struct Settings {
    pub method: StartMethod,
    pub workers: usize,
    pub depth: usize,
    pub order_tasks: bool,
    /// Every task's deadline, unless its call sets its own.
    pub task_timeout: Option<Duration>,
    pub exit_timeout: Option<Duration>,
    /// How many times a task whose worker died runs again.
    pub max_retries: u32,
    /// At most this many tasks wait in the queue.
    pub max_queued: Option<usize>,
}

pub(crate) struct Core {
    pub(crate) settings: Settings,
    pub(crate) spec: Spec,
    /// What the pool shows of itself: counters, insights, calls, bars.
    pub(crate) observer: Arc<Observer>,
    start: Box<dyn Start>,
    st: Mutex<State>,
    /// Per process slot: there may be a job for this slot's writer.
    wake: Vec<Notify>,
    /// Per process slot: a job in flight there was cancelled; kill the worker.
    kill: Vec<Notify>,
    /// Per slot: a job whose tasks have a deadline was sent there, and its watchdog wants to
    /// hear of it when their timeout is shorter than this (microseconds; see `Core::expired`).
    timed: Vec<(Notify, AtomicU64)>,
    /// Where thread workers wait for jobs.
    sleep: Sleep,
    stop: Notify,
    stopped: AtomicBool,
    drivers: Mutex<Vec<JoinHandle<()>>>,
    /// Per slot: how many frames of results its workers have sent.
    heard: Vec<AtomicU64>,
    /// Per slot: start a successor now (`worker_lifespan`; see `slot.rs`), and its signal.
    successor_wanted: Vec<AtomicBool>,
    prestart: Vec<Notify>,
    /// Per slot: nanoseconds a task takes there (a moving average), and how long its last
    /// start took.
    lives: Vec<[AtomicU64; 2]>,
    /// Thread workers abandoned after a timeout that have not ended yet...
    abandoned: AtomicUsize,
    /// ...and where a slot waits for one of them to end, when there are `workers` of them.
    thread_room: Notify,
}

struct State {
    queue: Queue,
    pids: Vec<Option<u32>>,
    closing: bool,
    broken: Option<Error>,
    exits: Vec<Option<Result<Exited, Error>>>,
    /// Exit results of workers that left before the shutdown (lifespan, memory), or whose slot
    /// had another worker after them, in the order they left.
    retired: Vec<Result<Exited, Error>>,
    /// What each thread worker shares with the pool about the task it runs.
    watches: Vec<Option<Arc<Watch>>>,
    /// Per slot: how many times a worker was started again in it, and how the last one ended.
    ends: Vec<(u64, Option<String>)>,
}

impl Core {
    pub(crate) fn new(
        settings: Settings,
        spec: Spec,
        start: Box<dyn Start>,
        observer: Arc<Observer>,
    ) -> Arc<Core> {
        let n = settings.workers;
        let local = settings.method == StartMethod::Threading;
        let per_writer = |_| Notify::new();
        Arc::new(Core {
            st: Mutex::new(State {
                queue: Queue::new(
                    n,
                    settings.depth,
                    settings.max_queued,
                    spec.lifespan,
                    QueueDepth::new(&observer.name),
                ),
                pids: vec![None; n],
                closing: false,
                broken: None,
                exits: (0..n).map(|_| None).collect(),
                retired: Vec::new(),
                watches: vec![None; n],
                ends: vec![(0, None); n],
            }),
            wake: (0..if local { 0 } else { n }).map(per_writer).collect(),
            kill: (0..if local { 0 } else { n }).map(per_writer).collect(),
            timed: (0..n)
                .map(|_| (Notify::new(), AtomicU64::new(u64::MAX)))
                .collect(),
            sleep: Sleep::default(),
            settings,
            spec,
            observer,
            start,
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            drivers: Mutex::new(Vec::new()),
            heard: (0..n).map(|_| AtomicU64::new(0)).collect(),
            successor_wanted: (0..n).map(|_| AtomicBool::new(false)).collect(),
            prestart: (0..n).map(per_writer).collect(),
            lives: (0..n).map(|_| Default::default()).collect(),
            abandoned: AtomicUsize::new(0),
            thread_room: Notify::new(),
        })
    }

    /// Tells the workers that the queue changed: for `slot` alone, or for any (`None`). A
    /// `queued` change happened under the state lock (see [`Sleep::queued`]).
    fn wake(&self, slot: Option<usize>, queued: bool) {
        if self.is_local() {
            match queued {
                true => self.sleep.queued(),
                false => self.sleep.wake(true),
            }
            return;
        }
        match slot {
            Some(slot) => self.wake[slot].notify_one(),
            None => self.wake.iter().for_each(Notify::notify_one),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sleep(&self) -> &Sleep {
        &self.sleep
    }

    fn is_closing(&self) -> bool {
        self.state().closing
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub(crate) fn is_local(&self) -> bool {
        self.settings.method == StartMethod::Threading
    }

    /// Starts worker `slot`, and starts it again (with backoff) while it fails to start: the
    /// process could not be made, it died before its hello or in its set-up, it was too slow.
    /// After [`START_ATTEMPTS`] failures in a row the crash-loop breaker gives up, with an error
    /// whose source is the last failure's cause; a `worker_init` that panics, or a worker that
    /// runs another binary, gives up at once.
    ///
    /// A `worker_init` past its `worker_init_timeout` fails `build()` at once (`building`),
    /// and in a replacement counts toward the breaker like any failed start.
    pub(crate) async fn start_slot(
        self: &Arc<Self>,
        slot: usize,
        building: bool,
    ) -> Result<Connected, Error> {
        let mut failures = 0u32;
        loop {
            let t0 = std::time::Instant::now();
            let e = match self.start_worker(slot).await {
                Ok(conn) => {
                    let took = t0.elapsed();
                    self.lives[slot][1].store(took.as_nanos() as u64, Ordering::Relaxed);
                    let init = conn.init_time();
                    if let Some(insights) = &self.observer.insights {
                        insights.started(slot, took.saturating_sub(init), init);
                    }
                    let (span, pid) = (&self.observer.span, conn.pid());
                    trace::worker_started(
                        span,
                        slot,
                        pid,
                        took.saturating_sub(init),
                        init,
                        !building,
                    );
                    return Ok(conn);
                }
                Err(e) if !e.is_retryable_start() => return Err(e),
                Err(e) if building && e.is_timeout() && e.is_init() => return Err(e),
                Err(e) => e,
            };
            trace::worker_start_failed(&self.observer.span, slot, &e);
            failures += 1;
            if failures >= START_ATTEMPTS {
                return Err(Error::gave_up(slot, failures, e));
            }
            if self.is_stopped() {
                return Err(Error::closed());
            }
            tokio::time::sleep(Duration::from_millis(10 << (failures - 1))).await;
        }
    }

    /// Starts worker `slot` and performs its handshake.
    async fn start_worker(self: &Arc<Self>, slot: usize) -> Result<Connected, Error> {
        let pool: Pool = self.clone();
        let link = self
            .start
            .launch(slot, &self.spec, &pool)
            .await
            .map_err(|e| e.with_worker(slot))?;
        crate::start::connect(link, slot, &self.spec).await
    }

    /// Waits, before a thread worker is replaced, until fewer than `workers` abandoned threads
    /// run (see [`Builder::task_timeout`](crate::Builder::task_timeout)). Process workers never
    /// wait here: a killed process is gone.
    async fn room_for_a_thread(&self) {
        loop {
            let room = self.thread_room.notified();
            if self.abandoned.load(Ordering::Acquire) < self.settings.workers || self.is_stopped() {
                return;
            }
            room.await;
        }
    }

    /// Worker `slot` was sent tasks, `sent` in all (less those taken back): when it has been
    /// sent its last (`worker_lifespan`), or what is left of its life would take less than a
    /// few start-ups, its successor starts now, to be ready when it retires.
    pub(super) fn sent(&self, slot: usize, sent: u64) {
        let Some(lifespan) = self.spec.lifespan else {
            return;
        };
        let [per_task, start] = &self.lives[slot];
        let left = lifespan.saturating_sub(sent);
        let per_task = per_task.load(Ordering::Relaxed);
        let start = start.load(Ordering::Relaxed).max(1_000_000);
        let soon = left == 0 || (per_task != 0 && left.saturating_mul(per_task) <= 4 * start);
        if soon && !self.successor_wanted[slot].swap(true, Ordering::AcqRel) {
            self.prestart[slot].notify_waiters();
        }
    }

    /// Worker `slot` finished `tasks` tasks in `busy`, using `cpu` of processor time (when it
    /// measured it): for insights, and for its lifespan, how long its tasks take.
    pub(super) fn worked(&self, slot: usize, tasks: usize, busy: Duration, cpu: Duration) {
        if let Some(insights) = &self.observer.insights {
            insights.worked(slot, tasks, busy, cpu);
        }
        if self.spec.lifespan.is_none() || tasks == 0 || busy.is_zero() {
            return;
        }
        let per_task = &self.lives[slot][0];
        let sample = busy.as_nanos() as u64 / tasks as u64;
        let old = per_task.load(Ordering::Relaxed);
        let avg = if old == 0 {
            sample
        } else {
            (old * 7 + sample * 3) / 10
        };
        per_task.store(avg.max(1), Ordering::Relaxed);
    }

    /// Worker `slot` ended for `cause` (described by `how`): it is replaced.
    pub(super) fn ended(&self, slot: usize, cause: RestartCause, how: String) {
        trace::worker_ended(&self.observer.span, slot, cause, &how);
        crate::observe::progress::worker_gone(self.observer.id, slot);
        self.observer.counters.restarted(cause);
        if let Some(insights) = &self.observer.insights {
            insights.stopped(slot);
        }
        let mut st = self.state();
        st.ends[slot].0 += 1;
        st.ends[slot].1 = Some(how);
    }

    /// Worker `slot` starts its exit function.
    pub(super) fn exit_starts(&self, slot: usize) {
        if let Some(insights) = &self.observer.insights {
            insights.exit_started(slot);
        }
    }

    /// `job` landed: every task of it is done. Its times go to the stats, when sampled.
    pub(super) fn landed(&self, job: &Job) {
        if let Some(t) = &job.timing {
            self.observer.counters.timed(t.submitted, job.len, t.busy);
        }
    }

    /// Whether slot `slot` wants a successor started (and forgets that it did).
    pub(super) fn successor_wanted(&self, slot: usize) -> bool {
        self.successor_wanted[slot].swap(false, Ordering::AcqRel)
    }

    /// Keeps `task` (the last moments of a retired worker) with the drivers, for `shutdown`
    /// to wait for.
    fn keep(&self, task: JoinHandle<()>) {
        let mut drivers = self.drivers.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_stopped() {
            task.abort();
        } else {
            drivers.push(task);
        }
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
            drivers.push(tokio::spawn(slot::drive(self.clone(), slot, conn)));
        }
    }

    /// Queues a job. Fails if the pool is shut down or broken.
    ///
    /// When the queue is full (`max_queued_tasks`) the job comes back as `Ok(Err(job))`, and
    /// `room`, if given, is woken once tasks leave the queue.
    pub(crate) fn submit(&self, job: Job, room: Option<&Waker>) -> Result<Result<(), Job>, Error> {
        // The clock is read before the lock is taken, not under it.
        let submitted = Counters::sample(job.seq, job.call.ns_per_task()).then(Instant::now);
        let mut st = self.state();
        if self.is_stopped() || st.closing {
            return Err(Error::closed());
        }
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        if !st.queue.admits(job.len, room) {
            return Ok(Err(job));
        }
        let mut job = job;
        job.timing = submitted.map(|submitted| {
            Box::new(job::Timing {
                submitted,
                busy: Duration::ZERO,
            })
        });
        let target = self
            .settings
            .order_tasks
            .then(|| (job.seq % self.settings.workers as u64) as usize);
        st.queue.push(job, target);
        drop(st);
        self.wake(target, true);
        Ok(Ok(()))
    }

    /// The error of a call refused because the queue is full.
    pub(crate) fn full(&self) -> Error {
        Error::new(Kind::Full(self.state().queue.queued_tasks()))
    }

    /// Cancels a call: its queued jobs are dropped, and workers running one of its jobs are
    /// killed and replaced (thread workers cannot be killed; their results are discarded).
    pub(crate) fn cancel(&self, call: &Arc<CallLink>) {
        if !call.cancel() {
            return;
        }
        let mut st = self.state();
        st.queue.remove_call(call);
        if self.is_local() {
            // A thread cannot be killed: its task is told, and its result dropped.
            for slot in 0..self.settings.workers {
                if st
                    .queue
                    .running(slot)
                    .is_some_and(|j| Arc::ptr_eq(&j.call, call))
                {
                    if let Some(w) = &st.watches[slot] {
                        w.cancelled.store(true, Ordering::Relaxed);
                    }
                }
            }
            return;
        }
        let running: Vec<usize> = (0..self.settings.workers)
            .filter(|&s| {
                st.queue
                    .running(s)
                    .is_some_and(|j| Arc::ptr_eq(&j.call, call))
            })
            .collect();
        // Its jobs waiting in a worker's pipe are taken back (and dropped when taken again),
        // so that no worker spends time on them.
        for s in 0..self.settings.workers {
            if st.queue.waiting_on(s).any(|j| Arc::ptr_eq(&j.call, call)) {
                st.queue.take_back(s);
            }
        }
        drop(st);
        self.wake(None, false);
        for s in running {
            self.kill[s].notify_one();
        }
    }

    /// Whether the job a worker is running belongs to a cancelled call.
    fn running_cancelled(&self, slot: usize) -> bool {
        self.state()
            .queue
            .running(slot)
            .is_some_and(|j| j.call.is_cancelled())
    }

    /// Marks the pool broken (a replacement worker cannot start): every queued job fails.
    fn break_pool(&self, e: Error) {
        let jobs = {
            let mut st = self.state();
            st.broken.get_or_insert(e.clone());
            st.queue.drain_queued()
        };
        for (_, job) in jobs {
            job::fail(job, None, e.clone());
        }
        self.wake(None, false);
    }

    /// Records a worker's exit result (or the panic of its exit function).
    fn store_exit(&self, slot: usize, r: Result<Exited, Failure>) -> driver::Ended {
        if let Some(insights) = &self.observer.insights {
            insights.exited(slot);
        }
        let r = r.map_err(|failure| Error::failed(failure, Stage::Exit).with_worker(slot));
        self.put_exit(slot, r);
        driver::Ended::Done
    }

    /// Logs the exit result `r` of worker `slot`.
    fn log_exit(&self, slot: usize, r: &Result<Exited, Error>) {
        let error = r.as_ref().err().map(|e| e as &dyn std::fmt::Display);
        trace::worker_exited(&self.observer.span, slot, error);
    }

    /// The exit result of worker `slot`'s latest worker; an earlier one's is kept with the
    /// retired.
    fn put_exit(&self, slot: usize, r: Result<Exited, Error>) {
        self.log_exit(slot, &r);
        let mut st = self.state();
        if let Some(earlier) = st.exits[slot].replace(r) {
            st.retired.push(earlier);
        }
    }

    /// The exit result of a worker of `slot` that retired.
    fn store_retired(&self, slot: usize, r: Result<Exited, Error>) {
        if let Some(insights) = &self.observer.insights {
            insights.exited(slot);
        }
        self.log_exit(slot, &r);
        self.state().retired.push(r);
    }

    /// Worker `slot`'s exit function ran past `worker_exit_timeout` (the worker was killed, or
    /// the thread abandoned): that is its exit result.
    fn exit_timed_out(&self, slot: usize) -> driver::Ended {
        let limit = self.settings.exit_timeout.unwrap_or_default();
        let e = Error::timeout(Stage::Exit, limit, None).with_worker(slot);
        self.put_exit(slot, Err(e));
        driver::Ended::Done
    }

    /// A snapshot of the pool's counters.
    pub(crate) fn stats(&self) -> Stats {
        let (queued, in_flight) = {
            let st = self.state();
            (st.queue.queued_tasks(), st.queue.tasks_in_flight())
        };
        self.observer
            .counters
            .read(self.settings.workers, queued, in_flight)
    }

    /// Chunks waiting in the queue, and chunks in flight on workers.
    pub(crate) fn load(&self) -> (usize, usize) {
        self.state().queue.load()
    }

    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        self.state().pids.clone()
    }

    /// Stops taking jobs, lets the queued ones finish, runs the exit functions and waits for every
    /// worker to leave. Returns the exit results: those of the workers that left before (in the
    /// order they left), then one per slot, in slot order.
    pub(crate) async fn shutdown(&self) -> Result<Vec<Result<Exited, Error>>, Error> {
        self.state().closing = true;
        self.wake(None, false);
        // The slots' drivers, and the retired workers' last moments, which may be added while
        // the others finish.
        loop {
            let drivers: Vec<JoinHandle<()>> =
                std::mem::take(&mut *self.drivers.lock().unwrap_or_else(PoisonError::into_inner));
            if drivers.is_empty() {
                break;
            }
            for d in drivers {
                let _ = d.await;
            }
        }
        let mut st = self.state();
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        let mut exits = std::mem::take(&mut st.retired);
        let last = st.exits.iter_mut().enumerate().map(|(slot, e)| {
            e.take()
                .unwrap_or_else(|| Err(Error::closed().with_worker(slot)))
        });
        exits.extend(last);
        Ok(exits)
    }

    /// Kills every worker and fails every job (the pool was dropped).
    pub(crate) fn stop(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let jobs = {
            let mut st = self.state();
            // A thread cannot be killed: its task is told to stop.
            for w in st.watches.iter().flatten() {
                w.cancelled.store(true, Ordering::Relaxed);
            }
            st.queue.drain_all()
        };
        for (slot, job) in jobs {
            job::fail(job, slot, Error::closed());
        }
        self.stop.notify_waiters();
        self.thread_room.notify_waiters();
        self.wake(None, false);
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

impl registry::Source for Core {
    fn workers(&self) -> Vec<WorkerView> {
        let st = self.state();
        (0..self.settings.workers)
            .map(|slot| {
                let running = st.queue.running(slot);
                WorkerView {
                    id: slot,
                    pid: st.pids[slot],
                    host: self
                        .spec
                        .launcher
                        .as_ref()
                        .and_then(|l| l.host_of(slot))
                        .map(str::to_owned),
                    state: match (st.queue.is_live(slot), running) {
                        (false, _) => "starting",
                        (true, None) => "idle",
                        (true, Some(_)) => "busy",
                    },
                    // How long the job it runs has been there: its own time, or since the one
                    // before it landed.
                    task_age: running.filter(|j| j.sent != 0).map(|j| {
                        let now = crate::proto::deadline::coarse_us();
                        now.saturating_sub(j.sent) as f64 / 1e6
                    }),
                    restarts: st.ends[slot].0,
                    last_exit: st.ends[slot].1.clone(),
                }
            })
            .collect()
    }

    fn stats(&self) -> Stats {
        Core::stats(self)
    }
}
