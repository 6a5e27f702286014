//! Raw descriptors: pidfds, descriptor passing, tokio registration, inherited descriptors.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::io::unix::AsyncFd;

/// Opens a pidfd for `pid`. The caller must be the process's parent and must not have reaped it
/// yet, so the pid cannot have been reused (see `pidfd_open(2)`).
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall with integer arguments; a non-negative result is a new descriptor
    // that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd`. Unlike `kill(pid)`, it cannot hit a process that
/// took over a recycled pid.
pub(crate) fn pidfd_send_signal(pidfd: &impl AsFd, signal: i32) -> io::Result<()> {
    let fd = pidfd.as_fd().as_raw_fd();
    // SAFETY: plain syscall; `fd` is a live pidfd borrowed for the call, the info pointer is null.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            signal,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Registers a descriptor with the current tokio reactor.
pub(crate) fn register(fd: OwnedFd, interest: tokio::io::Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `AsyncFd::register` requires that the descriptor stays open and refers to the same
    // file for the lifetime of the `AsyncFd`. It is an `OwnedFd` moved into the `AsyncFd`, which
    // closes it only when dropped, after deregistration.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// Sends one datagram with descriptors attached.
pub(crate) fn send_with_fds(sock: &impl AsFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one datagram and the descriptors attached to it (close-on-exec). An empty result
/// with no descriptors means the peer closed the socket.
pub(crate) fn recv_with_fds(sock: &impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 8]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors in this process for this message;
            // nothing else refers to them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((msg.bytes, fds))
}

/// Takes ownership of a descriptor number handed over by the parent (3 to 6 in a spawned worker).
pub(crate) fn adopt(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the role protocol reserves this number for us; it is open (checked above) and no
    // other owner exists in this freshly executed process.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes writes to a closed pipe fail with `EPIPE` instead of killing the process, as a Rust
/// `main` does (a re-executed worker takes its role before `main` has set this up).
pub(crate) fn ignore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: installing `SIG_IGN` runs no code in signal context and replaces no handler of ours.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

/// Closes a descriptor number inherited from the parent in a forked child. The child never runs
/// the destructor of the object that owns it in the parent's memory.
pub(crate) fn close_inherited(fd: RawFd) {
    let _ = nix::unistd::close(fd);
}

/// A remote worker's link: its stdin and stdout, moved to descriptors of their own
/// (close-on-exec); stdin then reads `/dev/null` and stdout writes to stderr, so that nothing a
/// task does with the standard streams can touch a frame.
pub(crate) fn take_stdio_link() -> io::Result<(OwnedFd, OwnedFd)> {
    let moved = |fd: BorrowedFd<'_>| -> io::Result<OwnedFd> {
        let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
        // SAFETY: `fcntl` just returned this new descriptor, which nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    let tasks = moved(std::io::stdin().as_fd())?;
    let results = moved(std::io::stdout().as_fd())?;
    let null = std::fs::File::open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(std::io::stderr())?;
    Ok((tasks, results))
}

/// Ends this process when its link to the pool closes: the task stream `tasks` (the pool's
/// end closed: the pool is gone, unless `leaving()` says this worker is leaving on its own) or
/// the result stream `results` (nobody reads what it would say). Watched by a thread of its
/// own, which never reads: it waits for the streams to hang up.
pub(crate) fn exit_when_closed(
    tasks: &OwnedFd,
    results: &OwnedFd,
    leaving: fn() -> bool,
) -> io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let (tasks, results) = (tasks.try_clone()?, results.try_clone()?);
    std::thread::Builder::new()
        .name("ampire-link-watch".into())
        .spawn(move || {
            // Hang-ups and errors are reported whatever is asked. On the task stream a socket's
            // half-close (RDHUP) counts too; on the result stream (which may be the same
            // socket, half-closed already) only a full hang-up or an error does.
            let mut watching_tasks = true;
            loop {
                let (fd, asked) = match watching_tasks {
                    true => (&tasks, PollFlags::from_bits_retain(libc::POLLRDHUP)),
                    false => (&results, PollFlags::empty()),
                };
                let mut fds = [PollFd::new(fd.as_fd(), asked)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return,
                    Ok(_) => {}
                }
                if watching_tasks && leaving() {
                    watching_tasks = false;
                    continue;
                }
                crate::sys::fork::exit_now(0);
            }
        })?;
    Ok(())
}
