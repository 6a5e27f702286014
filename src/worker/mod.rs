//! The worker side: the loop a worker process runs, the loop of a thread worker, and panic
//! capture.
//!
//! A process worker is blocking and single-threaded on our side (user tasks may start threads
//! or even pools of their own). It never touches tokio, so the same loop serves a forked child
//! of a multi-threaded parent, a child of the forkserver and a re-executed binary. Nothing here
//! imports the pool's side: a worker needs only the protocol (`proto`) and the system layer.

use std::any::Any;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::deadline::Stamper;
use crate::proto::frame::FrameIo;
use crate::proto::frame::{HEADER_ROOM, Shared};
use crate::proto::{self, Event, Failure, FromWorker, Reader, Span, ToWorker, Writer, handshake};
use crate::sys::image::{self, EntryFn};
use crate::sys::journal;
use crate::sys::local::ProcessLocal;
use crate::sys::shm::View;

mod catch;
mod lifespan;
mod probe;
mod results;
mod thread;

pub(crate) use catch::{capture_lock, catch, install_panic_hook};
pub(crate) use lifespan::Lifespan;
pub(crate) use probe::{Measured, Probe, SLOWEST};
pub(crate) use results::Results;
pub(crate) use thread::{
    LocalChunk, LocalDone, LocalJob, LocalNext, LocalQueue, Salvage, Salvaged, Spent, Takeback,
    ThreadEnd, ThreadWorker, Watch,
};

/// What a worker holds across its tasks.
pub(crate) struct Context {
    pub id: usize,
    pub shared: Option<Arc<dyn Any + Send + Sync>>,
    pub state: Option<Box<dyn Any>>,
    /// What the worker shares with the pool about the task it runs: whether the pool gave up
    /// on it (`Worker::is_cancelled`; a process worker is killed instead, so its flag stays
    /// clear) and, for a thread worker, the task's deadline.
    pub watch: Arc<Watch>,
    /// A thread worker's deadline words (a process worker's are made by its `Results`).
    pub stamper: Stamper,
    /// A thread worker's measurements of its tasks, when insights are on (a process worker's
    /// are in its `Results`).
    pub probe: Option<Probe>,
}

/// Initialises every lazily created global a worker uses (panic hook, image identity), so that a
/// child forked from this thread never finds one half-initialised by a thread it does not have.
pub(crate) fn prepare_fork() {
    install_panic_hook();
    let _ = image::identity();
}

/// What a process worker is given: its two streams (tasks in, results out), and the shared
/// memory of a worker on the pool's machine (the pool's arena of large inputs, its own journal).
pub(crate) struct Ends {
    pub tasks: OwnedFd,
    pub results: OwnedFd,
    pub arena: Option<OwnedFd>,
    pub journal: Option<OwnedFd>,
    /// What becomes its standard output and error, when the pool relays them.
    pub output: Option<[OwnedFd; 2]>,
}

