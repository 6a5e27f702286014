//! Task timeouts, with MPIRE's `TimeoutTest` ported: the clock starts when a task starts; a task
//! past its deadline fails alone with `is_timeout()`, its index and input, and the pool goes on.
//! Under process methods only its worker is killed and replaced; under `Threading` the task is
//! abandoned, sees `is_cancelled()`, and a fresh thread takes its place.
mod common;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{StreamExt, stream};

const MS: Duration = Duration::from_millis(1);

fn double(x: u64) -> u64 {
    x * 2
}

/// Runs until its deadline passed: forever in a process worker (which is killed), until
/// `is_cancelled()` under `Threading`.
fn until_cancelled(w: &mut Worker<'_>) {
    while !w.is_cancelled() {
        std::thread::sleep(MS);
    }
}

/// Input 5 runs past any deadline; the others double.
fn hang_at_5(w: &mut Worker<'_>, x: u64) -> u64 {
    if x == 5 {
        until_cancelled(w);
    }
    x * 2
}

fn hang(w: &mut Worker<'_>, _: u64) -> u64 {
    until_cancelled(w);
    0
}

/// MPIRE's `_f2`: sleeps a second.
fn sleep_a_second(x: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(1));
    x
}

/// MPIRE's `_f3`: even inputs answer at once, odd ones sleep a second.
fn odd_ones_sleep(x: u64) -> u64 {
    if x % 2 == 1 {
        std::thread::sleep(Duration::from_secs(1));
    }
    x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn pid(_: u64) -> u32 {
    std::process::id()
}

/// Tells the test that the task saw `is_cancelled()` turn true, once it did.
fn report_cancel(w: &mut Worker<'_>, path: String) -> u64 {
    until_cancelled(w);
    signal(&path);
    0
}

/// Tells the test it started, then as `report_cancel`.
fn announce_then_report_cancel(w: &mut Worker<'_>, path: String) -> u64 {
    signal(&path);
    report_cancel(w, path)
}

/// `e` is the timeout of task `index`, whose input is `input`, after `limit`. (Under
/// `Threading` the input was moved into the task: the error cannot show it.)
fn check_timeout(m: StartMethod, e: &Error, index: usize, input: u64, limit: Duration) {
    assert!(e.is_timeout(), "{e}");
    assert!(!e.is_worker_died() && !e.is_panic(), "{e}");
    assert_eq!(e.task_index(), Some(index), "{e}");
    let want = m.is_process().then(|| input.to_string());
    assert_eq!(e.input(), want.as_deref(), "{e}");
    assert!(e.to_string().contains("timed out after"), "{e}");
    assert!(
        e.to_string().contains(&format!("(timeout {limit:?})")),
        "{e}"
    );
}

each_method! {
    async fn a_task_past_its_deadline_fails_alone(m: StartMethod) {
        let limit = 300 * MS;
        let pool = AsyncPool::builder().workers(2).start_method(m).task_timeout(limit).build().await.unwrap();
        // A chunk of four with the hanging task in the middle: the two before it deliver, the
        // one after it runs again elsewhere.
        let t = Instant::now();
        let out: Vec<Result<u64, Error>> = pool.map_stream_with(hang_at_5, stream::iter(0..12u64)).chunk_size(4).collect().await;
        assert!(t.elapsed() >= limit);
        for (i, r) in out.iter().enumerate() {
            match i {
                5 => check_timeout(m, r.as_ref().unwrap_err(), 5, 5, limit),
                _ => assert_eq!(r.as_ref().unwrap(), &(i as u64 * 2), "task {i}"),
            }
        }
        // The pool keeps serving, with both workers.
        assert_eq!(pool.map(double, 0..100u64).await.unwrap(), (0..100).map(double).collect::<Vec<_>>());
        pool.shutdown().await.unwrap();
    }

    async fn queueing_time_never_counts(m: StartMethod) {
        // One worker, blocked; a task with a short timeout waits behind it for longer than its
        // timeout, then runs well within it.
        let pool = AsyncPool::builder().workers(1).start_method(m).build().await.unwrap();
        let sig = Signal::new();
        let gate = gate_path(m, 0);
        let first = tokio::spawn(pool.apply(blocked, (sig.path.to_str().unwrap().to_owned(), gate.clone())).into_future());
        sig.recv().await;
        let second = tokio::spawn(pool.apply(sleep_ms, 20).task_timeout(200 * MS).into_future());
        tokio::time::sleep(500 * MS).await; // longer than the timeout, spent in the queue
        release(&gate);
        assert_eq!(first.await.unwrap().unwrap(), 0);
        assert_eq!(second.await.unwrap().unwrap(), 20);
        pool.shutdown().await.unwrap();
    }

    async fn the_calls_timeout_overrides_the_pools(m: StartMethod) {
        let pool = AsyncPool::builder().workers(1).start_method(m).task_timeout(Duration::from_secs(60)).build().await.unwrap();
        let e = pool.apply_with(hang, 0).task_timeout(100 * MS).await.unwrap_err();
        check_timeout(m, &e, 0, 0, 100 * MS);
        let e = pool.map_with(hang_at_5, 0..8u64).task_timeout(100 * MS).await.unwrap_err();
        check_timeout(m, &e, 5, 5, 100 * MS);
        let pool = AsyncPool::builder().workers(1).start_method(m).task_timeout(50 * MS).build().await.unwrap();
        assert_eq!(pool.apply(sleep_ms, 150).task_timeout(Duration::from_secs(60)).await.unwrap(), 150);
        check_timeout(m, &pool.apply(sleep_ms, 150).await.unwrap_err(), 0, 150, 50 * MS);
    }

    /// MPIRE's `test_worker_task_timeout`: well below the timeout, and past it in map, imap and
    /// apply.
    async fn mpire_task_timeout(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).build().await.unwrap();
        let data = vec![1u64, 2, 3];
        assert_eq!(pool.map(double, data.clone()).task_timeout(Duration::from_secs(100)).await.unwrap(), vec![2, 4, 6]);
        assert!(pool.map(sleep_a_second, data.clone()).task_timeout(10 * MS).await.unwrap_err().is_timeout());
        let mut s = pool.map_stream(sleep_a_second, stream::iter(data.clone())).task_timeout(10 * MS);
        assert!(s.next().await.unwrap().unwrap_err().is_timeout());
        drop(s);
        assert!(pool.apply(sleep_a_second, 1).task_timeout(10 * MS).await.unwrap_err().is_timeout());
        assert_eq!(pool.map(double, data).await.unwrap(), vec![2, 4, 6]);
    }

    /// MPIRE's `test_apply_async_multiple_task_timeout`: some applies time out, the others do not
    /// notice, and the pool goes on.
    async fn mpire_apply_async_multiple_task_timeout(m: StartMethod) {
        let pool = AsyncPool::builder().workers(3).start_method(m).build().await.unwrap();
        let calls: Vec<_> = (0..6u64)
            .map(|i| tokio::spawn(pool.apply(odd_ones_sleep, i).task_timeout(100 * MS).into_future()))
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let r = c.await.unwrap();
            match i % 2 {
                0 => assert_eq!(r.unwrap(), i as u64),
                _ => assert!(r.unwrap_err().is_timeout(), "apply {i}"),
            }
        }
        assert_eq!(pool.apply(double, 21).await.unwrap(), 42);
    }

    processes async fn only_the_worker_running_the_task_is_replaced(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).order_tasks(true).task_timeout(200 * MS).build().await.unwrap();
        let before = pool.worker_pids();
        // `order_tasks`: chunk 0 runs on worker 0, chunk 1 on worker 1.
        let out: Vec<Result<u64, Error>> = pool.map_stream_with(hang_at_5, stream::iter([5u64, 1])).chunk_size(1).collect().await;
        assert!(out[0].as_ref().unwrap_err().is_timeout());
        assert_eq!(out[1].as_ref().unwrap(), &2);
        let after = pool.worker_pids();
        assert_ne!(after[0], before[0]);
        assert_eq!(after[1], before[1]);
        wait_gone(before[0].unwrap()).await;
        pool.shutdown().await.unwrap();
    }

    // A process worker is killed instead: see the test above.
    threading async fn a_timed_out_task_sees_is_cancelled_under_threading(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).task_timeout(100 * MS).build().await.unwrap();
        let sig = Signal::new();
        let path = sig.path.to_str().unwrap().to_owned();
        let e = pool.apply_with(report_cancel, path).await.unwrap_err();
        assert!(e.is_timeout());
        sig.recv().await; // the abandoned task saw is_cancelled() and stopped
        // The slot has a fresh thread: two tasks still run side by side.
        let (a, b) = (gate_path(m, 1), gate_path(m, 2));
        let announce = sig.path.to_str().unwrap().to_owned();
        let first = tokio::spawn(pool.apply(blocked, (announce.clone(), a.clone())).task_timeout(Duration::from_secs(60)).into_future());
        let second = tokio::spawn(pool.apply(blocked, (announce, b.clone())).task_timeout(Duration::from_secs(60)).into_future());
        sig.recv().await;
        sig.recv().await;
        release(&a);
        release(&b);
        assert_eq!(first.await.unwrap().unwrap() + second.await.unwrap().unwrap(), 0);
        pool.shutdown().await.unwrap();
    }

    async fn a_zero_timeout_is_a_config_error(m: StartMethod) {
        let e = AsyncPool::builder().workers(1).start_method(m).task_timeout(Duration::ZERO).build().await.unwrap_err();
        assert!(e.is_config(), "{e}");
        let pool = pool(m, 1).await;
        assert!(pool.apply(pid, 0).task_timeout(Duration::ZERO).await.unwrap_err().is_config());
    }
}

