//! The worker side: the loop a worker process or thread runs, and panic capture.
//!
//! A process worker is blocking and single-threaded on our side (user tasks may start threads
//! or even pools of their own). It never touches tokio, so the same loop serves a forked child
//! of a multi-threaded parent, a child of the forkserver and a re-executed binary.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Once, PoisonError};
use std::time::{Duration, Instant};

use crate::sys::image::{self, ChunkEntry, ExitEntry, SetupEntry};
use crate::sys::shm::View;
use crate::task::LocalChunk;
use crate::wire::{self, Failure, FromWorker, Reader, ToWorker, Writer};

/// What a worker holds across its tasks.
pub(crate) struct Context {
    pub id: usize,
    pub shared: Option<Arc<dyn Any + Send + Sync>>,
    pub state: Option<Box<dyn Any>>,
}

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static CAPTURED: RefCell<Option<Failure>> = const { RefCell::new(None) };
}

/// Installs (once per process) the panic hook that records panics of tasks as data.
pub(crate) fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if ARMED.try_with(Cell::get).unwrap_or(false) {
                let _capturing = capture_lock()
                    .read()
                    .unwrap_or_else(PoisonError::into_inner);
                let failure = Failure {
                    message: payload_message(info.payload()),
                    location: info.location().map(|l| l.to_string()),
                    backtrace: Some(std::backtrace::Backtrace::force_capture().to_string()),
                    ..Failure::default()
                };
                let _ = CAPTURED.try_with(|c| *c.borrow_mut() = Some(failure));
            } else {
                previous(info);
            }
        }));
    });
}

/// Initialises every lazily created global a worker uses (panic hook, image identity), so that a
/// child forked from this thread never finds one half-initialised by a thread it does not have.
pub(crate) fn prepare_fork() {
    install_panic_hook();
    let _ = image::identity();
}

/// Held (shared) while a task's panic captures its backtrace, and (exclusively) by the `Fork`
/// start method across `fork(2)`: std's backtrace machinery takes a global lock, and a child
/// forked while another thread held it would deadlock at its first panic.
pub(crate) fn capture_lock() -> &'static std::sync::RwLock<()> {
    static LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
    &LOCK
}

fn payload_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".into())
}

/// Runs `f`, turning a panic into a [`Failure`] with message, location and backtrace.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Failure> {
    install_panic_hook();
    let was = ARMED.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    ARMED.set(was);
    result.map_err(|payload| {
        let mut failure = CAPTURED.take().unwrap_or_default();
        if failure.message.is_empty() {
            failure.message = payload_message(&*payload);
        }
        // Dropping a panic payload may panic again; keep that from escaping.
        let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
        failure
    })
}

/// The loop of a worker process. Returns the exit code; the caller leaves through `_exit`.
///
/// `inherited` is the pool's shared object when the worker was forked from the pool itself.
pub(crate) fn serve(
    tasks: OwnedFd,
    results: OwnedFd,
    arena: OwnedFd,
    inherited: Option<Arc<dyn Any + Send + Sync>>,
) -> i32 {
    install_panic_hook();
    let Ok(arena) = View::open(arena) else {
        return 2;
    };
    let _ = RESULT_PIPE.get_or_try_init(|| results.try_clone().map(File::from));
    let mut rd = Reader::new(File::from(tasks), wire::DEFAULT_MAX_FRAME);
    let mut wr = Writer::new(File::from(results));
    let hello = FromWorker::Hello {
        magic: wire::MAGIC,
        version: wire::VERSION,
        pid: std::process::id(),
        identity: image::identity(),
    };
    if wr.send(&hello, &[]).and_then(|()| wr.flush()).is_err() {
        return 2;
    }
    let fatal = |wr: &mut Writer<File>, msg: String| {
        let _ = wr.send(&FromWorker::Fatal(msg), &[]);
        let _ = wr.flush();
        3
    };
    let mut cx = Context {
        id: 0,
        shared: inherited,
        state: None,
    };
    match rd.next::<ToWorker>() {
        Ok(Some(frame)) => match frame.header {
            ToWorker::Setup {
                worker_id,
                setup,
                shared,
                arena: span,
                identity,
            } => {
                if identity != image::identity() {
                    return fatal(&mut wr, "the pool runs a different binary".into());
                }
                cx.id = worker_id as usize;
                let Some(entry) = image::setup_entry(setup) else {
                    return fatal(&mut wr, "set-up entry is outside this binary".into());
                };
                let bytes = match (shared, span) {
                    (false, _) => None,
                    (true, None) => Some(rd.body(frame.body.clone())),
                    (true, Some(span)) => match arena.get(span.offset, span.len) {
                        Some(b) => Some(b),
                        None => return fatal(&mut wr, format!("{span:?} is outside the arena")),
                    },
                };
                let reply = match entry(&mut cx, bytes) {
                    Ok(()) => FromWorker::Ready,
                    Err(f) => FromWorker::InitFailed(f),
                };
                let failed = matches!(reply, FromWorker::InitFailed(_));
                if wr.send(&reply, &[]).and_then(|()| wr.flush()).is_err() || failed {
                    return 0;
                }
            }
            other => return fatal(&mut wr, format!("expected set-up, got {other:?}")),
        },
        Ok(None) => return 0,
        Err(e) => return fatal(&mut wr, e.to_string()),
    }
    let mut out = Vec::new();
    let mut last: Option<(i64, ChunkEntry)> = None;
    loop {
        let frame = match rd.next::<ToWorker>() {
            Ok(Some(frame)) => frame,
            Ok(None) => return 0,
            Err(e) => return fatal(&mut wr, e.to_string()),
        };
        match frame.header {
            ToWorker::Task {
                id,
                entry,
                count,
                arena: span,
            } => {
                let run = match last {
                    Some((off, f)) if off == entry => f,
                    _ => match image::chunk_entry(entry) {
                        Some(f) => {
                            last = Some((entry, f));
                            f
                        }
                        None => return fatal(&mut wr, "task entry is outside this binary".into()),
                    },
                };
                out.clear();
                let t0 = Instant::now();
                let body = match span {
                    None => rd.body(frame.body),
                    Some(span) => match arena.get(span.offset, span.len) {
                        Some(b) => b,
                        None => return fatal(&mut wr, format!("{span:?} is outside the arena")),
                    },
                };
                if let Err(msg) = run(&mut cx, body, count, &mut out) {
                    return fatal(&mut wr, msg);
                }
                let busy_ns = t0.elapsed().as_nanos() as u64;
                if wr.send(&FromWorker::Done { id, busy_ns }, &out).is_err() {
                    return 2;
                }
                // Results leave before the next task starts: if that task kills the process,
                // everything finished before it has already reached the pool.
                if wr.flush().is_err() {
                    return 2;
                }
            }
            ToWorker::Shutdown { exit } => {
                let (reply, body) = match exit.map(|off| (off, image::exit_entry(off))) {
                    None => (FromWorker::Exit(None), Vec::new()),
                    Some((_, None)) => {
                        return fatal(&mut wr, "exit entry is outside this binary".into());
                    }
                    Some((_, Some(f))) => match f(&mut cx) {
                        Ok(bytes) => (FromWorker::Exit(None), bytes),
                        Err(fail) => (FromWorker::Exit(Some(fail)), Vec::new()),
                    },
                };
                let _ = wr.send(&reply, &body);
                let _ = wr.flush();
                // The process ends here, as with `std::process::exit`: the state is not dropped.
                // Freeing a large state piece by piece (a map of millions of keys) took longer
                // than the whole exit function; the kernel takes the memory back at once.
                std::mem::forget(cx);
                return 0;
            }
            ToWorker::Setup { .. } => return fatal(&mut wr, "set-up sent twice".into()),
        }
    }
}

