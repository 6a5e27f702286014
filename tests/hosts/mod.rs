//! Hosts for the remote-worker tests: an `sshd` of the test's own (a child, on a free loopback
//! port, with throwaway keys in a temporary directory; the system's sshd is never touched), and
//! a plain local command launcher (`sh -c 'exec "$@"'`), which runs the same remote role without
//! ssh.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ampire::Launcher;

/// A running `sshd` of this test, killed when dropped.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Sshd {
    /// Starts one, or says plainly why it cannot (no OpenSSH server here) and returns `None`.
    pub fn start(test: &str) -> Option<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() || Command::new("ssh").arg("-V").output().is_err() {
            eprintln!(
                "{test}: ssh part skipped: OpenSSH's server (/usr/sbin/sshd) or client is not installed"
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "ampire-sshd-{}-{}",
            std::process::id(),
            test.replace([':', '/'], "_")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for key in ["host_key", "id"] {
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()
                .unwrap();
            assert!(made.success(), "ssh-keygen");
        }
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
        // sshd's privilege-separation directory, which a fresh system may lack.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nPidFile {pid}\nLogLevel QUIET\n",
            hk = dir.join("host_key").display(),
            ak = dir.join("authorized_keys").display(),
            pid = dir.join("sshd.pid").display(),
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let me = Sshd { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start listening");
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(me)
    }

    /// The options that reach this sshd with the throwaway key.
    pub fn options(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.port.to_string(),
            "-i".into(),
            self.dir.join("id").display().to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// A launcher to `hosts` (names this machine answers to) through this sshd.
    pub fn launcher(&self, hosts: &[&str]) -> Launcher {
        self.options()
            .into_iter()
            .fold(Launcher::ssh(hosts.iter().copied()), Launcher::option)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A launcher that runs the worker's command here, through `sh`: the remote role, without ssh.
pub fn local_command() -> Launcher {
    Launcher::command("sh", ["-c", "exec \"$@\"", "sh"])
}
