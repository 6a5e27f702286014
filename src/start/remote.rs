//! Workers on other hosts: this same binary, started there by a launcher that clusters already
//! run (`ssh`, Slurm's `srun`, or any program that runs a command elsewhere with its standard
//! input and output connected), talking to the pool over the launcher's stdin and stdout with
//! the same frames and the same handshake (a binary whose build differs is refused).
//!
//! The remote worker takes its role before `main` (`AMPIRE_ROLE=remote`, set on its command
//! line by `env`: it is no secret), moves the link off descriptors 0 and 1 (what its tasks print
//! on stdout goes to its stderr), and leaves as soon as its link closes: the owner's death, even
//! by SIGKILL, closes the launcher's stdin, and with it the worker's. Its stderr comes back
//! through the launcher and is relayed like a local worker's output; the last lines of it are
//! kept for the error of a worker that never started (ssh's own "Connection refused", say).
//!
//! There is no shared memory with a remote worker: large inputs go through the link, the shared
//! object is sent to each worker once, and there is no journal. Each result is sent as its task
//! ends, so a worker that dies (or a host lost) fails only the task it was running, as the
//! isolation rules say; a result lost on the way with a host is run again.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio::net::unix::pipe;

use super::child::Child;
use super::{BoxFuture, Link, Pool, Spec, Start, launcher};
use crate::error::Error;
use crate::observe::output::{self, Stream, Tail};
use crate::sys;

/// The role a remote worker is started in (see `entry.rs`).
pub(crate) const ROLE_REMOTE: &str = "remote";

/// How a pool starts its workers on other hosts ([`Builder::launcher`](crate::Builder::launcher)).
///
/// A remote worker is this same binary, at the same path on the other host unless
/// [`binary`](Launcher::binary) says otherwise (clusters with a shared filesystem), started by
/// the launcher with `env AMPIRE_ROLE=remote` before it. It talks to the pool over the
/// launcher's standard input and output: the pool opens no listening socket, and
/// authentication and encryption are the launcher's. It exits when that link closes, so the
/// owner's death leaves no process behind on any host.
///
/// ```no_run
/// # async fn demo() -> Result<(), ampire::Error> {
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = ampire::AsyncPool::builder()
///     .workers(4) // two on each host
///     .launcher(ampire::Launcher::ssh(["node1", "node2"]))
///     .build()
///     .await?;
/// let squares = pool.map(square, 0..1000u64).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Launcher {
    how: How,
    /// Options of the launcher itself (ssh's, srun's), before what it runs.
    options: Vec<OsString>,
    /// Where the binary is on the other hosts; `None`: the same path as here.
    binary: Option<PathBuf>,
    /// Where to copy the binary on each host first, when it is to be copied.
    copy_to: Option<PathBuf>,
    /// The launcher process's own environment, beyond this process's.
    env: Vec<(OsString, OsString)>,
}

#[derive(Clone, Debug)]
enum How {
    Ssh {
        hosts: Vec<String>,
    },
    Srun,
    Command {
        program: OsString,
        args: Vec<OsString>,
    },
}

