//! The crate's one error type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::{Failure, Fault};
pub(crate) use crate::sys::reap::Used;

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
    /// The status could not be collected (the process was already reaped elsewhere).
    Unknown,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exited with status {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "was killed by signal {s} ({sig})"),
                Err(_) => write!(f, "was killed by signal {s}"),
            },
            Exit::Unknown => f.write_str("exited"),
        }
    }
}

/// What a dead worker used, as errors and restarts tell it: `peak RSS 11.8 GiB, CPU 3.20 s`.
pub(crate) fn describe_used(used: &Used) -> String {
    format!(
        "peak RSS {}, CPU {:.2} s",
        crate::human::bytes(used.peak_rss),
        used.cpu.as_secs_f64()
    )
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// A task (or `worker_init`/`worker_exit`) panicked.
    Panic { failure: Failure, during: Stage },
    /// The worker process ended while it ran the task. `earlier`: the deaths this task caused
    /// before, each on a worker of its own, when it was run again (`max_retries`).
    /// `used`: its peak memory and processor time, when it was reaped with them.
    WorkerDied {
        exit: Exit,
        used: Option<Used>,
        during: Stage,
        earlier: Vec<(usize, Exit)>,
    },
    /// A task (or `worker_init`, `worker_exit`, a shutdown) ran past its deadline, `limit`;
    /// `elapsed` is how long it had run when it was stopped, when known.
    Timeout {
        during: Stage,
        limit: Duration,
        elapsed: Option<Duration>,
    },
    /// A worker slot failed to start `failures` times in a row; `last` is the last failure.
    GaveUp { failures: u32, last: Box<Error> },
    /// The pool's queue is full (`max_queued_tasks`) and the call would not wait.
    Full(usize),
    /// The pool was shut down or dropped.
    Closed,
    /// A worker sent something that is not a valid frame.
    Protocol(String),
    /// Serialising an argument or deserialising a result failed.
    Codec(String),
    /// Invalid configuration or input, detected before any work started.
    Config(String),
    /// A worker could not be started.
    Start(String),
    /// A worker does not run the same binary image as the pool.
    Mismatch(String),
    /// A process start method was used without `ampire::init()`.
    NotInitialized,
}

/// What a worker was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Before set-up: the worker had not said hello yet, or had no `worker_init` to run.
    Start,
    Init,
    Task,
    Exit,
    /// The pool's shutdown.
    Shutdown,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Start => "its start-up",
            Stage::Init => "worker_init",
            Stage::Task => "a task",
            Stage::Exit => "worker_exit",
            Stage::Shutdown => "shutdown",
        })
    }
}

#[derive(Clone)]
struct Inner {
    kind: Kind,
    worker: Option<usize>,
    task: Option<usize>,
    /// `Debug` of the task's input, when the pool could see it.
    input: Option<String>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// The error of every fallible operation in this crate.
///
/// It is opaque: ask it questions instead of matching on it. It is cheap to clone, and `Send`,
/// `Sync` and `'static`, so it can cross tasks and threads.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(pool: &ampire::AsyncPool) {
/// fn risky(x: u32) -> u32 {
///     assert!(x != 3, "three is not allowed");
///     x
/// }
/// let err = pool.apply(risky, 3).await.unwrap_err();
/// assert!(err.is_panic());
/// assert_eq!(err.panic_message(), Some("three is not allowed"));
/// # }
/// ```
#[derive(Clone)]
pub struct Error(Arc<Inner>);

impl Error {
    pub(crate) fn new(kind: Kind) -> Error {
        Error(Arc::new(Inner {
            kind,
            worker: None,
            task: None,
            input: None,
            source: None,
        }))
    }

    /// A failure a worker reported, of a task (or `worker_init`/`worker_exit`) in `during`.
    pub(crate) fn failed(failure: Failure, during: Stage) -> Error {
        match failure.fault {
            Fault::Panic => Error::new(Kind::Panic { failure, during }),
            Fault::Codec => {
                let input = failure.input;
                let e = Error::new(Kind::Codec(failure.message));
                match input {
                    Some(input) => e.with_input(input),
                    None => e,
                }
            }
        }
    }

    pub(crate) fn config(msg: impl Into<String>) -> Error {
        Error::new(Kind::Config(msg.into()))
    }

    pub(crate) fn codec(what: &str, e: impl fmt::Display) -> Error {
        Error::new(Kind::Codec(format!("{what}: {e}")))
    }

