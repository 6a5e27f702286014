//! [`AsyncPool`] and its [`Builder`].

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::Location;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_core::Stream;

use crate::call::{Target, encoder};
use crate::dispatch::{Core, Settings};
use crate::error::{Error, Kind, Stage};
use crate::handle::{Apply, ApplyFuture, Map, MapStream};
use crate::observe::{Insights, Observer, Stats};
use crate::proto::Body;
use crate::proto::body::{Encoding, Stop, encode_body};
use crate::proto::frame::HEADER_ROOM;
use crate::proto::slice::placing;
use crate::start::{Launcher, Spec, StartMethod, backend};
use crate::sys::shm::Arena;
use crate::task::{
    self, Call, Entry, ExitFn, Init, Input, NoInit, Output, Plain, Shared, WithWorker, Worker,
};
use crate::worker::Exited;

/// Carries the pool's type parameters without owning values of them.
type Types<S, W, E> = PhantomData<fn() -> (S, W, E)>;

/// A pool of workers that runs tasks and hands back their results as futures and streams.
///
/// Build one with [`AsyncPool::builder`]. `S` is the type of the shared object, `W` of each
/// worker's state and `E` of the exit results; all default to `()`.
///
/// Dropping the pool kills its workers at once (no exit functions run) and fails every task not
/// yet finished with [`Error::is_closed`]. [`AsyncPool::shutdown`] instead finishes the queued
/// tasks, runs `worker_exit` and returns its results.
///
/// # Examples
///
/// ```no_run
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # async fn demo() -> Result<(), ampire::Error> {
/// let pool = ampire::AsyncPool::builder().workers(2).build().await?;
/// assert_eq!(pool.apply(square, 7).await?, 49);
/// assert_eq!(pool.map(square, 0..4u64).await?, vec![0, 1, 4, 9]);
/// pool.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct AsyncPool<S = (), W = (), E = ()> {
    core: Arc<Core>,
    _t: Types<S, W, E>,
}

/// Configures and starts an [`AsyncPool`].
///
/// Call [`shared`](Builder::shared), then [`worker_init`](Builder::worker_init), then
/// [`worker_exit`](Builder::worker_exit) (each is optional); the other setters may come in any
/// order. Everything is checked in [`build`](Builder::build).
#[must_use = "a builder does nothing until built"]
pub struct Builder<S = (), W = (), E = ()> {
    /// Every setting that does not depend on the builder's types.
    knobs: Knobs,
    shared: S,
    setup: Entry,
    /// Whether `worker_init` was given (a set-up that may fail).
    init: bool,
    exit: Option<Entry>,
    _t: PhantomData<fn() -> (W, E)>,
}

/// A [`Builder`]'s settings but the typed ones (shared object, `worker_init`, `worker_exit`),
/// carried over as they are when those are set.
struct Knobs {
    workers: Option<usize>,
    method: StartMethod,
    order_tasks: bool,
    max_frame_len: usize,
    arena_size: usize,
    start_timeout: Duration,
    depth: usize,
    start_faults: (usize, usize),
    task_timeout: Option<Duration>,
    init_timeout: Option<Duration>,
    exit_timeout: Option<Duration>,
    lifespan: Option<u64>,
    max_memory: Option<u64>,
    cpu_ids: Option<Vec<Vec<usize>>>,
    max_retries: u32,
    max_queued: Option<usize>,
    name: Option<String>,
    /// 0: no insights; 1: insights; 2: with each task's peak memory.
    insights: u8,
    /// Where the pool's bars are drawn, when not on stderr (tests).
    bars: Option<indicatif::MultiProgress>,
    /// What starts the workers on other hosts, if they are there.
    launcher: Option<Launcher>,
    /// Where the pool was made.
    site: &'static Location<'static>,
}

/// The default size of a process pool's shared-memory arena.
const DEFAULT_ARENA: usize = 256 << 20;

impl AsyncPool {
    /// A builder with the defaults: one worker per CPU, [`StartMethod::Forkserver`].
    #[track_caller]
    pub fn builder() -> Builder {
        Builder {
            knobs: Knobs {
                workers: None,
                method: StartMethod::default(),
                order_tasks: false,
                max_frame_len: crate::proto::DEFAULT_MAX_FRAME,
                arena_size: DEFAULT_ARENA,
                start_timeout: Duration::from_secs(60),
                depth: 2,
                start_faults: (0, 0),
                task_timeout: None,
                init_timeout: None,
                exit_timeout: None,
                lifespan: None,
                max_memory: None,
                cpu_ids: None,
                max_retries: 0,
                max_queued: None,
                name: None,
                insights: 0,
                bars: None,
                launcher: None,
                site: Location::caller(),
            },
            shared: (),
            setup: task::setup::<NoInit, (), ()>(),
            init: false,
            exit: None,
            _t: PhantomData,
        }
    }
}

