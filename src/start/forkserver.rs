//! `Forkserver`: workers forked from a small single-threaded server.
//!
//! `ampire::init()` forks the server while the pool owner is still single-threaded (or, when
//! threads already exist, re-executes the binary in the server role from the launcher thread).
//! The owner and the server talk over an `AF_UNIX` `SOCK_SEQPACKET` socket pair, one message per
//! datagram:
//!
//! - owner → server: `Spawn { token }` with the worker's two pipe ends, its arena descriptor and
//!   its journal attached (`SCM_RIGHTS`), and its standard output and error when the pool relays
//!   them;
//! - server → owner: `Spawned { token, pid }` with a pidfd of the new worker attached, opened
//!   before the server could reap it (so the pid cannot have been reused); `Failed { token }`;
//!   `Exited { pid, status, used }` when the server reaped a worker (only a parent can collect a
//!   status, and what the worker used).
//!
//! The server dies with its owner (`PR_SET_PDEATHSIG` and EOF on the socket), and its workers die
//! with the server (`PR_SET_PDEATHSIG`, set by the server's only thread).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::child::Pidfd;
use super::link::{self, ChildEnds};
use super::{BoxFuture, Link, Pool, Process, Spec, Start, launcher};
use crate::error::{Error, Exit, Used};
use crate::sys;
use crate::sys::local::ProcessLocal;
use crate::sys::reap::{self, Status};

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Spawn { token: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Spawned {
        token: u64,
        pid: i32,
    },
    Failed {
        token: u64,
        error: String,
    },
    Exited {
        pid: i32,
        status: Status,
        used: Used,
    },
}

// ---------------------------------------------------------------------------------------------
// The server process.

/// The server's loop; returns its exit code.
pub(crate) fn serve(ctl: OwnedFd) -> i32 {
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let mut old = SigSet::empty();
    if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&chld), Some(&mut old))
        .is_err()
    {
        return 2;
    }
    let Ok(sfd) = SignalFd::with_flags(&chld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    else {
        return 2;
    };
    let server = std::process::id();
    let mut buf = [0u8; 256];
    loop {
        let mut fds = [
            PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 2,
        }
        let ctl_ready = fds[0].any().unwrap_or(false);
        let chld_ready = fds[1].any().unwrap_or(false);
        if chld_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
            while let Ok(Some((pid, status, used))) = reap::wait4(None, false) {
                let reply = Reply::Exited { pid, status, used };
                if send(&ctl, &reply, &[]).is_err() {
                    return 0;
                }
            }
        }
        if ctl_ready {
            let (n, fds) = match sys::fd::recv_with_fds(&ctl, &mut buf) {
                Ok(r) => r,
                Err(_) => return 0,
            };
            if n == 0 && fds.is_empty() {
                return 0; // the owner is gone
            }
            let Ok(Request::Spawn { token }) = postcard::from_bytes::<Request>(&buf[..n]) else {
                continue;
            };
            let reply = match fds.len() {
                4 | 6 => spawn_one(&ctl, &sfd, &old, server, fds, token),
                _ => Err((
                    Reply::Failed {
                        token,
                        error: "expected four or six descriptors".into(),
                    },
                    None,
                )),
            };
            let sent = match reply {
                Ok((reply, pidfd)) => send(&ctl, &reply, &[pidfd.as_raw_fd()]),
                Err((reply, _)) => send(&ctl, &reply, &[]),
            };
            if sent.is_err() {
                return 0;
            }
        }
    }
}

type SpawnResult = Result<(Reply, OwnedFd), (Reply, Option<OwnedFd>)>;

fn spawn_one(
    ctl: &OwnedFd,
    sfd: &SignalFd,
    old: &SigSet,
    server: u32,
    fds: Vec<OwnedFd>,
    token: u64,
) -> SpawnResult {
    let mut fds = fds.into_iter();
    let [tasks, results, arena, journal] =
        std::array::from_fn(|_| fds.next().expect("four or six descriptors"));
    let output = fds.next().zip(fds.next()).map(|(o, e)| [o, e]);
    let (ctl_fd, sfd_fd) = (ctl.as_raw_fd(), sfd.as_fd().as_raw_fd());
    let old = *old;
    let forked = sys::fork::fork_with((), move || {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        sys::fd::close_inherited(ctl_fd);
        sys::fd::close_inherited(sfd_fd);
        if !launcher::dies_with(server) {
            return 1;
        }
        let ends = crate::worker::Ends {
            tasks,
            results,
            arena: Some(arena),
            journal: Some(journal),
            output,
        };
        crate::worker::serve(ends, None)
    });
    let failed = |e: std::io::Error| {
        (
            Reply::Failed {
                token,
                error: e.to_string(),
            },
            None,
        )
    };
    let pid = forked.map_err(failed)?;
    let pidfd = sys::fd::pidfd_open(pid.as_raw()).map_err(failed)?;
    Ok((
        Reply::Spawned {
            token,
            pid: pid.as_raw(),
        },
        pidfd,
    ))
}

