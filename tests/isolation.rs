//! Only the guilty task fails. A worker that dies while running task k of a chunk: the tasks of
//! the chunk that finished deliver their results, task k alone gets the death (with the signal
//! or exit status, its index and its input), and the tasks after k run again elsewhere. Nothing
//! is lost, and nothing that finished runs twice. Serialisation failures fail their task alone.
mod common;
use std::future::IntoFuture;

use common::*;
use futures_util::{StreamExt, stream};

/// What input `x` of the storm does: `None` is a healthy task.
fn fault(x: u64) -> Option<u64> {
    let h = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    (h % 45 == 0).then_some(h / 45 % 5)
}

/// A storm task: a faulty input misbehaves; a healthy one records that it ran, then answers.
fn storm_task((x, log): (u64, String)) -> u64 {
    use nix::sys::signal::{SigHandler, Signal, raise, signal};
    match fault(x) {
        Some(0) => panic!("input {x} panics"),
        Some(1) => std::process::abort(),
        Some(2) => {
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
    record_run(&log, x);
    x * 2
}

fn is_own_error(x: u64, e: &Error) -> bool {
    let kind = match fault(x).unwrap() {
        0 => e.is_panic() && e.panic_message() == Some(format!("input {x} panics").as_str()),
        1 => e.signal() == Some(libc::SIGABRT),
        2 => e.signal() == Some(libc::SIGSEGV),
        3 => e.signal() == Some(libc::SIGKILL),
        _ => e.exit_code() == Some(3),
    };
    let input = format!("({x}, ");
    kind && e.task_index() == Some(x as usize) && e.input().is_some_and(|i| i.starts_with(&input))
}

/// Checks a storm's outcomes: every healthy input answered once, ran once; every faulty one
/// failed with its own error.
fn check_storm(
    m: StartMethod,
    what: &str,
    n: usize,
    results: &[(usize, Result<u64, Error>)],
    log: &RunLog,
) {
    assert_eq!(results.len(), n, "{m} {what}: results lost");
    let mut seen = vec![false; n];
    for (x, r) in results {
        assert!(
            !std::mem::replace(&mut seen[*x], true),
            "{m} {what}: input {x} answered twice"
        );
        let x = *x as u64;
        match (fault(x), r) {
            (None, Ok(v)) => assert_eq!(*v, x * 2),
            (None, Err(e)) => panic!("{m} {what}: healthy input {x} failed: {e}"),
            (Some(_), Err(e)) => assert!(is_own_error(x, e), "{m} {what}: input {x} got {e}"),
            (Some(_), Ok(_)) => panic!("{m} {what}: faulty input {x} succeeded"),
        }
    }
    for (x, runs) in log.runs(n).into_iter().enumerate() {
        let want = u32::from(fault(x as u64).is_none());
        assert_eq!(runs, want, "{m} {what}: input {x} ran {runs} times");
    }
}

fn storm_inputs(n: u64, log: &RunLog) -> impl Iterator<Item = (u64, String)> + use<> {
    let path = log.path();
    (0..n).map(move |x| (x, path.clone()))
}

/// A tiny task that kills its worker every 250 inputs.
fn tiny_or_kill(x: u64) -> u64 {
    if x % 250 == 125 {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    x + 1
}

/// An input whose serialisation fails when it is 13: a value that cannot leave the owner.
#[derive(Debug, serde::Deserialize)]
struct Picky(u64);

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("thirteen stays here"));
        }
        s.serialize_u64(self.0)
    }
}

fn unpick(p: Picky) -> u64 {
    p.0
}

fn pick(x: u64) -> Picky {
    Picky(x)
}

fn square(x: u64) -> u64 {
    x * x
}

