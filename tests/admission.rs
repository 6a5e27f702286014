//! Admission: with `max_queued_tasks(n)`, `try_apply` is refused at once while `n` tasks wait in
//! the pool's queue; every other call waits for room, and nothing is lost.
mod common;
use std::future::IntoFuture;

use common::*;
use futures_util::{StreamExt, stream};

fn quick(x: u64) -> u64 {
    x + 1
}

/// A pool of one worker that prefetches nothing, so that a task waiting for it waits in the
/// pool's queue.
async fn one_worker(m: StartMethod, max_queued: usize) -> AsyncPool {
    AsyncPool::builder()
        .workers(1)
        .start_method(m)
        .pipeline_depth(1)
        .max_queued_tasks(max_queued)
        .build()
        .await
        .unwrap()
}

each_method! {
    async fn try_apply_is_refused_at_once_when_the_queue_is_full(m: StartMethod) {
        let pool = one_worker(m, 2).await;
        let sig = Signal::new();
        let gate = gate_path(m, 0);
        let running = tokio::spawn(pool.apply(blocked, (sig.path.to_str().unwrap().to_owned(), gate.clone())).into_future());
        sig.recv().await;
        // The worker is busy: two tasks fit in the queue, the third does not.
        let a = pool.try_apply(quick, 1).unwrap();
        let b = pool.try_apply(quick, 2).unwrap();
        let e = pool.try_apply(quick, 3).unwrap_err();
        assert!(e.is_full(), "{e}");
        assert_eq!(e.to_string(), "the pool's queue is full (2 tasks queued)");
        // A call that may wait does, and runs once there is room.
        let waiting = tokio::spawn(pool.apply(quick, 4).into_future());
        release(&gate);
        assert_eq!(running.await.unwrap().unwrap(), 0);
        assert_eq!(a.await.unwrap(), 2);
        assert_eq!(b.await.unwrap(), 3);
        assert_eq!(waiting.await.unwrap().unwrap(), 5);
        assert_eq!(pool.try_apply(quick, 5).unwrap().await.unwrap(), 6);
        pool.shutdown().await.unwrap();
    }

    async fn maps_and_streams_wait_for_room(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).max_queued_tasks(4).build().await.unwrap();
        let want: Vec<u64> = (0..2000).map(quick).collect();
        assert_eq!(pool.map(quick, 0..2000u64).chunk_size(1).await.unwrap(), want);
        let mut got: Vec<u64> = pool.map_unordered(quick, 0..2000u64).await.unwrap();
        got.sort();
        assert_eq!(got, want);
        let streamed: Vec<u64> = pool.map_stream(quick, stream::iter(0..2000u64)).map(Result::unwrap).collect().await;
        assert_eq!(streamed, want);
        // Two calls at once share the bound; neither starves.
        let (x, y) = tokio::join!(
            pool.map(quick, 0..500u64).chunk_size(3).into_future(),
            pool.map(quick, 0..500u64).chunk_size(1).into_future()
        );
        assert_eq!(x.unwrap(), want[..500]);
        assert_eq!(y.unwrap(), want[..500]);
        pool.shutdown().await.unwrap();
    }

    async fn the_queue_never_holds_more_than_the_bound(m: StartMethod) {
        // One worker that prefetches nothing takes nothing back: what waits is in the queue.
        let pool = one_worker(m, 4).await;
        let mut most = 0;
        let out: Vec<u64> = pool
            .map_stream(quick, stream::iter(0..500u64))
            .chunk_size(1)
            .map(|r| {
                most = most.max(pool.stats().queued);
                r.unwrap()
            })
            .collect()
            .await;
        assert_eq!(out, (0..500).map(quick).collect::<Vec<_>>());
        assert!(most <= 4, "{most} tasks queued, with a bound of 4");
        pool.shutdown().await.unwrap();
    }

    async fn a_chunk_larger_than_the_bound_goes_in_alone(m: StartMethod) {
        let pool = one_worker(m, 2).await;
        assert_eq!(pool.map(quick, 0..30u64).chunk_size(10).await.unwrap(), (0..30).map(quick).collect::<Vec<_>>());
        pool.shutdown().await.unwrap();
    }

    async fn a_zero_bound_is_a_config_error(m: StartMethod) {
        let e = AsyncPool::builder().workers(1).start_method(m).max_queued_tasks(0).build().await.unwrap_err();
        assert!(e.is_config(), "{e}");
    }
}
