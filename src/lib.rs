//! An async, tokio-integrated multiprocessing pool: the Rust answer to Python's
//! [MPIRE](https://github.com/sybrenjansen/mpire).
//!
//! `ampire` runs CPU-heavy, crash-prone or non-thread-safe work on a pool of workers — threads,
//! or processes isolated from yours — and hands the results back as futures and backpressured
//! streams. A panic, a segfault or a `SIGKILL` in a worker fails that task alone, even in the
//! middle of a chunk: the tasks of the chunk that finished deliver, the ones after it run again,
//! the worker is replaced and the pool keeps serving.
//!
//! # How it works
//!
//! An [`AsyncPool`] owns `workers` workers, started by one of four [`StartMethod`]s. A call cuts
//! its inputs into chunks (see [`Map::chunk_size`]) and queues them; each worker takes the next
//! chunk when it is free. For each process worker the pool runs two tokio tasks on your runtime:
//! a *writer* that feeds it chunks and a *driver* that reads its results, notices its death and
//! replaces it. Thread workers take their chunks from the queue themselves and hand results
//! straight back, with inputs and results moved, never serialised.
//!
//! A process worker is linked to the pool by two byte streams (pipes registered with the tokio
//! reactor, carrying length-prefixed postcard frames) and two pieces of shared memory:
//!
//! - the pool's *arena*, into which large inputs (and the shared object) are serialised instead
//!   of being pushed through the pipe; the frame names where they are (see
//!   [`Builder::arena_size`]);
//! - the worker's *journal*, into which it writes each result as the task finishes. Results are
//!   decoded by the pool from there, and the journal outlives the worker: when it dies, the pool
//!   reads which tasks had finished and which one was running.
//!
//! **Dispatch rule.** A chunk goes into a busy worker's pipe, behind the one it runs, only while
//! every worker is busy; a worker that becomes idle takes back the chunks another holds and has
//! not started. No chunk waits behind a running one while a worker is idle (see
//! [`Builder::pipeline_depth`]).
//!
//! Which processes exist, and who reaps whom:
//!
//! - `Spawn`: a long-lived `ampire-launcher` thread of the owner re-executes its own binary
//!   (`/proc/self/exe`) with `posix_spawn`, which copies none of the owner's memory; the child
//!   becomes a worker before `main` runs. The owner reaps it through a pidfd.
//! - `Fork`: the `ampire-launcher` thread forks it; the owner reaps it through a pidfd.
//! - `Forkserver`: [`init()`] forks a small single-threaded server at the top of `main`; the
//!   server forks workers on request, reaps them and reports their exit status; the owner kills
//!   and watches them through pidfds the server sends back.
//!
//! Every worker process dies with its owner (`PR_SET_PDEATHSIG`, tied to a thread that lives as
//! long as the process). Two design notes have the details: `src/start/README.md` (who forks
//! whom, the channels, the frame layout, the journal, the shutdown order) and
//! `src/dispatch/README.md` (the queue, the windows, taking chunks back, what happens when a
//! worker dies).
//!
//! # Quickstart
//!
//! ```no_run
//! fn main() -> Result<(), ampire::Error> {
//!     ampire::init(); // first line of main: a spawned child becomes a worker here
//!     tokio::runtime::Runtime::new().unwrap().block_on(run())
//! }
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! async fn run() -> Result<(), ampire::Error> {
//!     use futures_util::StreamExt;
//!
//!     let pool = ampire::AsyncPool::builder()
//!         .workers(4)
//!         .start_method(ampire::StartMethod::Forkserver)
//!         .build()
//!         .await?;
//!     let one: u64 = pool.apply(square, 7).await?;
//!     let all: Vec<u64> = pool.map(square, 0..1_000_000u64).await?;
//!     let mut stream = pool.map_stream(square, futures_util::stream::iter(0..10u64));
//!     while let Some(result) = stream.next().await {
//!         println!("{}", result?);
//!     }
//!     pool.shutdown().await?;
//!     Ok(())
//! }
//! ```
//!
//! Task functions are `fn` items or closures that capture nothing, under every start method, so
//! switching the method is a one-line change. Inputs and results implement serde's `Serialize`
//! and `Deserialize` (and inputs `Debug`, for error reports).
//!
//! Per-call options are set on what a call returns, before it is awaited:
//! `pool.map(f, items).chunk_size(100).max_tasks_active(1_000).await`.
//!
//! MPIRE's worker context (`pass_worker_id`, `shared_objects`, `use_worker_state`,
//! `worker_init`, `worker_exit`) is typed: see [`Worker`] and [`Builder::shared`]. Large arrays of
//! numbers in the shared object go in a [`SharedSlice`], which `Spawn` and `Forkserver` workers
//! read in place from shared memory instead of decoding a copy each.
//!
//! # Start methods
//!
//! | method | worker | shared object | start-up | a crash | needs `init()` |
//! |---|---|---|---|---|---|
//! | [`Threading`](StartMethod::Threading) | thread | same object | µs | takes the process down | no |
//! | [`Spawn`](StartMethod::Spawn) | re-executed binary | a copy per worker (serialised once); [`SharedSlice`]s read in place | ms | isolated | yes |
//! | [`Fork`](StartMethod::Fork) | fork of the owner | inherited copy-on-write | sub-ms | isolated | yes |
//! | [`Forkserver`](StartMethod::Forkserver) (default) | fork of a clean server | a copy per worker (serialised once); [`SharedSlice`]s read in place | sub-ms | isolated | yes |
//!
//! The default is `Forkserver`, not MPIRE's `fork`: forking a multi-threaded tokio process can
//! leave the child holding locks no thread will ever release; the forkserver forks from a process
//! that has one thread. See [`StartMethod`] for the whole argument, and `Fork`'s remaining hazard.
//!
//! # Failures
//!
//! Every failure is an [`Error`] on the task it belongs to, with the task's index in the call and
//! its input's `Debug` (under process methods; a thread worker's input was moved into the task):
//!
//! - **A panic** ([`Error::is_panic`]): message, location, backtrace, worker id. The worker goes
//!   on.
//! - **A worker that dies while running a task** ([`Error::is_worker_died`]): a signal,
//!   `abort()`, `exit()`, a `SIGKILL` from outside (as the OOM killer sends). Exactly one task
//!   fails, the one that was running, with the signal or exit status; the tasks of its chunk that
//!   had finished deliver their results, and the rest run on a worker again. None is lost, and
//!   none that finished runs twice. The worker is replaced under the same id.
//! - **An input or a result that cannot be serialised**, or alone is larger than
//!   [`Builder::max_frame_len`] ([`Error::is_codec`]): that task fails, the worker goes on.
//! - **A worker that cannot start** (the process cannot be made, it dies before it is ready, it
//!   is slower than [`Builder::worker_start_timeout`]) is started again, after 10, 20, 40 and
//!   80 ms. The fifth failure in a row breaks the pool, with an error whose
//!   [`source()`](std::error::Error::source) is the cause: the `io::Error`, or the last worker's
//!   exit status. A `worker_init` that panics breaks it at once ([`Error::is_init`]).
//! - **A worker that breaks the protocol** (a malformed frame) is killed and replaced; the first
//!   task whose result had not arrived fails ([`Error::is_protocol`]).
//! - A process worker's death also says what the worker used over its life, as the kernel
//!   reported when it was reaped (`wait4`, through the forkserver too): "worker 0 was killed by
//!   signal 9 (SIGKILL), peak RSS 11.8 GiB, CPU 3.20 s, while running a task"
//!   ([`Error::peak_memory`], [`Error::cpu_time`]).
//! - **A task past its deadline** ([`Builder::task_timeout`], or the call's own
//!   `task_timeout`; [`Error::is_timeout`]): the clock starts when the task starts. A process
//!   worker running it is killed and settled like a death: the task fails with how long it ran,
//!   the finished tasks of its chunk deliver, the rest run again. A thread is abandoned instead
//!   (see [`Worker::is_cancelled`]) and a fresh thread takes its slot.
//!
//! A `map` fails fast with its first error; streams yield a per-task `Err` and go on; each `apply`
//! stands alone. With [`Builder::max_retries`], a task whose worker died runs again, up to a
//! limit past which it fails as poison, listing every death.
//!
//! # A worker's life
//!
//! A worker starts, runs `worker_init` (bounded by [`Builder::worker_init_timeout`]), serves
//! tasks, and at shutdown runs `worker_exit` (bounded by [`Builder::worker_exit_timeout`]). With
//! [`Builder::worker_lifespan`] or [`Builder::worker_max_memory`] it retires earlier: it finishes
//! the task it runs, hands back the rest of its chunk, and runs `worker_exit` while its successor,
//! started ahead of time, already serves in its slot. [`AsyncPool::shutdown`] returns the exit
//! results of every worker that ran `worker_exit`; [`AsyncPool::shutdown_timeout`] bounds the
//! whole shutdown. [`Builder::cpu_ids`] pins workers to CPUs; [`Builder::max_queued_tasks`]
//! bounds the queue ([`AsyncPool::try_apply`] is refused when it is full, other calls wait).
//!
//! # Workers on other hosts
//!
//! [`Builder::launcher`] starts the workers elsewhere: [`Launcher::ssh`] (one ssh per worker, to
//! the named hosts), [`Launcher::srun`] (a Slurm job step per worker) or [`Launcher::command`]
//! (any program that connects stdin and stdout, such as `docker exec -i`). The worker is this
//! binary, at the same path there (or copied: [`Launcher::copy_binary`]); it speaks the same
//! protocol over the launcher's stdin and stdout, is refused if its build differs, and exits
//! when its link closes. Everything else is as on one machine.
//!
//! # Seeing the work
//!
//! - **Progress bars**: `.progress_bar(true)` on a call ([`Map::progress_bar`],
//!   [`MapStream::progress_bar`], [`Apply::progress_bar`]) draws its bar on stderr when it is a
//!   terminal: done and total, rate, time left, failures (a stream of unknown length: count and
//!   rate). A bar ends when its call finishes, fails fast or is dropped, saying so. Pools built
//!   inside workers, under any start method, draw nothing themselves: their progress travels to
//!   the pool that owns the worker, whose bars show theirs underneath. While bars are shown, what
//!   process workers print comes through the pool, a line at a time, above the bars, with the
//!   worker's id (`[w1] ...`).
//! - **Worker insights** ([`Builder::enable_insights`], [`AsyncPool::insights`]): MPIRE's, each
//!   worker's start-up, `worker_init`, waiting, working and `worker_exit` time, its tasks and
//!   their processor time, the slowest tasks with their inputs; per task peak memory too with
//!   [`Builder::insights_memory`]. Its `Display` is MPIRE's `print_insights`.
//! - **Stats** ([`AsyncPool::stats`]): tasks queued, in flight, done, failed, timed out and
//!   retried; restarts by cause; utilisation; histograms of waiting, running and end-to-end time.
//!   Counted as the pool runs, read when asked.
//! - **`tracing`**: a span per pool (`ampire.pool`) and per call (`ampire.call`); the workers'
//!   lives as events in the pool's span: started (DEBUG), died or killed for a deadline (WARN,
//!   with how), retired (DEBUG), exited (DEBUG); the pool's start and shutdown (INFO). Nothing per
//!   task.
//!
//! # Feature flags
//!
//! - `metrics` (off by default): each pool's counters through the `metrics` facade:
//!   `ampire_tasks_total{pool, outcome}`, `ampire_task_seconds{pool}`,
//!   `ampire_queue_depth{pool}`, `ampire_worker_restarts_total{pool, cause}`. Install the
//!   recorder before building the pool.
//! - `dashboard` (off by default): `ampire::Dashboard`, a live web page (and JSON API) of every
//!   pool of the process, served by a task on your tokio runtime:
//!   `ampire::Dashboard::start("127.0.0.1:0").await?`. It has no authentication; read its
//!   security note before binding anything but a loopback address.
//!
//! # Platform support
//!
//! Linux (glibc), kernel 5.3 or newer (pidfds). `Threading` alone would work elsewhere, but the
//! crate is not built for other platforms yet.
//!
//! # Dropping and cancellation
//!
//! - Dropping an [`AsyncPool`] kills its workers at once; unfinished tasks fail with
//!   [`Error::is_closed`]. [`AsyncPool::shutdown`] finishes queued tasks and runs `worker_exit`.
//! - Dropping a call's future or stream stops pulling its input and removes its queued tasks. A
//!   process worker still running one of its tasks is killed and replaced, so the cancellation
//!   reaches the work itself. A thread cannot be killed: its task sees
//!   [`Worker::is_cancelled`] turn true, and its result is dropped.
//! - A `map` fails fast: its first error is returned and the rest of the call is cancelled as
//!   above. Streams yield a per-task `Err` and go on. `apply` failures are isolated.
//! - Chunks of a dropped call that wait in a worker's pipe are taken back, so no worker spends
//!   time on them.
//!
//! # Wire-format limits
//!
//! Inputs, results, the shared object and exit results cross process boundaries with
//! [postcard](https://docs.rs/postcard), which is not self-describing: `#[serde(flatten)]`,
//! `#[serde(untagged)]` enums and `#[serde(skip_serializing_if)]` do not round-trip. A frame
//! (a chunk of inputs, a batch of results) is limited by [`Builder::max_frame_len`] (1 GiB by
//! default). The pool cuts chunks in bytes as well as in tasks and a worker cuts its batches of
//! results the same way, so only an input or a result that alone exceeds the limit fails, and
//! that task alone. A worker sending a larger or malformed frame is killed and replaced.
//!
//! # Testing with process workers
//!
//! A `cargo test` binary works as it is: a re-executed test binary becomes a worker before the
//! test harness starts (a life-before-main hook of this crate), so it never runs the tests. Call
//! [`init()`] at the top of each test; in a test binary threads already exist, so the forkserver
//! is started by re-executing the binary rather than by forking.

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

mod call;
mod cpus;
#[cfg(feature = "dashboard")]
mod dashboard;
mod dispatch;
mod entry;
mod error;
mod handle;
mod human;
mod observe;
mod pool;
mod proto;
mod role;
mod start;
#[allow(unsafe_code)]
mod sys;
mod task;
mod worker;

pub use crate::cpus::Cpus;
#[cfg(feature = "dashboard")]
pub use crate::dashboard::Dashboard;
pub use crate::error::Error;
pub use crate::handle::{Apply, ApplyFuture, Map, MapFuture, MapStream};
pub use crate::observe::{Histogram, Insights, Restarts, SlowTask, Stats, WorkerInsights};
pub use crate::pool::{AsyncPool, Builder};
pub use crate::proto::slice::SharedSlice;
pub use crate::role::init;
pub use crate::start::Launcher;
pub use crate::start::StartMethod;
pub use crate::sys::plain::Plain;
pub use crate::task::{Input, Output, Shared, Worker};

#[doc(hidden)]
pub use crate::worker::inject_raw_result_bytes as __inject_raw_result_bytes;
#[doc(hidden)]
pub use crate::worker::send_events as __send_events;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
