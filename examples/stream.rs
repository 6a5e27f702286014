//! Run with: cargo run --release --example stream
//!
//! A backpressured stream over an endless input: the pool pulls input only as results are
//! consumed, so memory stays bounded however long the input is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{StreamExt, stream};

fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

fn main() -> Result<(), ampire::Error> {
    ampire::init();
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(async {
            let pool = ampire::AsyncPool::builder().workers(2).build().await?;
            let pulled = Arc::new(AtomicU64::new(0));
            let counter = pulled.clone();
            let endless = stream::iter(1u64..).inspect(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            });
            let mut longest = (0, 0);
            let mut results = pool
                .map_stream(collatz_steps, endless)
                .max_tasks_active(10_000)
                .take(1_000_000)
                .enumerate();
            while let Some((i, steps)) = results.next().await {
                let steps = steps?;
                if steps > longest.1 {
                    longest = (i as u64 + 1, steps);
                }
            }
            drop(results); // stops the input and cancels what was queued
            println!(
                "longest Collatz chain below 1,000,001 starts at {} ({} steps)",
                longest.0, longest.1
            );
            println!(
                "inputs pulled from the endless stream: {}",
                pulled.load(Ordering::Relaxed)
            );
            pool.shutdown().await?;
            Ok(())
        })
}
