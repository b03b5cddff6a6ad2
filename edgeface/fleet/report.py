"""The fleet report: one row per host (device model, OS, engine and precision in use, bundle digest, status,
latency p50/p99), as a rich table, JSON, Markdown and a PNG that groups latency by device model so that an
outlier device stands out."""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Optional

from ..core.io import atomic_write_json, move_files_into
from .run import HostResult

REPORT_JSON, REPORT_MD, REPORT_PNG = "fleet.json", "README.md", "latency_by_model.png"
REPORT_TITLE = "# edgeface fleet"
OUTLIER_FACTOR = 1.5   # a host slower than 1.5x its model's median p50 is named on the plot


def _latency(rows: list) -> tuple[Optional[float], Optional[float], Optional[int]]:
    """p50/p99 (ms) of the batch-1 row of a device's bench JSON (else its first row)."""
    rows = [r for r in rows or [] if isinstance(r, dict) and isinstance(r.get("latency_ms"), dict)]
    if not rows:
        return None, None, None
    row = next((r for r in rows if r.get("batch") == 1), rows[0])
    return row["latency_ms"].get("p50"), row["latency_ms"].get("p99"), row.get("batch")


def host_rows(results: list[HostResult], model_names: Optional[dict] = None) -> list[dict]:
    """The report's rows. ``model_names``: host -> edgeface_device_model from the inventory (overrides what
    the device reports about itself)."""
    out = []
    for r in results:
        res = r.result or {}
        dev = res.get("device") or {}
        p50, p99, batch = _latency(res.get("bench"))
        out.append({"host": r.host, "groups": r.groups, "status": r.status, "reason": r.reason,
                    "device_model": (model_names or {}).get(r.host) or dev.get("model"), "os": dev.get("os"),
                    "machine": dev.get("machine"), "edgeface": dev.get("edgeface"), "engine": res.get("backend"),
                    "precision": res.get("precision"), "digest": res.get("digest"),
                    "previous_digest": res.get("previous_digest"), "signed": res.get("signed"),
                    "copied": r.copied, "latency_p50_ms": p50, "latency_p99_ms": p99, "batch": batch,
                    "bench": res.get("bench") or None})
    return out


def summary(rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return f"{len(rows)} hosts: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def make_table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    for col in ("host", "device model", "OS", "engine", "precision", "digest", "status", "p50 ms", "p99 ms"):
        t.add_column(col, justify="right" if col.endswith("ms") else "left", overflow="fold")
    colors = {"failed": "red", "unreachable": "red", "not attempted": "yellow", "stopped": "yellow",
              "unchanged": "cyan"}
    for r in rows:
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        c = colors.get(r["status"], "green")
        t.add_row(r["host"], r["device_model"] or "–", _short_os(r["os"]), r["engine"] or "–", r["precision"] or "–",
                  (r["digest"] or "–")[:12], f"[{c}]{_escape(status)}[/{c}]", _f(r["latency_p50_ms"]),
                  _f(r["latency_p99_ms"]))
    return t


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _short_os(os_name: Optional[str]) -> str:
    return (os_name or "–").split("-with-")[0]


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"# {title}", "", summary(rows), "",
             "| host | device model | OS | engine | precision | digest | status | p50 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---:|---:|"]
    for r in rows:
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        lines.append(f"| {r['host']} | {r['device_model'] or '–'} | {_short_os(r['os'])} | {r['engine'] or '–'} | "
                     f"{r['precision'] or '–'} | {(r['digest'] or '–')[:12]} | {status.replace('|', '/')} | "
                     f"{_f(r['latency_p50_ms'])} | {_f(r['latency_p99_ms'])} |")
    if any(r["latency_p50_ms"] is not None for r in rows):
        lines += ["", f"![latency by device model]({REPORT_PNG})"]
    return "\n".join(lines) + "\n"


