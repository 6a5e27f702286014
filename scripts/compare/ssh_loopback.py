#!/usr/bin/env python3
"""W1 and W2 with workers started through ssh on loopback, against Spawn, in one A/B run.

Starts a throwaway sshd (a child of this script, on a free loopback port, with keys in a
temporary directory; the system's sshd is never touched), then runs `ab.py` on the working
tree with A's pools started through `ssh 127.0.0.1` (AMPIRE_BENCH_SSH) and B's with Spawn.
Needs OpenSSH's server (/usr/sbin/sshd) and client. Run from the repository root:

    python3 scripts/compare/ssh_loopback.py [--reps N] [--only W1,W2]
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--only", default="W1,W2")
    args = ap.parse_args()
    if not Path("/usr/sbin/sshd").exists():
        print("needs OpenSSH's server: apt-get install openssh-server", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ampire-ssh-bench-") as d:
        d = Path(d)
        for key in ("host_key", "id"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
        (d / "authorized_keys").write_bytes((d / "id.pub").read_bytes())
        os.makedirs("/run/sshd", exist_ok=True)
        port = free_port()
        (d / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n"
            f"UsePAM no\nPidFile {d / 'sshd.pid'}\nLogLevel QUIET\n"
        )
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")])
        try:
            deadline = time.time() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.01)
            options = [
                "127.0.0.1", "-p", str(port), "-i", str(d / "id"),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR",
            ]
            cmd = [
                sys.executable, str(HERE / "ab.py"), "--only", args.only, "--methods", "spawn",
                "--reps", str(args.reps), "--a-env", "AMPIRE_BENCH_SSH=" + "\n".join(options),
            ]
            print("A: workers through ssh to 127.0.0.1; B: Spawn", flush=True)
            return subprocess.run(cmd).returncode
        finally:
            sshd.kill()
            sshd.wait()


if __name__ == "__main__":
    sys.exit(main())
