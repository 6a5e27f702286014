//! The worker side: the loop a worker process runs, the loop of a thread worker, and panic
//! capture.
//!
//! A process worker is blocking and single-threaded on our side (user tasks may start threads
//! or even pools of their own). It never touches tokio, so the same loop serves a forked child
//! of a multi-threaded parent, a child of the forkserver and a re-executed binary. Nothing here
//! imports the pool's side: a worker needs only the protocol (`proto`) and the system layer.

use std::any::Any;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use crate::proto::{self, FromWorker, Reader, ToWorker, Writer, handshake};
use crate::sys::image::{self, ChunkEntry};
use crate::sys::shm::View;

mod catch;
mod thread;

pub(crate) use catch::{capture_lock, catch, install_panic_hook};
pub(crate) use thread::{LocalChunk, LocalNext, LocalQueue, ThreadEnd, ThreadWorker};

/// What a worker holds across its tasks.
pub(crate) struct Context {
    pub id: usize,
    pub shared: Option<Arc<dyn Any + Send + Sync>>,
    pub state: Option<Box<dyn Any>>,
}

/// Initialises every lazily created global a worker uses (panic hook, image identity), so that a
/// child forked from this thread never finds one half-initialised by a thread it does not have.
pub(crate) fn prepare_fork() {
    install_panic_hook();
    let _ = image::identity();
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
    let mut rd = Reader::new(File::from(tasks), proto::DEFAULT_MAX_FRAME);
    let mut wr = Writer::new(File::from(results));
    if handshake::greet(&mut wr).is_err() {
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
    let frame = match handshake::accept(&mut rd) {
        Ok(frame) => frame,
        Err(None) => return 0,
        Err(Some(msg)) => return fatal(&mut wr, msg),
    };
    if let ToWorker::Setup {
        worker_id,
        setup,
        shared,
        arena: span,
        identity: _,
    } = frame.header
    {
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
