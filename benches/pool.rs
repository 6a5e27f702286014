//! Criterion benchmarks of the pool itself.
//!
//! Method: every group sweeps the start methods; pool start-up is measured apart from task round
//! trips. Start-up (`startup/*`) builds a pool, runs one task and shuts it down, so it includes
//! forking or spawning the workers, the handshake and reaping them; `startup_1gib_owner/*` does
//! the same in an owner holding 1 GiB, and adds the owner's next write to each of its pages. Round
//! trips (`roundtrip/*`) run on a warm pool (both workers have already run a task), with payloads
//! from 8 bytes to 1 MiB each way. Throughput (`map/*`) maps 10,000 trivial tasks over 1 and 2
//! workers with default chunking. `iter_custom` times only the awaited call; the tokio runtime and
//! the pool live across iterations.
//!
//! Lifecycle costs: `lifecycle_w2/*` maps 10,000 trivial tasks in chunks of one (the comparison's
//! W2) on 2 workers, plain, with a `task_timeout` that never fires, and with
//! `worker_lifespan(1000)` (each worker replaced every 1,000 tasks). `timeout_latency/*` is the
//! time from 10 ms after a hung task was submitted (its timeout) to its error reaching the caller:
//! sending it to a warm, idle worker, the watchdog's wake-up, the kill (or, under `Threading`,
//! abandoning the thread) and the settling of the worker's journal. The ratios between the `lifecycle_w2` variants are what a setting costs;
//! `python3 scripts/compare/ab.py` measures the same in fresh processes, interleaved.
//!
//! Run with `cargo bench`; the side-by-side comparison with MPIRE, multiprocessing and rayon is
//! `python3 scripts/compare/run.py` (see BENCHMARKS.md).

use std::time::{Duration, Instant};

use ampire::{AsyncPool, StartMethod};
use criterion::{BenchmarkId, Criterion, Throughput};

fn echo(v: Vec<u8>) -> usize {
    v.len()
}

fn double(x: u64) -> u64 {
    x * 2
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn startup(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("startup");
    for m in StartMethod::ALL {
        g.bench_function(BenchmarkId::from_parameter(m), |b| {
            b.iter_custom(|iters| rt.block_on(start_and_stop(m, iters)))
        });
    }
    g.finish();
    // The same with 1 GiB resident in the owner, written after each pool as a service's heap
    // would be: a child that copies the owner's page tables costs time to start, and the owner
    // then takes a write fault per page it shared.
    let mut heap = vec![1u8; 1 << 30];
    let mut g = c.benchmark_group("startup_1gib_owner");
    for m in [
        StartMethod::Spawn,
        StartMethod::Fork,
        StartMethod::Forkserver,
    ] {
        g.bench_function(BenchmarkId::from_parameter(m), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    total += rt.block_on(start_and_stop(m, 1));
                    let t = Instant::now();
                    heap.iter_mut().step_by(4096).for_each(|b| *b = i as u8);
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

/// Builds a 2-worker pool, runs one task and shuts it down, `iters` times.
async fn start_and_stop(m: StartMethod, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(m)
            .build()
            .await
            .unwrap();
        pool.apply(double, 21).await.unwrap();
        pool.shutdown().await.unwrap();
        total += t.elapsed();
    }
    total
}

fn roundtrip(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("roundtrip");
    for m in StartMethod::ALL {
        let pool = rt
            .block_on(AsyncPool::builder().workers(2).start_method(m).build())
            .unwrap();
        rt.block_on(pool.map(double, 0..100u64).chunk_size(1).into_future())
            .unwrap();
        for size in [8usize, 1 << 10, 64 << 10, 1 << 20] {
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new(m.to_string(), size), &size, |b, &size| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let payload = vec![7u8; size];
                            let t = Instant::now();
                            assert_eq!(pool.apply(echo, payload).await.unwrap(), size);
                            total += t.elapsed();
                        }
                        total
                    })
                })
            });
        }
        drop(pool);
    }
    g.finish();
}

fn map(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("map");
    g.throughput(Throughput::Elements(10_000));
    for m in StartMethod::ALL {
        for workers in [1usize, 2] {
            let pool = rt
                .block_on(
                    AsyncPool::builder()
                        .workers(workers)
                        .start_method(m)
                        .build(),
                )
                .unwrap();
            g.bench_function(BenchmarkId::new(m.to_string(), workers), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let t = Instant::now();
                        for _ in 0..iters {
                            pool.map(double, 0..10_000u64).await.unwrap();
                        }
                        t.elapsed()
                    })
                })
            });
        }
    }
    g.finish();
}

/// Runs until its deadline: forever in a process worker (which is killed), until it sees
/// `is_cancelled` under `Threading`.
fn hang(w: &mut ampire::Worker<'_>, _: u64) -> u64 {
    while !w.is_cancelled() {
        std::thread::sleep(Duration::from_micros(100));
    }
    0
}

/// A pool setting whose cost a group measures.
type Setting = fn(ampire::Builder) -> ampire::Builder;

fn lifecycle(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("lifecycle_w2");
    g.throughput(Throughput::Elements(10_000));
    for m in StartMethod::ALL {
        let variants: [(&str, Setting); 3] = [
            ("plain", |b| b),
            ("task_timeout", |b| b.task_timeout(Duration::from_secs(60))),
            ("lifespan_1000", |b| b.worker_lifespan(1000)),
        ];
        for (name, setting) in variants {
            let builder = setting(AsyncPool::builder().workers(2).start_method(m));
            let pool = rt.block_on(builder.build()).unwrap();
            g.bench_function(BenchmarkId::new(m.to_string(), name), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let t = Instant::now();
                        for _ in 0..iters {
                            pool.map(double, 0..10_000u64).chunk_size(1).await.unwrap();
                        }
                        t.elapsed()
                    })
                })
            });
            drop(pool);
        }
    }
    g.finish();
    let mut g = c.benchmark_group("timeout_latency");
    let limit = Duration::from_millis(10);
    for m in StartMethod::ALL {
        let pool = rt
            .block_on(AsyncPool::builder().workers(2).start_method(m).build())
            .unwrap();
        g.bench_function(BenchmarkId::from_parameter(m), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut late = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let e = pool.apply_with(hang, 0).task_timeout(limit).await;
                        assert!(e.unwrap_err().is_timeout());
                        late += t.elapsed().saturating_sub(limit);
                    }
                    late
                })
            })
        });
        drop(pool);
    }
    g.finish();
}

fn main() {
    ampire::init(); // first: a re-executed bench binary becomes a worker here
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    startup(&mut c);
    roundtrip(&mut c);
    map(&mut c);
    lifecycle(&mut c);
    c.final_summary();
}

use std::future::IntoFuture;
