//! Run with: cargo run --release --example worker_context
//!
//! MPIRE's worker context, typed: a shared object (inherited copy-on-write under `Fork`), per-worker
//! state built by `worker_init`, and exit results returned by `shutdown`.

use std::collections::HashMap;

use ampire::{AsyncPool, StartMethod, Worker};

/// Shared by all workers: a vocabulary built once by the pool owner.
type Vocabulary = Vec<String>;
/// Each worker's own state: how often it saw each word.
type Counts = HashMap<usize, u64>;

fn start(w: &Worker<'_, Vocabulary, ()>) -> Counts {
    println!(
        "worker {} starts with a vocabulary of {} words",
        w.id(),
        w.shared().len()
    );
    Counts::new()
}

/// Counts the vocabulary words in one document (here: a seed that generates it).
fn count(w: &mut Worker<'_, Vocabulary, Counts>, seed: u64) -> usize {
    let vocabulary_len = w.shared().len() as u64;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut words = 0;
    for _ in 0..1_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *w.state().entry((x % vocabulary_len) as usize).or_default() += 1;
        words += 1;
    }
    words
}

fn finish(w: &mut Worker<'_, Vocabulary, Counts>) -> Counts {
    std::mem::take(w.state())
}

fn main() -> Result<(), ampire::Error> {
    ampire::init();
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(async {
            let vocabulary: Vocabulary = (0..5_000).map(|i| format!("word{i}")).collect();
            let pool = AsyncPool::builder()
                .workers(2)
                .start_method(StartMethod::Fork)
                .shared(vocabulary.clone())
                .worker_init(start)
                .worker_exit(finish)
                .build()
                .await?;
            let words: usize = pool.map_with(count, 0..2_000u64).await?.into_iter().sum();
            let per_worker = pool.shutdown().await?;
            let mut total = Counts::new();
            for counts in per_worker {
                for (word, n) in counts {
                    *total.entry(word).or_default() += n;
                }
            }
            let (top, n) = total
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(w, n)| (*w, *n))
                .unwrap_or_default();
            println!(
                "{words} words counted; the most frequent is {:?} ({n} times)",
                vocabulary[top]
            );
            Ok(())
        })
}
