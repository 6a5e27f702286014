//! How a call is cut into chunks: `n_splits` against MPIRE's own table, and `chunk_size`.
mod common;
use common::*;

fn worker_of(w: &mut Worker<'_>, _x: u64) -> usize {
    w.id()
}

/// The chunk sizes a call used, read off a pool with `order_tasks` and one worker per expected
/// chunk: chunk `i` runs on worker `i % workers`, so a chunk boundary is where the worker
/// changes, and a chunk too many would run on worker 0 again.
fn chunk_sizes(m: StartMethod, workers: usize, ids: Vec<usize>) -> Vec<usize> {
    let mut sizes: Vec<usize> = Vec::new();
    let mut last = None;
    for id in ids {
        if last == Some(id) {
            *sizes.last_mut().unwrap() += 1;
        } else {
            assert!(id < workers, "{m}: worker {id} of {workers}");
            sizes.push(1);
            last = Some(id);
        }
    }
    sizes
}

async fn ordered_pool(m: StartMethod, workers: usize) -> AsyncPool {
    AsyncPool::builder()
        .workers(workers)
        .start_method(m)
        .order_tasks(true)
        .build()
        .await
        .unwrap()
}

each_method! {
    async fn n_splits_gives_min_of_splits_and_len_chunks_within_one_of_each_other(m: StartMethod) {
        // MPIRE's table (`chunk_tasks` in its test_utils.py), as (inputs, n_splits, chunks).
        for (n, splits, chunks) in [(10u64, 3usize, 3usize), (4, 5, 4), (5, 5, 5), (6, 5, 5), (10, 6, 6), (1, 5, 1)] {
            let pool = ordered_pool(m, chunks).await;
            let ids = pool.map_with(worker_of, 0..n).n_splits(splits).await.unwrap();
            let sizes = chunk_sizes(m, chunks, ids);
            assert_eq!(sizes.len(), chunks, "{m}: {n} inputs, n_splits({splits}): {sizes:?}");
            assert_eq!(sizes.iter().sum::<usize>(), n as usize);
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "{m}: {n} inputs, n_splits({splits}): {sizes:?}");
            // An input of unknown length, with its length given as a hint, is cut the same way.
            let unknown = (0..n).filter(|_| true);
            let ids = pool.map_with(worker_of, unknown).len(n as usize).n_splits(splits).await.unwrap();
            assert_eq!(chunk_sizes(m, chunks, ids), sizes, "{m}: .len({n})");
            pool.shutdown().await.unwrap();
        }
    }

    async fn n_splits_of_ten_into_three_is_four_three_three(m: StartMethod) {
        let pool = ordered_pool(m, 3).await;
        let ids = pool.map_with(worker_of, 0..10u64).n_splits(3).await.unwrap();
        assert_eq!(chunk_sizes(m, 3, ids), [4, 3, 3]);
        // `chunk_size` wins over `n_splits`, as in MPIRE.
        let ids = pool.map_with(worker_of, 0..4u64).chunk_size(4).n_splits(4).await.unwrap();
        assert_eq!(chunk_sizes(m, 3, ids), [4]);
        assert!(pool.map_with(worker_of, 0..0u64).n_splits(5).await.unwrap().is_empty());
        pool.shutdown().await.unwrap();
    }
}
