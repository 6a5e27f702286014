//! Workers started through a launcher: the same calls, functions and errors as local workers,
//! over ssh to an sshd this test starts (skipped, saying so, where OpenSSH's server is missing;
//! `.ci/run` installs it) and over a plain local command launcher.
mod common;
mod hosts;

use std::time::{Duration, Instant};

use ampire::{AsyncPool, Error, Launcher, SharedSlice, StartMethod, Worker};
use futures_util::{StreamExt, stream};
use hosts::{Sshd, local_command};

/// Every launcher this machine can run, by name: the local command always, ssh to this host
/// when an sshd could be started (kept alive by the returned handle).
fn launchers(test: &str) -> (Option<Sshd>, Vec<(&'static str, Launcher)>) {
    let sshd = Sshd::start(test);
    let mut all = vec![("command", local_command())];
    if let Some(s) = &sshd {
        all.push(("ssh", s.launcher(&["127.0.0.1", "localhost"])));
    }
    (sshd, all)
}

fn square(x: u64) -> u64 {
    x * x
}

fn panics_on_7(x: u64) -> u64 {
    assert!(x % 10 != 7, "input {x} panics");
    x
}

fn sum_shared(w: &mut Worker<'_, SharedSlice<u64>>, _: u32) -> (u64, bool) {
    (w.shared().iter().sum(), w.shared().is_shared_memory())
}

/// Prints on stdout, which is not the link: the frames stay whole.
fn chatty(x: u64) -> u64 {
    println!("task {x} says hello on stdout");
    x
}

#[test]
fn calls_failures_and_crashes_behave_as_with_local_workers() {
    let (_sshd, launchers) = launchers("calls_failures_and_crashes");
    common::run(StartMethod::Forkserver, |_| async move {
        for (name, launcher) in launchers {
            // A shared slice reaches remote workers as bytes, decoded into a copy: shared
            // memory does not cross hosts.
            let values: SharedSlice<u64> = (0..100_000).collect();
            let pool = AsyncPool::builder()
                .workers(1)
                .launcher(launcher.clone())
                .shared(values)
                .build()
                .await
                .unwrap();
            let seen = pool.apply_with(sum_shared, 0).await.unwrap();
            assert_eq!(seen, ((0..100_000).sum::<u64>(), false), "{name}");
            pool.shutdown().await.unwrap();

            let pool = AsyncPool::builder()
                .workers(2)
                .launcher(launcher)
                .build()
                .await
                .unwrap();
            let out = pool.map(square, 0..10_000u64).await.unwrap();
            assert_eq!(
                out,
                (0..10_000u64).map(square).collect::<Vec<_>>(),
                "{name}"
            );
            // Large inputs go through the link.
            let big = vec![vec![7u8; 1 << 20]; 4];
            let lens = pool.map(|v: Vec<u8>| v.len(), big).await.unwrap();
            assert_eq!(lens, vec![1 << 20; 4], "{name}");
            // Panics are per task, with their input.
            let out: Vec<Result<u64, Error>> = pool
                .map_stream(panics_on_7, stream::iter(0..30u64))
                .collect()
                .await;
            for (x, r) in out.iter().enumerate() {
                match x % 10 {
                    7 => {
                        let e = r.as_ref().unwrap_err();
                        assert!(e.is_panic() && e.task_index() == Some(x), "{name}: {e}");
                        assert_eq!(e.input(), Some(x.to_string().as_str()), "{name}");
                        assert!(
                            e.to_string().contains(&format!("input {x} panics")),
                            "{name}: {e}"
                        );
                    }
                    _ => assert_eq!(*r.as_ref().unwrap(), x as u64, "{name}"),
                }
            }
            // What a task prints on stdout does not break the link.
            assert_eq!(
                pool.map(chatty, 0..50u64).await.unwrap().len(),
                50,
                "{name}"
            );
            // A worker that dies fails its running task only; the chunk's others deliver or run
            // again; the worker is replaced.
            let out: Vec<Result<u64, Error>> = pool
                .map_stream(common::kill_self_at_5, stream::iter(0..12u64))
                .chunk_size(4)
                .collect()
                .await;
            for (x, r) in out.iter().enumerate() {
                match x {
                    5 => {
                        let e = r.as_ref().unwrap_err();
                        assert!(
                            e.is_worker_died() && e.task_index() == Some(5),
                            "{name}: {e}"
                        );
                    }
                    _ => assert_eq!(*r.as_ref().unwrap(), x as u64, "{name}: task {x}"),
                }
            }
            assert_eq!(
                pool.map(square, 0..100u64).await.unwrap().len(),
                100,
                "{name}"
            );
            pool.shutdown().await.unwrap();
        }
    });
}

#[test]
fn a_launcher_that_cannot_reach_its_host_is_a_clear_error() {
    if std::process::Command::new("ssh")
        .arg("-V")
        .output()
        .is_err()
    {
        common::skip("ssh part skipped: OpenSSH's client is not installed");
    }
    common::run(StartMethod::Forkserver, |_| async {
        // A port nothing listens on: ssh says so, and the error says what ssh said.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut cases = vec![
            (
                Launcher::command("false", Vec::<String>::new()),
                vec!["false exited with status 1 before the worker started"],
            ),
            // The binary is not where the launcher looks: its own status and message.
            (
                local_command().binary("/nonexistent/ampire-worker"),
                vec![
                    "exited with status 127 before the worker started",
                    "/nonexistent/ampire-worker",
                ],
            ),
        ];
        if std::process::Command::new("ssh").arg("-V").output().is_ok() {
            let ssh = Launcher::ssh(["127.0.0.1"])
                .option("-p")
                .option(port.to_string());
            cases.push((
                ssh,
                vec![
                    "ssh to 127.0.0.1 exited with status 255",
                    "Connection refused",
                ],
            ));
        }
        for (launcher, says) in cases {
            let t = Instant::now();
            let e = AsyncPool::builder()
                .workers(1)
                .launcher(launcher)
                .build()
                .await
                .unwrap_err();
            let text = e.to_string();
            for s in says {
                assert!(text.contains(s), "{text}");
            }
            assert!(t.elapsed() < Duration::from_secs(60));
        }
        let e = AsyncPool::builder()
            .launcher(Launcher::ssh(Vec::<String>::new()))
            .build()
            .await
            .unwrap_err();
        assert!(e.is_config(), "{e}");
        let e = AsyncPool::builder()
            .start_method(ampire::StartMethod::Threading)
            .launcher(local_command())
            .build()
            .await
            .unwrap_err();
        assert!(e.is_config(), "{e}");
    });
}

