#![cfg(feature = "dashboard")]
//! The web dashboard (feature `dashboard`): its JSON API, its event stream, its answers to
//! malformed requests, stopping it, and its page in a real browser (Debian's headless
//! Chromium, when it is installed).
//!
//! Every pool of this test binary shows on every dashboard it starts (they list the process's
//! pools), so each test names its pool uniquely and looks for that name. Waiting is done on the
//! dashboard's own event stream (a snapshot four times a second), with a deadline.
mod common;
mod hosts;
use std::collections::HashMap;
use std::future::IntoFuture;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use ampire::Dashboard;
use common::*;
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long any one condition may take to show.
const DEADLINE: Duration = Duration::from_secs(30);

fn slow(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(4));
    x
}

/// As `slow`, but every input ending in 99 fails (a panic).
fn slow_and_sometimes_failing(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(4));
    assert!(x % 100 != 99, "input {x} fails on purpose");
    x
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client over a TcpStream.

struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A response's body as it arrives: by its length, in chunks, or up to the end of the stream.
struct Body {
    reader: BufReader<TcpStream>,
    chunked: bool,
    left: Option<usize>,
    done: bool,
}

impl Body {
    /// The next piece of the body, `None` at its end.
    async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if self.chunked {
            let mut line = String::new();
            self.reader.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("chunk {line:?}"))
            })?;
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await?;
            chunk.truncate(size);
            if size == 0 {
                self.done = true;
                return Ok(None);
            }
            return Ok(Some(chunk));
        }
        let mut buf = vec![0; 16 * 1024];
        let want = self.left.map_or(buf.len(), |l| l.min(buf.len()));
        if want == 0 {
            self.done = true;
            return Ok(None);
        }
        let n = self.reader.read(&mut buf[..want]).await?;
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        if let Some(left) = &mut self.left {
            *left -= n;
        }
        buf.truncate(n);
        Ok(Some(buf))
    }
}

/// Sends `raw` and reads the status line and headers of the answer.
async fn send(
    addr: SocketAddr,
    raw: &[u8],
) -> std::io::Result<(u16, HashMap<String, String>, Body)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw).await?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("status line {line:?}"),
            )
        })?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"));
    let left = headers.get("content-length").and_then(|l| l.parse().ok());
    let body = Body {
        reader,
        chunked,
        left,
        done: false,
    };
    Ok((status, headers, body))
}

fn get_request(addr: SocketAddr, path: &str, method: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Sends `raw` and reads the whole answer.
async fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let (status, headers, mut body) = send(addr, raw).await.expect("the dashboard answers");
    let mut bytes = Vec::new();
    while let Some(piece) = body.next().await.expect("the body arrives") {
        bytes.extend(piece);
    }
    Response {
        status,
        headers,
        body: bytes,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, &get_request(addr, path, "GET")).await
}

/// `/api/events`, one snapshot at a time.
struct Events {
    body: Body,
    pending: String,
}

impl Events {
    async fn open(addr: SocketAddr) -> Events {
        let (status, headers, body) = send(addr, &get_request(addr, "/api/events", "GET"))
            .await
            .expect("the dashboard answers");
        assert_eq!(status, 200);
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("text/event-stream")
        );
        Events {
            body,
            pending: String::new(),
        }
    }

    /// The next snapshot (the list of pools), `None` when the stream ended.
    async fn next(&mut self) -> Option<Vec<Value>> {
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let event: String = self.pending.drain(..end + 2).collect();
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue; // a keep-alive comment, or the retry field alone
                }
                let value: Value = serde_json::from_str(&data.join("\n")).expect("JSON data");
                return Some(value.as_array().expect("a list of pools").clone());
            }
            match self.body.next().await {
                Ok(Some(piece)) => self.pending.push_str(&String::from_utf8_lossy(&piece)),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Reads snapshots from `/api/events` until `check` returns something, within [`DEADLINE`].
async fn until<T>(addr: SocketAddr, what: &str, mut check: impl FnMut(&[Value]) -> Option<T>) -> T {
    let mut events = Events::open(addr).await;
    let mut last = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(pools) = events.next().await {
            if let Some(t) = check(&pools) {
                return Some(t);
            }
            last = pools;
        }
        None
    })
    .await;
    match found {
        Ok(Some(t)) => t,
        Ok(None) => panic!("the event stream ended before {what}"),
        Err(_) => panic!("no {what} within {DEADLINE:?}; last snapshot: {last:#?}"),
    }
}

fn named<'a>(pools: &'a [Value], name: &str) -> Option<&'a Value> {
    pools.iter().find(|p| p["name"] == name)
}

