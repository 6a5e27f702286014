//! Run with: cargo run --release --example quickstart
//!
//! Counts the primes below 4,000,000 in 64 chunks, serially and then with a 2-worker pool under
//! each start method, and prints a small table of results and times.

use std::time::{Duration, Instant};

use ampire::{AsyncPool, StartMethod};

/// A real CPU-bound task: how many primes lie in `[lo, hi)` (trial division).
fn count_primes((lo, hi): (u64, u64)) -> u64 {
    (lo.max(2)..hi)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

const LIMIT: u64 = 4_000_000;
const CHUNKS: u64 = 64;

fn main() -> Result<(), ampire::Error> {
    ampire::init(); // first line of main: spawned workers divert here; starts the forkserver
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(run())
}

async fn run() -> Result<(), ampire::Error> {
    let ranges: Vec<(u64, u64)> = (0..CHUNKS)
        .map(|i| (i * LIMIT / CHUNKS, (i + 1) * LIMIT / CHUNKS))
        .collect();
    let t = Instant::now();
    let serial: u64 = ranges.iter().copied().map(count_primes).sum();
    let serial_time = t.elapsed();
    println!(
        "primes below {LIMIT}: {serial} (serial: {})\n",
        ms(serial_time)
    );
    println!("| start method | workers | start-up | map | speedup | result |");
    println!("|---|---|---|---|---|---|");
    for method in StartMethod::ALL {
        let t = Instant::now();
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(method)
            .build()
            .await?;
        let startup = t.elapsed();
        let t = Instant::now();
        let counts = pool
            .map(count_primes, ranges.iter().copied())
            .chunk_size(1)
            .await?;
        let took = t.elapsed();
        let total: u64 = counts.iter().sum();
        pool.shutdown().await?;
        println!(
            "| {method} | 2 | {} | {} | {:.2}x | {} |",
            ms(startup),
            ms(took),
            serial_time.as_secs_f64() / took.as_secs_f64(),
            if total == serial { "ok" } else { "WRONG" }
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
