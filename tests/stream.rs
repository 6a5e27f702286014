//! `map_stream` and `map_stream_unordered`: backpressure, order, per-item failures.
mod common;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use futures_util::{StreamExt, stream};

fn double(x: u64) -> u64 {
    x * 2
}

fn fail_on_multiples_of_7(x: u64) -> u64 {
    assert!(x % 7 != 0 || x == 0, "multiple of seven: {x}");
    x
}

each_method! {
    async fn infinite_stream_take_n_pulls_a_bounded_prefix(m: StartMethod) {
        let pool = pool(m, 2).await;
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let input = stream::iter(0u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let out: Vec<u64> = pool.map_stream(double, input).max_tasks_active(8).take(100).map(Result::unwrap).collect().await;
        assert_eq!(out, (0..100u64).map(double).collect::<Vec<_>>());
        // At most the bound in flight plus the reorder window beyond what was consumed.
        let n = pulled.load(Ordering::Relaxed);
        assert!(n <= 100 + 8 + 8, "pulled {n} inputs for 100 outputs");
        pool.shutdown().await.unwrap();
    }

    async fn ordered_and_unordered_streams(m: StartMethod) {
        let pool = pool(m, 2).await;
        let out: Vec<u64> = pool.map_stream(double, stream::iter(0..3_000u64)).map(Result::unwrap).collect().await;
        assert_eq!(out, (0..3_000u64).map(double).collect::<Vec<_>>());
        let mut out: Vec<u64> =
            pool.map_stream_unordered(double, stream::iter(0..3_000u64)).chunk_size(13).map(Result::unwrap).collect().await;
        out.sort_unstable();
        assert_eq!(out, (0..3_000u64).map(double).collect::<Vec<_>>());
        let empty: Vec<_> = pool.map_stream(double, stream::iter(Vec::<u64>::new())).collect().await;
        assert!(empty.is_empty());
        pool.shutdown().await.unwrap();
    }

    async fn a_failed_task_yields_its_error_and_the_stream_goes_on(m: StartMethod) {
        let pool = pool(m, 2).await;
        let out: Vec<Result<u64, Error>> =
            pool.map_stream(fail_on_multiples_of_7, stream::iter(0..50u64)).chunk_size(4).collect().await;
        assert_eq!(out.len(), 50);
        for (i, r) in out.iter().enumerate() {
            if i % 7 == 0 && i > 0 {
                let e = r.as_ref().unwrap_err();
                assert!(e.is_panic(), "{e}");
                assert_eq!(e.task_index(), Some(i));
                assert_eq!(e.panic_message(), Some(format!("multiple of seven: {i}").as_str()));
            } else {
                assert_eq!(r.as_ref().unwrap(), &(i as u64));
            }
        }
        pool.shutdown().await.unwrap();
    }

    async fn a_slow_producer_is_not_waited_for(m: StartMethod) {
        // Items that arrive one by one are sent as they come, not held back to fill a chunk.
        let pool = pool(m, 2).await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let input = tokio_stream_from(rx);
        let mut results = pool.map_stream(double, input).chunk_size(100);
        for i in 0..5u64 {
            tx.send(i).unwrap();
            assert_eq!(results.next().await.unwrap().unwrap(), i * 2);
        }
        drop(tx);
        assert!(results.next().await.is_none());
        pool.shutdown().await.unwrap();
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<u64>,
) -> impl futures_util::Stream<Item = u64> {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}