async fn start_dashboard() -> Dashboard {
    let dashboard = Dashboard::start("127.0.0.1:0")
        .await
        .expect("dashboard starts");
    assert!(dashboard.addr().ip().is_loopback());
    assert_ne!(dashboard.addr().port(), 0);
    dashboard
}

async fn named_pool(name: &str, method: StartMethod, workers: usize) -> AsyncPool {
    AsyncPool::builder()
        .name(name)
        .workers(workers)
        .start_method(method)
        .build()
        .await
        .expect("pool builds")
}

/// Kills process `pid` from outside, as the OOM killer would.
fn sigkill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

// ---------------------------------------------------------------------------------------------
// The JSON API and the event stream.

each_method! {
    async fn lists_every_pool_with_its_workers(m: StartMethod) {
        let name = format!("listed under {m}");
        let pool = named_pool(&name, m, 2).await;
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();

        let response = get(addr, "/api/pools").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.headers["content-type"], "application/json");
        let pools = response.json();
        let listed = named(pools.as_array().expect("a list"), &name).expect("the pool is listed");
        assert_eq!(listed["method"], m.to_string());
        assert!(listed["site"].as_str().unwrap().starts_with("tests/dashboard.rs:"), "{listed}");
        assert!(listed["parent"].is_null());
        assert_eq!(listed["insights"], Value::Null);
        let workers = listed["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 2);
        for (i, w) in workers.iter().enumerate() {
            assert_eq!(w["id"], i);
            assert!(["starting", "idle", "busy"].contains(&w["state"].as_str().unwrap()), "{w}");
            assert_eq!(w["restarts"], 0);
            assert!(w["last_exit"].is_null());
        }

        // Once every worker is up: idle, with the pids the pool reports (none for threads).
        let workers = until(addr, "every worker idle", |pools| {
            let workers = named(pools, &name)?["workers"].as_array()?.clone();
            workers.iter().all(|w| w["state"] == "idle").then_some(workers)
        })
        .await;
        let pids: Vec<Value> = pool.worker_pids().into_iter().map(|p| json!(p)).collect();
        let listed_pids: Vec<Value> = workers.iter().map(|w| w["pid"].clone()).collect();
        assert_eq!(listed_pids, pids);
        match m {
            StartMethod::Threading => assert!(pids.iter().all(Value::is_null)),
            _ => assert!(pids.iter().all(Value::is_u64)),
        }

        // One pool by its id.
        let id = listed["id"].as_u64().unwrap();
        let one = get(addr, &format!("/api/pools/{id}")).await;
        assert_eq!(one.status, 200);
        assert_eq!(one.json()["name"], name.as_str());
        assert_eq!(one.json()["id"], id);

        // A dropped pool is no longer listed.
        drop(pool);
        until(addr, "the dropped pool gone", |pools| named(pools, &name).is_none().then_some(()))
            .await;
        assert_eq!(get(addr, &format!("/api/pools/{id}")).await.status, 404);
        dashboard.stop().await;
    }

    async fn a_running_call_shows_its_progress(m: StartMethod) {
        let name = format!("progress under {m}");
        let pool = named_pool(&name, m, 2).await;
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();

        let results = pool
            .map_stream(slow_and_sometimes_failing, stream::iter(0..1000u64))
            .len(1000)
            .chunk_size(4);
        let consumer = tokio::spawn(results.collect::<Vec<_>>());

        // `done` grows from one snapshot to the next, and the counts add up.
        let mut seen = Vec::new();
        let call = until(addr, "the call's done count growing three times", |pools| {
            let call = named(pools, &name)?["calls"].as_array()?.first()?.clone();
            let done = call["done"].as_u64()?;
            if seen.last().is_none_or(|&last| done > last) {
                seen.push(done);
            }
            (seen.len() >= 3 && done < 900).then_some(call)
        })
        .await;
        assert_eq!(call["kind"], "map_stream");
        assert_eq!(call["total"], 1000);
        assert!(call["site"].as_str().unwrap().starts_with("tests/dashboard.rs:"), "{call}");
        assert!(call["rate"].as_f64().unwrap() > 0.0, "{call}");
        assert!(call["eta"].as_f64().unwrap() > 0.0, "{call}");
        assert!(call["elapsed"].as_f64().unwrap() > 0.0, "{call}");
        assert_eq!(call["nested"], json!([]));

        // Failures are counted apart.
        until(addr, "a failure counted", |pools| {
            let call = named(pools, &name)?["calls"].as_array()?.first()?.clone();
            (call["failed"].as_u64()? >= 1).then_some(())
        })
        .await;

        // The call leaves the list when it ends; the pool's stats keep the counts.
        let results = consumer.await.unwrap();
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 10);
        let listed = until(addr, "the finished call gone", |pools| {
            let pool = named(pools, &name)?;
            pool["calls"].as_array()?.is_empty().then(|| pool.clone())
        })
        .await;
        assert_eq!(listed["stats"]["done"], 990);
        assert_eq!(listed["stats"]["failed"], 10);
        dashboard.stop().await;
    }

    processes async fn a_killed_worker_shows_its_restart_and_exit(m: StartMethod) {
        let name = format!("killed under {m}");
        let pool = named_pool(&name, m, 2).await;
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();
        assert_eq!(pool.map(slow, 0..4u64).await.unwrap(), vec![0, 1, 2, 3]);

        let victim = pool.worker_pids()[1].expect("a running worker has a pid");
        sigkill(victim);
        let worker = until(addr, "the restart of worker 1", |pools| {
            let w = named(pools, &name)?["workers"][1].clone();
            (w["restarts"].as_u64()? >= 1 && w["pid"].is_u64()).then_some(w)
        })
        .await;
        assert_eq!(worker["restarts"], 1);
        let last_exit = worker["last_exit"].as_str().unwrap();
        assert!(last_exit.starts_with("was killed by signal 9 (SIGKILL), peak RSS "), "{last_exit}");
        assert_ne!(worker["pid"], victim, "a new worker took the slot");
        let pools = get(addr, "/api/pools").await.json();
        let other = &named(pools.as_array().unwrap(), &name).unwrap()["workers"][0];
        assert_eq!(other["restarts"], 0);
        // The pool goes on.
        assert_eq!(pool.map(slow, 0..4u64).await.unwrap(), vec![0, 1, 2, 3]);
        dashboard.stop().await;
    }
}

