//! Start methods: how a worker comes to exist. See `README.md` in this folder for who forks whom,
//! who reaps whom, the frame layout and the shutdown order.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::error::{Error, Exit, Kind, Stage, Used};
use crate::proto::handshake::{self, Refusal};
use crate::proto::{AsyncReader, Body, ToWorker};
use crate::sys::journal::Journal;
use crate::sys::shm::{Arena, Block};
use crate::task::Entry;
use crate::worker::{LocalQueue, ThreadEnd, Watch};
pub(crate) use link::{Reads, Rx, Tx, Writes};
pub use remote::Launcher;

pub(crate) mod child;
pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod launcher;
pub(crate) mod link;
pub(crate) mod remote;
pub(crate) mod spawn;
pub(crate) mod threading;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the pool's workers are started.
///
/// All four run the same tasks with the same API; switching is a one-line change. The default is
/// [`StartMethod::Forkserver`].
///
/// | method | worker is | shared object | start-up | isolation | needs `init()` |
/// |---|---|---|---|---|---|
/// | `Threading` | a thread of this process | same object | fastest | none: a crash takes the process down | no |
/// | `Spawn` | a fresh run of this binary | a copy per worker (serialised once); `SharedSlice`s read in place | slowest (exec) | full | yes |
/// | `Fork` | a fork of this process | inherited copy-on-write | fast | full, but see the fork hazard | yes |
/// | `Forkserver` | a fork of a small server started by `init()` | a copy per worker (serialised once); `SharedSlice`s read in place | fast | full | yes |
///
/// **Why `Forkserver` and not `Fork` by default.** MPIRE (like Python's `multiprocessing` before
/// 3.14) defaults to `fork`. A tokio program has many threads, and forking a multi-threaded
/// process copies every lock in whatever state another thread left it: the child can deadlock on
/// a lock no thread will ever release. ampire's `Fork` guards the locks it knows (standard
/// streams, glibc's allocator), but not those of other libraries. The forkserver is forked from a
/// single-threaded process before any thread exists, so its workers start clean, and it is still
/// a fork, not an exec. Python 3.14 made the same change of default for the same reason.
///
/// **Statics and other globals** (MPIRE's caveat for spawn and forkserver). A task sees the
/// globals of the process it runs in. Under `Threading` that is the owner itself; a `Fork` worker
/// has a copy of the owner's memory as it was when the worker was forked. A `Spawn` worker is a
/// fresh run of the program: its statics have their initial values. A `Forkserver` worker is a
/// copy of the server, which `init()` forked at the top of `main` (or re-executed, when threads
/// already existed): it sees what was set before `init()`, and nothing set after. Pass what tasks
/// need through the shared object or their inputs, not through globals set at run time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartMethod {
    /// Dedicated threads of this process; arguments and results are moved, never serialised.
    Threading,
    /// Fresh processes re-executing this binary (`/proc/self/exe`), started with `posix_spawn`.
    Spawn,
    /// Processes forked from this one (from a dedicated long-lived thread): copy-on-write memory.
    Fork,
    /// Processes forked from a single-threaded server that `ampire::init()` starts.
    #[default]
    Forkserver,
}

impl StartMethod {
    /// All start methods, handy for running the same code under each.
    pub const ALL: [StartMethod; 4] = [
        StartMethod::Threading,
        StartMethod::Spawn,
        StartMethod::Fork,
        StartMethod::Forkserver,
    ];

    /// Whether workers are separate processes.
    pub fn is_process(self) -> bool {
        self != StartMethod::Threading
    }
}

impl StartMethod {
    /// Its name, as `Display` writes it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            StartMethod::Threading => "threading",
            StartMethod::Spawn => "spawn",
            StartMethod::Fork => "fork",
            StartMethod::Forkserver => "forkserver",
        }
    }
}

