"""One `edgeface bench` of artifacts, here or on a device over SSH: the config checked, the rows measured, the
report written. The CLI parses the flags into a BenchConfig and prints what ``bench`` returns."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from ..core.errors import EdgefaceError
from ..core.io import move_files_into
from .runner import BenchConfig, check_labelled


def bench(cfg: BenchConfig, *, host: Optional[str] = None, ssh_options: Optional[dict] = None,
          report: Optional[Path] = None, command: str = "", console=None) -> tuple[list[dict], list[str]]:
    """(rows, warnings) of ``cfg``'s artifacts, measured here or, with ``host`` (USER@HOST), by the device's own
    edgeface; with ``report`` the plots and Markdown summary are written there. ``ssh_options``: port,
    identity, known_hosts, remote_python, keep_remote."""
    check_config(cfg)
    if host:
        return _bench_on_device(cfg, host, dict(ssh_options or {}), report, console)
    return _bench_here(cfg, report, command, console)


def check_config(cfg: BenchConfig) -> None:
    """Everything wrong with the config, refused before any work (and before connecting)."""
    cfg.check()
    if cfg.reference not in ("auto", "none") and not Path(cfg.reference).exists():
        raise EdgefaceError(f"--reference {cfg.reference} does not exist (use auto, none or a path)")
    if cfg.data is not None:  # a folder without labels
        check_labelled(cfg.data, cfg.split)


def _bench_on_device(cfg: BenchConfig, host: str, ssh_options: dict, report: Optional[Path],
                     console) -> tuple[list[dict], list[str]]:
    """The device measures (its own edgeface, over SSH); its report is fetched into ``report``."""
    from ..remote.ssh import SshTarget
    from .remote import bench_remote

    remote_python = ssh_options.pop("remote_python", "python3")
    keep_remote = ssh_options.pop("keep_remote", False)
    target = SshTarget(host, **ssh_options)
    if console is not None:
        console.print(f"benchmarking on {target.where} over SSH")
    rows, warnings, fetched = bench_remote(cfg, target, remote_python=remote_python, want_report=report is not None,
                                           keep_remote=keep_remote, console=console)
    try:
        if report is not None and (fetched / "report").is_dir():
            move_files_into(fetched / "report", report)
    finally:
        shutil.rmtree(fetched, ignore_errors=True)
    return rows, warnings


def _bench_here(cfg: BenchConfig, report: Optional[Path], command: str, console) -> tuple[list[dict], list[str]]:
    """This machine measures, a progress bar over the interleaved blocks."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .runner import run_bench

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} blocks"), TimeElapsedColumn(),
                  console=console, transient=True, disable=console is None) as progress:
        faces: dict = {}
        rows, warnings = run_bench(cfg, progress=progress, faces_out=faces)
    if report is not None:
        from .report import write_report

        write_report(rows, warnings, report, command=command, data=cfg.data, faces=faces)
    return rows, warnings