impl<S, W, E> Builder<S, W, E> {
    /// Number of workers. Default: the number of CPUs this process may use.
    pub fn workers(mut self, n: usize) -> Self {
        self.knobs.workers = Some(n);
        self
    }

    /// How workers are started; see [`StartMethod`].
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.knobs.method = method;
        self
    }

    /// Chunk `i` of every call goes to worker `i % workers`, instead of to whichever worker is
    /// free first (MPIRE's `order_tasks`). Uneven tasks then take longer overall.
    pub fn order_tasks(mut self, on: bool) -> Self {
        self.knobs.order_tasks = on;
        self
    }

    /// The largest frame (a chunk of inputs, a batch of results, the shared object) either side
    /// accepts. The pool cuts chunks in bytes as well as in tasks so that each fits, and a worker
    /// ends a batch of results before it would not: only an input or a result that alone is
    /// larger fails, and that task alone ([`Error::is_codec`]). A shared object that does not fit
    /// makes `build()` fail. A worker that sends a larger frame anyway is killed and replaced.
    /// Default: 1 GiB.
    pub fn max_frame_len(mut self, bytes: usize) -> Self {
        self.knobs.max_frame_len = bytes;
        self
    }

    /// Shared memory for large inputs to process workers. A chunk of large inputs (4 KiB or more
    /// each, 64 KiB or more in all; the shared object under `Spawn` and `Forkserver` too) is
    /// serialised straight into this arena, which every worker maps read-only, instead of being
    /// pushed through its pipe: one copy on each side instead of four. When the arena is full,
    /// bodies go through the pipe. A size the system cannot map makes `build()` fail.
    ///
    /// The size is reserved, not allocated: the pool uses pages only as it needs them, lowest
    /// first, and keeps those it used (as any `memfd`) until it is dropped. `0` turns the arena
    /// off. Default: 256 MiB. Thread workers take their inputs directly and ignore it. The
    /// shared object's [`SharedSlice`](crate::SharedSlice)s take their room in it for the pool's
    /// whole life.
    pub fn arena_size(mut self, bytes: usize) -> Self {
        self.knobs.arena_size = bytes;
        self
    }

    /// How long a new worker may take to start and run `worker_init`, under every start method
    /// (a thread worker still in its `worker_init` then is abandoned). A worker that takes longer
    /// counts as a start failure: it is started again, and five failures in a row break the pool.
    /// Default: 60 s.
    pub fn worker_start_timeout(mut self, timeout: Duration) -> Self {
        self.knobs.start_timeout = timeout;
        self
    }

    /// How many chunks each process worker may hold at once (one running, the rest queued in its
    /// pipe), so that it never waits for the next. Default: 2.
    ///
    /// **The rule:** a chunk goes into a busy worker's pipe only while every worker is busy;
    /// prefetching is for throughput when nobody is idle. A worker that becomes idle takes back
    /// the chunks another holds and has not started. So no chunk waits behind a running one
    /// while a worker is idle, whatever the depth. Chunks of tasks measured to be tiny (up to 64
    /// tasks and about 200 µs of work in all) may go beyond the depth, and behind a busy worker
    /// even while another is idle: they travel many to a write, and are taken back like any
    /// other. Chunks for one worker alone ([`Builder::order_tasks`]) are never taken back.
    pub fn pipeline_depth(mut self, chunks: usize) -> Self {
        self.knobs.depth = chunks;
        self
    }

    /// Every task of every call may run this long; the call's own
    /// [`task_timeout`](crate::Map::task_timeout) overrides it. The clock starts when the task
    /// starts, so time spent queued never counts.
    ///
    /// When a task runs past its deadline it fails with [`Error::is_timeout`], with how long it
    /// ran and its index (and, under the process start methods, its input's `Debug`: under
    /// `Threading` the input was moved into the task):
    ///
    /// - under a process start method, the worker running it is killed and replaced; the tasks
    ///   of its chunk that finished deliver their results and the ones after it run on a worker
    ///   again, as when a worker dies;
    /// - under `Threading`, where a thread cannot be killed, the task is abandoned: its thread
    ///   sees [`Worker::is_cancelled`] turn true, so a task that checks it can stop, and a fresh
    ///   thread takes its place in the pool. What the abandoned task returns is dropped. A slot
    ///   gets its fresh thread only while fewer than `workers` abandoned threads run, so the
    ///   pool never has more than `2 × workers − 1` threads, abandoned ones included; past that,
    ///   a slot whose task timed out stays empty until an abandoned thread ends.
    ///
    /// A `map` fails fast with the error, as for any failure; a stream yields it and goes on.
    /// Default: none.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.knobs.task_timeout = Some(timeout);
        self
    }

    /// How long `worker_init` may run in each worker. Past it, the worker is killed (a thread is
    /// abandoned): in [`build`](Builder::build) that fails the build with an error that is both
    /// [`Error::is_timeout`] and [`Error::is_init`]; in a replacement worker it is a failed start,
    /// retried with backoff, and five in a row break the pool. Default: none, beyond
    /// [`worker_start_timeout`](Builder::worker_start_timeout).
    pub fn worker_init_timeout(mut self, timeout: Duration) -> Self {
        self.knobs.init_timeout = Some(timeout);
        self
    }

    /// How long `worker_exit` may run in each worker. Past it, the worker is killed (a thread is
    /// abandoned) and [`AsyncPool::shutdown`] returns an error ([`Error::is_timeout`]) naming it,
    /// once every other worker has left: no worker is left behind. Default: none.
    pub fn worker_exit_timeout(mut self, timeout: Duration) -> Self {
        self.knobs.exit_timeout = Some(timeout);
        self
    }

    /// A worker is replaced after it has run this many tasks (MPIRE's `worker_lifespan`): it
    /// finishes the task it runs, hands back the rest of its chunk (which runs on another
    /// worker), runs `worker_exit` and leaves. Its exit result is kept, and
    /// [`AsyncPool::shutdown`] returns it with the others. The replacement is started before the
    /// old worker leaves, so the pool keeps its capacity; it runs `worker_init` again, so with
    /// `n` tasks in all each slot runs it about `n / workers / lifespan` times. Default: none.
    pub fn worker_lifespan(mut self, tasks: u64) -> Self {
        self.knobs.lifespan = Some(tasks);
        self
    }

    /// A process worker whose resident memory exceeds `bytes` after a task is replaced, as if its
    /// lifespan had ended: it hands back the rest of its chunk, runs `worker_exit` and leaves.
    /// The worker checks after each task, at most once a millisecond. Threads share one resident
    /// set, so `build()` rejects this under `Threading`. Default: none.
    pub fn worker_max_memory(mut self, bytes: u64) -> Self {
        self.knobs.max_memory = Some(bytes);
        self
    }

    /// Pins workers to CPUs (MPIRE's `cpu_ids`). Give one entry for all workers, or one per
    /// worker; an entry is a CPU id or a set of them:
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ampire::Error> {
    /// use ampire::AsyncPool;
    /// // Two workers, worker 0 on CPU 1 and worker 1 on CPU 0.
    /// let a = AsyncPool::builder().workers(2).cpu_ids([1, 0]).build().await?;
    /// // Every worker on CPUs 0 and 1.
    /// let b = AsyncPool::builder().workers(4).cpu_ids([[0, 1]]).build().await?;
    /// // One set per worker.
    /// let c = AsyncPool::builder().workers(2).cpu_ids([vec![0], vec![0, 1]]).build().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Applies under every start method, threads included, to the worker and to every thread it
    /// starts; a replacement worker is pinned like the one it replaces. `build()` fails when the
    /// number of entries is neither 1 nor `workers`, an entry is empty, or a CPU is not one this
    /// process may run on. Default: no pinning.
    pub fn cpu_ids<I>(mut self, ids: I) -> Self
    where
        I: IntoIterator,
        I::Item: crate::cpus::Cpus,
    {
        self.knobs.cpu_ids = Some(ids.into_iter().map(crate::cpus::Cpus::cpus).collect());
        self
    }

    /// How many times a task whose worker died is run again (by whichever worker takes it next;
    /// a fresh one replaces the dead), before it fails.
    /// A task that killed `n + 1` workers fails with [`Error::is_worker_died`], and its message
    /// lists every death ([`Error::workers_killed`]): a crashing input never loops forever. Only
    /// deaths are retried: a panic, a timeout or a serialisation failure is the task's answer.
    /// Default: 0.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.knobs.max_retries = n;
        self
    }

    /// At most this many tasks wait in the pool's queue (queued and not yet running, across all
    /// calls). [`AsyncPool::try_apply`] is refused at once when the queue is full
    /// ([`Error::is_full`]); every other call waits for room, as it waits for its own
    /// `max_tasks_active`. A chunk larger than the bound goes in when the queue is empty. The
    /// bound is on what is admitted: tasks that come back to the queue (taken back from a busy
    /// worker, run again after a death, handed back by a retiring worker) go back regardless.
    /// Default: no bound.
    pub fn max_queued_tasks(mut self, n: usize) -> Self {
        self.knobs.max_queued = Some(n);
        self
    }

    /// Starts the workers on other hosts, through `launcher` (ssh, Slurm's srun, or a command
    /// of your own; see [`Launcher`]). The same calls, the same functions and the same errors;
    /// the workers run this binary there, at the same path unless the launcher says otherwise.
    /// Large inputs go through the link (there is no shared memory across hosts), and the
    /// shared object is sent to each worker once. Not with [`StartMethod::Threading`] or
    /// [`cpu_ids`](Builder::cpu_ids). Default: workers on this host.
    pub fn launcher(mut self, launcher: Launcher) -> Self {
        self.knobs.launcher = Some(launcher);
        self
    }

    /// The pool's name, in its progress bars, its insights and the dashboard. Default:
    /// `pool N`, numbered in the order pools were built in this process.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.knobs.name = Some(name.into());
        self
    }

    /// Worker insights (MPIRE's `enable_insights`): each worker's start-up, `worker_init`,
    /// waiting, working and `worker_exit` time, its tasks and their processor time, and the
    /// five slowest tasks with their inputs ([`AsyncPool::insights`]). Workers time each task
    /// (two clock reads) while tasks take 5 µs or more on average; of shorter ones, they time one
    /// batch in 64 task by task, so a slow task among many tiny ones may be missed. Processor
    /// time is read at most once a millisecond. Default: off.
    pub fn enable_insights(mut self, on: bool) -> Self {
        self.knobs.insights = match on {
            true => self.knobs.insights.max(1),
            false => 0,
        };
        self
    }

    /// With insights, also each task's peak resident memory, under process start methods: the
    /// worker resets its peak before each task and reads it after (a few microseconds per
    /// task). Turns insights on. Default: off.
    pub fn insights_memory(mut self, on: bool) -> Self {
        self.knobs.insights = match on {
            true => 2,
            false => self.knobs.insights.min(1),
        };
        self
    }

    /// Tests only, not part of the API: draws this pool's progress bars on `target` instead of
    /// the process's stderr.
    #[doc(hidden)]
    pub fn __draw_bars_to(mut self, target: indicatif::ProgressDrawTarget) -> Self {
        self.knobs.bars = Some(indicatif::MultiProgress::with_draw_target(target));
        self
    }

    /// Fault injection for tests, not part of the API: after the first `starts` process workers
    /// the pool starts, the next `fails` exit (with status 86) before they say hello.
    #[doc(hidden)]
    pub fn __fail_starts(mut self, starts: usize, fails: usize) -> Self {
        self.knobs.start_faults = (starts, fails);
        self
    }

    fn retype<S2, W2, E2>(
        self,
        shared: impl FnOnce(S) -> S2,
        setup: Entry,
        exit: Option<Entry>,
    ) -> Builder<S2, W2, E2> {
        Builder {
            knobs: self.knobs,
            shared: shared(self.shared),
            setup,
            init: self.init,
            exit,
            _t: PhantomData,
        }
    }
}

