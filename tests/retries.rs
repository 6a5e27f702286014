//! Retries and poison: with `max_retries(n)` a task whose worker died runs again on a fresh
//! worker, up to `n` times; a task that killed `n + 1` workers fails with every death listed.
//! Panics and timeouts are the task's answer, never retried.
mod common;
use std::time::Duration;

use common::*;
use futures_util::{StreamExt, stream};

/// Records that input `x` runs, and returns how many times it ran before.
fn ran(log: &str, x: u64) -> usize {
    let before = runs_of(log, x);
    record_run(log, x);
    before
}

fn kill_self() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    unreachable!()
}

/// Input 3 kills its worker the first `deaths` times it runs; every input doubles.
fn flaky((x, deaths, log): (u64, usize, String)) -> u64 {
    if ran(&log, x) < deaths && x == 3 {
        kill_self();
    }
    x * 2
}

/// Input 3 always kills its worker.
fn poison((x, log): (u64, String)) -> u64 {
    ran(&log, x);
    if x == 3 {
        kill_self();
    }
    x * 2
}

fn panics((x, log): (u64, String)) -> u64 {
    ran(&log, x);
    assert!(x != 3, "input 3 panics");
    x * 2
}

fn hangs((x, log): (u64, String)) -> u64 {
    ran(&log, x);
    if x == 3 {
        park_forever();
    }
    x * 2
}

async fn pool_with_retries(m: StartMethod, n: u32) -> AsyncPool {
    AsyncPool::builder()
        .workers(2)
        .start_method(m)
        .max_retries(n)
        .build()
        .await
        .unwrap()
}

each_method! {
    processes async fn a_task_whose_worker_died_runs_again(m: StartMethod) {
        let runs = RunLog::new(&format!("{m}-flaky"));
        let pool = pool_with_retries(m, 2).await;
        // Two deaths, two retries: the third run answers. In a chunk, its neighbours are
        // untouched.
        let inputs = (0..8u64).map(|x| (x, 2, runs.path()));
        let out = pool.map(flaky, inputs).chunk_size(4).await.unwrap();
        assert_eq!(out, (0..8).map(|x| x * 2).collect::<Vec<_>>());
        assert_eq!(runs.of(3), 3);
        for x in [0, 1, 2, 4, 5, 6, 7] {
            assert_eq!(runs.of(x), 1, "input {x}");
        }
        pool.shutdown().await.unwrap();
    }

    processes async fn a_poisonous_task_fails_after_killing_n_plus_one_workers(m: StartMethod) {
        let runs = RunLog::new(&format!("{m}-poison"));
        let pool = pool_with_retries(m, 2).await;
        let out: Vec<Result<u64, Error>> = pool
            .map_stream(poison, stream::iter((0..8u64).map(|x| (x, runs.path()))))
            .chunk_size(4)
            .collect()
            .await;
        for (x, r) in out.iter().enumerate() {
            match x {
                3 => {
                    let e = r.as_ref().unwrap_err();
                    assert!(e.is_worker_died(), "{e}");
                    assert_eq!(e.workers_killed(), 3, "{e}");
                    assert_eq!(e.signal(), Some(libc::SIGKILL));
                    assert_eq!(e.task_index(), Some(3));
                    let msg = e.to_string();
                    assert!(msg.contains("it had killed 2 workers before: worker"), "{msg}");
                    assert_eq!(msg.matches("SIGKILL").count(), 3, "{msg}");
                }
                _ => assert_eq!(r.as_ref().unwrap(), &(x as u64 * 2)),
            }
        }
        // It ran three times, every other input once; the pool goes on.
        assert_eq!(runs.of(3), 3);
        assert!((0..8).filter(|&x| x != 3).all(|x| runs.of(x) == 1));
        assert_eq!(pool.apply(poison, (0, runs.path())).await.unwrap(), 0);
        pool.shutdown().await.unwrap();
    }

    processes async fn without_retries_a_death_fails_at_once(m: StartMethod) {
        let runs = RunLog::new(&format!("{m}-once"));
        let pool = pool_with_retries(m, 0).await;
        let e = pool.apply(poison, (3, runs.path())).await.unwrap_err();
        assert!(e.is_worker_died() && e.workers_killed() == 1, "{e}");
        assert_eq!(runs.of(3), 1);
    }

    async fn panics_and_timeouts_are_not_retried(m: StartMethod) {
        let runs = RunLog::new(&format!("{m}-answers"));
        let pool = AsyncPool::builder().workers(2).start_method(m).max_retries(3)
            .task_timeout(Duration::from_millis(200)).build().await.unwrap();
        assert!(pool.apply(panics, (3, runs.path())).await.unwrap_err().is_panic());
        assert_eq!(runs.of(3), 1);
        if m.is_process() {
            // A hung thread is abandoned, not killed: it would log again only if run again.
            let e = pool.apply(hangs, (3, runs.path())).await.unwrap_err();
            assert!(e.is_timeout(), "{e}");
            assert_eq!(runs.of(3), 2);
        }
        pool.shutdown().await.unwrap();
    }
}
