//! The quickstart as a new user sees it: run in a real terminal (tmux), its screen captured and
//! read. Each pool's bar ends at its full count, once, above the table; no bar is left
//! half-drawn. Skipped, saying so, where tmux is missing (`.ci/run` installs it).
mod common;

use std::path::PathBuf;
use std::process::Command;

/// The quickstart example `cargo test` built next to this test.
fn quickstart() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(|deps| deps.parent()).unwrap();
    debug.join("examples").join("quickstart")
}

fn tmux(socket: &str, args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(["-L", socket, "-f", "/dev/null"])
        .args(args)
        .output()
        .expect("tmux runs")
}

#[test]
fn the_quickstart_shows_a_bar_per_pool_then_its_table() {
    if Command::new("tmux").arg("-V").output().is_err() {
        common::skip("quickstart screen test skipped: tmux is not installed");
        return;
    }
    let exe = quickstart();
    assert!(exe.exists(), "{} is built by `cargo test`", exe.display());
    let socket = format!("ampire-quickstart-{}", std::process::id());
    // A small limit keeps this debug build quick. When it ends, it says so on a tmux channel
    // and the pane stays open (`read`) until the test has read the screen.
    let script = format!(
        "{} 200000; tmux -L {socket} wait-for -S done; read",
        exe.display()
    );
    let started = tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-x",
            "110",
            "-y",
            "30",
            "-s",
            "q",
            &script,
        ],
    );
    assert!(started.status.success(), "{started:?}");
    let waited = Command::new("timeout")
        .args(["120", "tmux", "-L", &socket, "wait-for", "done"])
        .status()
        .expect("timeout runs");
    let captured = tmux(&socket, &["capture-pane", "-p", "-t", "q"]);
    let _ = tmux(&socket, &["kill-server"]);
    assert!(waited.success(), "the quickstart did not finish in 120 s");
    let screen = String::from_utf8_lossy(&captured.stdout).into_owned();
    eprintln!("{screen}");
    let lines: Vec<&str> = screen
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();

    assert!(
        lines[0].starts_with("primes below 200000: 17984 (serial: "),
        "{screen}"
    );
    let methods = ["threading", "spawn", "fork", "forkserver"];
    let bars: Vec<usize> = methods
        .iter()
        .map(|m| {
            let label = format!("primes ({m}) map [==============================] 64/64 (took ");
            let at: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].starts_with(&label))
                .collect();
            assert_eq!(at.len(), 1, "one finished bar of {m}:\n{screen}");
            at[0]
        })
        .collect();
    assert!(bars.windows(2).all(|w| w[0] < w[1]), "in order:\n{screen}");
    // Nothing else looks like a bar: none left mid-way, none drawn twice.
    assert_eq!(
        lines.iter().filter(|l| l.contains(" map [")).count(),
        4,
        "{screen}"
    );
    assert!(!screen.contains("eta"), "a bar left running:\n{screen}");
    let header = lines
        .iter()
        .position(|l| l.starts_with("| start method |"))
        .expect("the table");
    assert!(header > bars[3], "{screen}");
    for m in methods {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("| {m} | 2 | ")))
            .expect("a row");
        assert!(row.ends_with("| ok |"), "{row}");
    }
}
