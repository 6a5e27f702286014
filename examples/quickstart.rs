//! Run with: cargo run --release --example quickstart [LIMIT]
//!
//! Counts the primes below LIMIT (4,000,000 unless given) in 64 chunks, serially and then with a
//! 2-worker pool under each start method, each map with a progress bar, and prints a small table
//! of results and times.

use std::time::{Duration, Instant};

use ampire::{AsyncPool, StartMethod};

/// A real CPU-bound task: how many primes lie in `[lo, hi)` (trial division).
fn count_primes((lo, hi): (u64, u64)) -> u64 {
    (lo.max(2)..hi)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

const CHUNKS: u64 = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ampire::init(); // first line of main: spawned workers divert here; starts the forkserver
    let limit = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| format!("LIMIT must be a whole number, not {arg:?}"))?,
        None => 4_000_000,
    };
    tokio::runtime::Runtime::new()?.block_on(run(limit))?;
    Ok(())
}

async fn run(limit: u64) -> Result<(), ampire::Error> {
    let ranges: Vec<(u64, u64)> = (0..CHUNKS)
        .map(|i| (i * limit / CHUNKS, (i + 1) * limit / CHUNKS))
        .collect();
    let t = Instant::now();
    let serial: u64 = ranges.iter().copied().map(count_primes).sum();
    let serial_time = t.elapsed();
    println!(
        "primes below {limit}: {serial} (serial: {})\n",
        ms(serial_time)
    );
    let mut rows = Vec::new();
    for method in StartMethod::ALL {
        let t = Instant::now();
        let pool = AsyncPool::builder()
            .workers(2)
            .start_method(method)
            .name(format!("primes ({method})"))
            .build()
            .await?;
        let startup = t.elapsed();
        let t = Instant::now();
        let counts = pool
            .map(count_primes, ranges.iter().copied())
            .chunk_size(1)
            .progress_bar(true)
            .await?;
        let took = t.elapsed();
        let total: u64 = counts.iter().sum();
        pool.shutdown().await?;
        rows.push(format!(
            "| {method} | 2 | {} | {} | {:.2}x | {} |",
            ms(startup),
            ms(took),
            serial_time.as_secs_f64() / took.as_secs_f64(),
            if total == serial { "ok" } else { "WRONG" }
        ));
    }
    println!("\n| start method | workers | start-up | map | speedup | result |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
