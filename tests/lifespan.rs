//! Worker lifespan and memory limit (MPIRE's `worker_lifespan` tests in `InitFuncTest` and
//! `ExitFuncTest`, ported): a worker retires after exactly `n` tasks, even in the middle of a
//! chunk, or after a task that left it with too much resident memory; its successor is started
//! before it retires; every exit result comes back from `shutdown()`.
mod common;
use std::future::IntoFuture;

use common::*;

/// Counts itself in the run log at `path`: one record per worker started.
fn record(path: &str) {
    record_run(path, gettid());
}

/// The calling thread's id: the worker's pid in a process worker.
fn gettid() -> u64 {
    nix::unistd::gettid().as_raw() as u64
}

/// MPIRE's `_init`: counts itself; the state is 42 (MPIRE's `worker_state['test']`).
fn init(w: &Worker<'_, String>) -> u64 {
    record(w.shared());
    42
}

/// MPIRE's `_f`: the state plus the input.
fn f(w: &mut Worker<'_, String, u64>, x: u64) -> u64 {
    *w.state() + x
}

/// MPIRE's `ExitFuncTest._init`: counts itself; the state sums the inputs this worker ran.
fn init_sum(w: &Worker<'_, String>) -> u64 {
    record(w.shared());
    0
}

fn add(w: &mut Worker<'_, String, u64>, x: u64) -> u64 {
    *w.state() += x;
    x
}

fn exit_sum(w: &mut Worker<'_, String, u64>) -> u64 {
    *w.state()
}

/// Which thread ran the task: the worker's pid in a process worker.
fn who(_: u64) -> u64 {
    gettid()
}

/// 10,000 KiB, as a string: serialised in one piece (a `Vec<u8>` goes byte by byte, which an
/// unoptimised test build takes a second over).
fn big_exit(_: &mut Worker<'_, (), ()>) -> String {
    "x".repeat(10_000 * 1024)
}

fn identity(x: u64) -> u64 {
    x
}

/// Allocates and touches `mib` MiB that stay resident (leaked), then answers its pid.
fn leak(mib: u64) -> u64 {
    let v = vec![1u8; (mib << 20) as usize];
    std::hint::black_box(&v);
    std::mem::forget(v);
    gettid()
}

/// The worker's pid, and its resident memory in bytes.
fn resident(_: u64) -> (u64, u64) {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    (gettid(), pages * 4096)
}

/// Announces its worker's start-up with its pid.
fn announce(w: &Worker<'_, String>) -> u64 {
    signal(w.shared());
    0
}

fn who_with(_: &mut Worker<'_, String, u64>, _: u64) -> u64 {
    gettid()
}

