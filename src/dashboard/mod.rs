//! The web dashboard (feature `dashboard`): one HTTP server, run as a task on the caller's tokio
//! runtime, showing every pool of this process live.
//!
//! What it serves:
//!
//! - `GET /`: one self-contained HTML page (inline script and style, nothing fetched from
//!   elsewhere). It carries a first snapshot in the page itself, then follows `/api/events`.
//! - `GET /api/pools`: every live pool, as a JSON list (see `crate::observe::view::PoolView`).
//! - `GET /api/pools/{id}`: one pool; `400` for an id that is not a number, `404` for an unknown
//!   one, both with a JSON body `{"error": "..."}`.
//! - `GET /api/events`: server-sent events, each a `message` whose data is the JSON list of
//!   `/api/pools`, four a second.
//!
//! Anything else is a `404` (or a `405` for another method than `GET`), with a plain-text body
//! saying what the dashboard serves. Requests that are not HTTP are answered by hyper with a
//! `400` and the connection is closed.
//!
//! On a loopback address, a request whose `Host` is a name other than `localhost` gets a `403`
//! (a DNS name rebound to `127.0.0.1` by a web page).
//!
//! The page builds its DOM from each snapshot with stable hooks, which the tests read:
//! `#status` (`data-state`: `connecting`, `live`, `disconnected`; `data-snapshots`: how many it
//! rendered); `section.pool#pool-{id}` (`data-name`, `data-method`, `data-site`,
//! `data-parent-pool`, `data-parent-worker`), nested in its parent's section; its `.stats`
//! (`data-done`, `data-failed`, `data-restarts`, ...); `.call#call-{pool}-{call}` (`data-kind`,
//! `data-done`, `data-failed`, `data-total`, `data-rate`, `data-eta`) with its
//! `.nested-call#nested-{pool}-{call}-{id}` (`data-label`, `data-worker`, `data-done`, ...);
//! `tr.worker#worker-{pool}-{slot}` (`data-pid`, `data-state`, `data-task-age`,
//! `data-restarts`, `data-last-exit`); `tr.worker-insight` and `tr.slow-task` (`data-input`).
//!
//! A snapshot is taken per request or per event, with `crate::observe::view::snapshot`:
//! the pools pay nothing while nobody looks.
//!
//! Stopping: the [`Dashboard`] holds the sending side of a watch channel. Dropping it (or
//! [`Dashboard::stop`]) closes the channel: the server stops accepting, every event stream ends
//! at its next tick, and the connections close once their response is sent (axum's graceful
//! shutdown).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::observe::registry::Watching;
use crate::observe::view;

/// How often `/api/events` pushes a snapshot.
const EVERY: Duration = Duration::from_millis(250);

/// How long [`Dashboard::stop`] lets open responses finish before it closes them.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// The page, with `__SNAPSHOT__` where the first snapshot goes.
const PAGE: &str = include_str!("page.html");

/// A web dashboard of every pool of this process, served over HTTP while it lives.
///
/// It shows each pool, its name and where it was built (a pool built in a thread worker of
/// another pool, under that pool); each running call's progress (done and total, rate, time
/// left, failures) and under it the calls with a progress bar of pools nested in its process
/// workers; the workers (pid, state, how long the current task has run, restarts, how the last
/// one ended); and, for pools built with
/// [`enable_insights`](crate::Builder::enable_insights), their insights. The page updates
/// itself four times a second. The same data is served as JSON:
///
/// | path | what |
/// |---|---|
/// | `/` | the page (self-contained: no external script, style or font) |
/// | `/api/pools` | every live pool, a JSON list |
/// | `/api/pools/{id}` | one pool (`404` if there is none with that id, `400` for a malformed id) |
/// | `/api/events` | server-sent events: the list of `/api/pools`, four times a second |
///
/// The server runs as a task on the tokio runtime that called [`start`](Dashboard::start): no
/// other process, thread or command. Dropping the `Dashboard`, or [`stop`](Dashboard::stop),
/// stops it.
///
/// # Security
///
/// There is **no authentication** and no encryption. Whoever can reach the address sees every
/// pool of the process: names, the source locations of pools and calls, worker pids, how
/// workers died, and with insights the `Debug` of the inputs of the slowest tasks. Bind it to a
/// loopback address (`127.0.0.1:0`, as every example here does) unless you mean to show all of
/// that to your network; binding another address is that choice.
///
/// While it is bound to a loopback address it answers only requests whose `Host` is an IP
/// address or `localhost` (anything else gets `403`), so that a web page the browser visits
/// cannot read it through a DNS name rebound to `127.0.0.1`.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), ampire::Error> {
/// let dashboard = ampire::Dashboard::start("127.0.0.1:0").await?;
/// println!("dashboard at http://{}/", dashboard.addr());
/// // ... run pools; the page shows them ...
/// dashboard.stop().await;
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping the Dashboard stops its server"]
pub struct Dashboard {
    addr: SocketAddr,
    /// Dropped to stop the server: its receivers see the channel close.
    stop: watch::Sender<()>,
    server: JoinHandle<()>,
    /// While it lives, pools note when each job is sent (a task's age on the page).
    _watching: Watching,
}

