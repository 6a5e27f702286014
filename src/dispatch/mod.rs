//! The pool's engine: the job queue, the workers' slots and drivers, and what happens when a
//! worker fails. `README.md` in this folder explains the queue, the windows and the wake-ups.
//!
//! - [`job`]: jobs and what a call shares with the pool;
//! - [`queue`]: which job goes to which worker, and when;
//! - [`sleep`]: how thread workers wait for jobs and are woken;
//! - [`driver`]: one process worker's writer and reader;
//! - [`slot`]: one worker slot for the pool's life: start, serve, replace.
//!
//! User-facing futures only wait on their call's channel; no user future ever holds a lock, a
//! permit or a half-written frame, so one that stops being polled cannot wedge a worker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{Error, Stage};
use crate::proto::Failure;
use crate::start::{Connected, Pool, Spec, Start, StartMethod};
use crate::worker::Exited;

mod driver;
mod job;
mod queue;
mod sleep;
mod slot;

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
}

pub(crate) struct Core {
    pub(crate) settings: Settings,
    pub(crate) spec: Spec,
    start: Box<dyn Start>,
    st: Mutex<State>,
    /// Per process slot: there may be a job for this slot's writer.
    wake: Vec<Notify>,
    /// Per process slot: a job in flight there was cancelled; kill the worker.
    kill: Vec<Notify>,
    /// Where thread workers wait for jobs.
    sleep: Sleep,
    stop: Notify,
    stopped: AtomicBool,
    drivers: Mutex<Vec<JoinHandle<()>>>,
    /// An exit result was stored, or the pool broke.
    exited: Notify,
    /// Per slot: how many frames of results its workers have sent.
    heard: Vec<AtomicU64>,
}

struct State {
    queue: Queue,
    pids: Vec<Option<u32>>,
    closing: bool,
    broken: Option<Error>,
    exits: Vec<Option<Result<Exited, Error>>>,
}

impl Core {
    pub(crate) fn new(settings: Settings, spec: Spec, start: Box<dyn Start>) -> Arc<Core> {
        let n = settings.workers;
        let local = settings.method == StartMethod::Threading;
        let per_writer = |_| Notify::new();
        Arc::new(Core {
            st: Mutex::new(State {
                queue: Queue::new(n, settings.depth),
                pids: vec![None; n],
                closing: false,
                broken: None,
                exits: (0..n).map(|_| None).collect(),
            }),
            wake: (0..if local { 0 } else { n }).map(per_writer).collect(),
            kill: (0..if local { 0 } else { n }).map(per_writer).collect(),
            sleep: Sleep::default(),
            settings,
            spec,
            start,
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            drivers: Mutex::new(Vec::new()),
            exited: Notify::new(),
            heard: (0..n).map(|_| AtomicU64::new(0)).collect(),
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
    pub(crate) async fn start_slot(self: &Arc<Self>, slot: usize) -> Result<Connected, Error> {
        let mut failures = 0u32;
        loop {
            let e = match self.start_worker(slot).await {
                Ok(conn) => return Ok(conn),
                Err(e) if !e.is_retryable_start() => return Err(e),
                Err(e) => e,
            };
            failures += 1;
            if failures >= START_ATTEMPTS {
                let msg = format!(
                    "worker {slot} failed to start {failures} times in a row, the last time: {e}"
                );
                return Err(Error::start(msg).with_worker(slot).with_source(e.cause()));
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
    pub(crate) fn submit(&self, job: Job) -> Result<(), Error> {
        let mut st = self.state();
        if self.is_stopped() || st.closing {
            return Err(Error::closed());
        }
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        let target = self
            .settings
            .order_tasks
            .then(|| (job.seq % self.settings.workers as u64) as usize);
        st.queue.push(job, target);
        drop(st);
        self.wake(target, true);
        Ok(())
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
            self.exited.notify_waiters();
            st.queue.drain_queued()
        };
        for (_, job) in jobs {
            job::fail(job, None, e.clone());
        }
        self.wake(None, false);
    }

    /// Records a worker's exit result (or the panic of its exit function).
    fn store_exit(&self, slot: usize, r: Result<Exited, Failure>) -> driver::Ended {
        let r = r.map_err(|failure| Error::failed(failure, Stage::Exit).with_worker(slot));
        self.state().exits[slot] = Some(r);
        self.exited.notify_waiters();
        driver::Ended::Done
    }

    /// Chunks waiting in the queue, and chunks in flight on workers.
    pub(crate) fn load(&self) -> (usize, usize) {
        self.state().queue.load()
    }

    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        self.state().pids.clone()
    }

    /// Stops taking jobs, lets the queued ones finish, runs the exit functions and waits for every
    /// worker to leave. Returns the exit results in worker order.
    pub(crate) async fn shutdown(&self) -> Result<Vec<Result<Exited, Error>>, Error> {
        self.state().closing = true;
        self.wake(None, false);
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
        let jobs = self.state().queue.drain_all();
        for (slot, job) in jobs {
            job::fail(job, slot, Error::closed());
        }
        self.stop.notify_waiters();
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