impl Launcher {
    /// One `ssh` per worker, to `hosts` in turn: worker `i` runs on `hosts[i % hosts.len()]`,
    /// so `workers(2 * hosts.len())` puts two on each. ssh runs with `-T` (no terminal) and
    /// `-o BatchMode=yes` (it never asks for a password); everything else (user, port, keys,
    /// jump hosts) comes from your ssh configuration or [`option`](Launcher::option)s.
    pub fn ssh<I, S>(hosts: I) -> Launcher
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Launcher::new(How::Ssh {
            hosts: hosts.into_iter().map(Into::into).collect(),
        })
    }

    /// One `srun` job step per worker (`--nodes=1 --ntasks=1 --unbuffered`), inside the
    /// current Slurm allocation: Slurm chooses the node.
    pub fn srun() -> Launcher {
        Launcher::new(How::Srun)
    }

    /// Any program that runs a command elsewhere and connects its stdin and stdout, such as
    /// `kubectl exec -i POD --` or `docker exec -i CONTAINER`: the worker's command is appended
    /// to `program` and `args`.
    pub fn command<I, S>(program: impl Into<OsString>, args: I) -> Launcher
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Launcher::new(How::Command {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        })
    }

    fn new(how: How) -> Launcher {
        Launcher {
            how,
            options: Vec::new(),
            binary: None,
            copy_to: None,
            env: Vec::new(),
        }
    }

    /// An option of the launcher itself, in order: for ssh before the host (`"-p"`, `"2222"`),
    /// for srun before the command (`"--partition=short"`), for a command after its own
    /// arguments.
    pub fn option(mut self, option: impl Into<OsString>) -> Self {
        self.options.push(option.into());
        self
    }

    /// Where this binary is on the other hosts, if not at the same path as here.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Copies this binary to each host before its first worker starts there, into `dir` (made
    /// if missing), as `ampire-BUILDID`: once per host and build, through the launcher itself
    /// (its stdin), and not again while that file is there. For hosts without the shared
    /// filesystem that [`binary`](Launcher::binary) assumes. Not with [`srun`](Launcher::srun),
    /// whose hosts are not known in advance.
    pub fn copy_binary(mut self, dir: impl Into<PathBuf>) -> Self {
        self.copy_to = Some(dir.into());
        self
    }

    /// Sets `key` to `value` in the launcher's environment on this host (`SLURM_CONF`,
    /// `SSH_AUTH_SOCK`, ...). Through ssh it does not reach the worker; `srun` passes its
    /// environment on to the job step (Slurm's default), and so may a command launcher.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Its name, for the pool's method and the errors: `ssh`, `srun` or `command`.
    pub(crate) fn name(&self) -> &'static str {
        match self.how {
            How::Ssh { .. } => "ssh",
            How::Srun => "srun",
            How::Command { .. } => "command",
        }
    }

    /// The host worker `slot` runs on, when the launcher names it.
    pub(crate) fn host_of(&self, slot: usize) -> Option<&str> {
        match &self.how {
            How::Ssh { hosts } if !hosts.is_empty() => Some(&hosts[slot % hosts.len()]),
            _ => None,
        }
    }

    /// An error in the settings, before any worker starts.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match &self.how {
            How::Ssh { hosts } if hosts.is_empty() => {
                Err(Error::config("Launcher::ssh needs at least one host"))
            }
            How::Ssh { hosts } => match hosts.iter().find(|h| h.is_empty() || h.starts_with('-')) {
                Some(h) => Err(Error::config(format!("{h:?} is not a host name"))),
                None => Ok(()),
            },
            How::Srun if self.copy_to.is_some() => Err(Error::config(
                "copy_binary needs hosts known in advance: not with Launcher::srun",
            )),
            _ => Ok(()),
        }
    }

    /// What starts worker `slot`, with the binary at `binary` on its host: program and
    /// arguments.
    pub(crate) fn command_line(&self, slot: usize, binary: &Path) -> (OsString, Vec<OsString>) {
        let role = format!("{}={ROLE_REMOTE}", launcher::ROLE_VAR);
        let words: Vec<OsString> = vec![
            "exec".into(),
            "env".into(),
            role.into(),
            binary.as_os_str().to_owned(),
        ];
        self.running(slot, &words)
    }

    /// What runs `words` (a command; a first word `exec` is for a shell) where worker `slot`
    /// runs: program and arguments.
    fn running(&self, slot: usize, words: &[OsString]) -> (OsString, Vec<OsString>) {
        match &self.how {
            How::Ssh { hosts } => {
                let mut args: Vec<OsString> =
                    ["-T", "-o", "BatchMode=yes"].map(OsString::from).to_vec();
                args.extend(self.options.iter().cloned());
                args.push(hosts[slot % hosts.len()].clone().into());
                args.push("--".into());
                // ssh hands the remote shell one string: each word is quoted for it (but a
                // leading `exec`).
                let mut remote = OsString::new();
                for (i, w) in words.iter().enumerate() {
                    if i > 0 {
                        remote.push(" ");
                    }
                    match (i, w.to_str()) {
                        (0, Some("exec")) => remote.push("exec"),
                        _ => remote.push(shell_quote(w)),
                    }
                }
                args.push(remote);
                ("ssh".into(), args)
            }
            How::Srun => {
                let mut args: Vec<OsString> =
                    ["--nodes=1", "--ntasks=1", "--unbuffered", "--quiet"]
                        .map(OsString::from)
                        .to_vec();
                args.extend(self.options.iter().cloned());
                args.extend(without_exec(words));
                ("srun".into(), args)
            }
            How::Command { program, args } => {
                let mut all = args.clone();
                all.extend(self.options.iter().cloned());
                all.extend(without_exec(words));
                (program.clone(), all)
            }
        }
    }

    /// The binary the workers run on their hosts: this one's path, the one given, or (when
    /// copying) the copy in the cache.
    fn binary_at(&self, exe: &Path) -> PathBuf {
        match &self.copy_to {
            Some(dir) => dir.join(cached_name()),
            None => self.binary.clone().unwrap_or_else(|| exe.to_owned()),
        }
    }

    /// Where worker `slot` runs, for the copies made there: its host, or one place for all.
    fn place(&self, slot: usize) -> String {
        self.host_of(slot).unwrap_or_default().to_owned()
    }

    /// Worker `slot`'s launcher, as errors name it: `ssh to node1`, `srun`, `docker`.
    fn describe(&self, slot: usize) -> String {
        match &self.how {
            How::Ssh { hosts } => format!("ssh to {}", hosts[slot % hosts.len()]),
            How::Srun => "srun".into(),
            How::Command { program, .. } => program.to_string_lossy().into_owned(),
        }
    }
}