impl std::fmt::Display for StartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What every worker of a pool is started with.
pub(crate) struct Spec {
    pub shared: Arc<dyn Any + Send + Sync>,
    /// The shared object serialised, for workers that do not inherit memory.
    pub shared_body: Body,
    /// The blocks of the arena that the shared object's large `SharedSlice`s were copied into:
    /// every worker, replacements included, reads them in place, so they live as long as the pool.
    pub _shared_slices: Vec<Block>,
    /// Shared memory for large bodies; process pools only.
    pub arena: Option<Arc<Arena>>,
    pub setup: Entry,
    /// Whether there is a `worker_init`, whose failure `build()` must report.
    pub init: bool,
    pub max_frame: usize,
    pub start_timeout: Duration,
    /// How long `worker_init` may take, from the worker's hello.
    pub init_timeout: Option<Duration>,
    /// Fault injection for tests: how many more workers start, then how many fail to.
    pub start_faults: Arc<Mutex<(usize, usize)>>,
    pub exit: Option<Entry>,
    /// The time deadlines count from (`proto::deadline::now_us` when the pool was built).
    pub epoch_us: u64,
    /// The CPUs of each worker slot; empty: no pinning.
    pub cpus: Vec<Vec<usize>>,
    /// A worker leaves after this many tasks.
    pub lifespan: Option<u64>,
    /// A process worker leaves after a task that left it with more resident memory than this.
    pub max_memory: Option<u64>,
    /// What workers measure of their tasks for insights: 0 nothing, 1 times, 2 times and memory.
    pub insights: u8,
    /// Where process workers' output is relayed, when it is (the pool's bars can be seen).
    pub relay: Option<indicatif::MultiProgress>,
    /// What starts the workers on other hosts, when they are there.
    pub launcher: Option<Launcher>,
}

/// The pool's queue, for workers that take their jobs themselves (threads).
pub(crate) type Pool = Arc<dyn LocalQueue>;

/// A started worker, before the handshake.
pub(crate) enum Link {
    Thread {
        /// `None` when set-up cannot fail (no `worker_init`): nothing to wait for.
        ready: Option<tokio::sync::oneshot::Receiver<Result<(), crate::proto::Failure>>>,
        ended: tokio::sync::oneshot::Receiver<ThreadEnd>,
        watch: Arc<Watch>,
    },
    Process {
        writes: Writes,
        reads: Reads,
        /// The worker's journal, when it shares memory with the pool.
        journal: Option<Arc<Journal>>,
        proc: Box<dyn Process>,
        /// Whether the worker inherits the pool's memory (so the shared object is not sent).
        inherits: bool,
        /// The tasks relaying its output, which end after it.
        relays: Vec<tokio::task::JoinHandle<()>>,
        /// For a worker on another host: what started it, and what it said on its stderr.
        remote: Option<RemoteEnd>,
    },
}

/// What the pool knows of a remote worker's launcher, for the error of one that never started.
pub(crate) struct RemoteEnd {
    /// `ssh to node1`, `srun`, ...
    pub what: String,
    pub tail: Arc<crate::observe::output::Tail>,
}

/// The private trait behind [`StartMethod`].
pub(crate) trait Start: Send + Sync {
    /// Starts worker `id`. The returned link has not done its handshake yet.
    fn launch<'a>(
        &'a self,
        id: usize,
        spec: &'a Spec,
        pool: &'a Pool,
    ) -> BoxFuture<'a, Result<Link, Error>>;
}

pub(crate) fn backend(method: StartMethod, launcher: Option<&Launcher>) -> Box<dyn Start> {
    if let Some(l) = launcher {
        return Box::new(remote::Remote::new(l.clone()));
    }
    match method {
        StartMethod::Threading => Box::new(threading::Threading),
        StartMethod::Spawn => Box::new(spawn::Spawn),
        StartMethod::Fork => Box::new(fork::Fork),
        StartMethod::Forkserver => Box::new(forkserver::Forkserver),
    }
}