static RESULT_PIPE: crate::role::ProcessLocal<File> = crate::role::ProcessLocal::new();

/// Fault injection for tests: writes `bytes` raw (unframed) into this worker's result pipe.
/// Returns `false` outside a process worker. Not part of the API.
#[doc(hidden)]
pub fn inject_raw_result_bytes(bytes: &[u8]) -> bool {
    use std::io::Write;
    RESULT_PIPE
        .get()
        .is_some_and(|mut f| f.write_all(bytes).and_then(|()| f.flush()).is_ok())
}

/// What a thread worker does next.
pub(crate) enum LocalNext {
    Job(u64, LocalChunk),
    /// Run the exit function and leave.
    Shutdown,
    /// Leave at once (the pool was dropped).
    Stop,
}

/// The pool as a thread worker sees it: it takes its jobs from the queue itself and hands the
/// results straight to their calls, with no task in between.
pub(crate) trait LocalQueue: Send + Sync {
    /// Blocks until there is something to do.
    fn next(&self, slot: usize) -> LocalNext;
    /// Job `id` finished with `out`. Hands back the next job when one is ready at once, so
    /// that a busy worker takes the pool's lock once per job, not twice.
    fn done(
        &self,
        slot: usize,
        id: u64,
        out: Result<Box<dyn Any + Send>, String>,
        busy: Duration,
    ) -> Option<(u64, LocalChunk)>;
    /// The worker ran its exit function and dropped its state; this is its exit result.
    fn left(&self, slot: usize, exit: Result<Vec<u8>, Failure>);
}

/// How a thread worker ended: `true` after shutdown (its exit result went to
/// [`LocalQueue::left`]), `false` when stopped.
pub(crate) type ThreadEnd = bool;

/// The loop of a thread worker.
pub(crate) struct ThreadWorker {
    pub id: usize,
    pub shared: Arc<dyn Any + Send + Sync>,
    pub setup: SetupEntry,
    pub exit: Option<ExitEntry>,
    pub queue: Arc<dyn LocalQueue>,
    /// Where set-up reports, when the pool waits for it.
    pub ready: Option<tokio::sync::oneshot::Sender<Result<(), Failure>>>,
    pub ended: tokio::sync::oneshot::Sender<ThreadEnd>,
}

impl ThreadWorker {
    pub(crate) fn run(self) {
        install_panic_hook();
        let mut cx = Context {
            id: self.id,
            shared: Some(self.shared),
            state: None,
        };
        let setup = (self.setup)(&mut cx, None);
        let failed = setup.is_err();
        // Without a waiting pool (no `worker_init`), a failed set-up just ends the thread, and
        // the pool replaces it.
        let heard = self.ready.is_none_or(|r| r.send(setup).is_ok());
        if !heard || failed {
            return;
        }
        let mut ready = None;
        loop {
            let next = match ready.take() {
                Some((job, chunk)) => LocalNext::Job(job, chunk),
                None => self.queue.next(self.id),
            };
            match next {
                LocalNext::Job(job, chunk) => {
                    let t0 = Instant::now();
                    let out = chunk(&mut cx);
                    ready = self.queue.done(self.id, job, out, t0.elapsed());
                }
                LocalNext::Shutdown => {
                    let result = self.exit.map_or(Ok(Vec::new()), |f| f(&mut cx));
                    self.queue.left(self.id, result);
                    let _ = self.ended.send(true);
                    // The state is dropped here, on this thread, after `shutdown()` was told.
                    return;
                }
                LocalNext::Stop => {
                    let _ = self.ended.send(false);
                    return;
                }
            }
        }
    }
}