/// `words` as a command to run directly (no shell, so no `exec`).
fn without_exec(words: &[OsString]) -> impl Iterator<Item = OsString> + '_ {
    words.iter().skip_while(|w| *w == "exec").cloned()
}

/// The file name of this binary's copies: `ampire-` and its build id in hex (or, without one,
/// its device and inode here).
fn cached_name() -> String {
    let id = sys::image::identity();
    match id.build_id.is_empty() {
        false => {
            let hex: String = id.build_id.iter().map(|b| format!("{b:02x}")).collect();
            format!("ampire-{hex}")
        }
        true => format!("ampire-{}-{}", id.exe.0, id.exe.1),
    }
}

/// `s` quoted for a POSIX shell.
fn shell_quote(s: &OsStr) -> OsString {
    let s = s.to_string_lossy();
    format!("'{}'", s.replace('\'', r"'\''")).into()
}

/// The start method of a pool with a launcher.
pub(crate) struct Remote {
    launcher: Launcher,
    /// The places (hosts) this binary was copied to, when it is copied.
    copied: tokio::sync::Mutex<HashSet<String>>,
}

impl Remote {
    pub(crate) fn new(launcher: Launcher) -> Remote {
        Remote {
            launcher,
            copied: tokio::sync::Mutex::default(),
        }
    }

    /// Makes sure the copy of this binary (`exe`) is at `binary` where worker `slot` runs: once
    /// per place (the first worker of a host copies, the others wait for it).
    async fn copy(&self, slot: usize, exe: &Path, binary: &Path) -> Result<(), Error> {
        let place = self.launcher.place(slot);
        let mut copied = self.copied.lock().await;
        if copied.contains(&place) {
            return Ok(());
        }
        let what = self.launcher.describe(slot);
        let there = |words: &[&OsStr]| {
            let words: Vec<OsString> = words.iter().map(|w| w.to_os_string()).collect();
            self.launcher.running(slot, &words)
        };
        let path = binary.as_os_str();
        let check = there(&["test".as_ref(), "-x".as_ref(), path]);
        let dir = binary.parent().unwrap_or(Path::new("/")).as_os_str();
        let tmp = format!("{}.tmp.$$", shell_quote(path).to_string_lossy());
        let script = format!(
            "mkdir -p {dir} && cat > {tmp} && chmod 755 {tmp} && mv -f {tmp} {path}",
            dir = shell_quote(dir).to_string_lossy(),
            path = shell_quote(path).to_string_lossy(),
        );
        let put = there(&["sh".as_ref(), "-c".as_ref(), script.as_ref()]);
        let (env, exe) = (self.launcher.env.clone(), exe.to_owned());
        let done = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let run = |(program, args): (OsString, Vec<OsString>), input: Stdio| {
                Command::new(program)
                    .args(args)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(input)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .output()
                    .map_err(|e| e.to_string())
            };
            if run(check, Stdio::null())?.status.success() {
                return Ok(());
            }
            let input = std::fs::File::open(&exe).map_err(|e| e.to_string())?;
            let out = run(put, Stdio::from(input))?;
            match out.status.success() {
                true => Ok(()),
                false => Err(format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match done {
            Ok(()) => {
                copied.insert(place);
                Ok(())
            }
            Err(e) => Err(Error::start(format!(
                "could not copy this binary to {} through {what}: {e}",
                binary.display()
            ))),
        }
    }
}

impl Start for Remote {
    fn launch<'a>(
        &'a self,
        id: usize,
        spec: &'a Spec,
        _pool: &'a Pool,
    ) -> BoxFuture<'a, Result<Link, Error>> {
        Box::pin(async move {
            let what = self.launcher.describe(id);
            let exe = std::env::current_exe()
                .map_err(|e| Error::start_io("could not find this binary's path", e))?;
            let binary = self.launcher.binary_at(&exe);
            if self.launcher.copy_to.is_some() {
                self.copy(id, &exe, &binary).await?;
            }
            let (program, args) = self.launcher.command_line(id, &binary);
            let env = self.launcher.env.clone();
            let started = launcher::run(move || start(program, args, env))
                .await
                .and_then(|r| r)
                .map_err(|e| Error::start_io(&format!("could not run {what}"), e))?;
            let Started {
                pid,
                pidfd,
                stdin,
                stdout,
                stderr,
            } = started;
            let proc = Child::new(nix::unistd::Pid::from_raw(pid), pidfd)
                .map_err(|e| Error::start_io("could not watch the launcher", e))?;
            let register = || -> std::io::Result<_> {
                Ok((
                    pipe::Sender::from_owned_fd(stdin)?,
                    pipe::Receiver::from_owned_fd(stdout)?,
                    pipe::Receiver::from_owned_fd(stderr)?,
                ))
            };
            let (writes, reads, errors) = register()
                .map_err(|e| Error::start_io("could not register the launcher's pipes", e))?;
            // Its stderr is the pool's to read: relayed above the bars when they show, or else
            // to this process's stderr with the worker's id; its last lines kept for errors.
            let tail = Arc::new(Tail::default());
            let bars = spec.relay.clone().unwrap_or_else(|| {
                indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
            });
            let relay = output::relay_keeping(
                errors,
                id,
                Stream::Stderr,
                bars,
                Some(Arc::downgrade(&tail)),
            );
            Ok(Link::Process {
                writes: Box::new(writes),
                reads: Box::new(reads),
                journal: None,
                proc: Box::new(Launched(proc)),
                inherits: false,
                relays: vec![tokio::spawn(relay)],
                remote: Some(super::RemoteEnd { what, tail }),
            })
        })
    }
}