impl Dashboard {
    /// Binds `addr` and starts serving the dashboard on the current tokio runtime.
    ///
    /// `addr` is anything [`tokio::net::ToSocketAddrs`] takes: `"127.0.0.1:0"` picks a free
    /// port on the loopback interface (see [`addr`](Dashboard::addr) for which). Read the
    /// [security note](Dashboard#security) before binding anything else.
    ///
    /// # Errors
    ///
    /// If the address cannot be resolved or bound (in use, not permitted, not local): an
    /// [`Error`] with [`is_config`](Error::is_config), whose
    /// [`source()`](std::error::Error::source) is the `io::Error`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with I/O enabled.
    pub async fn start(addr: impl ToSocketAddrs) -> Result<Dashboard, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| bind_error("bind its address", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| bind_error("read its bound address", e))?;
        let (stop, stopped) = watch::channel(());
        let app = router(stopped.clone(), addr.ip().is_loopback());
        let mut stopped = stopped;
        let server = tokio::spawn(async move {
            let shutdown = async move {
                // Never sent on: this ends when the `Dashboard` is dropped.
                while stopped.changed().await.is_ok() {}
            };
            // Serving itself never fails: a failed accept is retried by axum.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
        Ok(Dashboard {
            addr,
            stop,
            server,
            _watching: Watching::start(),
        })
    }

    /// The address it listens on: with port `0` asked for, the port it got.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ampire::Error> {
    /// let dashboard = ampire::Dashboard::start("127.0.0.1:0").await?;
    /// assert_ne!(dashboard.addr().port(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and waits until it has stopped: it accepts no more connections (the
    /// port is released when this returns), event streams end, and responses being sent get
    /// a second to finish before their connections are closed. Dropping the `Dashboard` does
    /// the same without waiting.
    pub async fn stop(self) {
        let Dashboard {
            stop, mut server, ..
        } = self;
        drop(stop);
        if tokio::time::timeout(STOP_GRACE, &mut server).await.is_err() {
            server.abort();
            let _ = server.await;
        }
    }
}

impl fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dashboard")
            .field("addr", &self.addr)
            .field("running", &!self.server.is_finished())
            .finish()
    }
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Dashboard>();
};

fn bind_error(what: &str, e: std::io::Error) -> Error {
    Error::config(format!("the dashboard could not {what}: {e}")).with_source(Arc::new(e))
}

fn router(stopped: watch::Receiver<()>, loopback: bool) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/pools", get(pools))
        .route("/api/pools/{id}", get(pool))
        .route("/api/events", get(events).with_state(stopped))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(loopback, check_host))
}

/// On a loopback address, refuses a request whose `Host` is a name other than `localhost`: a
/// DNS name rebound to this address, from a page in a browser.
async fn check_host(State(loopback): State<bool>, request: Request, next: Next) -> Response {
    if loopback {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        if let Some(host) = host.filter(|h| !is_local_host(h)) {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "403 forbidden: this dashboard listens on a loopback address and answers \
                     only requests for an IP address or localhost, not {host:?}\n"
                ),
            );
        }
    }
    next.run(request).await
}

/// Whether a `Host` header names an IP address or `localhost` (with or without a port).
fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // An IPv6 address: `[::1]:port`.
        Some(rest) => match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

async fn page() -> Response {
    // `<` cannot close the script element the snapshot sits in once escaped (it only occurs
    // inside JSON strings, where `\u003c` means the same).
    let snapshot = match serde_json::to_string(&view::snapshot()) {
        Ok(json) => json.replace('<', "\\u003c"),
        Err(_) => "[]".to_owned(),
    };
    let mut response = PAGE.replacen("__SNAPSHOT__", &snapshot, 1).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
        ),
    );
    no_store(response)
}

async fn pools() -> Response {
    json(StatusCode::OK, &view::snapshot())
}

async fn pool(id: Result<Path<String>, PathRejection>) -> Response {
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("malformed pool id: {e}")),
    };
    let Ok(number) = id.parse::<u64>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("malformed pool id {id:?}: expected a number"),
        );
    };
    match view::snapshot().into_iter().find(|p| p.id == number) {
        Some(pool) => json(StatusCode::OK, &pool),
        None => json_error(StatusCode::NOT_FOUND, format!("no pool with id {number}")),
    }
}

async fn events(State(stopped): State<watch::Receiver<()>>) -> Response {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = Snapshots { tick, stopped };
    no_store(
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

/// The event stream: a snapshot at every tick, until the dashboard stops.
struct Snapshots {
    tick: tokio::time::Interval,
    stopped: watch::Receiver<()>,
}

impl futures_core::Stream for Snapshots {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // The channel closes when the dashboard stops; the next tick notices.
        if self.stopped.has_changed().is_err() {
            return Poll::Ready(None);
        }
        match self.tick.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                let event = match serde_json::to_string(&view::snapshot()) {
                    Ok(json) => Event::default().data(json),
                    Err(e) => Event::default()
                        .event("error")
                        .data(format!("could not serialise the snapshot: {e}")),
                };
                Poll::Ready(Some(Ok(event.retry(Duration::from_secs(1)))))
            }
        }
    }
}

async fn not_found(uri: Uri) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "404 not found: {}\nthe dashboard serves /, /api/pools, /api/pools/{{id}} and \
             /api/events\n",
            uri.path()
        ),
    )
}

async fn method_not_allowed() -> Response {
    text(
        StatusCode::METHOD_NOT_ALLOWED,
        "405 method not allowed: the dashboard answers GET requests only\n".to_owned(),
    )
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = (status, body).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            no_store(response)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("500 internal server error: could not serialise the snapshot: {e}\n"),
        ),
    }
}

fn json_error(status: StatusCode, message: String) -> Response {
    #[derive(Serialize)]
    struct Body {
        error: String,
    }
    json(status, &Body { error: message })
}

fn text(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    no_store(response)
}

/// Snapshots are live: no cache keeps them, and no browser sniffs them into something else.
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::is_local_host;

    #[test]
    fn local_hosts() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:1",
            "[::1]:80",
            "[::1]",
            "10.0.0.1:5",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:80",
            "localhost.evil:80",
            "[::1",
            "",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }
}