impl Builder<(), (), ()> {
    /// The pool's shared object (MPIRE's `shared_objects`), passed to tasks as
    /// [`Worker::shared`]. Under `Threading` every worker sees this very object; under `Fork`
    /// workers inherit it copy-on-write, with no copy at all; under `Spawn` and `Forkserver` it is
    /// serialised once (a large one into shared memory), and each worker decodes its own copy,
    /// once, not once per task, except for the [`SharedSlice`](crate::SharedSlice)s in it,
    /// which those workers read in place from shared memory.
    pub fn shared<S: Shared>(self, shared: S) -> Builder<S, (), ()> {
        self.retype(|()| shared, task::setup::<NoInit, S, ()>(), None)
    }
}

impl<S: Shared> Builder<S, (), ()> {
    /// Runs once in each worker, before its first task, and returns the worker's state
    /// ([`Worker::state`]). A replacement worker runs it again. If it panics, `build()` fails
    /// with [`Error::is_init`]; if it panics in a replacement, the pool is broken and every queued
    /// and later task fails with that error.
    ///
    /// Do end-of-life work (flushing, reporting) in [`worker_exit`](Builder::worker_exit), not
    /// in the state's `Drop`: a process worker ends like `std::process::exit`, without dropping
    /// its state (the kernel takes the memory back at once), and a thread worker drops it after
    /// `shutdown()` has been told the worker left.
    pub fn worker_init<F, W>(self, init: F) -> Builder<S, W, ()>
    where
        F: Fn(&Worker<'_, S, ()>) -> W + Copy + Send + Sync + 'static,
        W: 'static,
    {
        let _ = Init::new(init);
        let mut b = self.retype(|s| s, task::setup::<Init<F>, S, W>(), None);
        b.init = true;
        b
    }
}

impl<S: Shared, W: 'static> Builder<S, W, ()> {
    /// Runs in each worker at [`AsyncPool::shutdown`]; its return values are what `shutdown`
    /// returns, one per worker in worker order (MPIRE's exit results). Every exit function has
    /// finished, and its effects are visible, when `shutdown` returns.
    pub fn worker_exit<F, E>(self, exit: F) -> Builder<S, W, E>
    where
        F: Fn(&mut Worker<'_, S, W>) -> E + Copy + Send + Sync + 'static,
        E: Output,
    {
        let _ = ExitFn::new(exit);
        let setup = self.setup;
        self.retype(|s| s, setup, Some(task::exit::<ExitFn<F>, S, W, E>()))
    }
}

impl<S: Shared, W: 'static, E: Output> Builder<S, W, E> {
    /// Starts the workers and waits until each has run `worker_init`.
    ///
    /// Must be called from within a tokio runtime.
    ///
    /// # Errors
    ///
    /// - [`Error::is_config`]: invalid settings, or a process start method without
    ///   `ampire::init()`;
    /// - [`Error::is_init`]: `worker_init` panicked (or the worker died in it);
    /// - a worker could not be started, or runs a different binary.
    pub async fn build(self) -> Result<AsyncPool<S, W, E>, Error> {
        crate::entry::keep();
        let began = std::time::Instant::now();
        let workers = match self.knobs.workers {
            Some(0) => return Err(Error::config("workers must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.knobs.depth == 0 {
            return Err(Error::config("pipeline_depth must be at least 1"));
        }
        if self.knobs.max_frame_len < 1024 || self.knobs.max_frame_len > u32::MAX as usize {
            return Err(Error::config(
                "max_frame_len must be between 1 KiB and 4 GiB",
            ));
        }
        for (name, t) in [
            ("task_timeout", self.knobs.task_timeout),
            ("worker_init_timeout", self.knobs.init_timeout),
            ("worker_exit_timeout", self.knobs.exit_timeout),
            ("worker_start_timeout", Some(self.knobs.start_timeout)),
        ] {
            if t.is_some_and(|t| t.is_zero()) {
                return Err(Error::config(format!("{name} must be more than zero")));
            }
        }
        if self.knobs.lifespan == Some(0) {
            return Err(Error::config("worker_lifespan must be at least 1"));
        }
        if self.knobs.max_queued == Some(0) {
            return Err(Error::config("max_queued_tasks must be at least 1"));
        }
        match self.knobs.max_memory {
            Some(0) => return Err(Error::config("worker_max_memory must be more than zero")),
            Some(_) if !self.knobs.method.is_process() => {
                return Err(Error::config(
                    "worker_max_memory needs process workers: threads share one resident set",
                ));
            }
            _ => {}
        }
        if let Some(l) = &self.knobs.launcher {
            l.check()?;
            if !self.knobs.method.is_process() {
                return Err(Error::config(
                    "a launcher starts processes: it does not go with StartMethod::Threading",
                ));
            }
            if self.knobs.cpu_ids.is_some() {
                return Err(Error::config(
                    "cpu_ids pins workers of this host: it does not go with a launcher",
                ));
            }
        }
        let cpus = match self.knobs.cpu_ids {
            Some(ids) => crate::cpus::per_worker(ids, workers)?,
            None => Vec::new(),
        };
        if self.knobs.method.is_process() {
            if crate::entry::undiverted_child() {
                return Err(Error::config(
                    "this process was started as an ampire worker but did not become one; is ampire linked as a dynamic library?",
                ));
            }
            if !crate::entry::initialized() {
                return Err(Error::new(Kind::NotInitialized));
            }
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::config("build() must run inside a tokio runtime"));
        }
        crate::worker::install_panic_hook();
        // Shared memory is for the workers of this host only.
        let arena = if self.knobs.method.is_process() && self.knobs.launcher.is_none() {
            let a = Arena::new(self.knobs.arena_size).map_err(|e| {
                Error::start(format!("could not create the shared-memory arena: {e}"))
            })?;
            Some(Arc::new(a))
        } else {
            None
        };
        let inherits = self.knobs.method == StartMethod::Fork && self.knobs.launcher.is_none();
        let (shared_body, shared_slices) = match self.knobs.method {
            _ if !self.knobs.method.is_process() || inherits => {
                (Body::Inline(Vec::new()), Vec::new())
            }
            _ => {
                let budget = self.knobs.max_frame_len - HEADER_ROOM;
                let one = std::slice::from_ref(&self.shared);
                let (encoding, slices) =
                    placing(arena.as_ref(), || encode_body(one, arena.as_ref(), budget));
                let body = match encoding {
                    Encoding { body, taken: 1, .. } => body,
                    Encoding {
                        stop: Some(Stop::Error(e)),
                        ..
                    } => return Err(Error::codec("could not serialise the shared object", e)),
                    Encoding { stop, .. } => {
                        let size = match stop {
                            Some(Stop::TooLarge(n)) => format!("{n} bytes"),
                            _ => "more".into(),
                        };
                        return Err(Error::config(format!(
                            "the shared object takes {size}, more than max_frame_len ({}) allows",
                            self.knobs.max_frame_len
                        )));
                    }
                };
                (body, slices)
            }
        };
        let spec = Spec {
            shared: Arc::new(self.shared) as Arc<dyn Any + Send + Sync>,
            shared_body,
            _shared_slices: shared_slices,
            arena,
            setup: self.setup,
            init: self.init,
            max_frame: self.knobs.max_frame_len,
            start_timeout: self.knobs.start_timeout,
            init_timeout: self.knobs.init_timeout,
            epoch_us: crate::proto::deadline::now_us(),
            start_faults: Arc::new(Mutex::new(self.knobs.start_faults)),
            exit: self.exit,
            cpus,
            lifespan: self.knobs.lifespan,
            max_memory: self.knobs.max_memory,
            insights: self.knobs.insights,
            // Process workers' output goes through the pool where bars may be drawn over it.
            relay: match (&self.knobs.bars, self.knobs.method.is_process()) {
                (Some(bars), true) => Some(bars.clone()),
                (None, true) if crate::observe::progress::visible() => {
                    Some(crate::observe::progress::multi().clone())
                }
                _ => None,
            },
            launcher: self.knobs.launcher.clone(),
        };
        let settings = Settings {
            method: self.knobs.method,
            workers,
            depth: self.knobs.depth,
            order_tasks: self.knobs.order_tasks,
            task_timeout: self.knobs.task_timeout,
            exit_timeout: self.knobs.exit_timeout,
            max_retries: self.knobs.max_retries,
            max_queued: self.knobs.max_queued,
        };
        let observer = Observer::new(
            self.knobs.name,
            self.knobs
                .launcher
                .as_ref()
                .map_or(self.knobs.method.name(), Launcher::name),
            workers,
            self.knobs.site,
            self.knobs.insights > 0,
            self.knobs.bars.clone(),
        );
        let start = backend(self.knobs.method, self.knobs.launcher.as_ref());
        let core = Core::new(settings, spec, start, observer);
        // Started side by side on this task: no hand-off to another thread, and dropping
        // `build()` drops (and so kills) the workers it started.
        let starts = (0..workers)
            .map(|slot| core.start_slot(slot, true))
            .collect();
        let mut conns = Vec::with_capacity(workers);
        let mut first_err = None;
        for s in join_all(starts).await {
            match s {
                Ok(c) => conns.push(c),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e); // the started workers are killed as `conns` drops
        }
        core.run(conns);
        crate::observe::trace::pool_started(&core.observer.span, workers, began.elapsed());
        let source: std::sync::Weak<Core> = Arc::downgrade(&core);
        crate::observe::registry::attach(&core.observer, source);
        Ok(AsyncPool {
            core,
            _t: PhantomData,
        })
    }
}

/// Polls `futs` side by side on the current task; their outputs in order.
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

impl<S, W, E> fmt::Debug for Builder<S, W, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.knobs.workers)
            .field("start_method", &self.knobs.method)
            .field("order_tasks", &self.knobs.order_tasks)
            .field("max_frame_len", &self.knobs.max_frame_len)
            .finish_non_exhaustive()
    }
}

