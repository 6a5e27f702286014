//! A panic in a task is data: message, location, backtrace, worker id, input.
mod common;
use common::*;

fn fails_at_17(x: u64) -> u64 {
    if x == 17 {
        panic!("bad input {x}");
    }
    x + 1
}

fn always_fails(x: u32) -> u32 {
    panic!("no {x}")
}

fn ok(x: u32) -> u32 {
    x
}

each_method! {
    async fn map_fails_fast_with_the_panic_and_the_pool_survives(m: StartMethod) {
        let pool = pool(m, 2).await;
        let e = pool.map(fails_at_17, 0..200u64).chunk_size(5).await.unwrap_err();
        assert!(e.is_panic(), "{e}");
        assert!(!e.is_worker_died());
        assert_eq!(e.panic_message(), Some("bad input 17"));
        assert_eq!(e.task_index(), Some(17));
        assert!(e.worker_id().is_some_and(|w| w < 2));
        assert!(e.panic_location().unwrap().starts_with("tests/panic.rs:"), "{:?}", e.panic_location());
        assert!(e.backtrace().is_some_and(|b| b.contains("fails_at_17")), "{:?}", e.backtrace());
        if m.is_process() {
            assert_eq!(e.input(), Some("17"));
        }
        let shown = e.to_string();
        assert!(shown.starts_with("task panicked in worker "), "{shown}");
        assert!(shown.contains("bad input 17"), "{shown}");
        // Usable afterwards, by the same workers.
        assert_eq!(pool.map(fails_at_17, 0..10u64).await.unwrap(), (1..11).collect::<Vec<_>>());
        pool.shutdown().await.unwrap();
    }

    async fn apply_failures_are_isolated(m: StartMethod) {
        let pool = pool(m, 2).await;
        let (a, b, c) = tokio::join!(pool.apply(ok, 1), pool.apply(always_fails, 2), pool.apply(ok, 3));
        assert_eq!(a.unwrap(), 1);
        assert_eq!(b.unwrap_err().panic_message(), Some("no 2"));
        assert_eq!(c.unwrap(), 3);
        pool.shutdown().await.unwrap();
    }

    async fn every_task_may_fail(m: StartMethod) {
        let pool = pool(m, 2).await;
        for i in 0..20u32 {
            assert!(pool.apply(always_fails, i).await.unwrap_err().is_panic());
        }
        assert_eq!(pool.apply(ok, 5).await.unwrap(), 5);
        pool.shutdown().await.unwrap();
    }
}