/// The loop of a worker process. Returns the exit code; the caller leaves through `_exit`.
///
/// `inherited` is the pool's shared object when the worker was forked from the pool itself.
pub(crate) fn serve(ends: Ends, inherited: Option<Arc<dyn Any + Send + Sync>>) -> i32 {
    install_panic_hook();
    if let Some([out, err]) = &ends.output {
        // What it prints goes to the pool, which prints it above its bars.
        if nix::unistd::dup2_stdout(out).is_err() || nix::unistd::dup2_stderr(err).is_err() {
            return 2;
        }
    }
    let arena = match ends
        .arena
        .map(|fd| View::open(fd).map(Arc::new))
        .transpose()
    {
        Ok(arena) => arena,
        Err(_) => return 2,
    };
    let ring = match ends.journal.map(journal::Writer::open).transpose() {
        Ok(ring) => ring,
        Err(_) => return 2,
    };
    let in_arena = |span: Span| arena.as_ref().and_then(|a| a.get(span.offset, span.len));
    let results = Shared::new(File::from(ends.results));
    let _ = RESULT_PIPE.get_or_try_init(|| Ok::<_, ()>(results.handle()));
    let mut rd = Reader::new(File::from(ends.tasks), proto::DEFAULT_MAX_FRAME);
    let mut wr = Writer::new(results);
    // The set-up was sent at once; it is read before the hello only so that a test can make a
    // worker fail to start.
    let setup = handshake::accept(&mut rd);
    if let Ok(frame) = &setup {
        if let ToWorker::Setup {
            fault: Some(code), ..
        } = frame.header
        {
            return code;
        }
    }
    if handshake::greet(&mut wr).is_err() {
        return 2;
    }
    let fatal = |wr: &mut Writer<Shared>, msg: String| {
        let _ = wr.send(&FromWorker::Fatal(msg), &[]);
        let _ = wr.flush();
        3
    };
    let mut cx = Context {
        id: 0,
        shared: inherited,
        state: None,
        watch: Arc::default(),
        stamper: Stamper::new(0),
        probe: None,
    };
    let frame = match setup {
        Ok(frame) => frame,
        Err(None) => return 0,
        Err(Some(msg)) => return fatal(&mut wr, msg),
    };
    let ToWorker::Setup {
        worker_id,
        setup,
        shared,
        arena: span,
        identity: _,
        max_frame,
        fault: _,
        exit,
        lifespan,
        max_memory,
        insights,
    } = frame.header
    else {
        return fatal(&mut wr, "expected set-up".into());
    };
    cx.id = worker_id as usize;
    let max_frame = usize::try_from(max_frame).unwrap_or(usize::MAX);
    let Some(entry) = image::entry(setup) else {
        return fatal(&mut wr, "set-up entry is outside this binary".into());
    };
    let bytes = match (shared, span) {
        (false, _) => &[][..],
        (true, None) => rd.body(frame.body.clone()),
        (true, Some(span)) => match in_arena(span) {
            Some(b) => b,
            None => return fatal(&mut wr, format!("{span:?} is outside the arena")),
        },
    };
    let mut call = SetupCall::new(shared);
    // Large `SharedSlice`s in the shared object are read in place from the arena.
    proto::slice::reading(arena.as_ref(), || entry(&mut cx, bytes, &mut call));
    let (reply, failed) = match call.result {
        Ok(()) => (FromWorker::Ready, false),
        Err(f) => (FromWorker::InitFailed(Box::new(f)), true),
    };
    if wr.send(&reply, &[]).and_then(|()| wr.flush()).is_err() || failed {
        return 0;
    }
    rd.set_max(max_frame);
    let budget = max_frame.saturating_sub(HEADER_ROOM);
    let probe = (insights > 0).then(|| Probe::new(insights > 1));
    let mut call = ChunkCall::new(
        Results::new(wr, ring, budget, probe),
        Lifespan::new(lifespan, max_memory),
    );
    let mut last: Option<(i64, EntryFn)> = None;
    loop {
        if !rd.has_frame() {
            // About to wait for the next job: everything done so far goes to the pool first.
            call.results.flush();
        }
        let frame = match rd.next::<ToWorker>() {
            Ok(Some(frame)) => frame,
            Ok(None) => return 0,
            Err(e) => return fatal(call.results.writer(), e.to_string()),
        };
        match frame.header {
            ToWorker::Task {
                id,
                seq,
                hold,
                entry,
                count,
                arena: span,
                timeout_us,
            } => {
                if !call.results.claim(seq) {
                    continue; // the pool took this job back
                }
                // Results held for tiny tasks go before a job that may take long, or once they
                // have waited long enough.
                if !hold || call.results.stale() {
                    call.results.flush();
                }
                let run = match last {
                    Some((off, f)) if off == entry => f,
                    _ => match image::entry(entry) {
                        Some(f) => {
                            last = Some((entry, f));
                            f
                        }
                        None => {
                            let msg = "task entry is outside this binary".into();
                            return fatal(call.results.writer(), msg);
                        }
                    },
                };
                let body = match span {
                    None => rd.body(frame.body),
                    Some(span) => match in_arena(span) {
                        Some(b) => b,
                        None => {
                            let msg = format!("{span:?} is outside the arena");
                            return fatal(call.results.writer(), msg);
                        }
                    },
                };
                call.prepare(id, count, timeout_us);
                run(&mut cx, body, &mut call);
                if let Err(msg) = &call.result {
                    let msg = msg.clone();
                    return fatal(call.results.writer(), msg);
                }
                call.results.finish_job();
                if call.results.is_broken() {
                    return 2;
                }
                if call.lifespan.is_over() {
                    // Said before the pool hears it: it may close the task stream then.
                    LEAVING.store(true, std::sync::atomic::Ordering::SeqCst);
                    // Every result is sent first: what the pool has not heard of is its again.
                    call.results.flush();
                    let wr = call.results.writer();
                    if wr
                        .send(
                            &FromWorker::Retiring {
                                memory: call.lifespan.for_memory(),
                            },
                            &[],
                        )
                        .and_then(|()| wr.flush())
                        .is_err()
                    {
                        return 2;
                    }
                    return leave(wr, exit, cx);
                }
            }
            ToWorker::Shutdown { exit } => {
                LEAVING.store(true, std::sync::atomic::Ordering::SeqCst);
                return leave(call.results.writer(), exit, cx);
            }
            ToWorker::Setup { .. } => {
                return fatal(call.results.writer(), "set-up sent twice".into());
            }
        }
    }
}