/// Runs inside a thread worker: builds a pool of its own there, named `inner`, whose task tells
/// the test it started and waits for the test to let it go.
fn run_an_inner_pool((name, announce, gate): (String, String, String)) -> u64 {
    block_on_fresh(async move {
        let pool = named_pool(&name, StartMethod::Threading, 1).await;
        let got = pool.apply(blocked, (announce, gate)).await.unwrap();
        pool.shutdown().await.unwrap();
        got
    })
}

#[test]
fn a_pool_built_in_a_thread_worker_is_listed_under_it() {
    run(StartMethod::Threading, |_| async {
        let outer_name = "outer of a nested pool".to_owned();
        let inner_name = "inner of a nested pool".to_owned();
        let outer = named_pool(&outer_name, StartMethod::Threading, 2).await;
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();
        let started = Signal::new();
        let gate = gate_path(StartMethod::Threading, 0);
        let call = outer.apply(
            run_an_inner_pool,
            (
                inner_name.clone(),
                started.path.to_str().unwrap().to_owned(),
                gate.clone(),
            ),
        );
        let call = tokio::spawn(call.into_future());
        started.recv().await;

        let pools = get(addr, "/api/pools").await.json();
        let pools = pools.as_array().unwrap();
        let outer_view = named(pools, &outer_name).expect("the outer pool is listed");
        let inner_view = named(pools, &inner_name).expect("the inner pool is listed");
        assert_eq!(inner_view["parent"]["pool"], outer_view["id"]);
        let slot = inner_view["parent"]["worker"].as_u64().unwrap();
        assert_eq!(outer_view["workers"][slot as usize]["state"], "busy");
        assert_eq!(inner_view["calls"][0]["kind"], "apply");
        release(&gate);
        assert_eq!(call.await.unwrap().unwrap(), 0);
        dashboard.stop().await;
    });
}

/// Runs inside a process worker: a pool of its own, whose `map` has a progress bar (so its
/// progress travels to the pool that owns the worker).
fn run_an_inner_map(tasks: u64) -> u64 {
    block_on_fresh(async move {
        let pool = named_pool("inner map", StartMethod::Threading, 1).await;
        let v = pool
            .map(slow, 0..tasks)
            .chunk_size(5)
            .progress_bar(true)
            .await
            .unwrap();
        v.len() as u64
    })
}