    pub(crate) fn start(msg: impl fmt::Display) -> Error {
        Error::new(Kind::Start(msg.to_string()))
    }

    /// A worker could not be started because `what` failed with `e`, which stays the source.
    pub(crate) fn start_io(what: &str, e: std::io::Error) -> Error {
        Error::start(format!("{what}: {e}")).with_source(Arc::new(e))
    }

    pub(crate) fn closed() -> Error {
        Error::new(Kind::Closed)
    }

    /// A worker died while doing `during`.
    pub(crate) fn died(exit: Exit, during: Stage) -> Error {
        Error::new(Kind::WorkerDied {
            exit,
            used: None,
            during,
            earlier: Vec::new(),
        })
    }

    /// This error, for a worker that died having used `what` (a worker death only).
    pub(crate) fn with_used(self, what: Option<Used>) -> Error {
        self.map(|i| {
            if let Kind::WorkerDied { used, .. } = &mut i.kind {
                *used = what;
            }
        })
    }

    /// Something in `during` ran past `limit`, having run for `elapsed`.
    pub(crate) fn timeout(during: Stage, limit: Duration, elapsed: Option<Duration>) -> Error {
        Error::new(Kind::Timeout {
            during,
            limit,
            elapsed,
        })
    }

    /// This error, as the death of a task that had already killed the workers in `earlier`.
    pub(crate) fn after_deaths(self, before: &[(usize, Exit)]) -> Error {
        if before.is_empty() {
            return self;
        }
        self.map(|i| {
            if let Kind::WorkerDied { earlier, .. } = &mut i.kind {
                earlier.splice(0..0, before.iter().copied());
            }
        })
    }

    /// The death this error reports, for a task that killed its worker.
    pub(crate) fn death(&self) -> Option<Exit> {
        match self.0.kind {
            Kind::WorkerDied { exit, .. } => Some(exit),
            _ => None,
        }
    }

    pub(crate) fn with_worker(self, worker: usize) -> Error {
        self.map(|i| i.worker = Some(worker))
    }

    pub(crate) fn with_task(self, task: usize) -> Error {
        self.map(|i| i.task = Some(task))
    }

    pub(crate) fn with_input(self, input: String) -> Error {
        self.map(|i| i.input = Some(input))
    }

    pub(crate) fn with_source(self, source: Arc<dyn std::error::Error + Send + Sync>) -> Error {
        self.map(|i| i.source = Some(source))
    }

    /// What caused this error, for a breaker that gives up: its own source (the `io::Error` of a
    /// start that failed), or else the error itself (a worker that died while starting).
    pub(crate) fn cause(&self) -> Arc<dyn std::error::Error + Send + Sync> {
        match &self.0.source {
            Some(source) => source.clone(),
            None => Arc::new(self.clone()),
        }
    }

    /// Whether a worker that failed to start this way is worth starting again: not when its
    /// `worker_init` panicked, when it runs another binary, or when the pool is misconfigured.
    pub(crate) fn is_retryable_start(&self) -> bool {
        !matches!(
            self.0.kind,
            Kind::Panic { .. } | Kind::Mismatch(_) | Kind::Config(_) | Kind::NotInitialized
        )
    }

    /// The error a slot gives up with after `failures` failed starts in a row, the last being
    /// `last`: it answers `is_init` and `is_timeout` as the last failure does, and its source is
    /// that failure's cause.
    pub(crate) fn gave_up(slot: usize, failures: u32, last: Error) -> Error {
        let source = last.cause();
        Error::new(Kind::GaveUp {
            failures,
            last: Box::new(last),
        })
        .with_worker(slot)
        .with_source(source)
    }

    /// The last failure of a slot that gave up, or the error itself.
    fn last(&self) -> &Error {
        match &self.0.kind {
            Kind::GaveUp { last, .. } => last,
            _ => self,
        }
    }

    fn map(self, f: impl FnOnce(&mut Inner)) -> Error {
        let mut inner = Arc::unwrap_or_clone(self.0);
        f(&mut inner);
        Error(Arc::new(inner))
    }

    pub(crate) fn kind(&self) -> &Kind {
        &self.0.kind
    }

    /// Whether a task, `worker_init` or `worker_exit` panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.0.kind, Kind::Panic { .. })
    }

    /// Whether the worker process running the task ended (crash, signal, `abort`, `exit`).
    pub fn is_worker_died(&self) -> bool {
        matches!(self.0.kind, Kind::WorkerDied { .. })
    }