fn send<T: Serialize>(sock: &impl AsFd, msg: &T, fds: &[i32]) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(msg).map_err(std::io::Error::other)?;
    sys::fd::send_with_fds(sock, &bytes, fds)
}

/// Forks the server from this (single-threaded) process; called by `init()`.
pub(crate) fn start_early() -> std::io::Result<()> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let owner = std::process::id();
    let ours_fd = ours.as_raw_fd();
    sys::fork::fork_with((), move || {
        sys::fd::close_inherited(ours_fd);
        sys::fd::ignore_sigpipe();
        if !launcher::dies_with(owner) {
            return 1;
        }
        serve(theirs)
    })?;
    install(Client::new(ours, None)?);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The owner's side.

/// This process's forkserver connection. An async mutex: starting a server on first use awaits
/// the launcher, and concurrent first users must wait for that one server, not start their own.
static CLIENT: ProcessLocal<tokio::sync::Mutex<Option<Arc<Client>>>> = ProcessLocal::new();

fn install(client: Arc<Client>) {
    if let Ok(slot) =
        CLIENT.get_or_try_init(|| Ok::<_, std::io::Error>(tokio::sync::Mutex::new(None)))
    {
        if let Ok(mut guard) = slot.try_lock() {
            *guard = Some(client);
        }
    }
}

/// The connection to this process's forkserver, started on first use if `init()` could not.
async fn client() -> Result<Arc<Client>, Error> {
    let slot = CLIENT
        .get_or_try_init(|| Ok::<_, std::io::Error>(tokio::sync::Mutex::new(None)))
        .map_err(Error::start)?;
    let mut guard = slot.lock().await;
    if let Some(c) = guard.as_ref().filter(|c| !c.is_dead()) {
        return Ok(c.clone());
    }
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::start_io("could not create the forkserver socket", e.into()))?;
    let child =
        launcher::run(move || launcher::spawn_self(launcher::ROLE_SERVER, &[theirs.as_fd()]))
            .await
            .and_then(|r| r)
            .map_err(|e| Error::start_io("could not start the forkserver", e))?;
    let client = Client::new(ours, Some(child))
        .map_err(|e| Error::start_io("could not start the forkserver", e))?;
    *guard = Some(client.clone());
    Ok(client)
}

struct Client {
    ctl: OwnedFd,
    state: Mutex<ClientState>,
}

/// A forked worker's pid and pidfd, or why the server could not fork it.
type SpawnReply = Result<(i32, OwnedFd), String>;

#[derive(Default)]
struct ClientState {
    next_token: u64,
    dead: bool,
    pending: HashMap<u64, oneshot::Sender<SpawnReply>>,
    live: HashSet<i32>,
    exits: HashMap<i32, ExitSlot>,
}

/// How a worker ended, and what it used.
type Reaped = (Exit, Option<Used>);

enum ExitSlot {
    Waiting(oneshot::Sender<Reaped>),
    Arrived(Reaped),
}

