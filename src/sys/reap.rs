//! Reaping a child with `wait4(2)`, which also says what it used over its life: its peak
//! resident memory and its processor time. (`waitpid` does not, and nix has no `wait4`.)

use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Status {
    Code(i32),
    Signal(i32),
}

/// What a child used over its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Used {
    /// Its peak resident set, in bytes.
    pub peak_rss: u64,
    /// User and system processor time.
    pub cpu: Duration,
}

/// Reaps child `pid` (or any child, for `None`) if it ended, without blocking when `block` is
/// false: `Ok(None)` when none ended yet. Stopped and continued children are not reported.
pub(crate) fn wait4(pid: Option<i32>, block: bool) -> io::Result<Option<(i32, Status, Used)>> {
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        let mut status = 0;
        let mut usage = MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `status` and `usage` are valid for writes for the whole call; `usage` is zeroed
        // and `wait4` fills it in whenever it returns a pid.
        let r = unsafe { libc::wait4(pid.unwrap_or(-1), &mut status, flags, usage.as_mut_ptr()) };
        match r {
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            0 => return Ok(None),
            pid => {
                // SAFETY: zero is a valid `rusage`, and `wait4` filled it for the child it reaped.
                let usage = unsafe { usage.assume_init() };
                let status = if libc::WIFEXITED(status) {
                    Status::Code(libc::WEXITSTATUS(status))
                } else if libc::WIFSIGNALED(status) {
                    Status::Signal(libc::WTERMSIG(status))
                } else {
                    // Only without WUNTRACED/WCONTINUED would these come; we do not ask.
                    continue;
                };
                return Ok(Some((pid, status, used(&usage))));
            }
        }
    }
}

fn used(u: &libc::rusage) -> Used {
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    Used {
        // Linux reports `ru_maxrss` in KiB.
        peak_rss: (u.ru_maxrss.max(0) as u64) * 1024,
        cpu: time(u.ru_utime) + time(u.ru_stime),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_child_says_how_it_ended_and_what_it_used() {
        let child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 3",
            ])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let (reaped, status, used) = wait4(Some(pid), true).unwrap().unwrap();
        assert_eq!((reaped, status), (pid, Status::Code(3)));
        assert!(used.peak_rss > 100 * 1024, "{used:?}");
        assert!(used.cpu > Duration::ZERO, "{used:?}");
        // Reaped: nothing more to wait for.
        assert!(wait4(Some(pid), false).is_err());
        std::mem::forget(child);
    }
}
