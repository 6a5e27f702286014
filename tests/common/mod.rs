//! Shared test harness: every behaviour runs under every start method.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

#[allow(unused_imports)]
pub use ampire::{AsyncPool, Error, SharedSlice, StartMethod, Worker};

/// Runs `body` on a fresh multi-threaded runtime, after `ampire::init()`.
pub fn run<F, Fut>(method: StartMethod, body: F)
where
    F: FnOnce(StartMethod) -> Fut,
    Fut: Future<Output = ()>,
{
    ampire::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A hang is a failure, reported as one; nothing below waits on this timer.
        tokio::time::timeout(Duration::from_secs(120), body(method))
            .await
            .expect("test timed out: hang");
    });
}

/// Declares `async fn name(method: StartMethod) { ... }` once and generates one `#[test]` per
/// start method (or per listed method) in a module named after it.
#[macro_export]
macro_rules! each_method {
    ($(#[$meta:meta])* async fn $name:ident($m:ident: StartMethod) $body:block $($rest:tt)*) => {
        $crate::each_method!(@one [threading spawn fork forkserver] $(#[$meta])* $name $m $body);
        $crate::each_method!($($rest)*);
    };
    ($(#[$meta:meta])* threading async fn $name:ident($m:ident: StartMethod) $body:block $($rest:tt)*) => {
        $crate::each_method!(@one [threading] $(#[$meta])* $name $m $body);
        $crate::each_method!($($rest)*);
    };
    ($(#[$meta:meta])* processes async fn $name:ident($m:ident: StartMethod) $body:block $($rest:tt)*) => {
        $crate::each_method!(@one [spawn fork forkserver] $(#[$meta])* $name $m $body);
        $crate::each_method!($($rest)*);
    };
    () => {};
    (@one [$($method:ident)*] $(#[$meta:meta])* $name:ident $m:ident $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn body($m: $crate::common::StartMethod) $body
            $(
                #[test]
                fn $method() {
                    $crate::common::run($crate::each_method!(@method $method), body);
                }
            )*
        }
    };
    (@method threading) => { $crate::common::StartMethod::Threading };
    (@method spawn) => { $crate::common::StartMethod::Spawn };
    (@method fork) => { $crate::common::StartMethod::Fork };
    (@method forkserver) => { $crate::common::StartMethod::Forkserver };
}

pub async fn pool(method: StartMethod, workers: usize) -> AsyncPool {
    AsyncPool::builder()
        .workers(workers)
        .start_method(method)
        .build()
        .await
        .expect("pool builds")
}

/// A datagram socket a task can signal through ("I started", with its pid), from any worker.
pub struct Signal {
    pub path: PathBuf,
    sock: tokio::net::UnixDatagram,
}

impl Signal {
    pub fn new() -> Signal {
        let path =
            std::env::temp_dir().join(format!("ampire-test-{}-{}", std::process::id(), unique()));
        let _ = std::fs::remove_file(&path);
        let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
        Signal { path, sock }
    }

    /// Waits for the next signal and returns the pid it carries.
    pub async fn recv(&self) -> u32 {
        let mut buf = [0u8; 4];
        let n = self.sock.recv(&mut buf).await.unwrap();
        assert_eq!(n, 4);
        u32::from_le_bytes(buf)
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Called from inside a task: tells the test this task started, and in which process.
pub fn signal(path: &str) {
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sock.send_to(&std::process::id().to_le_bytes(), path)
        .unwrap();
}

/// A task that tells the test it started (through `announce`), then blocks until the test sends
/// a datagram to `gate` ([`release`]).
pub fn blocked((announce, gate): (String, String)) -> u64 {
    let _ = std::fs::remove_file(&gate);
    let sock = std::os::unix::net::UnixDatagram::bind(&gate).unwrap();
    signal(&announce);
    let mut buf = [0u8; 1];
    sock.recv(&mut buf).unwrap();
    let _ = std::fs::remove_file(&gate);
    0
}

/// Lets the task [`blocked`] on `gate` go, once it announced itself.
pub fn release(gate: &str) {
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sock.send_to(b"g", gate).unwrap();
}

/// A path for the gate of round `i` of a test under method `m` (tests run side by side).
pub fn gate_path(m: StartMethod, i: usize) -> String {
    let dir = std::env::temp_dir();
    dir.join(format!(
        "ampire-gate-{}-{m}-{i}-{}",
        std::process::id(),
        unique()
    ))
    .to_str()
    .unwrap()
    .to_owned()
}

/// A file tasks record their runs in: one 8-byte `O_APPEND` write per run, so records from
/// several workers never interleave. Removed when dropped.
pub struct RunLog(PathBuf);

impl RunLog {
    pub fn new(tag: &str) -> RunLog {
        let name = format!("ampire-runs-{}-{tag}-{}", std::process::id(), unique());
        let path = std::env::temp_dir().join(name);
        std::fs::File::create(&path).unwrap();
        RunLog(path)
    }

    /// Where tasks record (see [`record_run`]).
    pub fn path(&self) -> String {
        self.0.to_str().unwrap().to_owned()
    }

    /// Every record, in order.
    pub fn records(&self) -> Vec<u64> {
        read_records(self.0.to_str().unwrap())
    }

    /// How many times each of inputs `0..n` ran.
    pub fn runs(&self, n: usize) -> Vec<u32> {
        let mut runs = vec![0; n];
        for x in self.records() {
            runs[x as usize] += 1;
        }
        runs
    }

    /// How many times input `x` ran.
    pub fn of(&self, x: u64) -> usize {
        self.records().into_iter().filter(|&r| r == x).count()
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn read_records(path: &str) -> Vec<u64> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
        .chunks_exact(8)
        .map(|r| u64::from_le_bytes(r.try_into().unwrap()))
        .collect()
}

/// Called from inside a task: records a run of `x` in the [`RunLog`] at `path`.
pub fn record_run(path: &str, x: u64) {
    use std::io::Write;
    std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(&x.to_le_bytes()))
        .unwrap();
}

/// Called from inside a task: how many runs of `x` the [`RunLog`] at `path` holds.
pub fn runs_of(path: &str, x: u64) -> usize {
    read_records(path).into_iter().filter(|&r| r == x).count()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Waits until process `pid` has ended (an event: its pidfd becomes readable), then until its
/// parent has reaped it. Reaping belongs to the pool's side (launcher thread, tokio, forkserver)
/// and has no event a stranger can wait on, so that last step is a short bounded check.
pub async fn wait_gone(pid: u32) {
    // SAFETY: a plain syscall; a non-negative result is a new descriptor owned by no one else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        use std::os::fd::{AsFd, FromRawFd, OwnedFd};
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let exited = tokio::task::spawn_blocking(move || {
            let mut fds = [nix::poll::PollFd::new(
                pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20_000u16)).unwrap_or(0) == 1
        })
        .await
        .unwrap();
        assert!(exited, "process {pid} is still running");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} ended but was never reaped"
        );
        tokio::task::yield_now().await;
    }
}

/// Whether process `pid` is gone: ended and reaped.
pub fn is_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `fut` to its end on a runtime of its own: for code running inside a worker, which builds
/// a pool of its own there.
pub fn block_on_fresh<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut)
}

/// Runs inside a worker: a pool of its own (two workers of `method`, named `name`) maps `f` (an
/// `fn` item) over `0..100`, with a progress bar when `bar`, and shuts down; the sum of the
/// results.
pub fn inner_pool_sum<F>(method: StartMethod, name: &str, bar: bool, f: F) -> u64
where
    F: Fn(u64) -> u64 + Copy + Send + Sync + 'static,
{
    block_on_fresh(async move {
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(method)
            .name(name)
            .build()
            .await
            .unwrap();
        let v = pool.map(f, 0..100u64).progress_bar(bar).await.unwrap();
        pool.shutdown().await.unwrap();
        v.into_iter().sum()
    })
}

/// A task that kills its own worker with SIGKILL at input 5 (and answers its input otherwise).
pub fn kill_self_at_5(x: u64) -> u64 {
    if x == 5 {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    x
}

/// Blocks the calling task's thread forever (until its process is killed).
pub fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// A part of a test that needs a program this machine lacks: says so on stderr, or fails when
/// `AMPIRE_REQUIRE_TOOLS` is set, as `.ci/run` sets it after installing them, so that CI never
/// passes a part it did not run.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("AMPIRE_REQUIRE_TOOLS").is_none(),
        "{why}, and AMPIRE_REQUIRE_TOOLS is set"
    );
    eprintln!("{why}");
}

/// Where `program` is on the `PATH`, if it is.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
