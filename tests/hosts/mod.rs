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
            crate::common::skip(&format!(
                "{test}: ssh part skipped: OpenSSH's server (/usr/sbin/sshd) or client is not installed"
            ));
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

/// A single-node Slurm of this test (munged, slurmctld and slurmd as its children, with a
/// key, a configuration and state in a temporary directory, on free ports), killed when
/// dropped.
pub struct Slurm {
    children: Vec<Child>,
    pub dir: PathBuf,
}

impl Slurm {
    /// Starts one, or says plainly why it cannot and returns `None`.
    pub fn start(test: &str) -> Option<Slurm> {
        let needed = [
            "/usr/sbin/munged",
            "/usr/sbin/slurmctld",
            "/usr/sbin/slurmd",
        ];
        if needed.iter().any(|p| !Path::new(p).exists())
            || Command::new("srun").arg("--version").output().is_err()
        {
            crate::common::skip(&format!(
                "{test}: Slurm part skipped: Slurm (slurm-wlm) or munge is not installed"
            ));
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "ampire-slurm-{}-{}",
            std::process::id(),
            test.replace([':', '/'], "_")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["state", "spool"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let key: Vec<u8> = (0..1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ std::process::id() as u8)
            .collect();
        std::fs::write(dir.join("munge.key"), key).unwrap();
        std::fs::set_permissions(
            dir.join("munge.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let port = || {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let d = |f: &str| dir.join(f).display().to_string();
        let conf = format!(
            "ClusterName=ampire\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\n\
             AuthType=auth/munge\nAuthInfo=socket={sock}\nCredType=cred/munge\n\
             StateSaveLocation={state}\nSlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={cpid}\nSlurmdPidFile={dpid}\nSlurmctldPort={cport}\nSlurmdPort={dport}\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSchedulerType=sched/builtin\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\n\
             SlurmctldLogFile={clog}\nSlurmdLogFile={dlog}\nMpiDefault=none\n\
             JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             NodeName={host} CPUs=2 State=UNKNOWN\n\
             PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:16\n",
            sock = d("munge.sock"),
            state = d("state"),
            spool = d("spool"),
            cpid = d("slurmctld.pid"),
            dpid = d("slurmd.pid"),
            cport = port(),
            dport = port(),
            clog = d("slurmctld.log"),
            dlog = d("slurmd.log"),
        );
        std::fs::write(dir.join("slurm.conf"), conf).unwrap();
        let conf = d("slurm.conf");
        let spawn = |program: &str, args: Vec<String>| {
            Command::new(program)
                .args(args)
                .env("SLURM_CONF", &conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut me = Slurm {
            children: Vec::new(),
            dir: dir.clone(),
        };
        me.children.push(spawn(
            "/usr/sbin/munged",
            ["-F", "--force"]
                .map(String::from)
                .into_iter()
                .chain([
                    format!("--socket={}", d("munge.sock")),
                    format!("--key-file={}", d("munge.key")),
                    format!("--pid-file={}", d("munged.pid")),
                    format!("--log-file={}", d("munged.log")),
                    format!("--seed-file={}", d("munged.seed")),
                ])
                .collect(),
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("munge.sock").exists() {
            assert!(Instant::now() < deadline, "munged did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        me.children.push(spawn(
            "/usr/sbin/slurmctld",
            vec!["-D".into(), "-f".into(), conf.clone()],
        ));
        me.children.push(spawn(
            "/usr/sbin/slurmd",
            vec!["-D".into(), "-f".into(), conf.clone()],
        ));
        loop {
            let state = Command::new("sinfo")
                .args(["-h", "-o", "%T"])
                .env("SLURM_CONF", &conf)
                .output();
            if state.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Slurm's node did not come up: see {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(me)
    }

    /// A launcher through `srun` to this Slurm.
    pub fn launcher(&self) -> Launcher {
        Launcher::srun().env("SLURM_CONF", self.dir.join("slurm.conf"))
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        // Its jobs end first, so that no step daemon is left waiting for a slurmd that is gone.
        let conf = self.dir.join("slurm.conf");
        let _ = Command::new("scancel")
            .args(["--user", "root"])
            .env("SLURM_CONF", &conf)
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let jobs = Command::new("squeue")
                .args(["-h", "-o", "%i"])
                .env("SLURM_CONF", &conf)
                .output();
            if jobs.is_ok_and(|o| o.stdout.is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
