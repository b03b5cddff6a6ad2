"""`edgeface bench`: latency, throughput, memory, size and accuracy of artifacts, side by side."""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import EdgefaceError
from ..engines import registry
from .output import check_output_dir, check_output_file, console, out_console, write_json

NAME = "bench"


def parse_int_list(text: str, flag: str, allow_auto: bool = False) -> list:
    """'1,8,32' -> [1, 8, 32]; 'auto' -> None (the engine's default thread count) where allowed."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if allow_auto and part == "auto":
            out.append(None)
            continue
        try:
            v = int(part)
        except ValueError:
            raise EdgefaceError(f"{flag} takes comma-separated integers like 1,8,32, not {text!r}") from None
        if v < 1:
            raise EdgefaceError(f"{flag} values must be ≥ 1, got {v}")
        out.append(v)
    return list(dict.fromkeys(out))


def command(
    artifacts: list[Path] = typer.Argument(..., help="Artifacts to compare: model.onnx, model.ncnn.param, "
                                           "model.engine, a bundle folder, or a checkpoint .pt."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled folder (labels.csv with yaw,pitch,...) for "
                                        "accuracy; left out = speed only."),
    split: str = typer.Option("val", "--split", help="Rows of this split of --data ('' for all)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most N labelled faces."),
    batch: str = typer.Option("1,8,32", "--batch", help="Batch sizes, comma-separated."),
    threads: str = typer.Option("1", "--threads", help="Engine thread counts, comma-separated ('auto' = engine default)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed calls per artifact before timing."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Timed calls per artifact x batch x threads."),
    duration: Optional[float] = typer.Option(None, "--duration",
                                             help="Seconds of timed calls per artifact x batch x threads (default 2)."),
    rounds: int = typer.Option(10, "--rounds", help="Interleaving: timed calls are split into this many "
                               "round-robin blocks across the artifacts."),
    backend: str = typer.Option("auto", "--backend", help=" | ".join(["auto", *registry.names()]) + "."),
    reference: str = typer.Option("auto", "--reference", help="FP32 reference for the deviation check: 'auto' (the "
                                  "first FP32 artifact), 'none', or a path (artifact or checkpoint .pt)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results (a list, one object per "
                                            "artifact x batch x threads) as JSON."),
    report: Optional[Path] = typer.Option(None, "--report", help="Folder for PNG plots and a Markdown summary."),
    host: Optional[str] = typer.Option(None, "--host", help="USER@HOST: run on that device over SSH."),
    port: Optional[int] = typer.Option(None, "--port", help="SSH port of --host."),
    identity: Optional[Path] = typer.Option(None, "--identity", help="SSH private key for --host."),
    known_hosts: Optional[Path] = typer.Option(None, "--known-hosts", help="known_hosts file to check the device's "
                                               "host key against (default: ssh's own)."),
    remote_python: str = typer.Option("python3", "--remote-python", help="Python on the device that has edgeface "
                                      "installed (e.g. ~/venv/bin/python)."),
    frames: Optional[Path] = typer.Option(None, "--frames", help="Full frames (a folder of images or a video): "
                                          "per-stage decode/detect/crop/model/total per frame and FPS instead."),
    faces: str = typer.Option("1,4", "--faces", help="With --frames: faces per frame (frames are tiled), "
                                                     "comma-separated."),
    keep_remote: bool = typer.Option(False, "--keep-remote", help="Leave the temporary folder on the device."),
    inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="Ansible inventory (INI or YAML): bench "
                                             "the bundle on every host in it, one report (pip install "
                                             "'edgeface\\[fleet]'; docs/fleet.md)."),
    hosts: Optional[str] = typer.Option(None, "--hosts", help="With --inventory: only this group or host (an "
                                        "Ansible host pattern)."),
    forks: int = typer.Option(50, "--forks", help="With --inventory: at most this many hosts at once."),
):
    """Latency (p50/p90/p99), throughput, load time, peak memory, size and accuracy, side by side.

    Artifacts are interleaved in round-robin blocks and each runs in its own process, so machine drift hits
    all alike and memory is attributable. With --host the device's own edgeface does the measuring.
    """
    check_output_file(json_out, "--json", inputs=[*artifacts, data, frames, identity, known_hosts,
                                                  None if reference in ("auto", "none") else reference])
    check_output_dir(report, "--report")
    if inventory is not None:
        return _fleet(artifacts, inventory, hosts=hosts, forks=forks, batch=batch, threads=threads, warmup=warmup,
                      iters=iters, duration=duration, json_out=json_out, report=report, host=host)
    if report is not None:
        from ..bench.report import check_report_dir

        check_report_dir(report)
    from ..bench.runner import BenchConfig

    if frames is not None:
        return _frames(artifacts, frames, faces, threads, limit, backend, json_out)
    if iters is not None and duration is not None:
        raise EdgefaceError("pass --iters N or --duration S, not both")
    cfg = BenchConfig(artifacts=[str(a) for a in artifacts], batches=parse_int_list(batch, "--batch"),
                      threads=parse_int_list(threads, "--threads", allow_auto=True), warmup=warmup, iters=iters,
                      duration=None if iters is not None else (duration if duration is not None else 2.0),
                      rounds=rounds, backend=backend, data=str(data) if data else None, split=split or None,
                      limit=limit, reference=reference)
    cfg.check()
    if reference not in ("auto", "none") and not Path(reference).exists():
        raise EdgefaceError(f"--reference {reference} does not exist (use auto, none or a path)")
    if data is not None:  # refuse a folder without labels before any work (and before connecting)
        from ..bench.runner import labelled_samples

        labelled_samples(str(data), cfg.split, limit)
    command_line = "edgeface bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else ""

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if host:
        from ..bench.remote import bench_remote
        from ..remote.ssh import SshTarget

        target = SshTarget(host, port=port, identity=identity, known_hosts=known_hosts)
        console.print(f"benchmarking on {target.where} over SSH")
        rows, warnings, fetched = bench_remote(cfg, target, remote_python=remote_python, want_report=report is not None,
                                               keep_remote=keep_remote, console=console)
        try:
            if report is not None and (fetched / "report").is_dir():
                _place_folder(fetched / "report", report)
        finally:
            shutil.rmtree(fetched, ignore_errors=True)
    else:
        from ..bench.runner import run_bench

        with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} blocks"), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            rows, warnings = run_bench(cfg, progress=progress)
        if report is not None:
            from ..bench.report import write_report

            write_report(rows, warnings, report, command=command_line, data=cfg.data)

    from ..bench.report import make_tables

    # Piped output (logs, CI) has no terminal width to respect: do not squeeze the columns to 80.
    if out_console.is_terminal:
        tables_console = out_console
    else:
        from rich.console import Console

        tables_console = Console(width=160, file=out_console.file)
    for table in make_tables(rows, title=f"edgeface bench{' on ' + host if host else ''}"):
        tables_console.print(table)
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    write_json(json_out, rows)
    if report is not None:
        console.print(f"report: {report}/README.md")


def _place_folder(src: Path, dest: Path) -> None:
    """Move a finished folder into place; files of an older report with the same names are replaced."""
    import os

    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        target = dest / f.name
        if target.is_dir() and f.is_dir():
            shutil.rmtree(target)
        os.replace(f, target)


def _frames(artifacts, frames, faces, threads, limit, backend, json_out) -> None:
    from ..bench.frames import bench_frames, format_rows

    thr = parse_int_list(threads, "--threads", allow_auto=True)
    rows = []
    for t in thr:
        rows += bench_frames(list(artifacts), frames, parse_int_list(faces, "--faces"), threads=t, limit=limit or 16,
                             backend=backend, console=console)
    out_console.print(format_rows(rows))
    write_json(json_out, rows)


def _fleet(artifacts, inventory, *, hosts, forks, batch, threads, warmup, iters, duration, json_out, report, host):
    """bench BUNDLE --inventory: the device's own bench on every host, through Ansible; one fleet report."""
    from ..fleet.rollout import bench_fleet
    from .fleet import finish

    if host:
        raise EdgefaceError("pass --host USER@HOST (one device) or --inventory FILE (a fleet), not both")
    if len(artifacts) != 1:
        raise EdgefaceError(f"bench --inventory takes one bundle folder, got {len(artifacts)} artifacts")
    if iters is not None and duration is not None:
        raise EdgefaceError("pass --iters N or --duration S, not both")
    args = ["--batch", ",".join(map(str, parse_int_list(batch, "--batch"))),
            "--threads", ",".join("auto" if t is None else str(t) for t in parse_int_list(threads, "--threads", True)),
            "--warmup", str(warmup)]
    args += ["--iters", str(iters)] if iters is not None else ["--duration", str(duration if duration else 2.0)]
    outcome = bench_fleet(artifacts[0], inventory, limit=hosts, forks=forks, bench_args=args, report=report,
                          console=console)
    finish(outcome, f"edgeface fleet bench: {artifacts[0].name}", json_out, report)
