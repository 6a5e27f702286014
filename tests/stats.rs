//! `AsyncPool::stats()`: counts of tasks by outcome, workers replaced by cause, how busy the
//! workers are, and time distributions, as a live snapshot.
mod common;
use std::future::IntoFuture;
use std::time::Duration;

use common::*;
use futures_util::{StreamExt, stream};

fn double(x: u64) -> u64 {
    x * 2
}

fn panics_on_odd(x: u64) -> u64 {
    assert!(x % 2 == 0, "odd");
    x
}

fn busy_ms(ms: u64) -> u64 {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_millis(ms) {}
    ms
}

fn hang(w: &mut Worker<'_>, _: u64) -> u64 {
    while !w.is_cancelled() {
        std::thread::sleep(Duration::from_millis(1));
    }
    0
}

fn kill_self(_: u64) -> u64 {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    0
}

each_method! {
    async fn tasks_are_counted_by_outcome(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).build().await.unwrap();
        assert_eq!(pool.stats().done, 0);
        pool.map(double, 0..1000u64).await.unwrap();
        let out: Vec<_> = pool.map_stream(panics_on_odd, stream::iter(0..100u64)).collect().await;
        assert_eq!(out.iter().filter(|r| r.is_err()).count(), 50);
        let s = pool.stats();
        assert_eq!((s.done, s.failed, s.timed_out), (1050, 50, 0), "{s}");
        assert_eq!((s.queued, s.in_flight), (0, 0));
        assert!(s.end_to_end.count() > 0 && s.waiting.count() > 0, "{s}");
        assert!(s.utilisation > 0.0 && s.utilisation <= 1.0, "{s}");
        assert!(s.to_string().contains("1050 done, 50 failed"), "{s}");
        pool.shutdown().await.unwrap();
    }

    async fn tasks_that_never_queue_show_little_waiting(m: StartMethod) {
        // One at a time on an idle pool: each task starts as soon as it is sent.
        let pool = AsyncPool::builder().workers(2).start_method(m).build().await.unwrap();
        for _ in 0..8 {
            pool.apply(busy_ms, 40u64).await.unwrap();
        }
        let s = pool.stats();
        let (waiting, running) = (s.waiting.mean().unwrap(), s.running.mean().unwrap());
        assert!(running >= Duration::from_millis(40), "{s}");
        assert!(waiting < Duration::from_millis(10), "waiting {waiting:?}, running {running:?}: {s}");
        pool.shutdown().await.unwrap();
    }

    async fn busy_workers_show_in_utilisation_and_running_time(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).build().await.unwrap();
        let idle = pool.stats().utilisation;
        pool.map(busy_ms, vec![20u64; 20]).chunk_size(1).await.unwrap();
        let s = pool.stats();
        assert!(s.busy >= Duration::from_millis(400), "{s}");
        assert!(s.utilisation > idle, "{s}");
        // Twenty tasks of 20 ms: the median running time is in the bucket that holds 20 ms.
        let median = s.running.quantile(0.5).unwrap();
        assert!(median >= Duration::from_millis(20) && median <= Duration::from_millis(64), "{s}");
        // Each chunk of a task this long is timed end to end.
        assert_eq!(s.end_to_end.count(), 20, "{s}");
    }

    async fn queued_and_in_flight_are_counted_live(m: StartMethod) {
        let pool = AsyncPool::builder().workers(1).start_method(m).pipeline_depth(1).build().await.unwrap();
        let sig = Signal::new();
        let gate = gate_path(m, 0);
        let blocked = tokio::spawn(pool.apply(blocked, (sig.path.to_str().unwrap().to_owned(), gate.clone())).into_future());
        sig.recv().await;
        let rest = tokio::spawn(pool.map(double, 0..10u64).chunk_size(1).into_future());
        // Ten tasks queued behind the running one.
        loop {
            let s = pool.stats();
            if s.queued == 10 {
                assert_eq!(s.in_flight, 1, "{s}");
                break;
            }
            tokio::task::yield_now().await;
        }
        release(&gate);
        blocked.await.unwrap().unwrap();
        rest.await.unwrap().unwrap();
        let s = pool.stats();
        assert_eq!((s.queued, s.in_flight, s.done), (0, 0, 11), "{s}");
    }

    async fn timeouts_and_replacements_are_counted(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).task_timeout(Duration::from_millis(50))
            .worker_lifespan(10).build().await.unwrap();
        assert!(pool.apply_with(hang, 0).await.unwrap_err().is_timeout());
        pool.map(double, 0..40u64).chunk_size(1).await.unwrap();
        let s = pool.stats();
        assert_eq!((s.failed, s.timed_out), (1, 1), "{s}");
        assert_eq!(s.restarts.timed_out, 1, "{s}");
        // 41 tasks, 10 per worker: at least three workers retired.
        assert!(s.restarts.lifespan >= 3, "{s:?}");
        pool.shutdown().await.unwrap();
    }

    processes async fn deaths_and_retries_are_counted(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).max_retries(1).build().await.unwrap();
        let e = pool.apply(kill_self, 0).await.unwrap_err();
        assert_eq!(e.workers_killed(), 2);
        let s = pool.stats();
        assert_eq!((s.failed, s.retried, s.restarts.died), (1, 1, 2), "{s:?}");
        pool.shutdown().await.unwrap();
    }
}
