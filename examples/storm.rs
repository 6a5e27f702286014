//! Run with: cargo run --release --example storm
//!
//! A storm of failures: 10,000 tasks through `map_stream` with default chunking, about 2% of them
//! faulty (a panic, `abort()`, SIGSEGV, SIGKILL or `exit(3)`), under each process start method.
//! Prints how many healthy inputs failed, how many results were lost, how many tasks ran twice,
//! and how many faulty inputs got an error of their own kind with their own index.

use std::fs::File;
use std::io::{Read, Write};
use std::time::Instant;

use ampire::{AsyncPool, Error, StartMethod};
use futures_util::StreamExt;

const TASKS: u64 = 10_000;

/// What input `x` does: `None` is a healthy task.
fn fault(x: u64) -> Option<u64> {
    // About one input in 45, spread by a multiplicative hash; the kind cycles through five.
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    (h % 45 == 0).then_some(h / 45 % 5)
}

/// The task: a faulty input misbehaves; a healthy one records that it ran, then answers.
fn task((x, log): (u64, String)) -> u64 {
    use nix::sys::signal::{SigHandler, Signal, raise, signal};
    match fault(x) {
        Some(0) => panic!("input {x} panics"),
        Some(1) => std::process::abort(),
        Some(2) => {
            // As a segfault does: std's handler (inherited by forked workers) lets a raised
            // SIGSEGV return unless the default action is back in place.
            // SAFETY: installing the default action runs no code in signal context.
            let _ = unsafe { signal(Signal::SIGSEGV, SigHandler::SigDfl) };
            let _ = raise(Signal::SIGSEGV);
        }
        Some(3) => {
            let _ = raise(Signal::SIGKILL);
        }
        Some(_) => std::process::exit(3),
        None => {}
    }
    // One `write` of 8 bytes to an `O_APPEND` file: records from both workers never interleave.
    let mut f = File::options()
        .append(true)
        .open(&log)
        .expect("the run log");
    f.write_all(&x.to_le_bytes()).expect("a record");
    x * 2
}

/// Whether `e` is the error input `x`'s own fault should give.
fn attributed(x: u64, kind: u64, e: &Error) -> bool {
    let own = match kind {
        0 => e.is_panic() && e.panic_message() == Some(&format!("input {x} panics")),
        1 => e.signal() == Some(libc::SIGABRT),
        2 => e.signal() == Some(libc::SIGSEGV),
        3 => e.signal() == Some(libc::SIGKILL),
        _ => e.exit_code() == Some(3),
    };
    own && e.task_index() == Some(x as usize)
}

fn main() -> Result<(), Error> {
    ampire::init();
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    rt.block_on(async {
        let faulty = (0..TASKS).filter(|&x| fault(x).is_some()).count();
        println!("{TASKS} tasks, {faulty} faulty, default chunking, 2 workers\n");
        println!(
            "| method | healthy failed | lost | ran twice | faulty attributed | time |"
        );
        println!("|---|---|---|---|---|---|");
        for method in [StartMethod::Spawn, StartMethod::Fork, StartMethod::Forkserver] {
            let log = std::env::temp_dir().join(format!("ampire-storm-{}", std::process::id()));
            File::create(&log).expect("the run log");
            let log_path = log.to_str().expect("a UTF-8 path").to_owned();
            let pool = AsyncPool::builder()
                .workers(2)
                .start_method(method)
                .build()
                .await?;
            let t = Instant::now();
            let inputs = futures_util::stream::iter((0..TASKS).map(|x| (x, log_path.clone())));
            let results: Vec<Result<u64, Error>> = pool.map_stream(task, inputs).collect().await;
            let took = t.elapsed();
            pool.shutdown().await?;

            let (mut healthy_failed, mut attributed_ok) = (0, 0);
            for (x, r) in results.iter().enumerate() {
                let x = x as u64;
                match (fault(x), r) {
                    (None, Ok(v)) => assert_eq!(*v, x * 2),
                    (None, Err(_)) => healthy_failed += 1,
                    (Some(kind), Err(e)) if attributed(x, kind, e) => attributed_ok += 1,
                    (Some(kind), r) => {
                        if std::env::var_os("STORM_DEBUG").is_some() {
                            eprintln!("{method} {x} kind {kind}: {r:?}");
                        }
                    }
                }
            }
            let lost = TASKS as usize - results.len();
            let mut bytes = Vec::new();
            File::open(&log)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .expect("the run log");
            let _ = std::fs::remove_file(&log);
            let mut runs = vec![0u32; TASKS as usize];
            for rec in bytes.chunks_exact(8) {
                runs[u64::from_le_bytes(rec.try_into().unwrap()) as usize] += 1;
            }
            let twice = runs.iter().filter(|&&n| n > 1).count();
            println!(
                "| {method} | {healthy_failed} of {} | {lost} | {twice} | {attributed_ok} of {faulty} | {:.0} ms |",
                TASKS as usize - faulty,
                took.as_secs_f64() * 1e3
            );
        }
        Ok(())
    })
}