impl Client {
    /// `child` is the server's pid when it is our child (a re-executed server), to be reaped.
    fn new(ctl: OwnedFd, child: Option<i32>) -> std::io::Result<Arc<Client>> {
        let client = Arc::new(Client {
            ctl,
            state: Mutex::new(ClientState::default()),
        });
        let reader = client.clone();
        std::thread::Builder::new()
            .name("ampire-forkserver".into())
            .spawn(move || {
                reader.read_loop();
                if let Some(pid) = child {
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                }
            })?;
        Ok(client)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_dead(&self) -> bool {
        self.state().dead
    }

    fn read_loop(&self) {
        let mut buf = [0u8; 256];
        loop {
            let (n, mut fds) = match sys::fd::recv_with_fds(&self.ctl, &mut buf) {
                Ok((0, fds)) if fds.is_empty() => break,
                Ok(r) => r,
                Err(_) => break,
            };
            let Ok(reply) = postcard::from_bytes::<Reply>(&buf[..n]) else {
                continue;
            };
            let mut st = self.state();
            match reply {
                Reply::Spawned { token, pid } => {
                    let Some(tx) = st.pending.remove(&token) else {
                        continue;
                    };
                    match fds.pop() {
                        Some(pidfd) => {
                            st.live.insert(pid);
                            let _ = tx.send(Ok((pid, pidfd)));
                        }
                        None => {
                            let _ = tx.send(Err("the forkserver sent no pidfd".into()));
                        }
                    }
                }
                Reply::Failed { token, error } => {
                    if let Some(tx) = st.pending.remove(&token) {
                        let _ = tx.send(Err(error));
                    }
                }
                Reply::Exited { pid, status, used } => {
                    let exit = (super::child::to_exit(status), Some(used));
                    if !st.live.remove(&pid) {
                        continue;
                    }
                    match st.exits.remove(&pid) {
                        Some(ExitSlot::Waiting(tx)) => {
                            let _ = tx.send(exit);
                        }
                        _ => {
                            st.exits.insert(pid, ExitSlot::Arrived(exit));
                        }
                    }
                }
            }
        }
        // The server is gone; its workers died with it (PR_SET_PDEATHSIG).
        let mut st = self.state();
        st.dead = true;
        st.pending.clear();
        for (_, slot) in st.exits.drain() {
            if let ExitSlot::Waiting(tx) = slot {
                let _ = tx.send((Exit::Unknown, None));
            }
        }
        st.live.clear();
    }

    async fn spawn(&self, ends: ChildEnds) -> SpawnReply {
        let (tx, rx) = oneshot::channel();
        let token = {
            let mut st = self.state();
            if st.dead {
                return Err("the forkserver exited".into());
            }
            st.next_token += 1;
            let token = st.next_token;
            st.pending.insert(token, tx);
            token
        };
        let msg = postcard::to_stdvec(&Request::Spawn { token }).map_err(|e| e.to_string())?;
        let fds: Vec<_> = ends.fds().iter().map(|fd| fd.as_raw_fd()).collect();
        sys::fd::send_with_fds(&self.ctl, &msg, &fds).map_err(|e| {
            self.state().pending.remove(&token);
            e.to_string()
        })?;
        drop(ends);
        rx.await.map_err(|_| "the forkserver exited".to_string())?
    }

    fn watch(&self, pid: i32) -> oneshot::Receiver<Reaped> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state();
        match st.exits.remove(&pid) {
            Some(ExitSlot::Arrived(exit)) => {
                let _ = tx.send(exit);
            }
            _ if st.dead => {
                let _ = tx.send((Exit::Unknown, None));
            }
            _ => {
                st.exits.insert(pid, ExitSlot::Waiting(tx));
            }
        }
        rx
    }

    fn forget(&self, pid: i32) {
        let mut st = self.state();
        st.live.remove(&pid);
        st.exits.remove(&pid);
    }
}

pub(crate) struct Forkserver;

impl Start for Forkserver {
    fn launch<'a>(
        &'a self,
        id: usize,
        spec: &'a Spec,
        _pool: &'a Pool,
    ) -> BoxFuture<'a, Result<Link, Error>> {
        Box::pin(async move {
            let client = client().await?;
            link::local(spec, id, false, |ends: ChildEnds| async move {
                let (pid, pidfd) = client
                    .spawn(ends)
                    .await
                    .map_err(|e| Error::start(format!("the forkserver could not fork: {e}")))?;
                let exit = client.watch(pid);
                let pidfd = Pidfd::new(pidfd)
                    .map_err(|e| Error::start_io("could not watch the worker", e))?;
                Ok(Box::new(ServerChild {
                    pid,
                    pidfd,
                    client,
                    exit_rx: Some(exit),
                    exit: None,
                    used: None,
                }) as _)
            })
            .await
        })
    }
}

/// A worker forked by the server: killed through its pidfd, its status reported by the server.
struct ServerChild {
    pid: i32,
    pidfd: Pidfd,
    client: Arc<Client>,
    exit_rx: Option<oneshot::Receiver<Reaped>>,
    exit: Option<Exit>,
    used: Option<Used>,
}

impl Process for ServerChild {
    fn pid(&self) -> u32 {
        self.pid as u32
    }

    fn kill(&mut self) {
        if self.exit.is_none() {
            self.pidfd.kill();
        }
    }

    fn wait(&mut self) -> BoxFuture<'_, Exit> {
        Box::pin(async move {
            if self.exit.is_none() {
                let (exit, used) = match self.exit_rx.as_mut() {
                    Some(rx) => rx.await.unwrap_or((Exit::Unknown, None)),
                    None => (Exit::Unknown, None),
                };
                self.exit_rx = None;
                self.exit = Some(exit);
                self.used = used;
            }
            self.exit.unwrap_or(Exit::Unknown)
        })
    }

    fn used(&self) -> Option<Used> {
        self.used
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.kill();
            self.client.forget(self.pid);
        }
    }
}