each_method! {
    processes async fn a_storm_of_crashes_fails_only_the_guilty_inputs(m: StartMethod) {
        const N: usize = 2_000;
        let pool = pool(m, 2).await;
        // Both streams, default chunking.
        for ordered in [true, false] {
            let log = RunLog::new(&format!("{m}-stream-{ordered}"));
            let inputs = stream::iter(storm_inputs(N as u64, &log));
            let results: Vec<Result<u64, Error>> = match ordered {
                true => pool.map_stream(storm_task, inputs).collect().await,
                false => pool.map_stream_unordered(storm_task, inputs).collect().await,
            };
            // Unordered results are matched to their input by value or error index.
            let indexed: Vec<(usize, Result<u64, Error>)> = results
                .into_iter()
                .enumerate()
                .map(|(i, r)| match (&r, ordered) {
                    (_, true) => (i, r),
                    (Ok(v), false) => ((v / 2) as usize, r),
                    (Err(e), false) => (e.task_index().unwrap(), r),
                })
                .collect();
            check_storm(m, if ordered { "map_stream" } else { "map_stream_unordered" }, N, &indexed, &log);
        }
        // Fixed chunks, and an input of unknown length (adaptive chunks).
        for chunk in [Some(1), Some(7), None] {
            let log = RunLog::new(&format!("{m}-chunk-{chunk:?}"));
            let inputs = stream::iter(storm_inputs(N as u64, &log).filter(|_| true));
            let call = pool.map_stream(storm_task, inputs);
            let call = match chunk {
                Some(c) => call.chunk_size(c),
                None => call,
            };
            let results: Vec<(usize, Result<u64, Error>)> = call.collect::<Vec<_>>().await.into_iter().enumerate().collect();
            check_storm(m, &format!("chunks of {chunk:?}"), N, &results, &log);
        }
        pool.shutdown().await.unwrap();
    }

    processes async fn map_and_apply_report_the_guilty_input(m: StartMethod) {
        let pool = pool(m, 2).await;
        // The first faulty input of the storm, and a map that fails fast at it.
        let first = (0..2_000u64).find(|&x| fault(x).is_some()).unwrap();
        let log = RunLog::new(&format!("{m}-map"));
        for ordered in [true, false] {
            let call = match ordered {
                true => pool.map(storm_task, storm_inputs(2_000, &log)),
                false => pool.map_unordered(storm_task, storm_inputs(2_000, &log)),
            };
            let e = call.await.unwrap_err();
            let x = e.task_index().unwrap() as u64;
            assert!(fault(x).is_some() && is_own_error(x, &e), "{m}: {e}");
            if ordered {
                assert!(x >= first, "{m}: {e}");
            }
        }
        for x in (0..200u64).filter(|&x| fault(x).is_some()) {
            let e = pool.apply(storm_task, (x, log.path())).await.unwrap_err();
            assert!(e.task_index() == Some(0) && e.input().is_some(), "{m}: {e}");
        }
        // The pool serves on.
        assert_eq!(pool.map(square, 0..1_000u64).await.unwrap(), (0..1_000).map(square).collect::<Vec<_>>());
        pool.shutdown().await.unwrap();
    }

    processes async fn crashes_among_tiny_tasks_whose_results_the_worker_holds(m: StartMethod) {
        // Tiny tasks one per job: a worker holds their results a little to send many in one
        // write, and dies with some of them unsent; its journal has them.
        let pool = pool(m, 2).await;
        for _ in 0..3 {
            let out: Vec<Result<u64, Error>> =
                pool.map_stream(tiny_or_kill, stream::iter(0..5_000u64)).chunk_size(1).collect().await;
            assert_eq!(out.len(), 5_000);
            for (i, r) in out.iter().enumerate() {
                match i % 250 {
                    125 => assert_eq!(r.as_ref().unwrap_err().signal(), Some(9), "task {i}"),
                    _ => assert_eq!(*r.as_ref().unwrap(), i as u64 + 1, "task {i}"),
                }
            }
        }
        pool.shutdown().await.unwrap();
    }

    processes async fn sigkill_at_task_5_of_chunks_of_4_fails_task_5_alone(m: StartMethod) {
        // Task 5 is the second of the chunk 4..8: task 4 had finished (it delivers), 6 and 7
        // run again on a worker.
        let pool = pool(m, 2).await;
        let out: Vec<Result<u64, Error>> = pool.map_stream(kill_self_at_5, stream::iter(0..12u64)).chunk_size(4).collect().await;
        for (i, r) in out.iter().enumerate() {
            match i {
                5 => {
                    let e = r.as_ref().unwrap_err();
                    assert!(e.is_worker_died() && e.signal() == Some(9), "{e}");
                    assert_eq!((e.task_index(), e.input()), (Some(5), Some("5")), "{e}");
                    let text = e.to_string();
                    assert!(text.contains("was killed by signal 9 (SIGKILL), peak RSS "), "{e}");
                    assert!(text.contains(" while running a task (task 5, input: 5)"), "{e}");
                }
                _ => assert_eq!(*r.as_ref().unwrap(), i as u64, "task {i}"),
            }
        }
        pool.shutdown().await.unwrap();
    }

    processes async fn a_worker_killed_from_outside_fails_its_running_task_alone(m: StartMethod) {
        let pool = pool(m, 2).await;
        let sig = Signal::new();
        let path = sig.path.to_str().unwrap().to_owned();
        let hung = tokio::spawn(pool.apply(announce_then_hang, path).into_future());
        let victim = sig.recv().await;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        let e = hung.await.unwrap().unwrap_err();
        assert!(e.is_worker_died() && e.signal() == Some(9) && e.task_index() == Some(0), "{e}");
        assert!(e.input().is_some_and(|i| i.contains("ampire-test")), "{e}");
        assert_eq!(pool.map(square, 0..100u64).await.unwrap().len(), 100);
        pool.shutdown().await.unwrap();
    }

    async fn an_input_that_does_not_serialise_fails_alone(m: StartMethod) {
        let pool = pool(m, 2).await;
        let out: Vec<Result<u64, Error>> = pool.map_stream(unpick, stream::iter((0..2_000).map(Picky))).collect().await;
        for (i, r) in out.into_iter().enumerate() {
            match (i, m.is_process()) {
                (13, true) => {
                    let e = r.unwrap_err();
                    assert!(e.is_codec() && e.task_index() == Some(13) && e.input() == Some("Picky(13)"), "{e}");
                }
                _ => assert_eq!(r.unwrap(), i as u64),
            }
        }
        pool.shutdown().await.unwrap();
    }

    async fn a_result_that_does_not_serialise_fails_alone_and_the_worker_serves_on(m: StartMethod) {
        let pool = pool(m, 2).await;
        let pids = pool.worker_pids();
        let out: Vec<Result<Picky, Error>> = pool.map_stream(pick, stream::iter(0..2_000u64)).collect().await;
        for (i, r) in out.into_iter().enumerate() {
            match (i, m.is_process()) {
                (13, true) => {
                    let e = r.unwrap_err();
                    assert!(e.is_codec() && e.task_index() == Some(13) && e.input() == Some("13"), "{e}");
                    assert!(e.to_string().contains("could not serialise the result"), "{e}");
                }
                _ => assert_eq!(r.unwrap().0, i as u64),
            }
        }
        assert_eq!(pool.worker_pids(), pids, "no worker was replaced");
        pool.shutdown().await.unwrap();
    }

    async fn a_small_max_frame_len_splits_chunks_and_result_batches(m: StartMethod) {
        // Every input and result is 1 to 3 bytes: the chunks and batches the pool makes must fit.
        let pool = AsyncPool::builder().workers(2).start_method(m).max_frame_len(1024).build().await.unwrap();
        let want: Vec<u64> = (0..1_000u64).map(square).collect();
        assert_eq!(pool.map(square, 0..1_000u64).await.unwrap(), want);
        assert_eq!(pool.map(square, (0..1_000u64).filter(|_| true)).chunk_size(900).await.unwrap(), want);
        pool.shutdown().await.unwrap();
    }
}

fn announce_then_hang(path: String) -> u64 {
    signal(&path);
    park_forever()
}
