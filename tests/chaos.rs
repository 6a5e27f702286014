//! Chaos: timeouts, crashes, retries and panics mixed in one stream. Every input yields exactly
//! one outcome, of its own kind; no healthy input fails or runs twice; the pool serves after.
mod common;
use std::time::Duration;

use common::*;
use futures_util::{StreamExt, stream};

const TASKS: u64 = 600;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Runs past its deadline.
    Hang,
    /// Kills its worker the first time only: the retry answers.
    KillOnce,
    /// Kills every worker it runs on: poison, after `max_retries + 1` deaths.
    KillAlways,
    Abort,
    Panic,
}

/// What input `x` does: `None` is a healthy task. Process faults only where workers are
/// processes.
fn fault(x: u64, processes: bool) -> Option<Fault> {
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40;
    let f = match h % 41 {
        0 if x % 4 == 0 => Fault::Hang,
        1 => Fault::KillOnce,
        2 => Fault::KillAlways,
        3 => Fault::Abort,
        4 | 5 => Fault::Panic,
        _ => return None,
    };
    (processes || matches!(f, Fault::Hang | Fault::Panic)).then_some(f)
}

fn chaos(w: &mut Worker<'_>, (x, processes, log): (u64, bool, String)) -> u64 {
    let before = runs_of(&log, x);
    record_run(&log, x);
    match fault(x, processes) {
        Some(Fault::Hang) => {
            while !w.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Some(Fault::KillOnce) if before == 0 => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        Some(Fault::KillAlways) => {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        Some(Fault::Abort) => std::process::abort(),
        Some(Fault::Panic) => panic!("input {x} panics"),
        _ => {}
    }
    x * 3
}

fn triple(x: u64) -> u64 {
    x * 3
}

each_method! {
    async fn every_input_gets_exactly_one_outcome_of_its_own_kind(m: StartMethod) {
        let processes = m.is_process();
        let log = RunLog::new(&format!("chaos-{m}"));
        let path = log.path();
        // A panic's backtrace is symbolised in the worker, within the task's time: the first
        // in a fresh worker of this debug build reads its debug info, which on a loaded machine
        // takes a few hundred milliseconds. The timeout leaves room for it.
        let pool = AsyncPool::builder().workers(2).start_method(m)
            .task_timeout(Duration::from_secs(1)).max_retries(1).build().await.unwrap();
        let inputs = stream::iter((0..TASKS).map(|x| (x, processes, path.clone())));
        let out: Vec<Result<u64, Error>> = pool.map_stream_with(chaos, inputs).collect().await;
        assert_eq!(out.len(), TASKS as usize);
        let runs = log.runs(TASKS as usize);
        let mut seen = std::collections::HashMap::new();
        for (x, r) in out.into_iter().enumerate() {
            let f = fault(x as u64, processes);
            *seen.entry(format!("{f:?}")).or_insert(0) += 1;
            let (ok, runs_wanted) = match (f, &r) {
                (None, Ok(v)) => (*v == x as u64 * 3, 1),
                (Some(Fault::KillOnce), Ok(v)) => (*v == x as u64 * 3, 2),
                (Some(Fault::Hang), Err(e)) => (e.is_timeout() && e.task_index() == Some(x), 1),
                (Some(Fault::Panic), Err(e)) => (e.is_panic() && e.task_index() == Some(x), 1),
                (Some(Fault::KillAlways), Err(e)) => {
                    (e.signal() == Some(libc::SIGKILL) && e.workers_killed() == 2 && e.task_index() == Some(x), 2)
                }
                (Some(Fault::Abort), Err(e)) => {
                    (e.signal() == Some(libc::SIGABRT) && e.workers_killed() == 2 && e.task_index() == Some(x), 2)
                }
                _ => (false, 0),
            };
            assert!(ok, "input {x} ({f:?}): {r:?}");
            assert_eq!(runs[x], runs_wanted, "input {x} ({f:?}) ran {} times", runs[x]);
        }
        // Every kind of fault took part.
        let kinds = if processes { 6 } else { 3 };
        assert_eq!(seen.len(), kinds, "{seen:?}");
        // And the pool serves afterwards, with all its workers.
        assert_eq!(pool.map(triple, 0..1000u64).await.unwrap(), (0..1000).map(triple).collect::<Vec<_>>());
        pool.shutdown().await.unwrap();
    }
}
