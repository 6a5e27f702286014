//! Run with: cargo run --release --example failures
//!
//! Failures are ordinary events: a panic is data, a crashed worker fails only its task and is
//! replaced, a stream reports failures per task and goes on, and dropping a call cancels it.

use std::time::Duration;

use futures_util::{StreamExt, stream};

fn fragile(x: u32) -> u32 {
    match x {
        3 => panic!("three is not allowed"),
        5 => std::process::abort(),
        _ => x * 10,
    }
}

fn forever(_: u32) -> u32 {
    loop {
        std::thread::park();
    }
}

fn main() -> Result<(), ampire::Error> {
    ampire::init();
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(async {
            let pool = ampire::AsyncPool::builder().workers(2).build().await?;

            // `map` fails fast with the first error; the pool stays usable.
            let err = pool.map(fragile, 0..10).chunk_size(1).await.unwrap_err();
            println!("map failed: {err}");
            if let Some(backtrace) = err.backtrace() {
                println!(
                    "  (the worker's backtrace has {} lines)",
                    backtrace.lines().count()
                );
            }

            // A stream yields one result per input, failures included.
            let mut results = pool.map_stream(fragile, stream::iter(0..8)).chunk_size(1);
            while let Some(r) = results.next().await {
                match r {
                    Ok(v) => println!("ok  {v}"),
                    Err(e) if e.is_worker_died() => println!("crash: {e}"),
                    Err(e) => println!("err {e}"),
                }
            }

            // Dropping a call kills the worker that runs it; a new one takes its place.
            let stuck = pool.apply(forever, 0);
            let gave_up = tokio::time::timeout(Duration::from_millis(200), stuck).await;
            println!("gave up waiting: {}", gave_up.is_err());
            println!("still serving: {:?}", pool.map(fragile, [1, 2, 4]).await?);
            pool.shutdown().await?;
            Ok(())
        })
}
