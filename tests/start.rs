//! Starting workers: a worker that fails to start is started again, with backoff, and a slot
//! that keeps failing breaks the pool with an error that keeps its cause. Only a panicking
//! `worker_init` is an init failure.
mod common;
use std::error::Error as _;
use std::time::Duration;

use common::*;

fn double(x: u64) -> u64 {
    x * 2
}

fn pid(_: u64) -> u32 {
    std::process::id()
}

/// A `worker_init` that blocks until the test is over (the worker is killed, or, a thread,
/// abandoned).
fn hanging_init(_: &Worker<'_>) {
    park_forever()
}

/// The error a worker that exited with status 86 before its hello left as the cause.
fn assert_died_before_hello(e: &Error) {
    assert!(!e.is_init() && !e.is_panic(), "{e}");
    assert!(
        e.to_string().contains("failed to start 5 times in a row"),
        "{e}"
    );
    let cause = e.source().expect("the breaker keeps its cause");
    let cause = cause
        .downcast_ref::<Error>()
        .expect("the death of the last worker");
    assert_eq!(cause.exit_code(), Some(86), "{cause}");
    let text = cause.to_string();
    assert!(
        text.contains("exited with status 86, peak RSS ")
            && text.ends_with(" s, while running its start-up"),
        "{cause}"
    );
}

each_method! {
    processes async fn a_worker_that_dies_before_its_hello_is_started_again(m: StartMethod) {
        // Two starts fail before the pool is built: each is retried, and no init failure breaks
        // anything.
        let pool = AsyncPool::builder().workers(2).start_method(m).__fail_starts(0, 2).build().await.unwrap();
        assert_eq!(pool.map(double, 0..100u64).await.unwrap(), (0..100).map(double).collect::<Vec<_>>());
        pool.shutdown().await.unwrap();
    }

    processes async fn a_worker_that_never_starts_fails_build_with_its_cause(m: StartMethod) {
        let e = AsyncPool::builder().workers(1).start_method(m).__fail_starts(0, usize::MAX).build().await.unwrap_err();
        assert_died_before_hello(&e);
    }

    processes async fn a_replacement_that_never_starts_breaks_the_pool(m: StartMethod) {
        let pool = AsyncPool::builder().workers(1).start_method(m).__fail_starts(1, usize::MAX).build().await.unwrap();
        let victim = pool.apply(pid, 0).await.unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_gone(victim).await;
        // Every call now fails with the breaker's error, once the slot gave up (a call made
        // while it still tries waits for it).
        let e = pool.apply(double, 1).await.unwrap_err();
        assert_died_before_hello(&e);
        assert_died_before_hello(&pool.map(double, 0..10u64).await.unwrap_err());
    }

    async fn a_worker_init_past_the_start_timeout_fails_build(m: StartMethod) {
        let e = AsyncPool::builder()
            .workers(1)
            .start_method(m)
            .worker_start_timeout(Duration::from_millis(200))
            .worker_init(hanging_init)
            .build()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("did not finish its start-up within 200ms"), "{e}");
        assert!(e.to_string().contains("failed to start 5 times in a row"), "{e}");
    }
}
