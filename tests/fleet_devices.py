"""Simulated devices for tests/test_fleet.py: real OpenSSH servers on loopback addresses (127.0.0.2, 127.0.0.3,
...), each its own sshd with its own host key; every device keeps its bundles in its own root folder (the
inventory's edgeface_root), and runs the device side with this machine's Python (edgeface_python)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def sshd_missing() -> str | None:
    """Why simulated devices cannot run here, or None."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "OpenSSH server not installed (run .ci/install_ssh.sh: apt-get install openssh-server)"
    return None


def _die_with_parent():
    """A device's sshd ends when the test process does, even when it is killed (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@dataclass
class Fleet:
    dir: Path
    key: Path
    known_hosts: Path
    hosts: dict = field(default_factory=dict)   # name -> {"address", "port"}
    procs: list = field(default_factory=list)

    def start(self, name: str, address: str) -> dict:
        """One device: its own sshd (own host key) on ADDRESS, recorded in the shared known_hosts file."""
        d = self.dir / name
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
        port = free_port(address)
        (d / "sshd_config").write_text(
            f"Port {port}\nListenAddress {address}\nHostKey {d / 'host_key'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\nMaxStartups 100\nMaxSessions 100\n"
            f"PidFile {d / 'sshd.pid'}\n")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)
        log = open(d / "sshd.log", "w")
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)
        self.procs.append((proc, log))
        deadline = time.time() + 15
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd did not start: {(d / 'sshd.log').read_text().strip()[-300:]}")
            try:
                socket.create_connection((address, port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        pub = (d / "host_key.pub").read_text().split()
        with open(self.known_hosts, "a") as fh:
            fh.write(f"[{address}]:{port} {pub[0]} {pub[1]}\n")
        self.hosts[name] = {"address": address, "port": port}
        return self.hosts[name]

    def dead(self, name: str, address: str) -> dict:
        """A device that refuses connections: nothing listens on its port."""
        self.hosts[name] = {"address": address, "port": free_port(address)}
        return self.hosts[name]

    def stop(self):
        for proc, log in self.procs:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def make_fleet(base: Path) -> Fleet:
    base.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "client_key")], check=True)
    shutil.copy(base / "client_key.pub", base / "authorized_keys")
    (base / "known_hosts").write_text("")
    return Fleet(dir=base, key=base / "client_key", known_hosts=base / "known_hosts")


def connection_vars(fleet: Fleet, python: str) -> dict:
    """Group variables every simulated device shares: how to reach it and which Python runs edgeface there."""
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    return {"ansible_user": user, "ansible_ssh_private_key_file": str(fleet.key),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={fleet.known_hosts} -o GlobalKnownHostsFile=/dev/null",
            "ansible_python_interpreter": python, "edgeface_python": python}


def arm_python(rootfs: Path, repo: Path, wrapper: Path) -> Path:
    """A device Python that is the aarch64 userland's own python3 under qemu-user (`-L ROOTFS`: its libraries and
    wheels come from the rootfs, files outside it from this machine), with the aarch64 wheels of
    .ci/arm_emulated.sh and this checkout's edgeface. Ansible's own modules still run natively; everything
    edgeface does on this device (probe, verify, swap, bench) runs as aarch64 code."""
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    # QEMU_LD_PREFIX / QEMU_CPU: a process the emulated Python starts (bench's worker is `sys.executable`, the
    # rootfs's aarch64 python3) is run by the kernel's binfmt qemu handler, which takes -L and -cpu from them;
    # without them that child cannot find the aarch64 loader.
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={rootfs}/opt/site:{repo} PYTHONNOUSERSITE=1 QEMU_LD_PREFIX={rootfs} "
                       f"QEMU_CPU=cortex-a72 exec {qemu} -L {rootfs} -cpu cortex-a72 {rootfs}/usr/bin/python3 \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def arm_missing() -> str | None:
    """Why the emulated aarch64 device cannot run here, or None."""
    root = os.environ.get("EDGEFACE_ARM_ROOTFS")
    if not root:
        return "no aarch64 rootfs: `source .ci/arm_emulated.sh` as root (sets EDGEFACE_ARM_ROOTFS)"
    if not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")):
        return "qemu-user is not installed (.ci/arm_emulated.sh installs qemu-user-static)"
    if not (Path(root) / "usr/bin/python3").exists() or not (Path(root) / "opt/site/ncnn").is_dir():
        return f"EDGEFACE_ARM_ROOTFS={root} lacks python3 or the aarch64 wheels; re-run .ci/arm_emulated.sh"
    return None