/// The deadline word of the task a remote worker runs (a worker of this host publishes it in its
/// journal, for the pool's watchdog; a remote one has no journal, and watches its own).
static OWN_DEADLINE: AtomicU64 = AtomicU64::new(0);

/// The deadline part of the word the watcher sleeps toward; `u64::MAX` while it waits for one.
static WATCHING: AtomicU64 = AtomicU64::new(u64::MAX);

/// The watcher thread, to wake when a task's deadline comes before the one it sleeps toward.
static WATCHER: ProcessLocal<std::thread::Thread> = ProcessLocal::new();

/// The exit status of a remote worker that stopped itself for a task past its deadline (after
/// telling the pool so in a frame; the status is for whoever reads the launcher's).
const TIMED_OUT: i32 = 124;

/// Publishes the deadline word of the task this remote worker starts (0: none).
pub(crate) fn publish_own_deadline(word: u64) {
    OWN_DEADLINE.store(word, Ordering::SeqCst);
    if word != 0 && word >> 16 < WATCHING.load(Ordering::SeqCst) {
        if let Some(watcher) = WATCHER.get() {
            watcher.unpark();
        }
    }
}

/// Starts the thread that ends this (remote) worker when its task runs past its deadline: it
/// sleeps until the deadline of the task it sees (or until a task with a deadline starts), and
/// if that task still runs then, it sends the pool [`FromWorker::TimedOut`] and ends the
/// process, holding the result stream so that no frame is cut.
pub(crate) fn watch_own_deadline() -> std::io::Result<()> {
    let thread = std::thread::Builder::new()
        .name("ampire-deadline".into())
        .spawn(|| {
            loop {
                // Says what it waits for before it looks again, so that a task publishing an
                // earlier deadline after the look wakes it (both sides use `SeqCst`).
                let word = OWN_DEADLINE.load(Ordering::SeqCst);
                if word == 0 {
                    WATCHING.store(u64::MAX, Ordering::SeqCst);
                    if OWN_DEADLINE.load(Ordering::SeqCst) == 0 {
                        std::thread::park();
                    }
                    continue;
                }
                let left = crate::proto::deadline::remaining(word, 0);
                if !left.is_zero() {
                    WATCHING.store(word >> 16, Ordering::SeqCst);
                    if OWN_DEADLINE.load(Ordering::SeqCst) == word {
                        std::thread::park_timeout(left);
                    }
                    continue;
                }
                let Some(pipe) = RESULT_PIPE.get() else {
                    crate::sys::fork::exit_now(TIMED_OUT)
                };
                pipe.hold(|mut io| {
                    if OWN_DEADLINE.load(Ordering::SeqCst) == word {
                        let mut frame = Vec::new();
                        proto::frame::encode(&mut frame, &FromWorker::TimedOut, &[]);
                        let _ = io.write_all(&frame);
                        crate::sys::fork::exit_now(TIMED_OUT)
                    }
                });
            }
        })?;
    let _ = WATCHER.get_or_try_init(|| Ok::<_, ()>(thread.thread().clone()));
    Ok(())
}