fn quick_init(_: &Worker<'_>) -> u64 {
    0
}

/// MPIRE's `_init2`: sleeps a second.
fn slow_init(_: &Worker<'_>) -> u64 {
    std::thread::sleep(Duration::from_secs(1));
    0
}

/// Hangs when the file named by the shared object exists: replacements only, in the test below.
fn init_hangs_if_marked(w: &Worker<'_, String>) -> u64 {
    if std::path::Path::new(w.shared()).exists() {
        until_cancelled_init(w);
    }
    0
}

fn until_cancelled_init(w: &Worker<'_, String>) {
    while !w.is_cancelled() {
        std::thread::sleep(MS);
    }
}

fn slow_exit(_: &mut Worker<'_, (), u64>) -> u64 {
    std::thread::sleep(Duration::from_secs(1));
    1
}

fn quick_exit(_: &mut Worker<'_, (), u64>) -> u64 {
    1
}

/// Runs until the pool gives up on it: killed, or told under `Threading`.
fn exit_until_cancelled(w: &mut Worker<'_, (), u64>) -> u64 {
    while !w.is_cancelled() {
        std::thread::sleep(MS);
    }
    1
}

fn own_pid(_: &mut Worker<'_, (), u64>, _: u64) -> u32 {
    std::process::id()
}

