//! The link to a process worker: a pair of byte streams, one the pool writes tasks to and one it
//! reads results from. For the workers of this machine they are pipes this process makes; the
//! pool needs only the streams, so any pair (a launcher's stdin and stdout) would do.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

use super::{Link, Process, Spec};
use crate::error::Error;
use crate::proto::AsyncReader;

/// The stream the pool writes tasks to.
pub(crate) type Writes = Box<dyn AsyncWrite + Send + Unpin>;
/// The stream the pool reads results from.
pub(crate) type Reads = Box<dyn AsyncRead + Send + Unpin>;

/// The pool's end of a worker's task stream.
pub(crate) struct Tx {
    pub io: Writes,
    pub buf: Vec<u8>,
}

/// The pool's end of a worker's result stream.
pub(crate) type Rx = AsyncReader<Reads>;

/// What a new local worker process gets: the read end of its task pipe, the write end of its
/// result pipe and its descriptor of the pool's arena; and the pool's own two ends, which a
/// forked child must close.
pub(crate) struct ChildEnds {
    pub tasks: OwnedFd,
    pub results: OwnedFd,
    pub arena: OwnedFd,
    pub parents: [RawFd; 2],
}

/// Starts a worker on this machine, the part every process start method shares: makes its pipes,
/// has `start` create the process with the child's ends, then registers the pool's ends with the
/// reactor. `inherits` says whether the worker inherits the pool's memory (so the shared object
/// is not sent).
pub(crate) async fn local<F, Fut>(spec: &Spec, inherits: bool, start: F) -> Result<Link, Error>
where
    F: FnOnce(ChildEnds) -> Fut,
    Fut: Future<Output = Result<Box<dyn Process>, Error>>,
{
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let pipes = || -> io::Result<_> {
        let (tasks_r, tasks_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (results_r, results_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Larger pipes mean fewer wake-ups per chunk; the kernel may refuse, which is fine.
        for fd in [&tasks_w, &results_w] {
            let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(1 << 20));
        }
        let arena = match &spec.arena {
            Some(a) => a.fd().try_clone_to_owned()?,
            None => return Err(io::Error::other("a process pool has no arena")),
        };
        let parents = [tasks_w.as_raw_fd(), results_r.as_raw_fd()];
        let child = ChildEnds {
            tasks: tasks_r,
            results: results_w,
            arena,
            parents,
        };
        Ok((tasks_w, results_r, child))
    };
    let (tasks, results, child) = pipes().map_err(Error::start)?;
    let proc = start(child).await?;
    let register = || -> io::Result<(Writes, Reads)> {
        Ok((
            Box::new(pipe::Sender::from_owned_fd(tasks)?),
            Box::new(pipe::Receiver::from_owned_fd(results)?),
        ))
    };
    let (writes, reads) = register().map_err(Error::start)?;
    Ok(Link::Process {
        writes,
        reads,
        proc,
        inherits,
    })
}
