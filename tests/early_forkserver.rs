//! The forkserver forked by `init()` itself, before any thread exists: the path every real
//! program takes, and one a libtest binary never does (its harness starts threads first, so
//! `init()` falls back to re-executing the server). This target has no harness
//! (`harness = false` in Cargo.toml): `main` is single-threaded when it calls `init()`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ampire::{AsyncPool, Error, StartMethod};
use futures_util::StreamExt;

static BEFORE_INIT: AtomicU64 = AtomicU64::new(0);
static AFTER_INIT: AtomicU64 = AtomicU64::new(0);

fn statics(_: u32) -> (u64, u64) {
    (
        BEFORE_INIT.load(Ordering::Relaxed),
        AFTER_INIT.load(Ordering::Relaxed),
    )
}

fn square(x: u64) -> u64 {
    x * x
}

fn kill_self_at_5(x: u64) -> u64 {
    if x == 5 {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    x
}

fn panics_at_3(x: u64) -> u64 {
    assert!(x != 3, "three");
    x
}

fn parent_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("PPid:")).unwrap();
    line[5..].trim().parse().unwrap()
}

fn main() {
    BEFORE_INIT.store(7, Ordering::Relaxed);
    ampire::init();
    AFTER_INIT.store(9, Ordering::Relaxed);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), run())
            .await
            .expect("the test hung")
    });
    println!("early forkserver: ok");
}

async fn run() {
    let pool = AsyncPool::builder()
        .workers(2)
        .start_method(StartMethod::Forkserver)
        .build()
        .await
        .unwrap();

    // The workers' parent is a server this process forked, not one it re-executed: a
    // re-executed server was started with AMPIRE_ROLE in its environment.
    let worker = pool.worker_pids()[0].unwrap();
    let server = parent_of(worker);
    assert_eq!(
        parent_of(server),
        std::process::id(),
        "the server is our child"
    );
    let environ = std::fs::read(format!("/proc/{server}/environ")).unwrap();
    assert!(
        !environ.windows(11).any(|w| w == b"AMPIRE_ROLE"),
        "the server was re-executed, not forked by init()"
    );

    // Statics: as they were when init() forked the server.
    assert_eq!(pool.apply(statics, 0).await.unwrap(), (7, 0));

    // The core behaviours, on this path too.
    let want: Vec<u64> = (0..10_000).map(square).collect();
    assert_eq!(pool.map(square, 0..10_000u64).await.unwrap(), want);
    let e = pool.map(panics_at_3, 0..10u64).await.unwrap_err();
    assert!(e.is_panic() && e.task_index() == Some(3), "{e}");
    let out: Vec<Result<u64, Error>> = pool
        .map_stream(kill_self_at_5, futures_util::stream::iter(0..12u64))
        .chunk_size(4)
        .collect()
        .await;
    for (i, r) in out.iter().enumerate() {
        match i {
            5 => assert_eq!(r.as_ref().unwrap_err().signal(), Some(9)),
            _ => assert_eq!(*r.as_ref().unwrap(), i as u64),
        }
    }
    pool.shutdown().await.unwrap();
}
