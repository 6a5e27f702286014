//! CPU pinning (MPIRE's `CPUPinningTest`): worker `i` runs on the CPUs given for it, under every
//! start method, threads included, and so does its replacement; CPUs that do not exist are a
//! `build()` error.
mod common;
use common::*;

/// The CPUs the calling thread may run on, as the kernel lists them.
fn cpus_allowed() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// The worker's id, and the CPUs the thread running the task may run on.
fn allowed(w: &mut Worker<'_>, _: u32) -> (usize, String) {
    (w.id(), cpus_allowed())
}

/// The same, from a thread the task starts: it inherits the worker's CPUs.
fn allowed_in_a_new_thread(w: &mut Worker<'_>, _: u32) -> (usize, String) {
    (w.id(), std::thread::spawn(cpus_allowed).join().unwrap())
}

fn pid(_: u32) -> u32 {
    std::process::id()
}

fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// MPIRE's `test_start_methods` case: with two CPUs, two workers pinned the other way round
/// (`[1, 0]`); with one, one worker on CPU 0.
fn reversed() -> (usize, Vec<usize>) {
    match cpu_count() >= 2 {
        true => (2, vec![1, 0]),
        false => (1, vec![0]),
    }
}

/// Checks every `(worker id, CPU list)` against `want[id]`, and that every worker was seen.
fn check(seen: &[(usize, String)], want: &[String]) {
    let mut workers = std::collections::HashSet::new();
    for (id, list) in seen {
        assert_eq!(list, &want[*id], "worker {id}");
        workers.insert(*id);
    }
    assert_eq!(workers.len(), want.len(), "{seen:?}");
}

each_method! {
    async fn each_worker_runs_on_its_own_cpus(m: StartMethod) {
        let (workers, ids) = reversed();
        // `order_tasks`: chunk `i` runs on worker `i % workers`, so every worker answers.
        let pool = AsyncPool::builder().workers(workers).start_method(m).order_tasks(true).cpu_ids(ids.clone()).build().await.unwrap();
        let want: Vec<String> = ids.iter().map(|c| c.to_string()).collect();
        let seen = pool.map_with(allowed, 0..200u32).chunk_size(1).await.unwrap();
        check(&seen, &want);
        let seen = pool.map_with(allowed_in_a_new_thread, 0..40u32).chunk_size(1).await.unwrap();
        check(&seen, &want);
        pool.shutdown().await.unwrap();
    }

    async fn one_set_for_every_worker(m: StartMethod) {
        let all: Vec<usize> = (0..cpu_count()).collect();
        let pool = AsyncPool::builder().workers(2).start_method(m).cpu_ids([all.clone()]).build().await.unwrap();
        let want = match all.len() {
            1 => "0".to_owned(),
            n => format!("0-{}", n - 1),
        };
        for (_, list) in pool.map_with(allowed, 0..50u32).chunk_size(1).await.unwrap() {
            assert_eq!(list, want);
        }
        let pool = AsyncPool::builder().workers(2).start_method(m).cpu_ids([0]).build().await.unwrap();
        for (_, list) in pool.map_with(allowed, 0..50u32).chunk_size(1).await.unwrap() {
            assert_eq!(list, "0");
        }
    }

    async fn cpus_that_do_not_exist_are_a_build_error(m: StartMethod) {
        let n = cpu_count();
        for e in [
            AsyncPool::builder().workers(1).start_method(m).cpu_ids([n]).build().await.unwrap_err(),
            AsyncPool::builder().workers(2).start_method(m).cpu_ids([vec![0], vec![0, 4096]]).build().await.unwrap_err(),
            // Neither one entry nor one per worker.
            AsyncPool::builder().workers(2).start_method(m).cpu_ids([0, 0, 0]).build().await.unwrap_err(),
            AsyncPool::builder().workers(1).start_method(m).cpu_ids([Vec::<usize>::new()]).build().await.unwrap_err(),
        ] {
            assert!(e.is_config(), "{e}");
        }
    }

    processes async fn a_replacement_is_pinned_like_the_worker_it_replaces(m: StartMethod) {
        let (workers, ids) = reversed();
        let pool = AsyncPool::builder().workers(workers).start_method(m).order_tasks(true).cpu_ids(ids.clone()).build().await.unwrap();
        let victim = pool.worker_pids()[0].unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_gone(victim).await;
        let want: Vec<String> = ids.iter().map(|c| c.to_string()).collect();
        let seen = pool.map_with(allowed, 0..200u32).chunk_size(1).await.unwrap();
        check(&seen, &want);
        assert!(pool.map(pid, 0..20u32).chunk_size(1).await.unwrap().iter().all(|&p| p != victim));
        pool.shutdown().await.unwrap();
    }
}
