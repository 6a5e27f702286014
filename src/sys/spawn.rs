//! Re-executing this binary with `posix_spawn(3)`.
//!
//! glibc runs a `posix_spawn` child on a stack of its own inside `clone(CLONE_VM | CLONE_VFORK)`:
//! the owner's page tables are not copied and its memory is not made copy-on-write. `fork` and
//! `exec`, which `std::process::Command` falls back to as soon as a `pre_exec` hook is set, copy
//! them for a child that throws the copy away at once. Measured here with an owner holding 1 GiB:
//! 10 ms per child before its `exec` instead of 0.35 ms, and then 220 ms of write faults for the
//! owner the next time it writes that memory.
//!
//! The child gets `fds[i]` as descriptor `3 + i`, stdin from `/dev/null`, an empty signal mask and
//! SIGPIPE's default action. Dying with its creator, which a `pre_exec` hook used to arrange, the
//! child arranges itself once it runs (see `entry.rs`).

use std::ffi::{CString, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

/// The lowest descriptor the child's descriptors are moved to before they are put in place, above
/// every target (`3 + fds.len()`), so that no `dup2` overwrites a descriptor still to be moved.
const OUT_OF_THE_WAY: libc::c_int = 10;

/// Starts `/proc/self/exe` with `argv0` and exactly the environment `env`; returns its pid.
pub(crate) fn spawn_self(
    argv0: OsString,
    env: Vec<(OsString, OsString)>,
    fds: &[BorrowedFd<'_>],
) -> io::Result<i32> {
    let invalid = |_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in argv or env");
    let argv0 = CString::new(argv0.into_vec()).map_err(invalid)?;
    let env: Vec<CString> = env
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).map_err(invalid)
        })
        .collect::<io::Result<_>>()?;
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor borrowed for the call; a non-negative
            // result is a new descriptor that nothing else owns.
            let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, OUT_OF_THE_WAY) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `r` was just returned by the kernel and is owned by no one else.
            Ok(unsafe { OwnedFd::from_raw_fd(r) })
        })
        .collect::<io::Result<_>>()?;
    let argv = [argv0.as_ptr(), std::ptr::null()];
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|kv| kv.as_ptr()).collect();
    envp.push(std::ptr::null());

    let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
    let mut pid: libc::pid_t = 0;
    // SAFETY: `actions` and `attr` are initialised by their `_init` calls before any other use
    // and destroyed exactly once below, whatever happens in between. Every pointer passed lives
    // until `posix_spawn` returns: `argv` and `envp` are NULL-terminated arrays of pointers into
    // `argv0` and `env`, which outlive the call; the descriptors in `high` are open until they are
    // dropped after it. The child runs no code of ours before `exec`: glibc performs the file
    // actions and the attributes itself.
    let r = unsafe {
        let a = actions.as_mut_ptr();
        let s = attr.as_mut_ptr();
        let mut r = libc::posix_spawn_file_actions_init(a);
        if r == 0 {
            r = libc::posix_spawnattr_init(s);
            if r == 0 {
                r = spawn_with(a, s, &high, &argv, &envp, &mut pid);
                libc::posix_spawnattr_destroy(s);
            }
            libc::posix_spawn_file_actions_destroy(a);
        }
        r
    };
    drop(high);
    match r {
        0 => Ok(pid),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Fills in the file actions and attributes, then spawns. Returns an errno value, 0 on success.
///
/// # Safety
///
/// `actions` and `attr` are initialised; `argv` and `envp` are NULL-terminated arrays of valid
/// C strings; the descriptors in `high` are open.
unsafe fn spawn_with(
    actions: *mut libc::posix_spawn_file_actions_t,
    attr: *mut libc::posix_spawnattr_t,
    high: &[OwnedFd],
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    pid: &mut libc::pid_t,
) -> libc::c_int {
    // SAFETY: the caller's contract; each call below only reads or writes the objects named.
    unsafe {
        for (i, fd) in high.iter().enumerate() {
            let r = libc::posix_spawn_file_actions_adddup2(actions, fd.as_raw_fd(), 3 + i as i32);
            if r != 0 {
                return r;
            }
        }
        let r = libc::posix_spawn_file_actions_addopen(
            actions,
            0,
            c"/dev/null".as_ptr(),
            libc::O_RDONLY,
            0,
        );
        if r != 0 {
            return r;
        }
        let mut none = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(none.as_mut_ptr());
        let mut pipe = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(pipe.as_mut_ptr());
        libc::sigaddset(pipe.as_mut_ptr(), libc::SIGPIPE);
        let flags = (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short;
        for r in [
            libc::posix_spawnattr_setsigmask(attr, none.as_ptr()),
            libc::posix_spawnattr_setsigdefault(attr, pipe.as_ptr()),
            libc::posix_spawnattr_setflags(attr, flags),
        ] {
            if r != 0 {
                return r;
            }
        }
        libc::posix_spawn(
            pid,
            c"/proc/self/exe".as_ptr(),
            actions,
            attr,
            argv.as_ptr().cast(),
            envp.as_ptr().cast(),
        )
    }
}