/// A copy of this test binary with another build id: the same code, another build, as a host
/// with a stale copy of the program would have.
fn another_build() -> std::path::PathBuf {
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    // The GNU build-id note: name size 4, id size 20, type 3, "GNU\0", then the id.
    let header: &[u8] = &[4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    let at = bytes
        .windows(header.len())
        .position(|w| w == header)
        .expect("a build id");
    bytes[at + header.len()] ^= 0xff;
    let path = std::env::temp_dir().join(format!("ampire-other-build-{}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[test]
fn a_binary_of_another_build_is_refused_never_run() {
    let (_sshd, launchers) = launchers("a_binary_of_another_build");
    let other = another_build();
    let path = other.clone();
    common::run(StartMethod::Forkserver, |_| async move {
        for (name, launcher) in launchers {
            let e = AsyncPool::builder()
                .workers(1)
                .launcher(launcher.binary(&other))
                .build()
                .await
                .unwrap_err();
            assert!(
                e.to_string().contains("worker runs a different binary"),
                "{name}: {e}"
            );
        }
    });
    let _ = std::fs::remove_file(path);
}

/// In the owner's role (see below): writes its pid to `path`, then waits for ever.
fn report_then_park(path: String) -> u64 {
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    common::park_forever()
}

/// This test runs twice: as the test, and (re-executed with `AMPIRE_TEST_OWNER` set) as the
/// owner of a pool whose worker runs forever, which the test then SIGKILLs.
#[test]
fn the_owners_death_leaves_no_worker_on_any_host() {
    if let Ok(which) = std::env::var("AMPIRE_TEST_OWNER") {
        let path = std::env::var("AMPIRE_TEST_PIDFILE").unwrap();
        let launcher = match which.as_str() {
            "ssh" => {
                let options = std::env::var("AMPIRE_TEST_SSH").unwrap();
                options
                    .split('\n')
                    .fold(Launcher::ssh(["127.0.0.1"]), Launcher::option)
            }
            "srun" => Launcher::srun().env(
                "SLURM_CONF",
                std::env::var("AMPIRE_TEST_SLURM_CONF").unwrap(),
            ),
            _ => local_command(),
        };
        common::run(StartMethod::Forkserver, |_| async move {
            let pool = AsyncPool::builder()
                .workers(1)
                .launcher(launcher)
                .build()
                .await
                .unwrap();
            let _ = pool.apply(report_then_park, path).await;
            unreachable!("the task never ends");
        });
        return;
    }
    let (sshd, mut launchers) = launchers("the_owners_death");
    let slurm = hosts::Slurm::start("the_owners_death");
    if let Some(slurm) = &slurm {
        launchers.push(("srun", slurm.launcher()));
    }
    for (name, _) in launchers {
        let pidfile =
            std::env::temp_dir().join(format!("ampire-owner-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&pidfile);
        let mut owner = std::process::Command::new(std::env::current_exe().unwrap());
        owner
            .args([
                "the_owners_death_leaves_no_worker_on_any_host",
                "--exact",
                "--nocapture",
            ])
            .env("AMPIRE_TEST_OWNER", name)
            .env("AMPIRE_TEST_PIDFILE", &pidfile);
        if let Some(s) = &sshd {
            owner.env("AMPIRE_TEST_SSH", s.options().join("\n"));
        }
        if let Some(s) = &slurm {
            owner.env("AMPIRE_TEST_SLURM_CONF", s.dir.join("slurm.conf"));
        }
        let mut owner = owner.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let worker: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.parse().ok())
            {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: the worker never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        // The owner dies without a word; its worker's link closes, and so the worker ends.
        owner.kill().unwrap();
        owner.wait().unwrap();
        let proc = std::path::PathBuf::from(format!("/proc/{worker}"));
        while proc.exists() && !is_zombie(&proc) {
            assert!(
                Instant::now() < deadline,
                "{name}: worker {worker} outlived its owner"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_file(&pidfile);
    }
}

fn is_zombie(proc: &std::path::Path) -> bool {
    std::fs::read_to_string(proc.join("stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

fn hang_at_3(x: u64) -> u64 {
    if x == 3 {
        common::park_forever();
    }
    x
}

#[test]
fn timeouts_and_lifespans_hold_over_a_launcher() {
    let (_sshd, launchers) = launchers("timeouts_and_lifespans");
    common::run(StartMethod::Forkserver, |_| async move {
        for (name, launcher) in launchers {
            let pool = AsyncPool::builder()
                .workers(2)
                .launcher(launcher.clone())
                .task_timeout(Duration::from_millis(300))
                .worker_lifespan(4)
                .build()
                .await
                .unwrap();
            let out: Vec<Result<u64, Error>> = pool
                .map_stream(hang_at_3, stream::iter(0..12u64))
                .chunk_size(2)
                .collect()
                .await;
            for (x, r) in out.iter().enumerate() {
                match x {
                    3 => {
                        let e = r.as_ref().unwrap_err();
                        assert!(e.is_timeout() && e.task_index() == Some(3), "{name}: {e}");
                        assert_eq!(e.input(), Some("3"), "{name}");
                    }
                    _ => assert_eq!(*r.as_ref().unwrap(), x as u64, "{name}: task {x}"),
                }
            }
            let stats = pool.stats();
            assert_eq!(stats.restarts.timed_out, 1, "{name}: {stats:?}");
            // Twelve tasks, four per worker's life: workers retired and were replaced.
            assert!(stats.restarts.lifespan >= 1, "{name}: {stats:?}");
            // Every worker that ran `worker_exit` (the retired ones, and a successor started
            // ahead of time) answers.
            let retired = pool.stats().restarts.lifespan;
            let exits = pool.shutdown().await.unwrap();
            assert!(
                exits.len() as u64 >= 2 + retired,
                "{name}: {} exits",
                exits.len()
            );

            // A short deadline after a long one is kept (the worker watches its own: a watch
            // still asleep toward the hour would hang this), and a task that exits with the
            // status a worker stops itself with is a death, not a timeout.
            let pool = AsyncPool::builder()
                .workers(1)
                .launcher(launcher)
                .build()
                .await
                .unwrap();
            let hour = Duration::from_secs(3600);
            assert_eq!(
                pool.apply(hang_at_3, 1).task_timeout(hour).await.unwrap(),
                1
            );
            let e = pool
                .apply(hang_at_3, 3)
                .task_timeout(Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(e.is_timeout() && !e.is_worker_died(), "{name}: {e}");
            let e = pool
                .apply(exit_124, 0)
                .task_timeout(hour)
                .await
                .unwrap_err();
            assert!(e.is_worker_died() && !e.is_timeout(), "{name}: {e}");
            pool.shutdown().await.unwrap();
        }
    });
}

fn exit_124(_: u64) -> u64 {
    std::process::exit(124)
}

fn double(x: u64) -> u64 {
    x * 2
}

/// Runs inside a remote worker: a pool of its own whose map shows a bar.
fn inner_map(_: u64) -> u64 {
    common::inner_pool_sum(StartMethod::Forkserver, "inner", true, double)
}

#[test]
fn bars_of_pools_nested_in_remote_workers_come_home() {
    let (_sshd, launchers) = launchers("bars_of_pools_nested");
    common::run(StartMethod::Forkserver, |_| async move {
        for (name, launcher) in launchers {
            let term = indicatif::InMemoryTerm::new(40, 120);
            let target = indicatif::ProgressDrawTarget::term_like(Box::new(term.clone()));
            let pool = AsyncPool::builder()
                .workers(2)
                .launcher(launcher)
                .name("outer")
                .__draw_bars_to(target)
                .build()
                .await
                .unwrap();
            let sums = pool
                .map(inner_map, 0..2u64)
                .chunk_size(1)
                .progress_bar(true)
                .await
                .unwrap();
            assert_eq!(sums, vec![9900; 2], "{name}");
            pool.shutdown().await.unwrap();
            let screen: Vec<String> = term
                .contents()
                .lines()
                .map(|l| l.trim_end().to_owned())
                .filter(|l| !l.is_empty())
                .collect();
            assert!(
                screen[0].starts_with("outer map [") && screen[0].contains("] 2/2 ("),
                "{name}: {screen:?}"
            );
            let nested: Vec<&String> = screen
                .iter()
                .filter(|l| l.starts_with("  inner map (worker "))
                .collect();
            assert_eq!(nested.len(), 2, "{name}: {screen:?}");
            assert!(
                nested.iter().all(|l| l.contains("] 100/100 (")),
                "{name}: {screen:?}"
            );
        }
    });
}

/// Records its run; the first run of input 2 says so (through `announce`) and never ends.
fn stuck_once((x, log, announce): (u64, String, String)) -> u64 {
    let before = common::runs_of(&log, x);
    common::record_run(&log, x);
    if x == 2 && before == 0 {
        common::signal(&announce);
        common::park_forever();
    }
    x
}

#[test]
fn a_lost_connection_fails_the_running_task_alone_and_retries_run_it_again() {
    let (_sshd, launchers) = launchers("a_lost_connection");
    common::run(StartMethod::Forkserver, |_| async move {
        for (name, launcher) in launchers {
            for retries in [0, 1] {
                let pool = AsyncPool::builder()
                    .workers(1)
                    .launcher(launcher.clone())
                    .max_retries(retries)
                    .build()
                    .await
                    .unwrap();
                let log = common::RunLog::new(&format!("lost-{name}-{retries}"));
                let announce = common::Signal::new();
                let (at, to) = (log.path(), announce.path.to_str().unwrap().to_owned());
                let inputs: Vec<_> = (0..6u64).map(|x| (x, at.clone(), to.clone())).collect();
                let call = tokio::spawn(
                    pool.map_stream(stuck_once, stream::iter(inputs))
                        .chunk_size(1)
                        .collect::<Vec<_>>(),
                );
                announce.recv().await;
                // The link goes: its launcher is killed, as a lost connection or host ends it.
                let launcher_pid = pool.worker_pids()[0].unwrap();
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(launcher_pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                let out: Vec<Result<u64, Error>> = call.await.unwrap();
                for (x, r) in out.iter().enumerate() {
                    match (x, retries) {
                        (2, 0) => {
                            assert!(r.as_ref().unwrap_err().is_worker_died(), "{name}: {r:?}")
                        }
                        _ => {
                            assert_eq!(*r.as_ref().unwrap(), x as u64, "{name} {retries}: task {x}")
                        }
                    }
                }
                let runs = log.runs(6);
                assert_eq!(runs, [1, 1, 1 + retries, 1, 1, 1], "{name} {retries}");
                assert_eq!(pool.stats().restarts.died, 1, "{name}");
                pool.shutdown().await.unwrap();
            }
        }
    });
}

/// The binary this worker runs.
fn my_binary(_: u64) -> String {
    std::env::current_exe().unwrap().display().to_string()
}

#[test]
fn the_binary_is_copied_once_per_host_when_asked() {
    let (_sshd, launchers) = launchers("the_binary_is_copied");
    common::run(StartMethod::Forkserver, |_| async move {
        for (name, launcher) in launchers {
            let cache =
                std::env::temp_dir().join(format!("ampire-cache-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&cache);
            let launcher = launcher.copy_binary(&cache);
            let pool = AsyncPool::builder()
                .workers(2)
                .launcher(launcher.clone())
                .build()
                .await
                .unwrap();
            let runs = pool.map(my_binary, 0..4u64).chunk_size(1).await.unwrap();
            pool.shutdown().await.unwrap();
            // One copy, named by the build id, which every worker runs.
            let copies: Vec<_> = std::fs::read_dir(&cache)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert_eq!(copies.len(), 1, "{name}: {copies:?}");
            let copy = &copies[0];
            assert!(
                copy.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("ampire-"),
                "{name}"
            );
            assert!(
                runs.iter().all(|r| std::path::Path::new(r) == copy),
                "{name}: {runs:?}"
            );
            // A second pool finds it there and does not copy again.
            let before = std::fs::metadata(copy).unwrap().modified().unwrap();
            let pool = AsyncPool::builder()
                .workers(1)
                .launcher(launcher)
                .build()
                .await
                .unwrap();
            assert_eq!(pool.apply(square, 3).await.unwrap(), 9);
            pool.shutdown().await.unwrap();
            assert_eq!(
                std::fs::metadata(copy).unwrap().modified().unwrap(),
                before,
                "{name}"
            );
            let _ = std::fs::remove_dir_all(&cache);
        }
    });
}

#[test]
fn slurm_runs_the_same_calls_through_srun() {
    let Some(slurm) = hosts::Slurm::start("slurm_runs_the_same_calls") else {
        return;
    };
    common::run(StartMethod::Forkserver, |_| async move {
        let t = Instant::now();
        let pool = AsyncPool::builder()
            .workers(2)
            .launcher(slurm.launcher())
            .task_timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap();
        eprintln!("a 2-worker pool through srun started in {:?}", t.elapsed());
        assert_eq!(
            pool.map(square, 0..1000u64).await.unwrap(),
            (0..1000u64).map(square).collect::<Vec<_>>()
        );
        let out: Vec<Result<u64, Error>> = pool
            .map_stream(panics_on_7, stream::iter(0..20u64))
            .collect()
            .await;
        assert!(
            out[7].as_ref().unwrap_err().is_panic() && out[17].as_ref().unwrap_err().is_panic()
        );
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 18);
        let out: Vec<Result<u64, Error>> = pool
            .map_stream(common::kill_self_at_5, stream::iter(0..12u64))
            .chunk_size(4)
            .collect()
            .await;
        for (x, r) in out.iter().enumerate() {
            match x {
                5 => assert!(r.as_ref().unwrap_err().is_worker_died(), "{r:?}"),
                _ => assert_eq!(*r.as_ref().unwrap(), x as u64),
            }
        }
        let out: Vec<Result<u64, Error>> = pool
            .map_stream(hang_at_3, stream::iter(0..6u64))
            .chunk_size(1)
            .collect()
            .await;
        assert!(out[3].as_ref().unwrap_err().is_timeout(), "{:?}", out[3]);
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 5);
        pool.shutdown().await.unwrap();
    });
}
