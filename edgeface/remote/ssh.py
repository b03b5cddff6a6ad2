"""SSH to a device with the system OpenSSH client: the one transport `bench --host` and `deploy --host` use.

Host keys are checked (``StrictHostKeyChecking=yes``) and nothing prompts (``BatchMode=yes``): no password
prompts, no blind trust. Files travel as one tar stream, unpacked on the device under a ``.partial`` name
and renamed only once tar has read the whole stream, so a dropped connection never leaves a half-copied
folder that looks whole. What comes back from a device is untrusted and is checked before it is unpacked.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.errors import EdgefaceError

UNREACHABLE = ("Connection refused", "No route to host", "Could not resolve hostname", "Connection timed out",
               "Network is unreachable", "Operation timed out", "Name or service not known", "Connection reset",
               "Connection closed by")


@dataclass
class SshTarget:
    host: str                          # USER@HOST or HOST
    port: Optional[int] = None
    identity: Optional[Path] = None
    known_hosts: Optional[Path] = None
    connect_timeout: int = 10

    def __post_init__(self):
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise EdgefaceError(f"--host {self.host!r} is not USER@HOST")
        if shutil.which("ssh") is None:
            raise EdgefaceError("the OpenSSH client (ssh) is not installed: apt-get install openssh-client")
        if self.identity is not None and not Path(self.identity).is_file():
            raise EdgefaceError(f"--identity {self.identity} does not exist")
        if self.known_hosts is not None and not Path(self.known_hosts).is_file():
            raise EdgefaceError(f"--known-hosts {self.known_hosts} does not exist")

    @property
    def where(self) -> str:
        return f"{self.host}" + (f":{self.port}" if self.port else "")

    def ssh_args(self) -> list[str]:
        args = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={self.connect_timeout}", "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR"]
        if self.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={Path(self.known_hosts).resolve()}", "-o",
                     "GlobalKnownHostsFile=/dev/null"]
        if self.identity is not None:
            args += ["-i", str(Path(self.identity).resolve()), "-o", "IdentitiesOnly=yes"]
        if self.port:
            args += ["-p", str(self.port)]
        return args + [self.host]

    def run(self, command: str, *, stdin=None, timeout: Optional[float] = 120) -> subprocess.CompletedProcess:
        """Run a shell command on the device; an SSH-level failure becomes one EdgefaceError line."""
        try:
            r = subprocess.run(self.ssh_args() + ["--", command], input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EdgefaceError(f"{self.where}: no answer within {timeout:.0f} s (connection dropped?)") from None
        if r.returncode == 255:
            raise ssh_error(self, r.stderr.decode("utf-8", "replace"))
        return r

    def check(self, result: subprocess.CompletedProcess, what: str) -> str:
        """The command's stdout; EdgefaceError naming ``what`` failed on the device, and why, otherwise."""
        if result.returncode != 0:
            lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = error_message(lines) or (lines[-1].strip() if lines else f"exit status {result.returncode}")
            raise EdgefaceError(f"{what} on {self.where} failed: {detail}")
        return result.stdout.decode("utf-8", "replace")

    def stream(self, command: str, console=None) -> tuple[int, list[str]]:
        """Run a long command, echoing its stderr (progress, warnings) as it comes; (exit status, last lines)."""
        proc = subprocess.Popen(self.ssh_args() + ["--", command], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
        tail: list[str] = []
        for line in proc.stderr:
            tail = (tail + [line.rstrip()])[-40:]
            if console is not None and line.strip() and not line.startswith(("error:", "warning:", "report:")):
                console.print(f"{self.host} | {line.rstrip()}", highlight=False, markup=False)
        rc = proc.wait()
        if rc == 255:
            raise ssh_error(self, "\n".join(tail))
        return rc, tail


def ssh_error(target: SshTarget, stderr: str) -> EdgefaceError:
    """One line naming what failed and the fix, from OpenSSH's stderr."""
    text = " ".join(stderr.split())
    host = target.where
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return EdgefaceError(f"the host key of {host} has CHANGED since it was recorded in known_hosts: refusing to "
                             "connect (possible man-in-the-middle); verify the device, then remove the old key "
                             "with ssh-keygen -R")
    if "Host key verification failed" in text or "No ED25519 host key is known" in text \
            or re.search(r"No \S+ host key is known", text):
        kh = f" {target.known_hosts}" if target.known_hosts else " ~/.ssh/known_hosts"
        return EdgefaceError(f"{host} has an unknown host key (not in{kh}), and host keys are checked: connect "
                             f"once with `ssh{' -p ' + str(target.port) if target.port else ''} {target.host}`, "
                             "verify the fingerprint and accept it, or pass --known-hosts FILE")
    if "Permission denied" in text or "Too many authentication failures" in text:
        return EdgefaceError(f"{host} refused the key (Permission denied): pass --identity FILE with a key listed "
                             "in the device's ~/.ssh/authorized_keys (ssh-copy-id installs one)")
    for marker in UNREACHABLE:
        if marker in text:
            return EdgefaceError(f"cannot reach {host} ({marker}): check that the device is on, the address and "
                                 f"--port are right and sshd runs there")
    if "Identity file" in text and "not accessible" in text:
        return EdgefaceError(f"the --identity file is not readable: {text}")
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "ssh exited with status 255"
    return EdgefaceError(f"ssh to {host} failed: {last.strip()}")


def error_message(lines: list[str]) -> Optional[str]:
    """The device's own ``error: ...`` line (edgeface prints one for every user mistake), if it printed one."""
    return next((ln.split("error:", 1)[1].strip() for ln in reversed(lines) if "error:" in ln), None)


def unpack_command(parent: str, name: str) -> str:
    """A shell command that unpacks the tar stream on its stdin as PARENT/NAME on the device.

    It lands under NAME.partial and is renamed only when tar has read the whole stream, so a dropped
    connection never leaves a NAME that looks whole; an existing NAME is kept until then, and replaced.
    ``parent`` is relative to the SSH user's home unless absolute.
    """
    p, n = shlex.quote(parent), shlex.quote(name)
    return (f"mkdir -p {p} && cd {p} && rm -rf {n}.partial && mkdir {n}.partial && tar -xf - -C {n}.partial && "
            f"rm -rf {n}.old && {{ [ ! -e {n} ] || mv {n} {n}.old; }} && mv {n}.partial {n} && rm -rf {n}.old")


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Unpack what a device sent: no absolute paths, no '..', no links (its results are untrusted)."""
    for m in tar.getmembers():
        name = Path(m.name)
        if name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir()):
            raise EdgefaceError(f"the device sent a suspicious file {m.name!r} in its results; refusing it")
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:  # Python < 3.11.4 without extraction filters; members were checked above
        tar.extractall(dest)
