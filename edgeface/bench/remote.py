"""`edgeface bench --host USER@HOST`: run the device's own `edgeface bench` over SSH and bring results home.

The artifacts (and the chosen rows of a labelled set) travel as one tar stream into a temporary folder on
the device (``edgeface.remote.ssh``: host keys checked, unpacked under a ``.partial`` name and renamed when
complete); the device's edgeface measures; its JSON and report come back and are checked before they are
unpacked; the remote folder is removed afterwards (and on failure).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Optional

from ..core.errors import EdgefaceError
from ..remote.ssh import SshTarget, error_message, safe_extract, unpack_command
from ..runtime.predictor import artifact_engine
from .runner import BenchConfig, artifact_files, artifact_label, summarize_warnings

NO_PYTHON, NO_EDGEFACE = 120, 121
INBOX = "in"  # the upload's folder inside the device's temporary folder


def install_hint(artifacts: list[str]) -> str:
    """The pip command that gives a device the engines these artifacts need."""
    extras = []
    for a in artifacts:
        try:
            extra = artifact_engine(a).extra
        except EdgefaceError:
            extra = "ort"
        if extra not in extras:
            extras.append(extra)
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
    """Each labelled set of ``data`` (a set or a folder of sets) as data/SET/: its labels.csv rewritten to the rows
    bench would measure here (``faces.evaluate.comparison_samples``: the split, --limit of each set by the same
    seed) and only their images."""
    from ..faces.evaluate import comparison_samples

    for folder, samples in comparison_samples(data, per_set=limit, split=split or None):
        picked = {Path(s.path).resolve() for s in samples}
        with open(folder / "labels.csv", newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            rows = [r for r in reader if (not split or r.get("split", split) == split)
                    and (folder / r["file"]).resolve() in picked]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        blob = buf.getvalue().encode()
        info = tarfile.TarInfo(f"data/{folder.name}/labels.csv")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
        for r in rows:
            rel = Path(r["file"])
            if rel.is_absolute() or ".." in rel.parts:
                raise EdgefaceError(f"{folder / 'labels.csv'}: file {r['file']} points outside the data folder")
            tar.add(str(folder / rel), arcname=f"data/{folder.name}/{rel.as_posix()}", recursive=False)
    return "data"


# -- the remote run ---------------------------------------------------------------------------------------
def bench_remote(cfg: BenchConfig, target: SshTarget, *, remote_python: str = "python3", want_report: bool = False,
                 keep_remote: bool = False, console=None) -> tuple[list[dict], list[str], Optional[Path]]:
    """Run the bench on the device. Returns (rows, warnings, a local temp folder holding bench.json and, with
    want_report, report/; the caller moves what it wants and removes the folder)."""
    py = shlex.quote(remote_python)
    probe = (f"command -v {py} >/dev/null 2>&1 || exit {NO_PYTHON}; "
             f"{py} -c 'import edgeface, sys; sys.stdout.write(edgeface.__version__)' 2>/dev/null "
             f"|| exit {NO_EDGEFACE}; "
             "echo; mktemp -d \"${TMPDIR:-/tmp}/edgeface-bench.XXXXXX\"")
    r = target.run(probe, timeout=target.connect_timeout + 60)
    if r.returncode == NO_PYTHON:
        raise EdgefaceError(f"{target.where} has no {remote_python!r}: install Python 3 there "
                            f"(e.g. sudo apt-get install python3-pip) or pass --remote-python /path/to/python")
    if r.returncode == NO_EDGEFACE:
        raise EdgefaceError(f"edgeface is not installed for {remote_python} on {target.where}: run "
                            f"`{install_hint(cfg.artifacts)}` there, or pass --remote-python /path/to/venv/bin/python")
    out = target.check(r, "preparing a temporary folder").split()
    if len(out) < 2:
        raise EdgefaceError(f"preparing a temporary folder on {target.where} failed: no folder was made")
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
                ref = f"{INBOX}/" + _add_artifact(tar, ref, "ref")
            data = f"{INBOX}/" + _add_data(tar, cfg.data, cfg.split, cfg.limit) if cfg.data else None
        target.check(target.run(unpack_command(workdir, INBOX), stdin=buf.getvalue(), timeout=600),
                     "copying the artifacts")
        # 2. the device's own edgeface bench
        args = [remote_python, "-m", "edgeface", "bench", *[f"{INBOX}/{p}" for p in remote_paths],
                "--batch", ",".join(map(str, cfg.batches)),
                "--threads", ",".join("auto" if t is None else str(t) for t in cfg.threads),
                "--warmup", str(cfg.warmup), "--rounds", str(cfg.rounds), "--backend", cfg.backend,
                "--reference", ref, "--json", "out/bench.json"]
        args += ["--iters", str(cfg.iters)] if cfg.iters is not None else ["--duration", str(cfg.duration)]
        if cfg.precision:
            args += ["--precision", cfg.precision]
        if data:
            args += ["--data", data, "--split", ""]
        if want_report:
            args += ["--report", "out/report"]
        rc, err_tail = target.stream(f"cd {qdir} && mkdir -p out && COLUMNS=200 "
                                     + " ".join(shlex.quote(a) for a in args), console)
        if rc != 0:
            msg = error_message(err_tail)
            raise EdgefaceError(f"on {target.where}: " + (msg or (err_tail[-1] if err_tail else f"exit status {rc}")))
        # 3. results home
        r = target.run(f"cd {qdir}/out && tar -cf - .", timeout=300)
        target.check(r, "fetching the results")
        fetched = Path(tempfile.mkdtemp(prefix=f"edgeface-remote-{os.getpid()}-"))
        with tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r:") as tar:
            safe_extract(tar, fetched)
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
    rows = doc
    warnings = summarize_warnings(rows)
    local_labels = {f"{INBOX}/{p}": a for p, a in zip(remote_paths, cfg.artifacts)}
    for row in rows:
        local = local_labels.get(row.get("path"))
        if local is not None:
            row["artifact"], row["path"] = artifact_label(local), str(local)
        row["device"] = dict(row.get("device") or {}, host=target.host, ssh_port=target.port,
                             edgeface_remote=remote_version)
    return rows, [f"{target.host}: {w}" for w in warnings], fetched


def bench_bundle_on_device(bundle: Path, target: SshTarget, remote_python: str = "python3", console=None,
                           **options) -> tuple[list[dict], list[str]]:
    """`deploy --host`'s last step: the device's bench of the bundle just deployed (``options``: BenchConfig's
    fields). Returns (rows, warnings); nothing is kept here."""
    rows, warns, fetched = bench_remote(BenchConfig(artifacts=[str(bundle)], **options), target,
                                        remote_python=remote_python, console=console)
    if fetched is not None:
        shutil.rmtree(fetched, ignore_errors=True)
    return rows, warns