fn pid_with(_: &mut Worker<'_, String, u64>, _: u64) -> u32 {
    std::process::id()
}

each_method! {
    /// MPIRE's `test_worker_init_timeout`: well below the timeout, and past it. In ampire
    /// `worker_init` runs when the pool is built, so that is where it fails.
    async fn mpire_worker_init_timeout(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).worker_init(quick_init)
            .worker_init_timeout(Duration::from_secs(100)).build().await.unwrap();
        assert_eq!(pool.map(double, vec![1u64, 2, 3]).await.unwrap(), vec![2, 4, 6]);
        let t = Instant::now();
        let e = AsyncPool::builder().workers(2).start_method(m).worker_init(slow_init)
            .worker_init_timeout(10 * MS).build().await.unwrap_err();
        assert!(e.is_timeout() && e.is_init(), "{e}");
        assert!(e.to_string().contains("worker_init on worker"), "{e}");
        // Not retried in build(): it fails at the first deadline.
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    /// MPIRE's `test_worker_exit_timeout`: well below the timeout, and past it.
    async fn mpire_worker_exit_timeout(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).worker_init(quick_init)
            .worker_exit(quick_exit).worker_exit_timeout(Duration::from_secs(100)).build().await.unwrap();
        assert_eq!(pool.map(double, vec![1u64, 2, 3]).await.unwrap(), vec![2, 4, 6]);
        assert_eq!(pool.shutdown().await.unwrap(), vec![1, 1]);
        let pool = AsyncPool::builder().workers(2).start_method(m).worker_init(quick_init)
            .worker_exit(slow_exit).worker_exit_timeout(10 * MS).build().await.unwrap();
        assert_eq!(pool.map(double, vec![1u64, 2, 3]).await.unwrap(), vec![2, 4, 6]);
        let pids = pool.worker_pids();
        let e = pool.shutdown().await.unwrap_err();
        assert!(e.is_timeout() && !e.is_init(), "{e}");
        assert!(e.to_string().contains("worker_exit on worker"), "{e}");
        for pid in pids.into_iter().flatten() {
            wait_gone(pid).await; // no worker is left behind
        }
    }

    async fn a_hung_exit_never_hangs_shutdown(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).worker_init(quick_init)
            .worker_exit(exit_until_cancelled).worker_exit_timeout(100 * MS).build().await.unwrap();
        let e = pool.shutdown().await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
    }

    async fn shutdown_timeout_is_bounded_whatever_the_tasks_do(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).build().await.unwrap();
        let pids = pool.worker_pids();
        let sig = Signal::new();
        let path = sig.path.to_str().unwrap().to_owned();
        let hung = tokio::spawn(pool.apply_with(announce_then_report_cancel, path).into_future());
        sig.recv().await; // it runs
        let t = Instant::now();
        let e = pool.shutdown_timeout(200 * MS).await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(e.to_string(), "shutdown timed out (timeout 200ms)");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(hung.await.unwrap().unwrap_err().is_closed());
        match m.is_process() {
            true => {
                for pid in pids.into_iter().flatten() {
                    wait_gone(pid).await;
                }
            }
            false => drop(sig.recv().await), // the thread's task saw is_cancelled()
        }
    }

    processes async fn shutdown_timeout_stops_a_retired_worker_whose_exit_hangs(m: StartMethod) {
        // Lifespan 1: the first worker retires after its task, and its exit never ends.
        let pool = AsyncPool::builder().workers(1).start_method(m).worker_init(quick_init)
            .worker_exit(exit_until_cancelled).worker_lifespan(1).build().await.unwrap();
        let retired = pool.apply_with(own_pid, 0).await.unwrap();
        let e = pool.shutdown_timeout(300 * MS).await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        wait_gone(retired).await; // killed with the others, not left running its exit
    }

    async fn shutdown_timeout_returns_the_exit_results_when_in_time(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).worker_init(quick_init)
            .worker_exit(quick_exit).build().await.unwrap();
        assert_eq!(pool.shutdown_timeout(Duration::from_secs(60)).await.unwrap(), vec![1, 1]);
    }

    processes async fn a_replacement_whose_init_times_out_counts_toward_the_breaker(m: StartMethod) {
        let marker = gate_path(m, 7);
        let pool = AsyncPool::builder().workers(1).start_method(m).shared(marker.clone())
            .worker_init(init_hangs_if_marked).worker_init_timeout(50 * MS).build().await.unwrap();
        let victim = pool.apply_with(pid_with, 0).await.unwrap();
        std::fs::write(&marker, b"").unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_gone(victim).await;
        // The replacement's init times out five times in a row: the pool breaks, and says why.
        let e = pool.apply_with(pid_with, 0).await.unwrap_err();
        let _ = std::fs::remove_file(&marker);
        assert!(e.is_timeout() && e.is_init(), "{e}");
        assert!(e.to_string().contains("failed to start 5 times in a row"), "{e}");
    }
}
