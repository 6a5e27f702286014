//! Lifecycle settings as MPIRE's `test_params` checks them: timeouts of any positive length and
//! lifespans of one or more work; zero is refused by `build()`, before any work starts. (Types
//! MPIRE checks at run time, such as a timeout given as a string, do not compile here.)
mod common;
use std::time::Duration;

use common::*;

fn double(x: u64) -> u64 {
    x * 2
}

fn init(_: &Worker<'_>) {}

fn exit(_: &mut Worker<'_, (), ()>) -> u32 {
    1
}

each_method! {
    /// MPIRE's `test_timeout`: `[0.5, 1, 100.5, 1e8]` seconds are fine for all three timeouts;
    /// so is the largest `Duration`.
    async fn any_positive_timeout_is_accepted(m: StartMethod) {
        for t in [0.5, 1.0, 100.5, 1e8].map(Duration::from_secs_f64).into_iter().chain([Duration::MAX]) {
            let pool = AsyncPool::builder().workers(2).start_method(m)
                .worker_init(init).worker_exit(exit)
                .task_timeout(t).worker_init_timeout(t).worker_exit_timeout(t)
                .build().await.unwrap();
            assert_eq!(pool.map(double, 0..100u64).await.unwrap(), (0..100).map(double).collect::<Vec<_>>());
            assert_eq!(pool.apply(double, 4).task_timeout(t).await.unwrap(), 8);
            assert_eq!(pool.shutdown_timeout(t).await.unwrap(), vec![1, 1]);
        }
    }

    /// MPIRE's `test_timeout`, the refused values: a timeout must be more than zero.
    async fn a_zero_timeout_is_refused(m: StartMethod) {
        let b = || AsyncPool::builder().workers(1).start_method(m).worker_init(init).worker_exit(exit);
        for e in [
            b().task_timeout(Duration::ZERO).build().await.unwrap_err(),
            b().worker_init_timeout(Duration::ZERO).build().await.unwrap_err(),
            b().worker_exit_timeout(Duration::ZERO).build().await.unwrap_err(),
            b().worker_start_timeout(Duration::ZERO).build().await.unwrap_err(),
        ] {
            assert!(e.is_config(), "{e}");
            assert!(e.to_string().contains("must be more than zero"), "{e}");
        }
    }

    /// MPIRE's `test_worker_lifespan`: 11 is fine, fewer than 1 is not.
    async fn a_lifespan_is_at_least_one(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).worker_lifespan(11).build().await.unwrap();
        assert_eq!(pool.map(double, 0..100u64).await.unwrap(), (0..100).map(double).collect::<Vec<_>>());
        pool.shutdown().await.unwrap();
        let e = AsyncPool::builder().workers(2).start_method(m).worker_lifespan(0).build().await.unwrap_err();
        assert!(e.is_config(), "{e}");
    }
}