each_method! {
    /// MPIRE's `InitFuncTest.test_worker_lifespan`: `worker_lifespan=1`, `chunk_size=1`, 10 tasks:
    /// the results are right, and `worker_init` ran between 10 and `10 + n_jobs` times.
    async fn mpire_init_func_worker_lifespan(m: StartMethod) {
        for n in [1, 3] {
            let count = RunLog::new("init");
            let pool = AsyncPool::builder().workers(n).start_method(m).shared(count.path())
                .worker_init(init).worker_lifespan(1).build().await.unwrap();
            let out = pool.map_with(f, 0..10u64).chunk_size(1).await.unwrap();
            assert_eq!(out, (42..52).collect::<Vec<_>>());
            pool.shutdown().await.unwrap();
            let inits = count.records().len();
            assert!((10..=10 + n).contains(&inits), "{n} workers: {inits} inits");
        }
    }

    /// MPIRE's `ExitFuncTest.test_worker_lifespan`: as above, with `worker_exit`: as many exit
    /// results as inits, and their sum is the sum of the inputs.
    async fn mpire_exit_func_worker_lifespan(m: StartMethod) {
        for n in [1, 3] {
            let count = RunLog::new("exit");
            let pool = AsyncPool::builder().workers(n).start_method(m).shared(count.path())
                .worker_init(init_sum).worker_exit(exit_sum).worker_lifespan(1).build().await.unwrap();
            assert_eq!(pool.map_with(add, 0..10u64).chunk_size(1).await.unwrap(), (0..10).collect::<Vec<_>>());
            let exits = pool.shutdown().await.unwrap();
            let inits = count.records().len();
            assert!((10..=10 + n).contains(&inits), "{n} workers: {inits} inits");
            assert_eq!(exits.len(), inits);
            assert_eq!(exits.iter().sum::<u64>(), 45);
        }
    }

    /// MPIRE's `test_exit_func_big_payload`: exit results of 10 MB, with and without a
    /// lifespan.
    async fn mpire_exit_func_big_payload(m: StartMethod) {
        for (n, lifespan) in [(1, None), (3, None), (1, Some(2)), (3, Some(2))] {
            let mut b = AsyncPool::builder().workers(n).start_method(m).worker_exit(big_exit);
            if let Some(l) = lifespan {
                b = b.worker_lifespan(l);
            }
            let pool = b.build().await.unwrap();
            assert_eq!(pool.map(identity, 0..10u64).chunk_size(1).await.unwrap(), (0..10).collect::<Vec<_>>());
            let exits = pool.shutdown().await.unwrap();
            assert!(exits.len() >= n, "{exits:?}");
            assert!(exits.iter().all(|e| e.len() == 10_000 * 1024));
        }
    }

    async fn a_worker_retires_after_exactly_its_lifespan_even_mid_chunk(m: StartMethod) {
        let pool = AsyncPool::builder().workers(1).start_method(m).worker_lifespan(3).build().await.unwrap();
        let out = pool.map(who, 0..10u64).chunk_size(10).await.unwrap();
        // Tasks 0-2 on one worker, 3-5 on the next, 6-8 on the next, 9 on a fourth.
        for run in out.chunks(3) {
            assert!(run.iter().all(|&t| t == run[0]), "{out:?}");
        }
        let mut workers = out.clone();
        workers.dedup();
        assert_eq!(workers.len(), 4, "{out:?}");
        pool.shutdown().await.unwrap();
    }

    async fn the_successor_starts_before_the_worker_retires(m: StartMethod) {
        let inits = Signal::new();
        let pool = AsyncPool::builder().workers(1).start_method(m).shared(inits.path.to_str().unwrap().to_owned())
            .worker_init(announce).worker_lifespan(2).build().await.unwrap();
        inits.recv().await; // the first worker
        let first = pool.apply_with(who_with, 0).await.unwrap();
        // Its last task blocks until its successor has started: were the successor started only
        // once the worker retired, this would never end.
        let running = Signal::new();
        let gate = gate_path(m, 0);
        let last = tokio::spawn(pool.apply(blocked, (running.path.to_str().unwrap().to_owned(), gate.clone())).into_future());
        running.recv().await;
        inits.recv().await; // the successor, while the worker runs its last task
        release(&gate);
        assert_eq!(last.await.unwrap().unwrap(), 0);
        // The worker retired after two tasks; the next runs on the successor.
        assert_ne!(pool.apply_with(who_with, 0).await.unwrap(), first);
        pool.shutdown().await.unwrap();
    }

    async fn worker_max_memory_replaces_a_worker_that_grew(m: StartMethod) {
        if !m.is_process() {
            let e = AsyncPool::builder().workers(1).start_method(m).worker_max_memory(1 << 30).build().await.unwrap_err();
            assert!(e.is_config(), "{e}");
            return;
        }
        // How much a fresh worker holds (a `Fork` worker counts the pages it shares with the
        // test binary, as the kernel does); the limit is 256 MiB above that, and one task keeps
        // 384 MiB.
        let probe = AsyncPool::builder().workers(1).start_method(m).build().await.unwrap();
        let (_, fresh) = probe.apply(resident, 0).await.unwrap();
        let limit = fresh + (256 << 20);
        let pool = AsyncPool::builder().workers(1).start_method(m).worker_max_memory(limit).build().await.unwrap();
        let (before, rss) = pool.apply(resident, 0).await.unwrap();
        if rss <= limit {
            assert_eq!(pool.apply(resident, 0).await.unwrap().0, before, "a worker below the limit stays");
        }
        assert_eq!(pool.apply(leak, 384).await.unwrap(), before);
        let (after, _) = pool.apply(resident, 0).await.unwrap();
        assert_ne!(after, before, "the worker that grew was replaced");
        wait_gone(before as u32).await;
        pool.shutdown().await.unwrap();
    }
}
