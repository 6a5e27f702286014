//! Run with: cargo run --example dashboard --features dashboard
//!
//! The web dashboard: a named pool of two forkserver workers, with insights on, resizes
//! pretend photos (each task sleeps 10 to 70 ms) in rounds of 300, while the dashboard shows
//! it at the printed URL. It stops after 30 seconds, or after as many seconds as its first
//! argument says (`-- 120`); Ctrl-C stops it sooner.

use std::time::Duration;

use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};

/// One task's input: what the insights show of the slowest tasks.
#[derive(Debug, Serialize, Deserialize)]
struct Photo {
    file: String,
    width: u32,
}

/// Pretends to resize a photo: 10 to 70 ms of sleep, depending on the photo.
fn resize(photo: Photo) -> u64 {
    let ms = 10 + (photo.file.len() as u64 * 7919 + u64::from(photo.width)) % 61;
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn main() -> Result<(), ampire::Error> {
    ampire::init();
    let seconds: u64 = std::env::args().nth(1).map_or(30, |arg| {
        arg.parse()
            .expect("the first argument is how many seconds to run")
    });
    tokio::runtime::Runtime::new()
        .expect("a tokio runtime")
        .block_on(run(Duration::from_secs(seconds)))
}

async fn run(how_long: Duration) -> Result<(), ampire::Error> {
    let pool = ampire::AsyncPool::builder()
        .name("thumbnails")
        .workers(2)
        .start_method(ampire::StartMethod::Forkserver)
        .enable_insights(true)
        .build()
        .await?;
    // Loopback only: the dashboard has no authentication (see `ampire::Dashboard`).
    let dashboard = ampire::Dashboard::start("127.0.0.1:0").await?;
    println!("dashboard at http://{}/", dashboard.addr());

    let deadline = tokio::time::Instant::now() + how_long;
    let mut round = 0u32;
    while tokio::time::Instant::now() < deadline {
        round += 1;
        let photos = (0..300u32).map(move |i| Photo {
            file: format!("round-{round}/photo-{i:04}.jpg"),
            width: 640 + (i % 5) * 320,
        });
        let mut results = pool
            .map_stream(resize, stream::iter(photos))
            .len(300)
            .progress_bar(true);
        let (mut slept, mut failed) = (0, 0);
        loop {
            tokio::select! {
                next = results.next() => match next {
                    Some(Ok(ms)) => slept += ms,
                    // A failed task (say, its worker was killed from outside) fails alone.
                    Some(Err(e)) => {
                        eprintln!("{e}");
                        failed += 1;
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        println!("round {round}: the workers slept {slept} ms; {failed} tasks failed");
    }
    dashboard.stop().await;
    pool.shutdown().await?;
    Ok(())
}