impl<S: Shared, W: 'static, E: Output> AsyncPool<S, W, E> {
    /// Runs `f(arg)` on a worker.
    ///
    /// `f` must be an `fn` item or a closure that captures nothing; anything else is a compile
    /// error, under every start method. Nothing is sent before the returned value is first polled;
    /// spawn it (`tokio::spawn`) to run it in the background.
    ///
    /// ```compile_fail
    /// # fn main() {
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let pool = ampire::AsyncPool::builder().build().await.unwrap();
    /// let offset = 3u64;
    /// // A closure that captures `offset` cannot be named in another process: it is rejected
    /// // when the call is compiled ("must be an fn item or a closure that captures nothing").
    /// let _ = pool.apply(move |x: u64| x + offset, 1).await;
    /// # });
    /// # }
    /// ```
    ///
    /// ```compile_fail
    /// # async fn demo(pool: ampire::AsyncPool) {
    /// struct NotSerialisable;
    /// fn f(_: NotSerialisable) {}
    /// let _ = pool.apply(f, NotSerialisable).await;
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The future fails if the task panicked ([`Error::is_panic`]), its worker died
    /// ([`Error::is_worker_died`]) or the pool was shut down ([`Error::is_closed`]).
    #[track_caller]
    pub fn apply<F, A, R>(&self, f: F, arg: A) -> Apply<A, R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Input,
        R: Output,
    {
        Apply::new(self.target(Plain::new(f), "apply"), arg)
    }

    /// Like [`apply`](Self::apply), but submitted at once, and refused at once when the pool's
    /// queue is full ([`Builder::max_queued_tasks`]): the future of the result, or an error
    /// that is [`Error::is_full`]. For a per-call option, such as a timeout, use
    /// `pool.apply(f, arg).task_timeout(t).try_submit()`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ampire::Error> {
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    /// let pool = ampire::AsyncPool::builder().workers(2).max_queued_tasks(100).build().await?;
    /// match pool.try_apply(square, 7) {
    ///     Ok(task) => assert_eq!(task.await?, 49),
    ///     Err(e) if e.is_full() => { /* shed the load */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::is_full`] when the queue is full, [`Error::is_closed`] when the pool is shut
    /// down; the future fails as [`apply`](Self::apply)'s does.
    #[track_caller]
    pub fn try_apply<F, A, R>(&self, f: F, arg: A) -> Result<ApplyFuture<A, R>, Error>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Input,
        R: Output,
    {
        self.apply(f, arg).try_submit()
    }

    /// Like [`apply`](Self::apply), for a task that takes its [`Worker`] context first.
    #[track_caller]
    pub fn apply_with<F, A, R>(&self, f: F, arg: A) -> Apply<A, R>
    where
        F: Fn(&mut Worker<'_, S, W>, A) -> R + Copy + Send + Sync + 'static,
        A: Input,
        R: Output,
    {
        Apply::new(self.target(WithWorker::new(f), "apply"), arg)
    }

    /// Runs `f` on every item and collects the results in input order. Fails fast: the first
    /// failure is returned and the rest of the call is cancelled.
    ///
    /// The input is pulled as capacity frees (see [`Map::max_tasks_active`]); per-call options
    /// are set on the returned value before it is awaited.
    #[track_caller]
    pub fn map<F, I, A, R>(&self, f: F, items: I) -> Map<I::IntoIter, A, R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Input,
        R: Output,
    {
        Map::new(self.target(Plain::new(f), "map"), items.into_iter(), true)
    }

    /// Like [`map`](Self::map), with the [`Worker`] context.
    #[track_caller]
    pub fn map_with<F, I, A, R>(&self, f: F, items: I) -> Map<I::IntoIter, A, R>
    where
        F: Fn(&mut Worker<'_, S, W>, A) -> R + Copy + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Input,
        R: Output,
    {
        Map::new(
            self.target(WithWorker::new(f), "map"),
            items.into_iter(),
            true,
        )
    }

    /// Like [`map`](Self::map), with results in the order they complete.
    #[track_caller]
    pub fn map_unordered<F, I, A, R>(&self, f: F, items: I) -> Map<I::IntoIter, A, R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Input,
        R: Output,
    {
        Map::new(
            self.target(Plain::new(f), "map_unordered"),
            items.into_iter(),
            false,
        )
    }

    /// Like [`map_unordered`](Self::map_unordered), with the [`Worker`] context.
    #[track_caller]
    pub fn map_unordered_with<F, I, A, R>(&self, f: F, items: I) -> Map<I::IntoIter, A, R>
    where
        F: Fn(&mut Worker<'_, S, W>, A) -> R + Copy + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Input,
        R: Output,
    {
        Map::new(
            self.target(WithWorker::new(f), "map_unordered"),
            items.into_iter(),
            false,
        )
    }

    /// Runs `f` on every item of a stream and yields the results in input order, each a
    /// `Result`: a failed task yields its error and the stream continues.
    ///
    /// Backpressured: input is pulled only as capacity frees, so an endless input works in
    /// bounded memory. Dropping the stream stops pulling and cancels what it queued.
    #[track_caller]
    pub fn map_stream<F, St, A, R>(&self, f: F, input: St) -> MapStream<St, A, R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        St: Stream<Item = A>,
        A: Input,
        R: Output,
    {
        MapStream::new(self.target(Plain::new(f), "map_stream"), input, true)
    }

    /// Like [`map_stream`](Self::map_stream), with the [`Worker`] context.
    #[track_caller]
    pub fn map_stream_with<F, St, A, R>(&self, f: F, input: St) -> MapStream<St, A, R>
    where
        F: Fn(&mut Worker<'_, S, W>, A) -> R + Copy + Send + Sync + 'static,
        St: Stream<Item = A>,
        A: Input,
        R: Output,
    {
        MapStream::new(self.target(WithWorker::new(f), "map_stream"), input, true)
    }

    /// Like [`map_stream`](Self::map_stream), yielding results as they complete.
    #[track_caller]
    pub fn map_stream_unordered<F, St, A, R>(&self, f: F, input: St) -> MapStream<St, A, R>
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        St: Stream<Item = A>,
        A: Input,
        R: Output,
    {
        MapStream::new(
            self.target(Plain::new(f), "map_stream_unordered"),
            input,
            false,
        )
    }

    /// Like [`map_stream_unordered`](Self::map_stream_unordered), with the [`Worker`] context.
    #[track_caller]
    pub fn map_stream_unordered_with<F, St, A, R>(&self, f: F, input: St) -> MapStream<St, A, R>
    where
        F: Fn(&mut Worker<'_, S, W>, A) -> R + Copy + Send + Sync + 'static,
        St: Stream<Item = A>,
        A: Input,
        R: Output,
    {
        MapStream::new(
            self.target(WithWorker::new(f), "map_stream_unordered"),
            input,
            false,
        )
    }

    /// Where a call of the task function `T` goes, and how its inputs are encoded.
    #[track_caller]
    fn target<T: Call<S, W, A, R>, A: Input, R: Output>(
        &self,
        _task: T,
        kind: &'static str,
    ) -> Target<A> {
        Target {
            core: self.core.clone(),
            encode: encoder::<T, S, W, A, R>(),
            locate: task::locate_input::<A>,
            kind,
            site: Location::caller(),
        }
    }

    /// Like [`shutdown`](Self::shutdown), bounded by `timeout` whatever the tasks and exit
    /// functions do: at the deadline every worker is stopped as if the pool were dropped (process
    /// workers are killed; threads are told through [`Worker::is_cancelled`] and left to end),
    /// unfinished tasks fail with [`Error::is_closed`], and this returns an error that is
    /// [`Error::is_timeout`].
    ///
    /// # Errors
    ///
    /// As [`shutdown`](Self::shutdown), and the timeout.
    pub async fn shutdown_timeout(self, timeout: Duration) -> Result<Vec<E>, Error> {
        let core = self.core.clone();
        // Past the deadline the shutdown is dropped, and with it the pool, which stops it.
        let r = tokio::time::timeout(timeout, self.shutdown()).await;
        r.unwrap_or_else(|_| {
            crate::observe::trace::pool_shut_down(&core.observer.span);
            Err(Error::timeout(Stage::Shutdown, timeout, None))
        })
    }

    /// Finishes the queued tasks, runs `worker_exit` in every worker, waits for the workers to
    /// leave, and returns the exit results in worker order.
    ///
    /// # Errors
    ///
    /// A panic in `worker_exit` or one past [`Builder::worker_exit_timeout`] (its worker is
    /// killed, or its thread abandoned; the error names it), or a pool broken by a failing
    /// `worker_init`.
    pub async fn shutdown(self) -> Result<Vec<E>, Error> {
        let exits = self.core.shutdown().await;
        crate::observe::trace::pool_shut_down(&self.core.observer.span);
        let exits = exits?;
        exits
            .into_iter()
            .map(|r| match r? {
                Exited::Bytes(bytes) => postcard::from_bytes(&bytes)
                    .map_err(|e| Error::codec("could not deserialise an exit result", e)),
                Exited::Value(value) => value.downcast::<E>().map(|e| *e).map_err(|_| {
                    Error::codec("could not take an exit result", "it has another type")
                }),
            })
            .collect()
    }
}

impl<S, W, E> AsyncPool<S, W, E> {
    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.core.settings.workers
    }

    /// The start method.
    pub fn start_method(&self) -> StartMethod {
        self.core.settings.method
    }

    /// A live snapshot of the pool: tasks queued, in flight, done, failed, timed out and
    /// retried; workers replaced, by cause; how busy the workers are; distributions of waiting,
    /// running and end-to-end times. Cheap: the pool keeps its counters as it runs, this reads
    /// them.
    ///
    /// ```no_run
    /// # async fn demo(pool: ampire::AsyncPool) {
    /// let s = pool.stats();
    /// println!("{} done, {} failed, {:.0}% busy", s.done, s.failed, s.utilisation * 100.0);
    /// println!("{s}");
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Worker insights ([`Builder::enable_insights`]): `None` when they are off. Its `Display`
    /// prints MPIRE's `print_insights` summary.
    pub fn insights(&self) -> Option<Insights> {
        self.core.observer.insights.as_ref().map(|i| i.read())
    }

    /// The process id of each worker (`None` for thread workers, or while a worker restarts). For
    /// workers on other hosts ([`Builder::launcher`]), the pid of each one's launcher here (its
    /// ssh or srun): killing it ends the worker.
    pub fn worker_pids(&self) -> Vec<Option<u32>> {
        self.core.pids()
    }
}

impl<S, W, E> Drop for AsyncPool<S, W, E> {
    fn drop(&mut self) {
        self.core.stop();
    }
}

impl<S, W, E> fmt::Debug for AsyncPool<S, W, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (queued, in_flight) = self.core.load();
        f.debug_struct("AsyncPool")
            .field("workers", &self.core.settings.workers)
            .field("start_method", &self.core.settings.method)
            .field("worker_pids", &self.core.pids())
            .field("queued_chunks", &queued)
            .field("chunks_in_flight", &in_flight)
            .field(
                "arena_bytes_in_use",
                &self.core.spec.arena.as_ref().map_or(0, |a| a.in_use()),
            )
            .finish()
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AsyncPool>();
    assert_send_sync::<AsyncPool<Vec<u8>, std::rc::Rc<()>, String>>();
    assert_send_sync::<Error>();
};