/// A worker process, as the pool sees it.
pub(crate) trait Process: Send + Sync {
    fn pid(&self) -> u32;
    /// Sends SIGKILL; harmless if the process already ended.
    fn kill(&mut self);
    /// Waits until the process ended and returns how. Cancel-safe.
    fn wait(&mut self) -> BoxFuture<'_, Exit>;
    /// What it used over its life, once `wait` returned (when it was reaped with that).
    fn used(&self) -> Option<Used>;
}

/// The halves of a connected worker.
pub(crate) enum Connected {
    /// A thread worker, running; `ended` fires when it leaves.
    Thread {
        ended: tokio::sync::oneshot::Receiver<ThreadEnd>,
        watch: Arc<Watch>,
    },
    /// A process worker, its link and its journal.
    Process {
        tx: Tx,
        rx: Rx,
        journal: Option<Arc<Journal>>,
        proc: Box<dyn Process>,
        /// How long its set-up (`worker_init`) took.
        init: Duration,
        /// The tasks relaying its output.
        relays: Vec<tokio::task::JoinHandle<()>>,
    },
}

impl Connected {
    pub(crate) fn pid(&self) -> Option<u32> {
        match self {
            Connected::Thread { .. } => None,
            Connected::Process { proc, .. } => Some(proc.pid()),
        }
    }

    /// How long its set-up (`worker_init`) took.
    pub(crate) fn init_time(&self) -> Duration {
        match self {
            Connected::Thread { watch, .. } => watch.init_time(),
            Connected::Process { init, .. } => *init,
        }
    }
}

