//! Worker insights (MPIRE's `enable_insights` / `print_insights`): how each worker spent its time,
//! its tasks, the slowest tasks with their inputs, and per-task processor time and memory.
mod common;
use std::time::Duration;

use common::*;

fn init(_: &Worker<'_>) {
    std::thread::sleep(Duration::from_millis(30));
}

fn exit(_: &mut Worker<'_, (), ()>) {
    std::thread::sleep(Duration::from_millis(20));
}

/// Busy on the processor until this thread has used `ms` milliseconds of it (however long that
/// takes on a loaded machine).
fn spin(w: &mut Worker<'_, (), ()>, ms: u64) -> u64 {
    let _ = w;
    let cpu = || {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
        Duration::from(t)
    };
    let t0 = cpu();
    while cpu() - t0 < Duration::from_millis(ms) {}
    ms
}

/// Keeps `mib` MiB resident for as long as it runs, and runs long enough to be among the
/// slowest.
fn hold_memory(mib: u64) -> u64 {
    let v = vec![1u8; (mib << 20) as usize];
    std::thread::sleep(Duration::from_millis(30));
    std::hint::black_box(&v);
    mib
}

fn quick(x: u64) -> u64 {
    x
}

each_method! {
    async fn insights_say_where_the_time_went(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).enable_insights(true)
            .worker_init(init).worker_exit(exit).build().await.unwrap();
        // Forty short tasks and three long ones, the longest last.
        let mut inputs = vec![1u64; 40];
        inputs.extend([20, 60, 150]);
        pool.map_with(spin, inputs).chunk_size(1).await.unwrap();
        let during = pool.insights().expect("insights are on");
        assert_eq!(during.tasks(), 43);
        for w in &during.workers {
            // The pool counts from the worker's hello, which it reads a moment after it is sent.
            assert!(w.init >= Duration::from_millis(25), "{w:?}");
            assert!(w.working > Duration::ZERO, "{w:?}");
        }
        let working: Duration = during.workers.iter().map(|w| w.working).sum();
        assert!(working >= Duration::from_millis(270), "{working:?}");
        // The slowest first, with their index and (under process methods) their input. (Which
        // of the long ones comes first depends on how the machine is loaded: they spin for 150,
        // 60 and 20 ms of processor time, and are timed on the wall clock, so under load the
        // 20 ms one may take as long as the 60 ms one. A short one never catches up with them.)
        let top: Vec<usize> = during.slowest.iter().take(2).map(|t| t.index).collect();
        assert!(top.iter().all(|i| (40..=42).contains(i)), "{during}");
        assert!(during.slowest.windows(2).all(|w| w[0].duration >= w[1].duration));
        let longest = during.slowest.iter().find(|t| t.index == 42).unwrap();
        assert!(longest.duration >= Duration::from_millis(150));
        let input = m.is_process().then(|| "150".to_owned());
        assert_eq!(longest.input, input);
        // Processor time: the tasks spin until they used 270 ms of it; the pool reads a
        // thread's at most once a millisecond, so it may miss a little of each.
        let cpu: Duration = during.workers.iter().map(|w| w.cpu).sum();
        assert!(cpu >= Duration::from_millis(250), "{cpu:?}");
        let text = during.to_string();
        assert!(text.starts_with("WorkerPool insights\n-------------------\nTotal number of tasks completed: 43"), "{text}");
        assert!(text.contains("Top 5 longest tasks"), "{text}");
        assert!(text.contains("1. Time: 0:00:00."), "{text}");
        drop(pool.shutdown().await.unwrap());
    }

    async fn exit_time_is_measured(m: StartMethod) {
        // Workers that retire run `worker_exit` while the pool lives on.
        let pool = AsyncPool::builder().workers(1).start_method(m).enable_insights(true)
            .worker_init(init).worker_exit(exit).worker_lifespan(2).build().await.unwrap();
        pool.map_with(spin, vec![1u64; 6]).chunk_size(1).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // The tasks are counted by the time their results are in.
        assert_eq!(pool.insights().unwrap().workers[0].tasks, 6);
        // Three workers ran two tasks each, and ran `worker_exit` as they retired (the pool
        // times an exit from when it hears of it, a little after it started).
        loop {
            let w = &pool.insights().unwrap().workers[0];
            if w.exit >= Duration::from_millis(40) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{w:?}");
            tokio::task::yield_now().await;
        }
        pool.shutdown().await.unwrap();
    }

    async fn without_insights_there_are_none(m: StartMethod) {
        let pool = AsyncPool::builder().workers(2).start_method(m).build().await.unwrap();
        pool.map(quick, 0..10u64).await.unwrap();
        assert!(pool.insights().is_none());
    }

    processes async fn peak_memory_per_task_when_asked(m: StartMethod) {
        let pool = AsyncPool::builder().workers(1).start_method(m).insights_memory(true).build().await.unwrap();
        pool.map(hold_memory, [1u64, 1, 96, 1]).chunk_size(1).await.unwrap();
        let insights = pool.insights().unwrap();
        let big = insights.slowest.iter().find(|t| t.input.as_deref() == Some("96")).expect("the big task is among the slowest");
        assert!(big.peak_memory.unwrap() >= 96 << 20, "{big:?}");
        assert!(insights.workers[0].peak_memory.unwrap() >= 96 << 20);
        assert!(insights.to_string().contains("peak memory: "));
    }
}