/// Set once this worker leaves on its own (it retires, or was told to shut down): the pool may
/// close its task stream from then on, and that is no reason to stop.
static LEAVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this worker is leaving on its own.
pub(crate) fn leaving() -> bool {
    LEAVING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Runs the exit function (`exit`, if any), sends its result, and returns the exit code. The
/// process ends then, as with `std::process::exit`: the state is not dropped. Freeing a large
/// state piece by piece (a map of millions of keys) took longer than the whole exit function; the
/// kernel takes the memory back at once.
fn leave(wr: &mut Writer<Shared>, exit: Option<i64>, mut cx: Context) -> i32 {
    let (reply, body) = match exit.map(image::entry) {
        None => (FromWorker::Exit(None), Vec::new()),
        Some(None) => {
            let _ = wr.send(
                &FromWorker::Fatal("exit entry is outside this binary".into()),
                &[],
            );
            let _ = wr.flush();
            return 3;
        }
        Some(Some(f)) => match run_exit(f, &mut cx, false) {
            Ok(Exited::Bytes(bytes)) => (FromWorker::Exit(None), bytes),
            Ok(Exited::Value(_)) => (FromWorker::Exit(None), Vec::new()),
            Err(fail) => (FromWorker::Exit(Some(Box::new(fail))), Vec::new()),
        },
    };
    let _ = wr.send(&reply, &body);
    let _ = wr.flush();
    std::mem::forget(cx);
    0
}

/// What the set-up entry point (shared object, `worker_init`) is called with and answers. Its
/// bytes are the serialised shared object when `shared`; otherwise the worker already holds it.
pub(crate) struct SetupCall {
    pub shared: bool,
    pub result: Result<(), Failure>,
}

impl SetupCall {
    pub(crate) fn new(shared: bool) -> SetupCall {
        SetupCall {
            shared,
            result: Err(Failure {
                message: "the set-up entry point is of another kind".into(),
                ..Failure::default()
            }),
        }
    }
}

/// What a chunk entry point is called with and answers: it runs `count` tasks of job `id`, whose
/// inputs are its bytes, and hands each result (or failure) to `results`. An `Err` means the
/// chunk could not run at all.
pub(crate) struct ChunkCall {
    pub count: u32,
    pub results: Results,
    pub result: Result<(), String>,
    /// What is left of the worker's life: the chunk stops early when it ends.
    pub lifespan: Lifespan,
}

impl ChunkCall {
    fn new(results: Results, lifespan: Lifespan) -> ChunkCall {
        ChunkCall {
            count: 0,
            results,
            result: Ok(()),
            lifespan,
        }
    }

    /// Readies the call for a chunk of `count` tasks of job `id`, each of which may run for
    /// `timeout_us` (0: no limit).
    fn prepare(&mut self, id: u64, count: u32, timeout_us: u64) {
        self.count = count;
        self.results.start_job(id, timeout_us);
        self.result = Err("the task entry point is of another kind".into());
    }
}

/// What the exit entry point answers: the serialised exit result.
pub(crate) struct ExitCall {
    /// Whether the result stays in this process (a thread worker's): moved, not serialised.
    pub local: bool,
    pub result: Result<Exited, Failure>,
}

/// An exit result: serialised (a process worker's), or the value itself (a thread worker's).
pub(crate) enum Exited {
    Bytes(Vec<u8>),
    Value(Box<dyn Any + Send>),
}

impl ExitCall {
    pub(crate) fn new(local: bool) -> ExitCall {
        ExitCall {
            local,
            result: Err(Failure {
                message: "the exit entry point is of another kind".into(),
                ..Failure::default()
            }),
        }
    }
}

/// Runs the exit entry point `f`.
pub(crate) fn run_exit(f: EntryFn, cx: &mut Context, local: bool) -> Result<Exited, Failure> {
    let mut call = ExitCall::new(local);
    f(cx, &[], &mut call);
    call.result
}

/// This process's result stream, when it is a process worker.
static RESULT_PIPE: ProcessLocal<Shared> = ProcessLocal::new();

/// Whether this process is a process worker of some pool (a pool built in one of its tasks is
/// then a nested pool, whose progress travels to that pool).
pub(crate) fn in_process_worker() -> bool {
    RESULT_PIPE.get().is_some()
}

/// Sends `event` to the pool that owns this worker process, from any thread; `false` when this
/// process is not a worker, or the stream is gone.
pub(crate) fn send_event(event: &Event) -> bool {
    let Some(pipe) = RESULT_PIPE.get() else {
        return false;
    };
    let mut frame = Vec::new();
    proto::frame::encode(&mut frame, &FromWorker::Event(event.clone()), &[]);
    pipe.handle().write_frames(&[&frame]).is_ok()
}

/// Fault injection for tests: sends one event of each kind to the pool, from inside a task.
/// Returns `false` outside a process worker. Not part of the API.
#[doc(hidden)]
pub fn send_events() -> bool {
    let events = [
        Event::Started { id: 1, index: 2 },
        Event::Progress {
            bar: 7,
            parent: Some(3),
            label: "a nested pool".into(),
            done: 3,
            total: Some(10),
            failed: 1,
            closed: true,
        },
        Event::Output {
            stderr: true,
            line: b"a line".to_vec(),
        },
        Event::Slow {
            id: u64::MAX,
            index: 0,
            ns: 1,
            cpu_ns: None,
            peak_memory: None,
            input: "no such job".into(),
        },
    ];
    events.iter().all(send_event)
}

/// Fault injection for tests: writes `bytes` raw (unframed) into this worker's result pipe.
/// Returns `false` outside a process worker. Not part of the API.
#[doc(hidden)]
pub fn inject_raw_result_bytes(bytes: &[u8]) -> bool {
    RESULT_PIPE
        .get()
        .is_some_and(|p| p.handle().write_frames(&[bytes]).is_ok())
}