/// The launcher process of a remote worker: killing it closes the worker's link (and so ends
/// the worker); how it ended is how the launcher says the worker ended (ssh passes on the
/// remote exit status, and reads a remote signal as 255). What it used is the launcher's own,
/// not the worker's, so it is not reported.
struct Launched(Child);

impl super::Process for Launched {
    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn kill(&mut self) {
        self.0.kill();
    }

    fn wait(&mut self) -> BoxFuture<'_, crate::error::Exit> {
        self.0.wait()
    }

    fn used(&self) -> Option<crate::error::Used> {
        None
    }
}

/// A launcher process, started.
struct Started {
    pid: i32,
    pidfd: OwnedFd,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// Runs the launcher (on the launcher thread), with pipes for its standard streams. It is reaped
/// by the pool's `Child`, not by `std`.
fn start(
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
) -> std::io::Result<Started> {
    let mut child = Command::new(program)
        .args(args)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as i32;
    let pidfd = sys::fd::pidfd_open(pid)?;
    let missing = || std::io::Error::other("a standard stream of the launcher is missing");
    let stdin = OwnedFd::from(child.stdin.take().ok_or_else(missing)?);
    let stdout = OwnedFd::from(child.stdout.take().ok_or_else(missing)?);
    let stderr = OwnedFd::from(child.stderr.take().ok_or_else(missing)?);
    // Dropping std's handle neither waits for the process nor kills it.
    drop(child);
    Ok(Started {
        pid,
        pidfd,
        stdin,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(v: (OsString, Vec<OsString>)) -> Vec<String> {
        std::iter::once(v.0)
            .chain(v.1)
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn command_lines_name_the_host_and_the_binary_quoted() {
        let exe = Path::new("/opt/my app/bin's");
        let ssh = Launcher::ssh(["a", "b"]).option("-p").option("2222");
        assert_eq!(
            words(ssh.command_line(3, exe)),
            [
                "ssh",
                "-T",
                "-o",
                "BatchMode=yes",
                "-p",
                "2222",
                "b",
                "--",
                r"exec 'env' 'AMPIRE_ROLE=remote' '/opt/my app/bin'\''s'"
            ]
        );
        assert_eq!(ssh.host_of(2), Some("a"));
        let srun = Launcher::srun()
            .option("--partition=short")
            .binary("/shared/app");
        assert_eq!(srun.binary_at(exe), Path::new("/shared/app"));
        assert_eq!(
            words(srun.command_line(0, &srun.binary_at(exe))),
            [
                "srun",
                "--nodes=1",
                "--ntasks=1",
                "--unbuffered",
                "--quiet",
                "--partition=short",
                "env",
                "AMPIRE_ROLE=remote",
                "/shared/app"
            ]
        );
        let docker = Launcher::command("docker", ["exec", "-i", "box"]);
        assert_eq!(
            words(docker.command_line(0, Path::new("/app"))),
            [
                "docker",
                "exec",
                "-i",
                "box",
                "env",
                "AMPIRE_ROLE=remote",
                "/app"
            ]
        );
        assert!(Launcher::ssh(Vec::<String>::new()).check().is_err());
        assert!(Launcher::srun().copy_binary("/tmp").check().is_err());
        assert!(Launcher::ssh(["-oProxyCommand=x"]).check().is_err());
    }
}
