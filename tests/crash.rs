//! A worker that dies mid-task fails only its task, is replaced, and the pool keeps serving.
mod common;
use common::*;
use futures_util::{StreamExt, stream};

/// Makes `mib` MiB resident, then kills its worker (as the kernel's OOM killer would).
fn grow_then_die(mib: usize) -> u64 {
    let mut v = vec![0u8; mib << 20];
    for page in v.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&v);
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
    unreachable!()
}

fn abort_at_3(x: u64) -> u64 {
    if x == 3 {
        std::process::abort();
    }
    x
}

fn exit_at_2(x: u64) -> u64 {
    if x == 2 {
        std::process::exit(7);
    }
    x
}

fn announce_then_hang(path: String) -> u64 {
    signal(&path);
    park_forever()
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

each_method! {
    processes async fn sigkill_mid_map(m: StartMethod) {
        let pool = pool(m, 2).await;
        let e = pool.map(kill_self_at_5, 0..20u64).chunk_size(1).await.unwrap_err();
        assert!(e.is_worker_died(), "{e}");
        assert_eq!(e.signal(), Some(9));
        assert_eq!(e.task_index(), Some(5));
        assert!(e.to_string().contains("was killed by signal 9 (SIGKILL), peak RSS "), "{e}");
        assert!(e.to_string().contains(" while running a task"), "{e}");
        // Replaced: the pool serves the next call.
        assert_eq!(pool.map(kill_self_at_5, 6..50u64).await.unwrap(), (6..50).collect::<Vec<_>>());
        pool.shutdown().await.unwrap();
    }

    processes async fn a_death_says_what_the_worker_used(m: StartMethod) {
        let pool = pool(m, 1).await;
        let e = pool.apply(grow_then_die, 300).await.unwrap_err();
        assert_eq!(e.signal(), Some(9), "{e}");
        let peak = e.peak_memory().expect("reaped with its usage");
        assert!(peak >= 300 << 20, "{e}");
        assert!(e.cpu_time().is_some_and(|t| t > std::time::Duration::ZERO), "{e}");
        // "worker 0 was killed by signal 9 (SIGKILL), peak RSS 301.2 MiB, CPU 0.09 s, while ..."
        let text = e.to_string();
        assert!(text.contains("(SIGKILL), peak RSS 3") && text.contains(" MiB, CPU "), "{text}");
        // The slot's restart says it too.
        let stats = pool.stats();
        assert_eq!(stats.restarts.died, 1, "{stats:?}");
        assert_eq!(pool.apply(kill_self_at_5, 1).await.unwrap(), 1);
        pool.shutdown().await.unwrap();
    }

    processes async fn a_stream_reports_the_crash_per_task_and_goes_on(m: StartMethod) {
        let pool = pool(m, 2).await;
        let out: Vec<Result<u64, Error>> = pool.map_stream(kill_self_at_5, stream::iter(0..12u64)).chunk_size(1).collect().await;
        for (i, r) in out.iter().enumerate() {
            match i {
                5 => assert_eq!(r.as_ref().unwrap_err().signal(), Some(9)),
                _ => assert_eq!(*r.as_ref().unwrap(), i as u64),
            }
        }
        pool.shutdown().await.unwrap();
    }

    processes async fn abort_and_exit_are_reported(m: StartMethod) {
        let pool = pool(m, 2).await;
        let e = pool.apply(abort_at_3, 3).await.unwrap_err();
        assert!(e.is_worker_died(), "{e}");
        assert_eq!(e.signal(), Some(6));
        let e = pool.apply(exit_at_2, 2).await.unwrap_err();
        assert_eq!(e.exit_code(), Some(7), "{e}");
        assert!(e.to_string().contains("exited with status 7"), "{e}");
        assert_eq!(pool.apply(abort_at_3, 4).await.unwrap(), 4);
        pool.shutdown().await.unwrap();
    }

    processes async fn killed_from_outside_during_a_map(m: StartMethod) {
        let pool = pool(m, 2).await;
        let sig = Signal::new();
        let path = sig.path.to_str().unwrap().to_owned();
        let running = tokio::spawn(pool.map(announce_then_hang, vec![path.clone(), path]).chunk_size(1).into_future());
        let victim = sig.recv().await;
        assert!(pool.worker_pids().contains(&Some(victim)));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        let e = running.await.unwrap().unwrap_err();
        assert!(e.is_worker_died() && e.signal() == Some(9), "{e}");
        // The other worker is still stuck in its task: the pool replaced the dead one and serves.
        let pids: Vec<u32> = pool.map(pid, vec![(); 4]).await.unwrap();
        assert!(!pids.contains(&victim));
        drop(pool);
        wait_gone(victim).await;
    }
}

use std::future::IntoFuture;
