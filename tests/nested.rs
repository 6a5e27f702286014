//! A task may run a pool of its own, under every start method.
mod common;
use common::*;

fn square(x: u64) -> u64 {
    x * x
}

/// Runs inside a worker: builds its own runtime and pool with the given method.
fn inner_sum(method: u8) -> u64 {
    inner_pool_sum(StartMethod::ALL[method as usize], "inner", false, square)
}

/// One test at a time: a `Fork` worker here runs tokio and starts processes, so it must not be
/// forked while a sibling test's thread holds a lock of tokio's process machinery (the fork
/// hazard the README describes; no other test of this binary runs a runtime inside a worker).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

each_method! {
    async fn a_worker_runs_a_pool_of_its_own(m: StartMethod) {
        let _alone = ONE_AT_A_TIME.lock().await;
        let pool = pool(m, 2).await;
        let want: u64 = (0..100u64).map(square).sum();
        let got = pool.map(inner_sum, 0..4u8).chunk_size(1).await.unwrap();
        assert_eq!(got, vec![want; 4]);
        pool.shutdown().await.unwrap();
    }
}
