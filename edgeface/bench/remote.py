"""`edgeface bench --host USER@HOST`: run the device's own `edgeface bench` over SSH and bring results home.

Uses the system OpenSSH client with host keys checked (``StrictHostKeyChecking=yes``, ``BatchMode=yes``:
no password prompts, no blind trust). Files travel as one tar stream into a temporary folder on the device,
unpacked under a ``.partial`` name and renamed when complete, so a dropped connection never leaves a
half-copied artifact that looks whole; the remote folder is removed afterwards (and on failure).
"""
from __future__ import annotations

import csv
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import EdgefaceError
from .runner import BenchConfig, artifact_files

UNREACHABLE = ("Connection refused", "No route to host", "Could not resolve hostname", "Connection timed out",
               "Network is unreachable", "Operation timed out", "Name or service not known", "Connection reset",
               "Connection closed by")
EXTRA_FOR_SUFFIX = {".onnx": "ort", ".param": "ncnn", ".bin": "ncnn", ".engine": "tensorrt"}
NO_PYTHON, NO_EDGEFACE = 120, 121
# Unpacked under a .partial name and renamed only once tar has read the whole stream.
UPLOAD_COMMAND = "cd {workdir} && mkdir in.partial && tar -xf - -C in.partial && mv in.partial in"


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
            args += ["-o", f"UserKnownHostsFile={Path(self.known_hosts).resolve()}", "-o", "GlobalKnownHostsFile=/dev/null"]
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


def install_hint(artifacts: list[str]) -> str:
    extras = []
    for a in artifacts:
        p = Path(a)
        if p.is_dir():
            ext = "ort"
            for f in p.iterdir():
                ext = EXTRA_FOR_SUFFIX.get(f.suffix, ext) if f.suffix in (".param", ".engine") else ext
        else:
            ext = EXTRA_FOR_SUFFIX.get(p.suffix, "ort")
        if ext not in extras:
            extras.append(ext)
    return f"pip install 'edgeface[{','.join(extras)}]'"


# -- what travels -----------------------------------------------------------------------------------------
def _add_artifact(tar: tarfile.TarFile, artifact: str, prefix: str) -> str:
    """Add an artifact's files under prefix/; return its path on the device relative to the upload root."""
    p = Path(artifact)
    if p.is_dir():
        for f in artifact_files(p):
            tar.add(str(f), arcname=f"{prefix}/{p.name}/{f.relative_to(p).as_posix()}", recursive=False)
        return f"{prefix}/{p.name}"
    for f in artifact_files(p):
        tar.add(str(f), arcname=f"{prefix}/{f.name}", recursive=False)
    return f"{prefix}/{p.name}"


