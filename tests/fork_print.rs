//! `Fork` from a process where another thread holds the stdout lock must not deadlock the child.
mod common;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;

fn chatty(x: u32) -> u32 {
    println!("worker prints {x}");
    eprintln!("worker prints {x} to stderr");
    x
}

#[test]
fn fork_while_another_thread_prints() {
    run(StartMethod::Fork, |m| async move {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // Hold the real stdout and stderr locks most of the time (print! would be captured by the
        // test harness and never touch them).
        let printer = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut out = std::io::stdout().lock();
                let err = std::io::stderr().lock();
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_micros(200) {}
                let _ = out.flush();
                drop(err);
            }
        });
        for round in 0..20u32 {
            let pool = pool(m, 2).await;
            assert_eq!(
                pool.map(chatty, 0..4u32).chunk_size(1).await.unwrap(),
                vec![0, 1, 2, 3],
                "round {round}"
            );
            pool.shutdown().await.unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        printer.join().unwrap();
    });
}