def outliers(rows: list[dict]) -> list[str]:
    """Hosts whose p50 is more than OUTLIER_FACTOR x the median p50 of their device model."""
    by_model: dict[str, list[float]] = {}
    for r in rows:
        if r["latency_p50_ms"] is not None:
            by_model.setdefault(r["device_model"] or "?", []).append(r["latency_p50_ms"])
    return [r["host"] for r in rows if r["latency_p50_ms"] is not None
            and r["latency_p50_ms"] > OUTLIER_FACTOR * statistics.median(by_model[r["device_model"] or "?"])]


def plot_latency_by_model(rows: list[dict], path: Path) -> None:
    """One column per device model; each host a dot at its p50 with a bar up to its p99; the model's median
    p50 as a line; outliers named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r["latency_p50_ms"] is not None]
    models = list(dict.fromkeys(r["device_model"] or "?" for r in measured))
    slow = set(outliers(measured))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(models) + 2), 4.6))
    try:
        for i, m in enumerate(models):
            group = [r for r in measured if (r["device_model"] or "?") == m]
            n = len(group)
            for j, r in enumerate(group):
                x = i + (j - (n - 1) / 2) * min(0.5 / max(n - 1, 1), 0.12)
                color = "tab:red" if r["host"] in slow else "tab:blue"
                p99 = r["latency_p99_ms"] if r["latency_p99_ms"] is not None else r["latency_p50_ms"]
                ax.vlines(x, r["latency_p50_ms"], p99, color=color, alpha=0.5, lw=1.5)
                ax.plot(x, r["latency_p50_ms"], "o", color=color, ms=6)
                if r["host"] in slow or n <= 3:  # names of a crowded column would overlap: outliers only
                    ax.annotate(r["host"], (x, r["latency_p50_ms"]), textcoords="offset points", xytext=(5, 0),
                                fontsize=7, color=color)
            med = statistics.median(r["latency_p50_ms"] for r in group)
            ax.hlines(med, i - 0.3, i + 0.3, color="0.3", lw=1, ls="--")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([f"{m}\n({sum((r['device_model'] or '?') == m for r in measured)} hosts)" for m in models],
                           fontsize=8)
        ax.set_xlim(-0.6, len(models) - 0.4)
        ax.set_ylabel("latency per call, ms (dot p50, bar to p99)")
        ax.set_title("edgeface fleet bench: latency by device model"
                     + (f" ({len(slow)} outlier(s) in red)" if slow else ""),
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def check_report_dir(out_dir: str | Path) -> None:
    """--report may name a new or empty folder, or one holding an earlier fleet report: the report's file names
    must not replace a user's own files."""
    from ..core.errors import EdgefaceError

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    ours = False
    readme = out_dir / REPORT_MD
    if readme.is_file() and not readme.is_symlink():
        with open(readme, "rb") as fh:
            ours = fh.read(len(REPORT_TITLE)).decode("utf-8", "replace") == REPORT_TITLE
    clash = [n for n in (REPORT_JSON, REPORT_MD, REPORT_PNG, "hosts") if os.path.lexists(out_dir / n)]
    if clash and not ours:
        raise EdgefaceError(f"--report {out_dir} holds {', '.join(clash)} that a fleet report did not write; choose "
                            f"a new or empty folder (the report would replace them)")


def write_report(rows: list[dict], out_dir: str | Path, title: str, host_files: Optional[Path] = None) -> Path:
    """fleet.json, README.md, the PNG (when any host was benched) and hosts/*.bench.json into ``out_dir``,
    built in a temporary folder beside it and moved into place file by file."""
    out_dir = Path(out_dir)
    check_report_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fleet-report-", dir=out_dir.parent))
    try:
        atomic_write_json(tmp / REPORT_JSON, {"title": title, "summary": summary(rows), "hosts": rows,
                                               "outliers": outliers(rows)})
        (tmp / REPORT_MD).write_text(markdown(rows, title))
        if any(r["latency_p50_ms"] is not None for r in rows):
            plot_latency_by_model(rows, tmp / REPORT_PNG)
        if host_files is not None and host_files.is_dir():
            shutil.copytree(host_files, tmp / "hosts")
        move_files_into(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