def _add_data(tar: tarfile.TarFile, data: str, split: Optional[str], limit: Optional[int]) -> str:
    """The labelled rows of the chosen split (labels.csv rewritten to them) and only their images."""
    folder = Path(data)
    with open(folder / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        rows = [r for r in reader if not split or r.get("split", split) == split]
    if limit:
        rows = rows[:limit]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    blob = buf.getvalue().encode()
    info = tarfile.TarInfo("data/labels.csv")
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))
    for r in rows:
        rel = Path(r["file"])
        if rel.is_absolute() or ".." in rel.parts:
            raise EdgefaceError(f"{folder / 'labels.csv'}: file {r['file']} points outside the data folder")
        tar.add(str(folder / rel), arcname=f"data/{rel.as_posix()}", recursive=False)
    return "data"


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Results from a device are untrusted: no absolute paths, no '..', no links."""
    for m in tar.getmembers():
        name = Path(m.name)
        if name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir()):
            raise EdgefaceError(f"the device sent a suspicious file {m.name!r} in its results; refusing it")
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:  # Python < 3.11.4 without extraction filters; members were checked above
        tar.extractall(dest)


# -- the remote run ---------------------------------------------------------------------------------------
def bench_remote(cfg: BenchConfig, target: SshTarget, *, remote_python: str = "python3", want_report: bool = False,
                 keep_remote: bool = False, console=None) -> tuple[list[dict], list[str], Optional[Path]]:
    """Run the bench on the device. Returns (rows, warnings, a local temp folder holding bench.json and, with
    want_report, report/; the caller moves what it wants and removes the folder)."""
    import json

    py = shlex.quote(remote_python)
    probe = (f"command -v {py} >/dev/null 2>&1 || exit {NO_PYTHON}; "
             f"{py} -c 'import edgeface, sys; sys.stdout.write(edgeface.__version__)' 2>/dev/null || exit {NO_EDGEFACE}; "
             "echo; mktemp -d \"${TMPDIR:-/tmp}/edgeface-bench.XXXXXX\"")
    r = target.run(probe, timeout=target.connect_timeout + 60)
    if r.returncode == NO_PYTHON:
        raise EdgefaceError(f"{target.where} has no {remote_python!r}: install Python 3 there "
                            f"(e.g. sudo apt-get install python3-pip) or pass --remote-python /path/to/python")
    if r.returncode == NO_EDGEFACE:
        raise EdgefaceError(f"edgeface is not installed for {remote_python} on {target.where}: run "
                            f"`{install_hint(cfg.artifacts)}` there, or pass --remote-python /path/to/venv/bin/python")
    out = r.stdout.decode().split()
    if r.returncode != 0 or len(out) < 2:
        raise EdgefaceError(f"{target.where}: preparing a temporary folder failed: "
                            f"{(r.stderr.decode().strip().splitlines() or ['?'])[-1]}")
    remote_version, workdir = out[0], out[1]
    qdir = shlex.quote(workdir)
    fetched: Optional[Path] = None
    try:
        # 1. everything in one tar stream, unpacked under .partial and renamed once complete
        buf = io.BytesIO()
        remote_paths = []
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i, a in enumerate(cfg.artifacts):
                remote_paths.append(_add_artifact(tar, a, f"a{i}"))
            ref = cfg.reference
            if ref not in ("auto", "none"):
                ref = "in/" + _add_artifact(tar, ref, "ref")
            data = "in/" + _add_data(tar, cfg.data, cfg.split, cfg.limit) if cfg.data else None
        r = target.run(UPLOAD_COMMAND.format(workdir=qdir),
                       stdin=buf.getvalue(), timeout=600)
        if r.returncode != 0:
            raise EdgefaceError(f"copying to {target.where} failed: "
                                f"{(r.stderr.decode().strip().splitlines() or ['?'])[-1]}")
        # 2. the device's own edgeface bench
        args = [remote_python, "-m", "edgeface", "bench", *[f"in/{p}" for p in remote_paths],
                "--batch", ",".join(map(str, cfg.batches)),
                "--threads", ",".join("auto" if t is None else str(t) for t in cfg.threads),
                "--warmup", str(cfg.warmup), "--rounds", str(cfg.rounds), "--backend", cfg.backend,
                "--reference", ref, "--json", "out/bench.json"]
        args += ["--iters", str(cfg.iters)] if cfg.iters is not None else ["--duration", str(cfg.duration)]
        if data:
            args += ["--data", data, "--split", ""]
        if want_report:
            args += ["--report", "out/report"]
        rc, err_tail = _stream(target, f"cd {qdir} && mkdir -p out && COLUMNS=200 " + " ".join(shlex.quote(a) for a in args),
                               console)
        if rc != 0:
            msg = next((ln.split("error:", 1)[1].strip() for ln in reversed(err_tail) if "error:" in ln), None)
            raise EdgefaceError(f"on {target.where}: " + (msg or (err_tail[-1] if err_tail else f"exit status {rc}")))
        # 3. results home
        r = target.run(f"cd {qdir}/out && tar -cf - .", timeout=300)
        if r.returncode != 0:
            raise EdgefaceError(f"fetching results from {target.where} failed: "
                                f"{(r.stderr.decode().strip().splitlines() or ['?'])[-1]}")
        fetched = Path(tempfile.mkdtemp(prefix="edgeface-remote-"))
        with tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r:") as tar:
            _safe_extract(tar, fetched)
        doc = json.loads((fetched / "bench.json").read_text())
    except BaseException:
        if fetched is not None:
            shutil.rmtree(fetched, ignore_errors=True)
        raise
    finally:
        if not keep_remote:
            try:
                target.run(f"rm -rf {qdir}", timeout=60)
            except EdgefaceError:
                pass  # the connection is gone; the folder is a .partial or complete temp dir under /tmp
    from .runner import summarize_warnings

    rows = doc
    warnings = summarize_warnings(rows)
    local_labels = {f"in/{p}": a for p, a in zip(remote_paths, cfg.artifacts)}
    from .runner import _label

    for row in rows:
        local = local_labels.get(row.get("path"))
        if local is not None:
            row["artifact"], row["path"] = _label(local), str(local)
        row["device"] = dict(row.get("device") or {}, host=target.host, ssh_port=target.port,
                             edgeface_remote=remote_version)
    return rows, [f"{target.host}: {w}" for w in warnings], fetched


def _stream(target: SshTarget, command: str, console) -> tuple[int, list[str]]:
    """Run a long remote command, echoing its stderr (progress, warnings) as it comes; (rc, last lines)."""
    proc = subprocess.Popen(target.ssh_args() + ["--", command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    tail: list[str] = []
    for line in proc.stderr:
        tail = (tail + [line.rstrip()])[-40:]
        if console is not None and line.strip() and not line.startswith(("error:", "warning:", "report:")):
            console.print(f"{target.host} | {line.rstrip()}", highlight=False, markup=False)
    rc = proc.wait()
    if rc == 255:
        raise ssh_error(target, "\n".join(tail))
    return rc, tail
