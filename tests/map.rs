//! `map` and `map_unordered`: results, ordering, chunking options.
mod common;
use common::*;

fn square(x: u64) -> u64 {
    x * x
}

fn fails_at_1000(x: u64) -> u64 {
    assert!(x < 1000, "input {x} is too large");
    x
}

fn worker_of(w: &mut Worker<'_>, _x: u64) -> usize {
    w.id()
}

each_method! {
    async fn empty_input(m: StartMethod) {
        let pool = pool(m, 2).await;
        assert_eq!(pool.map(square, Vec::<u64>::new()).await.unwrap(), Vec::<u64>::new());
        assert_eq!(pool.map_unordered(square, 0..0u64).await.unwrap(), Vec::<u64>::new());
        pool.shutdown().await.unwrap();
    }

    async fn ten_thousand_ordered_equal_serial(m: StartMethod) {
        let pool = pool(m, 2).await;
        let serial: Vec<u64> = (0..10_000u64).map(square).collect();
        assert_eq!(pool.map(square, 0..10_000u64).await.unwrap(), serial);
        // An input of unknown length gets adaptive chunks; still in order.
        let unknown = (0..10_000u64).filter(|_| true);
        assert_eq!(pool.map(square, unknown).await.unwrap(), serial);
        pool.shutdown().await.unwrap();
    }

    async fn an_endless_input_fails_fast_at_its_first_error(m: StartMethod) {
        // Its size hint is `usize::MAX`: nothing may trust it for an allocation.
        let pool = pool(m, 2).await;
        let e = pool.map(fails_at_1000, 0u64..).await.unwrap_err();
        assert!(e.panic_message().is_some_and(|m| m.ends_with("is too large")), "{e}");
        let e = pool.map_unordered(fails_at_1000, std::iter::repeat(1000u64)).await.unwrap_err();
        assert!(e.is_panic(), "{e}");
        pool.shutdown().await.unwrap();
    }

    async fn unordered_gives_the_same_multiset(m: StartMethod) {
        let pool = pool(m, 2).await;
        let mut got = pool.map_unordered(square, 0..5_000u64).chunk_size(7).await.unwrap();
        got.sort_unstable();
        let mut want: Vec<u64> = (0..5_000u64).map(square).collect();
        want.sort_unstable();
        assert_eq!(got, want);
        pool.shutdown().await.unwrap();
    }

    async fn chunking_options(m: StartMethod) {
        let pool = pool(m, 2).await;
        let want: Vec<u64> = (0..1_000u64).map(square).collect();
        assert_eq!(pool.map(square, 0..1_000u64).chunk_size(1).await.unwrap(), want);
        assert_eq!(pool.map(square, 0..1_000u64).chunk_size(5_000).await.unwrap(), want);
        assert_eq!(pool.map(square, 0..1_000u64).n_splits(3).await.unwrap(), want);
        // A bound smaller than one chunk works (MPIRE hangs here).
        assert_eq!(pool.map(square, 0..1_000u64).chunk_size(50).max_tasks_active(3).await.unwrap(), want);
        pool.shutdown().await.unwrap();
    }

    async fn bad_options_are_errors(m: StartMethod) {
        let pool = pool(m, 2).await;
        let e = pool.map(square, 0..10u64).chunk_size(0).await.unwrap_err();
        assert!(e.is_config(), "{e}");
        let e = pool.map(square, 0..10u64).max_tasks_active(0).await.unwrap_err();
        assert!(e.is_config(), "{e}");
        let e = pool.map(square, (0..10u64).filter(|_| true)).n_splits(2).await.unwrap_err();
        assert!(e.is_config() && e.to_string().contains("n_splits"), "{e}");
        // The pool is unaffected.
        assert_eq!(pool.apply(square, 3).await.unwrap(), 9);
        pool.shutdown().await.unwrap();
    }

    async fn order_tasks_sends_chunk_i_to_worker_i_mod_n(m: StartMethod) {
        let pool = AsyncPool::builder().workers(3).start_method(m).order_tasks(true).build().await.unwrap();
        let ids = pool.map_with(worker_of, 0..30u64).chunk_size(1).await.unwrap();
        assert_eq!(ids, (0..30).map(|i| i % 3).collect::<Vec<_>>());
        let ids = pool.map_with(worker_of, 0..12u64).chunk_size(2).await.unwrap();
        assert_eq!(ids, (0..12).map(|i| (i / 2) % 3).collect::<Vec<_>>());
        pool.shutdown().await.unwrap();
    }

    async fn apply_and_concurrent_calls(m: StartMethod) {
        let pool = pool(m, 2).await;
        let (a, b, c) = tokio::join!(pool.apply(square, 3), pool.map(square, 0..100u64), pool.apply(square, 4));
        assert_eq!((a.unwrap(), b.unwrap().len(), c.unwrap()), (9, 100, 16));
        pool.shutdown().await.unwrap();
    }
}