/// Performs the handshake: `Hello` (identity and protocol checks), `Setup`, then `Ready`.
pub(crate) async fn connect(link: Link, id: usize, spec: &Spec) -> Result<Connected, Error> {
    match link {
        Link::Thread {
            ready: None,
            ended,
            watch,
        } => Ok(Connected::Thread { ended, watch }),
        Link::Thread {
            ready: Some(ready),
            ended,
            watch,
        } => {
            let (limit, late) = deadline(spec);
            match tokio::time::timeout(limit, ready).await {
                Ok(Ok(Ok(()))) => Ok(Connected::Thread { ended, watch }),
                Ok(Ok(Err(failure))) => Err(Error::new(Kind::Panic {
                    failure,
                    during: Stage::Init,
                })
                .with_worker(id)),
                Ok(Err(_)) => {
                    Err(Error::start("worker thread ended during set-up").with_worker(id))
                }
                // A thread cannot be killed: it is left to finish its `worker_init`, then leaves.
                Err(_) => {
                    watch
                        .abandoned
                        .store(true, std::sync::atomic::Ordering::Release);
                    Err(late.with_worker(id))
                }
            }
        }
        Link::Process {
            writes,
            reads,
            journal,
            mut proc,
            inherits,
            relays,
            remote,
        } => {
            // Pinned before it runs anything of ours: it has one thread now, and every thread a
            // task starts inherits the set.
            if let Some(cpus) = spec.cpus.get(id) {
                if let Err(e) = crate::cpus::pin(proc.pid() as i32, cpus) {
                    proc.kill();
                    let _ = proc.wait().await;
                    let e = Error::start_io("could not pin the worker to its CPUs", e.into());
                    return Err(e.with_worker(id));
                }
            }
            let mut rx = AsyncReader::new(reads, spec.max_frame);
            let mut tx = writes;
            // Set-up goes out at once (the worker checks our identity before using it), so the
            // handshake costs one round trip, not two.
            let setup = ToWorker::Setup {
                worker_id: id as u32,
                setup: spec.setup.offset,
                shared: !inherits,
                arena: if inherits {
                    None
                } else {
                    spec.shared_body.span(0)
                },
                identity: crate::sys::image::identity(),
                max_frame: spec.max_frame as u64,
                fault: fault(spec),
                exit: spec.exit.map(|e| e.offset),
                lifespan: spec.lifespan,
                max_memory: spec.max_memory,
                insights: spec.insights,
            };
            let body: &[u8] = if inherits {
                &[]
            } else {
                spec.shared_body.inline(0)
            };
            let handshake = async {
                handshake::offer(&mut rx, &mut tx, &setup, body, spec.init_timeout)
                    .await
                    .map_err(|refusal| match refusal {
                        Refusal::Vanished => Error::died(Exit::Unknown, Stage::Start),
                        Refusal::DiedInSetup => Error::died(
                            Exit::Unknown,
                            if spec.init { Stage::Init } else { Stage::Start },
                        ),
                        Refusal::InitFailed(failure) => Error::new(Kind::Panic {
                            failure,
                            during: Stage::Init,
                        }),
                        Refusal::InitLate => {
                            Error::timeout(Stage::Init, spec.init_timeout.unwrap_or_default(), None)
                        }
                        Refusal::Mismatch(m) => Error::new(Kind::Mismatch(m)),
                        Refusal::Protocol(m) => Error::new(Kind::Protocol(m)),
                        Refusal::Send(e) => Error::start(format!("could not send set-up: {e}"))
                            .with_source(Arc::new(e)),
                    })
            };
            let result = match tokio::time::timeout(spec.start_timeout, handshake).await {
                Ok(r) => r,
                Err(_) => Err(late(spec)),
            };
            match result {
                Ok(init) => Ok(Connected::Process {
                    tx: Tx {
                        io: tx,
                        buf: Vec::new(),
                    },
                    rx,
                    journal,
                    proc,
                    init,
                    relays,
                }),
                Err(e) => {
                    // A launcher whose worker never started is given a moment to end by itself,
                    // so that its own status is read (ssh passes on the remote command's a
                    // little after the stream closed: 127 for a binary that is not there).
                    if remote.is_some() && matches!(e.kind(), Kind::WorkerDied { .. }) {
                        let _ = tokio::time::timeout(Duration::from_secs(2), proc.wait()).await;
                    }
                    proc.kill();
                    let exit = proc.wait().await;
                    // A worker that died during set-up is reported with how it died; one on
                    // another host, with what its launcher said.
                    let e = match (e.kind(), remote) {
                        (
                            Kind::WorkerDied {
                                during: Stage::Start,
                                ..
                            },
                            Some(r),
                        ) => {
                            for relay in relays {
                                let _ = tokio::time::timeout(Duration::from_secs(1), relay).await;
                            }
                            let said = match r.tail.text() {
                                t if t.is_empty() => "nothing on its stderr".to_owned(),
                                t => t,
                            };
                            Error::start(format!(
                                "{} {exit} before the worker started: {said}",
                                r.what
                            ))
                        }
                        (Kind::WorkerDied { during, .. }, _) => {
                            Error::died(exit, *during).with_used(proc.used())
                        }
                        _ => e,
                    };
                    Err(e.with_worker(id))
                }
            }
        }
    }
}

/// Whether the worker being started is to fail (tests only), and with which exit status.
fn fault(spec: &Spec) -> Option<i32> {
    let mut f = spec
        .start_faults
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match *f {
        (0, 0) => None,
        (0, ref mut fail) => {
            *fail -= 1;
            Some(86)
        }
        (ref mut start, _) => {
            *start -= 1;
            None
        }
    }
}

/// A worker that did not start within `worker_start_timeout`.
fn late(spec: &Spec) -> Error {
    Error::start(format!(
        "worker did not finish its start-up within {:?}",
        spec.start_timeout
    ))
}

/// How long a thread worker's set-up may take, and the error when it takes longer: its
/// `worker_init_timeout` when that is the shorter, else its `worker_start_timeout`.
fn deadline(spec: &Spec) -> (Duration, Error) {
    match spec.init_timeout {
        Some(t) if t <= spec.start_timeout => (t, Error::timeout(Stage::Init, t, None)),
        _ => (spec.start_timeout, late(spec)),
    }
}
