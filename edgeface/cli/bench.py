"""`edgeface bench`: latency, throughput, memory, size and accuracy of artifacts, side by side."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import EdgefaceError
from ..engines import registry
from .output import check_output_dir, check_output_file, console, out_console, table_console, write_json

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
                                           "model.engine, a bundle folder, a checkpoint .pt, or 'default' (the "
                                           "shipped model's ONNX)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Labelled folder (labels.csv with yaw,pitch,...) for "
                                        "accuracy; left out = speed only."),
    split: str = typer.Option("val", "--split", help="Rows of this split of --data ('' for all)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most N labelled faces of each set (default: "
                                        "all of --data's, 64 of each default set)."),
    batch: str = typer.Option("1,8,32", "--batch", help="Batch sizes, comma-separated."),
    threads: str = typer.Option("1", "--threads",
                                help="Engine thread counts, comma-separated ('auto' = engine default)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed calls per artifact before timing."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Timed calls per artifact x batch x threads."),
    duration: Optional[float] = typer.Option(None, "--duration",
                                             help="Seconds of timed calls per artifact x batch x threads (default 2)."),
    rounds: int = typer.Option(10, "--rounds", help="Interleaving: timed calls are split into this many "
                               "round-robin blocks across the artifacts."),
    backend: str = typer.Option("auto", "--backend", help=" | ".join(["auto", *registry.names()]) + "."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Run the artifacts at this precision "
                                            "(bf16: an FP32 ONNX on OpenVINO, on CPUs with avx512_bf16 / amx_bf16); "
                                            "default: each artifact's own."),
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
    frame_count: int = typer.Option(16, "--frame-count", help="With --frames: use the first N frames of the "
                                    "folder or video."),
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
    artifacts = [_shipped_onnx() if str(a) == "default" else a for a in artifacts]
    check_output_file(json_out, "--json", inputs=[*artifacts, data, frames, identity, known_hosts,
                                                  None if reference in ("auto", "none") else reference])
    check_output_dir(report, "--report")
    if inventory is not None:
        return _fleet(artifacts, inventory, hosts=hosts, forks=forks, batch=batch, threads=threads, warmup=warmup,
                      iters=iters, duration=duration, json_out=json_out, report=report, host=host)
    _check_report_dir(report)
    if frames is not None:
        return _frames(artifacts, frames, faces, threads, limit or frame_count, backend, json_out, report)
    cfg = _config(artifacts, data, split, limit, batch, threads, warmup, iters, duration, rounds, backend, precision,
                  reference)
    from ..bench.session import bench

    rows, warnings = bench(cfg, host=host, report=report, command=_command_line(), console=console,
                           ssh_options=dict(port=port, identity=identity, known_hosts=known_hosts,
                                            remote_python=remote_python, keep_remote=keep_remote))
    _print_results(rows, warnings, cfg, host=host, json_out=json_out, report=report)


def _check_report_dir(report: Optional[Path]) -> None:
    if report is not None:
        from ..bench.report import check_report_dir

        check_report_dir(report)


def _config(artifacts, data, split, limit, batch, threads, warmup, iters, duration, rounds, backend, precision,
            reference):
    """The flags as a BenchConfig (checked by the bench itself)."""
    from ..bench.runner import BenchConfig

    if iters is not None and duration is not None:
        raise EdgefaceError("pass --iters N or --duration S, not both")
    return BenchConfig(artifacts=[str(a) for a in artifacts], batches=parse_int_list(batch, "--batch"),
                       threads=parse_int_list(threads, "--threads", allow_auto=True), warmup=warmup, iters=iters,
                       duration=None if iters is not None else (duration if duration is not None else 2.0),
                       rounds=rounds, backend=backend, data=str(data) if data else None, split=split or None,
                       limit=limit, reference=reference, precision=precision)


def _command_line() -> str:
    """The command as typed, for the report's README."""
    return "edgeface bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else ""


def _print_results(rows: list[dict], warnings: list[str], cfg, *, host, json_out, report) -> None:
    """Tables and the vs-FP32 lines on stdout, warnings and the summary line on stderr; --json written."""
    from ..bench.report import make_tables

    tables_console = table_console()
    for table in make_tables(rows, title=f"edgeface bench{' on ' + host if host else ''}"):
        tables_console.print(table)
    for line in vs_fp32_lines(rows):
        out_console.print(line, highlight=False, soft_wrap=True)
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    write_json(json_out, rows)
    if report is not None:
        console.print(f"report: {report}/README.md")
    console.print(f"bench: {len(cfg.artifacts)} artifact(s) x {len(cfg.batches)} batch size(s) x {len(cfg.threads)} "
                  f"thread count(s), {len(rows)} rows; accuracy on {rows[0].get('faces') if rows else '-'}",
                  highlight=False, soft_wrap=True)


def vs_fp32_lines(rows: list[dict]) -> list[str]:
    """Per artifact (not the reference itself), the line quantize and deploy print for the same faces."""
    from ..faces.evaluate import format_vs_fp32

    out, seen = [], set()
    for r in rows:
        v = r.get("vs_reference")
        if not v or r["artifact"] in seen or r.get("reference") == r["artifact"] or v.get("n_faces") is None:
            continue
        seen.add(r["artifact"])
        out.append(f"{r['artifact']} {r['precision']} {format_vs_fp32(v, r.get('faces') or 'the bench inputs')}")
    return out


def _shipped_onnx() -> Path:
    from ..core.artifact import WEIGHTS_DIR, shipped_artifact

    return shipped_artifact(".onnx", WEIGHTS_DIR)


def _frames(artifacts, frames, faces, threads, count, backend, json_out, report) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..bench.frames import bench_frames, format_rows, write_frames_report

    if count < 1:
        raise EdgefaceError(f"--frame-count must be >= 1, got {count}")
    thr = parse_int_list(threads, "--threads", allow_auto=True)
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        for t in thr:
            rows += bench_frames(list(artifacts), frames, parse_int_list(faces, "--faces"), threads=t, limit=count,
                                 backend=backend, console=None, progress=progress)
    table_console().print(format_rows(rows))
    write_json(json_out, rows)
    if report is not None:
        from ..core.device import device_info

        dev = device_info()
        for r in rows:
            r.setdefault("device", dev)
        write_frames_report(rows, report, command=_command_line())
        console.print(f"report: {report}/README.md")
    console.print(f"bench --frames: {len(artifacts)} artifact(s), {rows[0]['frames'] if rows else 0} frames of "
                  f"{Path(frames).name}, faces per frame {faces}; {len(rows)} rows", highlight=False, soft_wrap=True)


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
