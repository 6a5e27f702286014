//! Large inputs and shared objects arrive intact, whether they travel through the shared-memory
//! arena, through the pipe (arena full or off), or not at all (threads), and the arena is
//! handed back once the calls are done.
mod common;
use common::*;
use futures_util::StreamExt;

const KIB: usize = 1024;

/// A buffer whose bytes depend on `seed` and on their position.
fn buffer(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed) as u8)
        .collect()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().enumerate().fold(0u64, |h, (i, &b)| {
        h.wrapping_mul(1_000_003) ^ (b as u64 + i as u64)
    })
}

fn check(input: (u32, Vec<u8>)) -> (u32, u64) {
    (input.0, checksum(&input.1))
}

fn expected(inputs: &[(u32, Vec<u8>)]) -> Vec<(u32, u64)> {
    inputs.iter().map(|(i, b)| (*i, checksum(b))).collect()
}

fn inputs(n: u32, len: usize) -> Vec<(u32, Vec<u8>)> {
    (0..n).map(|i| (i, buffer(i, len))).collect()
}

fn checksum_shared(w: &mut Worker<'_, Vec<u8>>, _: u32) -> u64 {
    checksum(w.shared())
}

fn kill_self_at_5(input: (u32, Vec<u8>)) -> (u32, u64) {
    if input.0 == 5 {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    check(input)
}

async fn pool_with_arena(m: StartMethod, arena: usize) -> AsyncPool {
    AsyncPool::builder()
        .workers(2)
        .start_method(m)
        .arena_size(arena)
        .build()
        .await
        .unwrap()
}

/// The arena's use as the pool reports it.
fn arena_in_use<S, W, E>(pool: &AsyncPool<S, W, E>) -> usize {
    let text = format!("{pool:?}");
    let at = text
        .find("arena_bytes_in_use: ")
        .expect("Debug shows the arena")
        + 20;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

each_method! {
    async fn large_inputs_arrive_intact_with_any_arena(m: StartMethod) {
        let data = inputs(24, 200 * KIB);
        let want = expected(&data);
        // Roomy (everything through the arena), tight (one chunk at a time fits, the rest goes
        // through the pipe), and off.
        for arena in [64 << 20, 300 * KIB, 0] {
            let pool = pool_with_arena(m, arena).await;
            let one_by_one = pool.map(check, data.clone()).chunk_size(1).await.unwrap();
            assert_eq!(one_by_one, want, "arena of {arena} bytes, chunks of 1");
            let chunked = pool.map(check, data.clone()).chunk_size(5).await.unwrap();
            assert_eq!(chunked, want, "arena of {arena} bytes, chunks of 5");
            let mut unordered = pool.map_unordered(check, data.clone()).await.unwrap();
            unordered.sort();
            assert_eq!(unordered, want, "arena of {arena} bytes, unordered");
            assert_eq!(arena_in_use(&pool), 0, "every block is back once the calls are done");
            pool.shutdown().await.unwrap();
        }
    }

    async fn a_large_shared_object_reaches_every_worker(m: StartMethod) {
        let shared = buffer(7, 3 << 20);
        let want = checksum(&shared);
        for arena in [256 << 20, 0] {
            let pool = AsyncPool::builder()
                .workers(2)
                .start_method(m)
                .arena_size(arena)
                .shared(shared.clone())
                .build()
                .await
                .unwrap();
            let sums = pool.map_with(checksum_shared, 0..8u32).chunk_size(1).await.unwrap();
            assert_eq!(sums, vec![want; 8], "arena of {arena} bytes");
            pool.shutdown().await.unwrap();
        }
    }

    processes async fn an_arena_the_system_cannot_map_is_a_build_error(m: StartMethod) {
        for size in [usize::MAX, 1 << 62] {
            let e = AsyncPool::builder().workers(1).start_method(m).arena_size(size).build().await.unwrap_err();
            assert!(e.to_string().contains("could not create the shared-memory arena"), "{e}");
        }
    }

    processes async fn chunks_requeued_after_a_crash_arrive_intact(m: StartMethod) {
        // The dying worker holds chunks it has not read yet; they go to the other worker from
        // the same arena blocks.
        let pool = pool_with_arena(m, 64 << 20).await;
        let data = inputs(16, 150 * KIB);
        let want = expected(&data);
        let out: Vec<Result<(u32, u64), Error>> = pool
            .map_stream(kill_self_at_5, futures_util::stream::iter(data))
            .chunk_size(1)
            .collect()
            .await;
        for (i, r) in out.into_iter().enumerate() {
            match i {
                5 => assert!(r.unwrap_err().is_worker_died()),
                _ => assert_eq!(r.unwrap(), want[i]),
            }
        }
        assert_eq!(arena_in_use(&pool), 0);
        pool.shutdown().await.unwrap();
    }
}

/// A shared object with a large and a small slice of numbers.
#[derive(serde::Serialize, serde::Deserialize)]
struct Grid {
    label: String,
    values: SharedSlice<f64>,
    small: SharedSlice<u32>,
}

fn grid() -> Grid {
    Grid {
        label: "grid".into(),
        values: (0..1_000_000).map(|i| (i % 977) as f64 * 0.5).collect(),
        small: (0..100).collect(),
    }
}

fn grid_sum(g: &Grid) -> f64 {
    g.values.iter().sum::<f64>() + g.small.iter().map(|&v| v as f64).sum::<f64>()
}

/// The grid's checksum as this worker sees it, whether each slice is read in place, and the pid.
fn read_grid(w: &mut Worker<'_, Grid>, _: u32) -> (String, f64, bool, bool, u32) {
    let g = w.shared();
    (
        g.label.clone(),
        grid_sum(g),
        g.values.is_shared_memory(),
        g.small.is_shared_memory(),
        std::process::id(),
    )
}

fn double(values: SharedSlice<u16>) -> (SharedSlice<u16>, bool) {
    let shared = values.is_shared_memory();
    (values.iter().map(|v| v.wrapping_mul(2)).collect(), shared)
}

each_method! {
    async fn shared_slices_are_read_in_place_by_workers_that_do_not_inherit_memory(m: StartMethod) {
        let want = grid_sum(&grid());
        let in_place = matches!(m, StartMethod::Spawn | StartMethod::Forkserver);
        // Lifespan 2: replacement workers read the same copy, which the pool keeps for its life.
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(m)
            .worker_lifespan(2)
            .shared(grid())
            .build()
            .await
            .unwrap();
        let seen = pool.map_with(read_grid, 0..8u32).chunk_size(1).await.unwrap();
        for (label, sum, values, small, _) in &seen {
            assert_eq!((label.as_str(), *sum), ("grid", want));
            assert_eq!(*values, in_place, "the large slice is read in place under {m} only if {in_place}");
            assert!(!small, "a slice under 64 KiB is decoded into a copy");
        }
        if m.is_process() {
            let pids: std::collections::HashSet<u32> = seen.iter().map(|s| s.4).collect();
            assert!(pids.len() >= 4, "replacements ran tasks too: {pids:?}");
        }
        if in_place {
            assert!(arena_in_use(&pool) >= 8_000_000, "the pool keeps the slice in its arena");
        }
        pool.shutdown().await.unwrap();
    }

    processes async fn shared_slices_that_do_not_fit_the_arena_are_decoded(m: StartMethod) {
        let want = grid_sum(&grid());
        for arena in [1 << 20, 0] {
            let pool = AsyncPool::builder()
                .workers(2)
                .start_method(m)
                .arena_size(arena)
                .shared(grid())
                .build()
                .await
                .unwrap();
            for (_, sum, values, _, _) in pool.map_with(read_grid, 0..4u32).await.unwrap() {
                assert_eq!(sum, want, "arena of {arena} bytes");
                assert!(!values, "arena of {arena} bytes: no room, so a copy");
            }
            pool.shutdown().await.unwrap();
        }
    }

    processes async fn shared_slices_in_inputs_and_results_travel_as_bytes(m: StartMethod) {
        let pool = pool_with_arena(m, 64 << 20).await;
        let inputs: Vec<SharedSlice<u16>> =
            (0..4u16).map(|k| (0..100_000u32).map(|i| (i as u16) ^ k).collect()).collect();
        let out = pool.map(double, inputs.clone()).chunk_size(1).await.unwrap();
        for (input, (doubled, shared)) in inputs.iter().zip(out) {
            let want: Vec<u16> = input.iter().map(|v| v.wrapping_mul(2)).collect();
            assert_eq!(&doubled[..], &want[..]);
            assert!(!shared, "only the shared object's slices are placed in the arena");
        }
        pool.shutdown().await.unwrap();
    }
}
