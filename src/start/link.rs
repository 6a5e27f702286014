//! The link to a process worker: a pair of byte streams, one the pool writes tasks to and one it
//! reads results from. For the workers of this machine they are pipes this process makes; the
//! pool needs only the streams, so any pair (a launcher's stdin and stdout) would do.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;

use super::{Link, Process, Spec};
use crate::error::Error;
use crate::proto::AsyncReader;
use crate::sys::journal::Journal;

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
/// result pipe, its descriptor of the pool's arena and of its journal; and the pool's own two
/// ends, which a forked child must close.
pub(crate) struct ChildEnds {
    pub tasks: OwnedFd,
    pub results: OwnedFd,
    pub arena: OwnedFd,
    pub journal: OwnedFd,
    pub parents: [RawFd; 2],
}

impl ChildEnds {
    /// The descriptors, in the order a worker takes them (`worker::Ends`, and descriptors 3 to 6
    /// of a re-executed worker).
    pub(crate) fn fds(&self) -> [BorrowedFd<'_>; 4] {
        [
            self.tasks.as_fd(),
            self.results.as_fd(),
            self.arena.as_fd(),
            self.journal.as_fd(),
        ]
    }

    /// What the worker loop takes, once the child runs.
    pub(crate) fn into_worker(self) -> crate::worker::Ends {
        crate::worker::Ends {
            tasks: self.tasks,
            results: self.results,
            arena: Some(self.arena),
            journal: Some(self.journal),
        }
    }
}

/// The size of a worker's journal ring: the results of a batch must fit in it, larger ones go
/// through the pipe. Reserved, not allocated: a worker touches about a megabyte of it plus its
/// largest batch.
const JOURNAL: usize = 64 << 20;

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
        let journal = Journal::new(JOURNAL, crate::proto::deadline::now_us())?;
        let parents = [tasks_w.as_raw_fd(), results_r.as_raw_fd()];
        let child = ChildEnds {
            tasks: tasks_r,
            results: results_w,
            arena,
            journal: journal.fd().try_clone_to_owned()?,
            parents,
        };
        Ok((tasks_w, results_r, child, journal))
    };
    let (tasks, results, child, journal) =
        pipes().map_err(|e| Error::start_io("could not make the worker's pipes", e))?;
    let proc = start(child).await?;
    let register = || -> io::Result<(Writes, Reads)> {
        Ok((
            Box::new(pipe::Sender::from_owned_fd(tasks)?),
            Box::new(pipe::Receiver::from_owned_fd(results)?),
        ))
    };
    let (writes, reads) =
        register().map_err(|e| Error::start_io("could not register the worker's pipes", e))?;
    Ok(Link::Process {
        writes,
        reads,
        journal: Some(Arc::new(journal)),
        proc,
        inherits,
    })
}