#[test]
fn the_calls_of_a_pool_in_a_process_worker_are_shown_under_its_call() {
    run(StartMethod::Forkserver, |_| async {
        let name = "runs nested calls".to_owned();
        let pool = named_pool(&name, StartMethod::Forkserver, 1).await;
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();
        let call = tokio::spawn(pool.apply(run_an_inner_map, 500).into_future());

        let mut seen = Vec::new();
        let nested = until(addr, "the nested call's progress growing", |pools| {
            let call = named(pools, &name)?["calls"].as_array()?.first()?.clone();
            let nested = call["nested"].as_array()?.first()?.clone();
            let done = nested["done"].as_u64()?;
            if seen.last().is_none_or(|&last| done > last) {
                seen.push(done);
            }
            (seen.len() >= 2).then_some(nested)
        })
        .await;
        // The nested pool's name and the call's kind.
        let label = nested["label"].as_str().unwrap();
        assert!(label.starts_with("inner map map"), "{label}");
        assert_eq!(nested["total"], 500);
        assert_eq!(nested["worker"], 0);
        assert!(nested["parent"].is_null());
        drop(call);
        dashboard.stop().await;
    });
}

#[test]
fn insights_show_each_worker_and_the_inputs_of_the_slowest_tasks() {
    run(StartMethod::Forkserver, |m| async move {
        let name = "with insights";
        let pool = AsyncPool::builder()
            .name(name)
            .workers(2)
            .start_method(m)
            .enable_insights(true)
            .build()
            .await
            .expect("pool builds");
        let dashboard = start_dashboard().await;
        pool.map(slow, 0..20u64).chunk_size(1).await.unwrap();

        let pools = get(dashboard.addr(), "/api/pools").await.json();
        let insights = named(pools.as_array().unwrap(), name).unwrap()["insights"].clone();
        let workers = insights["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 2);
        let tasks: u64 = workers.iter().map(|w| w["tasks"].as_u64().unwrap()).sum();
        assert_eq!(tasks, 20);
        let slowest = insights["slowest"].as_array().unwrap();
        assert!(!slowest.is_empty());
        for t in slowest {
            // The `Debug` of the task's input.
            let input: u64 = t["input"].as_str().unwrap().parse().unwrap();
            assert_eq!(t["index"], input);
            assert!(t["worker"].as_u64().unwrap() < 2);
            assert!(t["duration"].as_f64().unwrap() >= 0.004);
        }
        dashboard.stop().await;
    });
}

/// `x` after a moment: keeps the workers busy while the page is read.
fn linger(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    x
}

#[test]
fn workers_on_other_hosts_show_their_host() {
    let Some(sshd) = hosts::Sshd::start("workers_on_other_hosts_show_their_host") else {
        return;
    };
    run(StartMethod::Forkserver, |_| async move {
        let name = "on two hosts";
        let pool = AsyncPool::builder()
            .name(name)
            .workers(2)
            .launcher(sshd.launcher(&["127.0.0.1", "localhost"]))
            .build()
            .await
            .expect("pool builds");
        let dashboard = start_dashboard().await;
        pool.map(linger, 0..4u64).chunk_size(1).await.unwrap();
        let pools = get(dashboard.addr(), "/api/pools").await.json();
        let pool_view = named(pools.as_array().unwrap(), name).unwrap();
        assert_eq!(pool_view["method"], "ssh");
        let hosts: Vec<&str> = pool_view["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["host"].as_str().unwrap())
            .collect();
        assert_eq!(hosts, ["127.0.0.1", "localhost"]);
        if have_chromium() {
            let dom = dump_dom(&format!("http://{}/", dashboard.addr())).await;
            let rows = elements(&dom, "worker");
            let on: Vec<&str> = rows
                .iter()
                .filter(|r| r.get("data-host").is_some())
                .map(|r| r["data-host"].as_str())
                .collect();
            assert!(
                on.contains(&"127.0.0.1") && on.contains(&"localhost"),
                "{dom}"
            );
            assert!(dom.contains(">host</th>"), "{dom}");
        }
        dashboard.stop().await;
        pool.shutdown().await.unwrap();
    });
}

#[test]
fn events_come_four_times_a_second() {
    run(StartMethod::Threading, |_| async {
        let dashboard = start_dashboard().await;
        let mut events = Events::open(dashboard.addr()).await;
        assert!(events.next().await.is_some(), "the first at once");
        let start = std::time::Instant::now();
        for _ in 0..4 {
            assert!(events.next().await.is_some());
        }
        let four = start.elapsed();
        assert!(
            four >= Duration::from_millis(900) && four < Duration::from_secs(5),
            "four more events took {four:?}"
        );
        dashboard.stop().await;
    });
}

#[test]
fn the_page_is_one_self_contained_document() {
    run(StartMethod::Threading, |m| async move {
        // A name that would close the script element the first snapshot sits in, unescaped.
        let name = "a </script><b>bold</b> & \"quoted\" pool";
        let _pool = named_pool(name, m, 1).await;
        let dashboard = start_dashboard().await;
        let page = get(dashboard.addr(), "/").await;
        assert_eq!(page.status, 200);
        assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
        assert!(
            page.headers["content-security-policy"].starts_with("default-src 'none';"),
            "{:?}",
            page.headers
        );
        let html = page.text();
        for outside in [
            "src=", "<link", "http:", "https:", "url(", "@import", "//cdn",
        ] {
            assert!(
                !html.contains(outside),
                "the page loads something: {outside}"
            );
        }
        // The first snapshot is in the page, whole.
        let open = "<script id=\"initial\" type=\"application/json\">";
        let start = html.find(open).expect("the first snapshot") + open.len();
        let end = start + html[start..].find("</script>").unwrap();
        let first: Value = serde_json::from_str(&html[start..end]).expect("JSON");
        assert!(named(first.as_array().unwrap(), name).is_some(), "{first}");
        dashboard.stop().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Malformed requests, binding, stopping.

#[test]
fn malformed_requests_get_clear_errors_and_the_server_goes_on() {
    run(StartMethod::Threading, |_| async {
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();

        let r = get(addr, "/api/pools/notanumber").await;
        assert_eq!(r.status, 400);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(
            r.json()["error"],
            "malformed pool id \"notanumber\": expected a number"
        );
        let r = get(addr, "/api/pools/-1").await;
        assert_eq!(r.status, 400);
        let r = get(addr, "/api/pools/99999999999999999999999").await;
        assert_eq!(r.status, 400);
        let r = get(addr, "/api/pools/%FF%FE").await;
        assert_eq!(r.status, 400, "{}", r.text());

        let r = get(addr, "/api/pools/999999").await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"], "no pool with id 999999");

        let r = get(addr, "/no/such/page").await;
        assert_eq!(r.status, 404);
        assert!(r.headers["content-type"].starts_with("text/plain"));
        assert!(
            r.text().starts_with("404 not found: /no/such/page\n"),
            "{}",
            r.text()
        );

        let r = request(addr, &get_request(addr, "/api/pools", "POST")).await;
        assert_eq!(r.status, 405);
        assert!(r.text().contains("GET requests only"), "{}", r.text());

        // A query string changes nothing.
        assert_eq!(get(addr, "/api/pools?x=1&y").await.status, 200);

        // A name rebound to 127.0.0.1 by a page in a browser is refused.
        let r = request(
            addr,
            b"GET /api/pools HTTP/1.1\r\nHost: attacker.example:80\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 403);
        assert!(r.text().contains("attacker.example"), "{}", r.text());
        let r = request(
            addr,
            b"GET /api/pools HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 200);

        // Bytes that are not HTTP: a 400, and the connection closed; never a hang.
        for garbage in [
            &b"\x00\xff\xfe garbage \x01\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
            b"GET /\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(garbage).await.unwrap();
            let mut answer = Vec::new();
            let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
                .await
                .expect("the server closes the connection");
            let answer = String::from_utf8_lossy(&answer);
            assert!(read.is_ok(), "{garbage:?}: {read:?}");
            assert!(
                answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{garbage:?}: {answer}"
            );
        }
        // A connection that closes half-way through its request.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /api/po").await.unwrap();
        drop(stream);

        // The server still serves.
        let r = get(addr, "/api/pools").await;
        assert_eq!(r.status, 200);
        assert!(r.json().is_array());
        dashboard.stop().await;
    });
}

#[test]
fn an_address_that_cannot_be_bound_is_a_config_error() {
    run(StartMethod::Threading, |_| async {
        let taken = start_dashboard().await;
        let e = Dashboard::start(taken.addr()).await.unwrap_err();
        assert!(e.is_config(), "{e}");
        assert!(
            e.to_string()
                .starts_with("invalid configuration: the dashboard could not bind its address: "),
            "{e}"
        );
        let source = std::error::Error::source(&e).expect("the io error");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an io::Error");
        assert_eq!(io.kind(), std::io::ErrorKind::AddrInUse);

        let e = Dashboard::start("no-such-host.invalid:0")
            .await
            .unwrap_err();
        assert!(e.is_config(), "{e}");
        drop(taken);
    });
}

#[test]
fn stopping_or_dropping_the_dashboard_stops_the_server() {
    run(StartMethod::Threading, |_| async {
        // `stop` returns once the port is closed.
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();
        let mut events = Events::open(addr).await;
        assert!(events.next().await.is_some());
        dashboard.stop().await;
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
        assert!(events.next().await.is_none(), "the event stream ended");

        // Dropping ends the event streams, then closes the port.
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();
        let mut events = Events::open(addr).await;
        assert!(events.next().await.is_some());
        drop(dashboard);
        let ended =
            tokio::time::timeout(DEADLINE, async { while events.next().await.is_some() {} }).await;
        assert!(ended.is_ok(), "the event stream did not end");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still listening");
            tokio::task::yield_now().await;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The page, in a real browser.

/// Debian's Chromium, on the `PATH`.
fn chromium_path() -> Option<PathBuf> {
    common::on_path("chromium")
}

/// Whether the browser tests can run; says so when they cannot.
fn have_chromium() -> bool {
    let there = chromium_path().is_some();
    if !there {
        common::skip("dashboard browser test skipped: chromium is not installed");
    }
    there
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ampire-dashboard-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Chromium and every process it started (its process group), killed when dropped.
struct Browser {
    child: std::process::Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium's flags, as root, with a fresh profile.
fn chromium_args(profile: &TempDir) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--user-data-dir={}", profile.0.display()));
    args
}

/// Headless Chromium, in a process group of its own.
fn chromium(profile: &TempDir) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(chromium_path().expect("checked by have_chromium"));
    cmd.args(chromium_args(profile))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd
}

/// The page at `url` as Chromium renders it (`--dump-dom`).
async fn dump_dom(url: &str) -> String {
    let profile = TempDir::new("profile");
    let out = profile.0.join("dom.html");
    let mut cmd = chromium(&profile);
    cmd.arg("--timeout=15000")
        .arg("--dump-dom")
        .arg(url)
        .stdout(std::fs::File::create(&out).unwrap());
    let child = cmd.spawn().expect("chromium starts");
    let pid = child.id();
    let browser = Browser { child };
    let waited = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || {
            let mut browser = browser;
            let status = browser.child.wait();
            (browser, status)
        }),
    )
    .await;
    match waited {
        Ok(joined) => {
            let (browser, status) = joined.unwrap();
            assert!(status.unwrap().success(), "chromium --dump-dom failed");
            drop(browser); // and its helpers
        }
        Err(_) => {
            // The waiting thread still owns the child: kill the group, which ends its wait.
            let group = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            panic!("chromium --dump-dom took longer than {DEADLINE:?}");
        }
    }
    std::fs::read_to_string(&out).unwrap()
}

/// The attributes of every start tag in `dom` with class `class` (as Chromium serialises:
/// values in double quotes, `"` and `&` escaped).
fn elements(dom: &str, class: &str) -> Vec<HashMap<String, String>> {
    let needle = format!(" class=\"{class}\"");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = dom[from..].find(&needle) {
        let at = from + at;
        let start = dom[..at].rfind('<').unwrap();
        let (attrs, end) = attributes(&dom[start..]);
        found.push(attrs);
        from = start + end;
    }
    found
}

/// The attributes of the start tag `tag` begins with, and where it ends.
fn attributes(tag: &str) -> (HashMap<String, String>, usize) {
    let bytes = tag.as_bytes();
    let mut attrs = HashMap::new();
    let mut i = tag.find(|c: char| c.is_whitespace() || c == '>').unwrap();
    loop {
        while bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes[i] == b'>' {
            return (attrs, i + 1);
        }
        let name_end = i + tag[i..]
            .find(|c: char| c == '=' || c.is_whitespace() || c == '>')
            .unwrap();
        let name = tag[i..name_end].to_owned();
        i = name_end;
        let mut value = String::new();
        if bytes[i] == b'=' && bytes[i + 1] == b'"' {
            let close = i + 2 + tag[i + 2..].find('"').unwrap();
            value = tag[i + 2..close]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            i = close + 1;
        }
        attrs.insert(name, value);
    }
}

/// The `data-done` of the call of the pool named `name` in `dom`, with the call's element id.
fn call_done(dom: &str, name: &str) -> (String, u64) {
    let pool = elements(dom, "pool")
        .into_iter()
        .find(|p| p["data-name"] == name)
        .unwrap_or_else(|| panic!("no pool {name:?} on the page: {dom}"));
    let prefix = format!("call-{}-", pool["data-pool-id"]);
    let call = elements(dom, "call")
        .into_iter()
        .find(|c| c["id"].starts_with(&prefix))
        .unwrap_or_else(|| panic!("no call of {name:?} on the page: {dom}"));
    (call["id"].clone(), call["data-done"].parse().unwrap())
}

/// A pool with insights, running a long map (until the returned task is aborted).
async fn busy_pool(name: &str) -> (AsyncPool, tokio::task::JoinHandle<()>) {
    let pool = AsyncPool::builder()
        .name(name)
        .workers(2)
        .start_method(StartMethod::Forkserver)
        .enable_insights(true)
        .build()
        .await
        .expect("pool builds");
    let results = pool
        .map_stream(slow, stream::iter(0..1_000_000u64))
        .len(1_000_000)
        .chunk_size(4);
    // The results are drained (the task killed below fails; the others go on).
    let drain = tokio::spawn(async move { results.for_each(|_| async {}).await });
    (pool, drain)
}

#[test]
fn the_page_shows_progress_and_a_killed_worker_in_chromium() {
    if !have_chromium() {
        return;
    }
    run(StartMethod::Forkserver, |_| async {
        let name = "seen by chromium --dump-dom";
        let (pool, drain) = busy_pool(name).await;
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();
        let url = format!("http://{addr}/");
        until(addr, "the first tasks done", |pools| {
            (named(pools, name)?["calls"][0]["done"].as_u64()? > 0).then_some(())
        })
        .await;

        // Two loads some time apart: the same call, further on.
        let first = dump_dom(&url).await;
        let (call, done) = call_done(&first, name);
        assert!(done > 0, "{first}");
        until(addr, "more tasks done", |pools| {
            (named(pools, name)?["calls"][0]["done"].as_u64()? > done).then_some(())
        })
        .await;
        let second = dump_dom(&url).await;
        let (again, later) = call_done(&second, name);
        assert_eq!(again, call);
        assert!(later > done, "done went from {done} to {later}");
        let pool_el = elements(&second, "pool")
            .into_iter()
            .find(|p| p["data-name"] == name)
            .unwrap();
        assert_eq!(pool_el["data-method"], "forkserver");
        assert!(pool_el["data-site"].starts_with("tests/dashboard.rs:"));
        let calls = elements(&second, "call");
        let c = calls.iter().find(|c| c["id"] == call).unwrap();
        assert_eq!(c["data-kind"], "map_stream");
        assert_eq!(c["data-total"], "1000000");
        assert!(c["data-rate"].parse::<f64>().unwrap() > 0.0);
        assert!(c["data-eta"].parse::<f64>().unwrap() > 0.0);
        // Insights are on: a row per worker, with the tasks it ran.
        let id = &pool_el["data-pool-id"];
        assert!(second.contains("<h3>Insights</h3>"));
        let rows = elements(&second, "worker-insight");
        assert!(rows.len() >= 2);

        // A worker killed from outside: its row shows the restart and how it ended.
        let victim = pool.worker_pids()[0].expect("a running worker has a pid");
        sigkill(victim);
        until(addr, "the restart of worker 0", |pools| {
            (named(pools, name)?["workers"][0]["restarts"].as_u64()? >= 1).then_some(())
        })
        .await;
        let third = dump_dom(&url).await;
        let rows = elements(&third, "worker");
        let row = rows
            .iter()
            .find(|r| r["id"] == format!("worker-{id}-0"))
            .unwrap_or_else(|| panic!("no row of worker 0: {third}"));
        assert_eq!(row["data-restarts"], "1");
        assert!(
            row["data-last-exit"].starts_with("was killed by signal 9 (SIGKILL), peak RSS "),
            "{row:?}"
        );
        assert_ne!(row["data-pid"], victim.to_string());
        assert!(
            third.contains(">was killed by signal 9 (SIGKILL), peak RSS "),
            "{third}"
        );

        drain.abort();
        drop(pool);
        dashboard.stop().await;
    });
}

/// Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe` reads
/// commands on fd 3 and answers on fd 4; a shell maps those to our stdin and stdout).
struct DevTools {
    _browser: Browser,
    _profile: TempDir,
    input: std::process::ChildStdin,
    answers: tokio::sync::mpsc::UnboundedReceiver<Value>,
    next_id: u64,
    session: Option<String>,
}

impl DevTools {
    fn open(url: &str) -> DevTools {
        use std::os::unix::process::CommandExt;
        let profile = TempDir::new("devtools");
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(format!(
                "exec {} \"$@\" 3<&0 4>&1 0</dev/null 1>/dev/null",
                chromium_path().expect("checked by have_chromium").display()
            ))
            .arg("sh")
            .args(chromium_args(&profile))
            .arg("--remote-debugging-pipe")
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = shell.spawn().expect("chromium starts");
        let input = child.stdin.take().unwrap();
        let mut output = child.stdout.take().unwrap();
        let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = vec![0; 64 * 1024];
            while let Ok(n @ 1..) = output.read(&mut buf) {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|&b| b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice(&message[..end]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        DevTools {
            _browser: Browser { child },
            _profile: profile,
            input,
            answers,
            next_id: 1,
            session: None,
        }
    }

    /// Sends a command and waits for its answer.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.input.write_all(&bytes).unwrap();
        self.input.flush().unwrap();
        let answer = tokio::time::timeout(DEADLINE, async {
            while let Some(v) = self.answers.recv().await {
                if v["id"] == id {
                    return v;
                }
            }
            panic!("chromium closed the DevTools pipe");
        })
        .await
        .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Attaches to the page the browser opened.
    async fn attach(&mut self) {
        let targets = self.call("Target.getTargets", json!({})).await;
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page")["targetId"]
            .clone();
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": page, "flatten": true }),
            )
            .await;
        self.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
    }

    /// Evaluates `expression` until `check` accepts its value, within [`DEADLINE`]. Each
    /// evaluation but the first waits for the page to change its status element (which it does
    /// at every snapshot it renders, and when it connects or disconnects), or a second.
    async fn until<T>(
        &mut self,
        what: &str,
        expression: &str,
        mut check: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let next = format!(
            "new Promise(done => {{
                const status = document.getElementById('status');
                const seen = new MutationObserver(() => {{ seen.disconnect(); done(); }});
                seen.observe(status, {{ attributes: true }});
                setTimeout(() => {{ seen.disconnect(); done(); }}, 1000);
            }}).then(() => ({expression}))"
        );
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = Value::Null;
        let mut first = true;
        while tokio::time::Instant::now() < deadline {
            let expression = if first { expression } else { next.as_str() };
            first = false;
            let r = self
                .call(
                    "Runtime.evaluate",
                    json!({
                        "expression": expression,
                        "returnByValue": true,
                        "awaitPromise": true,
                    }),
                )
                .await;
            last = r["result"]["value"].clone();
            if let Some(t) = check(&last) {
                return t;
            }
        }
        panic!("no {what} on the page within {DEADLINE:?}; last seen: {last}");
    }
}

#[test]
fn the_page_updates_itself_from_the_event_stream_in_chromium() {
    if !have_chromium() {
        return;
    }
    run(StartMethod::Forkserver, |_| async {
        let name = "followed live by chromium";
        let (pool, drain) = busy_pool(name).await;
        let dashboard = start_dashboard().await;
        let addr = dashboard.addr();
        until(addr, "the first tasks done", |pools| {
            (named(pools, name)?["calls"][0]["done"].as_u64()? > 0).then_some(())
        })
        .await;
        let mut page = DevTools::open(&format!("http://{addr}/"));
        page.attach().await;

        // What the page shows of our pool: snapshots received, its call's done count, and
        // worker 0's row.
        let probe = format!(
            "(() => {{
                const pool = [...document.querySelectorAll('section.pool')]
                    .find(p => p.dataset.name === {name:?});
                const call = pool && pool.querySelector('.call');
                const w = pool && pool.querySelector('tr.worker[data-worker-id=\"0\"]');
                return {{
                    status: document.getElementById('status').dataset.state,
                    snapshots: Number(document.getElementById('status').dataset.snapshots),
                    call: call && call.id,
                    done: call && Number(call.dataset.done),
                    text: call && call.querySelector('.call-counts').textContent,
                    restarts: w && Number(w.dataset.restarts),
                    exit: w && w.dataset.lastExit,
                    cell: w && w.querySelector('.last-exit').textContent,
                }};
            }})()"
        );
        // Live: without a reload, the page receives snapshots and the same call moves on.
        let first = page
            .until("a first count", &probe, |v| {
                v["done"].as_u64().map(|_| v.clone())
            })
            .await;
        let (call, done) = (first["call"].clone(), first["done"].as_u64().unwrap());
        let later = page
            .until("the count moving", &probe, |v| {
                (v["status"] == "live"
                    && v["done"].as_u64()? > done
                    && v["snapshots"].as_u64()? >= 3)
                    .then(|| v.clone())
            })
            .await;
        assert_eq!(later["call"], call);
        assert!(
            later["text"].as_str().unwrap().ends_with("/ 1,000,000"),
            "{later}"
        );

        // A worker killed from outside appears on the open page.
        let victim = pool.worker_pids()[0].expect("a running worker has a pid");
        sigkill(victim);
        let seen = page
            .until("worker 0's restart", &probe, |v| {
                (v["restarts"].as_u64()? >= 1).then(|| v.clone())
            })
            .await;
        assert_eq!(seen["restarts"], 1);
        for key in ["exit", "cell"] {
            let text = seen[key].as_str().unwrap_or_default();
            assert!(
                text.starts_with("was killed by signal 9 (SIGKILL), peak RSS "),
                "{seen}"
            );
        }

        // The server stops: the page says so.
        dashboard.stop().await;
        page.until("the page noticing", &probe, |v| {
            (v["status"] == "disconnected").then_some(())
        })
        .await;
        drain.abort();
        drop(pool);
    });
}