    /// Whether the pool was shut down or dropped before the task finished.
    pub fn is_closed(&self) -> bool {
        matches!(self.0.kind, Kind::Closed)
    }

    /// Whether the failure happened in `worker_init`: it panicked, its worker died in it, or it
    /// ran past [`worker_init_timeout`](crate::Builder::worker_init_timeout). For a pool that
    /// gave up starting a worker, whether the last failure was one of those.
    pub fn is_init(&self) -> bool {
        matches!(
            self.last().0.kind,
            Kind::Panic {
                during: Stage::Init,
                ..
            } | Kind::WorkerDied {
                during: Stage::Init,
                ..
            } | Kind::Timeout {
                during: Stage::Init,
                ..
            }
        )
    }

    /// Whether something ran past its deadline: a task ([`Builder::task_timeout`], or the
    /// call's own `task_timeout`), `worker_init` or `worker_exit` (their timeouts), or the whole
    /// shutdown ([`AsyncPool::shutdown_timeout`]). For a pool that gave up starting a worker,
    /// whether the last failure was a timeout.
    ///
    /// [`Builder::task_timeout`]: crate::Builder::task_timeout
    /// [`AsyncPool::shutdown_timeout`]: crate::AsyncPool::shutdown_timeout
    pub fn is_timeout(&self) -> bool {
        matches!(self.last().0.kind, Kind::Timeout { .. })
    }

    /// Whether the call was refused at once because the pool's queue was full
    /// ([`Builder::max_queued_tasks`](crate::Builder::max_queued_tasks) and
    /// [`AsyncPool::try_apply`](crate::AsyncPool::try_apply)).
    pub fn is_full(&self) -> bool {
        matches!(self.0.kind, Kind::Full(_))
    }

    /// Whether the configuration or the input was rejected before any work started.
    pub fn is_config(&self) -> bool {
        matches!(self.0.kind, Kind::Config(_) | Kind::NotInitialized)
    }

    /// Whether a worker broke the wire protocol (malformed or oversized frame).
    pub fn is_protocol(&self) -> bool {
        matches!(self.0.kind, Kind::Protocol(_) | Kind::Mismatch(_))
    }

    /// Whether an input or a result could not cross to or from the worker: it failed to serialise
    /// or deserialise, or it is larger than [`max_frame_len`](crate::Builder::max_frame_len)
    /// allows.
    pub fn is_codec(&self) -> bool {
        matches!(self.0.kind, Kind::Codec(_))
    }

    /// The panic message, for a panic.
    pub fn panic_message(&self) -> Option<&str> {
        self.failure().map(|f| f.message.as_str())
    }

    /// Where the panic happened (`file:line:column`), for a panic.
    pub fn panic_location(&self) -> Option<&str> {
        self.failure().and_then(|f| f.location.as_deref())
    }

    /// The backtrace captured in the worker, for a panic.
    pub fn backtrace(&self) -> Option<&str> {
        self.failure().and_then(|f| f.backtrace.as_deref())
    }

    /// The `Debug` of the failed task's input (cut at about 1 KiB), for a task that panicked, whose
    /// worker died, or whose input or result could not be sent.
    ///
    /// Under `Threading` a panicking task's input is not known: it was moved into the task, and
    /// formatting every input in advance would cost more than most tasks.
    pub fn input(&self) -> Option<&str> {
        self.0
            .input
            .as_deref()
            .or_else(|| self.failure().and_then(|f| f.input.as_deref()))
    }

    /// The id of the worker involved, when one was.
    pub fn worker_id(&self) -> Option<usize> {
        self.0.worker
    }

    /// The position of the failed task in its call's input, when known.
    pub fn task_index(&self) -> Option<usize> {
        self.0.task
    }

    /// The signal that ended the worker, if it was killed by one.
    pub fn signal(&self) -> Option<i32> {
        match self.death() {
            Some(Exit::Signal(s)) => Some(s),
            _ => None,
        }
    }

    /// The exit status of the worker, if it exited by itself.
    pub fn exit_code(&self) -> Option<i32> {
        match self.death() {
            Some(Exit::Code(c)) => Some(c),
            _ => None,
        }
    }

    /// The peak resident memory of the worker process that died, in bytes, as the kernel
    /// reported it when the worker was reaped (`wait4`). `None` for other errors. (A `Fork`
    /// worker counts the pages it shares with the pool's process as resident too.)
    pub fn peak_memory(&self) -> Option<u64> {
        self.used().map(|u| u.peak_rss)
    }

