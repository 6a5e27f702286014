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
use crate::observe::output::{self, Stream};
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
    /// Its standard output and error, when the pool relays them (see `observe::output`).
    pub output: Option<[OwnedFd; 2]>,
    pub parents: [RawFd; 2],
}

impl ChildEnds {
    /// The descriptors, in the order a worker takes them (`worker::Ends`, and descriptors 3 to 6
    /// of a re-executed worker, then 7 and 8 for its output when the pool relays it).
    pub(crate) fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = vec![
            self.tasks.as_fd(),
            self.results.as_fd(),
            self.arena.as_fd(),
            self.journal.as_fd(),
        ];
        if let Some([out, err]) = &self.output {
            fds.extend([out.as_fd(), err.as_fd()]);
        }
        fds
    }

    /// What the worker loop takes, once the child runs.
    pub(crate) fn into_worker(self) -> crate::worker::Ends {
        crate::worker::Ends {
            tasks: self.tasks,
            results: self.results,
            arena: Some(self.arena),
            journal: Some(self.journal),
            output: self.output,
        }
    }
}

/// The size of a worker's journal ring: the results of a batch must fit in it, larger ones go
/// through the pipe. Reserved, not allocated: a worker touches about a megabyte of it plus its
/// largest batch.
const JOURNAL: usize = 64 << 20;

/// Starts worker `id` on this machine, the part every process start method shares: makes its
/// pipes, has `start` create the process with the child's ends, then registers the pool's ends
/// with the reactor (and relays its output, when the pool does). `inherits` says whether the
/// worker inherits the pool's memory (so the shared object is not sent).
pub(crate) async fn local<F, Fut>(
    spec: &Spec,
    id: usize,
    inherits: bool,
    start: F,
) -> Result<Link, Error>
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
        // Its output, when the pool relays it: the pool's read ends, the child's write ends.
        let output = match spec.relay {
            Some(_) => {
                let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                Some(([out_r, err_r], [out_w, err_w]))
            }
            None => None,
        };
        let (ours, theirs) = match output {
            Some((ours, theirs)) => (Some(ours), Some(theirs)),
            None => (None, None),
        };
        let child = ChildEnds {
            tasks: tasks_r,
            results: results_w,
            arena,
            journal: journal.fd().try_clone_to_owned()?,
            output: theirs,
            parents,
        };
        Ok((tasks_w, results_r, child, journal, ours))
    };
    let (tasks, results, child, journal, output) =
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
    let mut relays = Vec::new();
    if let (Some([out, err]), Some(bars)) = (output, &spec.relay) {
        for (fd, stream) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
            let from = pipe::Receiver::from_owned_fd(fd)
                .map_err(|e| Error::start_io("could not register the worker's output", e))?;
            relays.push(tokio::spawn(output::relay(from, id, stream, bars.clone())));
        }
    }
    Ok(Link::Process {
        writes,
        reads,
        journal: Some(Arc::new(journal)),
        proc,
        inherits,
        relays,
        remote: None,
    })
}