    /// The processor time (user and system) the worker process that died used over its life,
    /// as the kernel reported it when the worker was reaped. `None` for other errors.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.used().map(|u| u.cpu)
    }

    fn used(&self) -> Option<Used> {
        match self.0.kind {
            Kind::WorkerDied { used, .. } => used,
            _ => None,
        }
    }

    /// How many workers the task killed: 1 for a task whose worker died, more for a task that
    /// was run again ([`max_retries`](crate::Builder::max_retries)) and killed each worker it
    /// ran on; 0 for every other error. The message lists each death.
    pub fn workers_killed(&self) -> usize {
        match &self.0.kind {
            Kind::WorkerDied { earlier, .. } => earlier.len() + 1,
            _ => 0,
        }
    }

    fn failure(&self) -> Option<&Failure> {
        match &self.0.kind {
            Kind::Panic { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let worker = |f: &mut fmt::Formatter<'_>| match self.0.worker {
            Some(w) => write!(f, "worker {w}"),
            None => f.write_str("a worker"),
        };
        match &self.0.kind {
            Kind::Panic { failure, during } => {
                match during {
                    Stage::Start | Stage::Task | Stage::Shutdown => {
                        f.write_str("task panicked in ")?
                    }
                    Stage::Init => f.write_str("worker_init panicked in ")?,
                    Stage::Exit => f.write_str("worker_exit panicked in ")?,
                }
                worker(f)?;
                write!(f, ": {failure}")?;
            }
            Kind::WorkerDied {
                exit,
                used,
                during,
                earlier,
            } => {
                worker(f)?;
                write!(f, " {exit}")?;
                if let Some(used) = used {
                    write!(f, ", {},", describe_used(used))?;
                }
                write!(f, " while running {during}")?;
                if !earlier.is_empty() {
                    write!(f, "; it had killed {} workers before:", earlier.len())?;
                    for (i, (w, exit)) in earlier.iter().enumerate() {
                        let sep = if i == 0 { " " } else { ", " };
                        write!(f, "{sep}worker {w} {exit}")?;
                    }
                }
            }
            Kind::Timeout {
                during,
                limit,
                elapsed,
            } => {
                match during {
                    Stage::Shutdown => f.write_str("shutdown")?,
                    _ => {
                        write!(f, "{during} on ")?;
                        worker(f)?;
                    }
                }
                match elapsed {
                    Some(t) => write!(f, " timed out after {t:.3?} (timeout {limit:?})")?,
                    None => write!(f, " timed out (timeout {limit:?})")?,
                }
            }
            Kind::GaveUp { failures, last } => {
                worker(f)?;
                write!(
                    f,
                    " failed to start {failures} times in a row, the last time: {last}"
                )?;
                // The last failure said which task and input, if any: not this error's.
                return Ok(());
            }
            Kind::Full(n) => write!(f, "the pool's queue is full ({n} tasks queued)")?,
            Kind::Closed => f.write_str("pool is shut down")?,
            Kind::Protocol(m) => {
                worker(f)?;
                write!(f, " broke the wire protocol: {m}")?;
            }
            Kind::Codec(m) => write!(f, "serialisation failed: {m}")?,
            Kind::Config(m) => write!(f, "invalid configuration: {m}")?,
            Kind::Start(m) => write!(f, "could not start a worker: {m}")?,
            Kind::Mismatch(m) => write!(f, "worker runs a different binary: {m}")?,
            Kind::NotInitialized => f.write_str(
                "ampire::init() was not called: process start methods need it as the first line of main",
            )?,
        }
        match (self.0.task, self.input()) {
            (Some(t), Some(input)) => write!(f, " (task {t}, input: {input})"),
            (Some(t), None) => write!(f, " (task {t})"),
            (None, Some(input)) => write!(f, " (input: {input})"),
            (None, None) => Ok(()),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind);
        if let Some(w) = self.0.worker {
            d.field("worker", &w);
        }
        if let Some(t) = self.0.task {
            d.field("task", &t);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    /// What caused this error, when it has a cause of its own: the `io::Error` of a worker that
    /// could not be started, or the death (an `ampire::Error` with its signal or exit status) of
    /// the last worker that failed to start before the pool gave up.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

const _: () = {
    const fn assert_traits<T: Send + Sync + 'static + std::error::Error>() {}
    assert_traits::<Error>();
};
