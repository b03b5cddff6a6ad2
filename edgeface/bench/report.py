"""What a person reads: the terminal table, PNG plots and a Markdown summary of bench rows."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from ..core.errors import EdgefaceError
from ..core.io import disk_errors, removed_on_failure


def _f(v, fmt="{:.3f}", none="–"):
    return none if v is None else fmt.format(v)


def row_name(r: dict) -> str:
    return f"{r['artifact']} ({engine_label(r)})"


def device_line(dev: Optional[dict]) -> str:
    if not dev:
        return "device: unknown"
    parts = [dev.get("board_model") or dev.get("cpu_model") or dev.get("machine") or "?"]
    if dev.get("cpu_model") and dev.get("board_model"):
        parts.append(dev["cpu_model"])
    parts.append(f"{dev.get('cores_available') or dev.get('cores')} cores")
    if dev.get("governor"):
        parts.append(f"governor {dev['governor']}")
    if dev.get("temperature_c") is not None:
        parts.append(f"{dev['temperature_c']:.0f} °C")
    j = dev.get("jetson") or {}
    if j.get("jetpack") or j.get("l4t"):
        parts.append(f"JetPack {j.get('jetpack') or '?'} (L4T {j.get('l4t') or '?'})")
    if j.get("nvpmodel"):
        parts.append(f"nvpmodel {j['nvpmodel'].get('name')}")
    if dev.get("host"):
        parts[0] = f"{dev['host']}: {parts[0]}"
    return ", ".join(str(p) for p in parts)


def passes_mark(row: dict) -> str:
    """`` ×2 mirror`` when each face takes two passes (the spec's mirror average): a face's latency is then the
    network's for a batch of two; else empty."""
    return " ×2 mirror" if row.get("passes_per_face", 1) == 2 else ""


def engine_label(row: dict) -> str:
    """The engine and precision (``onnxruntime fp32``), with ``passes_mark``."""
    return f"{row['backend']} {row['precision']}{passes_mark(row)}"


def make_tables(rows: list[dict], title: str = "edgeface bench"):
    """(speed table: one row per artifact x batch x threads, accuracy table: one row per artifact)."""
    from rich.table import Table

    speed = Table(title=title, caption=device_line(rows[0]["device"]) if rows else None)
    for col in ("artifact", "engine", "batch", "thr", "p50 ms", "p90 ms", "p99 ms", "img/s", "load ms", "1st ms",
                "RSS MB"):
        speed.add_column(col, justify="left" if col in ("artifact", "engine") else "right",
                         no_wrap=col != "artifact", overflow="fold")
    for r in rows:
        lat = r["latency_ms"]
        speed.add_row(r["artifact"], engine_label(r), str(r["batch"]), str(r["threads"] or "auto"),
                      _f(lat["p50"]), _f(lat["p90"]), _f(lat["p99"]), _f(r["throughput_ips"], "{:.0f}"),
                      _f(r["load_ms"], "{:.1f}"), _f(r["first_inference_ms"], "{:.2f}"), _f(r["peak_rss_mb"], "{:.1f}"))
    faces = next((r.get("faces") for r in rows if r.get("faces")), None)
    acc = Table(title="accuracy (pose MAE, degrees) and deviation from the FP32 reference (|Δ|)"
                + (f"\non {faces}" if faces else ""))
    for col in ("artifact", "engine", "size MB", "yaw °", "pitch °", "roll °", "mean °", "blur MAE", "blur ρ",
                "pose |Δ| max °", "p99 °", "mean °", "blur |Δ| max"):
        acc.add_column(col, justify="left" if col in ("artifact", "engine") else "right",
                       no_wrap=col != "artifact", overflow="fold")
    seen = set()
    for r in rows:
        if r["artifact"] in seen:
            continue
        seen.add(r["artifact"])
        a, d = r.get("accuracy") or {}, r.get("vs_reference") or {}
        acc.add_row(r["artifact"], engine_label(r), _f(r["size_mb"], "{:.3f}"),
                    _f(a.get("yaw_mae"), "{:.2f}"), _f(a.get("pitch_mae"), "{:.2f}"), _f(a.get("roll_mae"), "{:.2f}"),
                    _f(a.get("mean_mae"), "{:.2f}"), _f(a.get("blur_mae"), "{:.4f}"), _f(a.get("blur_spearman"),
                                                                                         "{:.3f}"),
                    _f(d.get("pose_max_abs"), "{:.2f}"), _f(d.get("pose_p99_abs"), "{:.2f}"),
                    _f(d.get("pose_mean_abs"), "{:.3f}"), _f(d.get("blur_max_abs"), "{:.4f}"))
    return speed, acc


def markdown_table(rows: list[dict]) -> str:
    head = ("| artifact | backend | precision | batch | threads | p50 ms | p90 ms | p99 ms | img/s | load ms | "
            "first ms | peak RSS MB | size MB | yaw MAE° | pitch MAE° | roll MAE° | mean MAE° | blur MAE | blur ρ | "
            "pose Δ max° | pose Δ p99° | blur Δ max |")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        lat, acc, dev = r["latency_ms"], r.get("accuracy") or {}, r.get("vs_reference") or {}
        cells = [f"`{r['artifact']}`", r["backend"] + passes_mark(r), r["precision"], str(r["batch"]),
                 str(r["threads"] or "auto"),
                 _f(lat["p50"]), _f(lat["p90"]), _f(lat["p99"]), _f(r["throughput_ips"], "{:.0f}"),
                 _f(r["load_ms"], "{:.1f}"), _f(r["first_inference_ms"], "{:.2f}"), _f(r["peak_rss_mb"], "{:.1f}"),
                 _f(r["size_mb"], "{:.3f}"), _f(acc.get("yaw_mae"), "{:.2f}"), _f(acc.get("pitch_mae"), "{:.2f}"),
                 _f(acc.get("roll_mae"), "{:.2f}"),  # the mean is over the three: all three are shown
                 _f(acc.get("mean_mae"), "{:.2f}"), _f(acc.get("blur_mae"), "{:.4f}"),
                 _f(acc.get("blur_spearman"), "{:.3f}"), _f(dev.get("pose_max_abs"), "{:.2f}"),
                 _f(dev.get("pose_p99_abs"), "{:.2f}"), _f(dev.get("blur_max_abs"), "{:.4f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots ------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _artifact_colors(rows) -> dict:
    """One colour per artifact (in the order the rows name them), the same in every plot."""
    cmap = _plt().get_cmap("tab10")
    names = list(dict.fromkeys(row_name(r) for r in rows))
    return {n: cmap(i % 10) for i, n in enumerate(names)}


@contextmanager
def figure(path: Path, panels: int = 1, size: tuple[float, float] = (7.5, 4.8)):
    """A figure with ``panels`` axes side by side, saved to ``path`` when the block succeeds, closed always."""
    plt = _plt()
    fig, axes = plt.subplots(1, panels, figsize=size, squeeze=False)
    try:
        yield fig, list(axes[0])
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def plot_latency(rows: list[dict], path: Path) -> None:
    """Per-call latency distribution per artifact: one panel per batch size (first thread count)."""
    colors = _artifact_colors(rows)
    threads0 = rows[0]["threads"]
    batches = sorted({r["batch"] for r in rows})
    width = max(6.0, 1.6 + 2.8 * len(colors))
    with figure(path, len(batches), (width * min(len(batches), 3) / 1.4 if len(batches) > 1 else width, 4.8)) \
            as (fig, axes):
        for ax, b in zip(axes, batches):
            sel = [r for r in rows if r["batch"] == b and r["threads"] == threads0 and r.get("latencies_ms")]
            data = [r["latencies_ms"] for r in sel]
            if not data:
                ax.set_visible(False)
                continue
            pos = list(range(1, len(sel) + 1))
            # The tail beyond p99 (a preempted call) would squash everything else: the axis stops above the
            # largest p99 and the calls cut off are counted in the label.
            top = max(r["latency_ms"]["p99"] for r in sel) * 1.15
            shape = [[v for v in d if v <= r["latency_ms"]["p99"]] or d for d, r in zip(data, sel)]
            parts = ax.violinplot(shape, positions=pos, showextrema=False, widths=0.8)
            for body, r in zip(parts["bodies"], sel):
                body.set_facecolor(colors[row_name(r)])
                body.set_alpha(0.35)
            ax.boxplot(data, positions=pos, widths=0.18, showfliers=False, medianprops={"color": "black"})
            for p, r, d in zip(pos, sel, data):
                lat = r["latency_ms"]
                ax.scatter([p], [lat["p99"]], marker="v", color="crimson", zorder=3)
                # Beside the violin (half-width 0.4), not on the box, on a white ground: legible with 4 artifacts.
                ax.annotate(f"p50 {lat['p50']:.3g}", (p + 0.42, lat["p50"]), fontsize=9, va="center",
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
                over = sum(v > top for v in d)
                if over:
                    ax.annotate(f"{over} above\nmax {lat['max']:.3g}", (p, top), xytext=(0, -4), va="top",
                                textcoords="offset points", ha="center", fontsize=7, color="dimgray")
            ax.set_ylim(0, top)
            ax.set_xticks(pos)
            ax.set_xlim(0.5, len(sel) + 0.9)  # room for the last p50 label
            ax.set_xticklabels([f"{r['artifact']}\n{engine_label(r)}" for r in sel], fontsize=9)
            ax.set_ylabel("latency per call (ms)")
            ax.set_title(f"batch {b}, {threads0 or 'auto'} thread(s), {len(data[0])} calls each")
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle("Latency per call (box: quartiles, whiskers 1.5 IQR; violin: density up to p99; ▼ p99)",
                     fontsize=11)


def plot_throughput(rows: list[dict], path: Path) -> None:
    """Images/s against batch size, one line per artifact (and per thread count)."""
    colors = _artifact_colors(rows)
    thread_values = sorted({r["threads"] or 0 for r in rows})
    styles = ["-", "--", ":", "-."]
    with figure(path) as (_, (ax,)):
        for n in colors:
            for k, t in enumerate(thread_values):
                sel = sorted((r for r in rows if row_name(r) == n and (r["threads"] or 0) == t),
                             key=lambda r: r["batch"])
                if not sel:
                    continue
                label = n if len(thread_values) == 1 else f"{n}, {t or 'auto'} thr"
                ax.plot([r["batch"] for r in sel], [r["throughput_ips"] for r in sel], styles[k % 4], marker="o",
                        color=colors[n], label=label)
        batches = sorted({r["batch"] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches)
        ax.set_xticklabels([str(b) for b in batches])
        ax.set_xlabel("batch size (crops per call)")
        ax.set_ylabel("throughput (images / s)")
        ax.set_ylim(bottom=0)
        thr = ", ".join(str(t or "auto") for t in thread_values)
        ax.set_title(f"Throughput against batch size ({thr} thread(s))")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def plot_accuracy_latency(rows: list[dict], path: Path) -> Optional[tuple[float, float]]:
    """Pose mean MAE against p50 latency at the smallest batch: the trade-off in one picture. Returns the
    accuracy axis' limits (None without accuracy)."""
    limits = None
    colors = _artifact_colors(rows)
    b0, t0 = min(r["batch"] for r in rows), rows[0]["threads"]
    sel = [r for r in rows if r["batch"] == b0 and r["threads"] == t0]
    with figure(path) as (_, (ax,)):
        have = [r for r in sel if (r.get("accuracy") or {}).get("mean_mae") is not None]
        if not have:
            ax.text(0.5, 0.5, "no accuracy measured\n(run with --data DIR holding labels.csv)", ha="center",
                    va="center",
                    transform=ax.transAxes, fontsize=12)
            ax.set_axis_off()
        for r in have:
            x, y = r["latency_ms"]["p50"], r["accuracy"]["mean_mae"]
            ax.errorbar([x], [y], xerr=[[x - r["latency_ms"]["min"]], [r["latency_ms"]["p90"] - x]], fmt="o", ms=9,
                        color=colors[row_name(r)], capsize=4, label=f"{row_name(r)}: {y:.2f}°, p50 {x:.3g} ms")
        if have:
            ax.set_xlabel(f"latency p50 per call (ms), batch {b0}, {t0 or 'auto'} thread(s); bar: min to p90")
            ax.set_ylabel("pose mean MAE (degrees, lower is better)")
            ax.set_xlim(left=0, right=max(r["latency_ms"]["p90"] for r in have) * 1.3)
            # A zero-based axis: a hundredth-of-a-degree difference between engines must look as small as it is.
            ys = [r["accuracy"]["mean_mae"] for r in have]
            ax.set_ylim(0, max(ys) * 1.25)
            limits = tuple(float(v) for v in ax.get_ylim())
            for r, yv in zip(have, ys):
                ax.annotate(f"{yv:.2f}°", (r["latency_ms"]["p50"], yv), xytext=(0, 8), textcoords="offset points",
                            ha="center", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
            n = have[0]["accuracy"].get("n")
            ax.set_title(f"Accuracy against latency (n = {n} labelled faces)")
    return limits


REPORT_FILES = ("README.md", "latency.png", "throughput.png", "accuracy_latency.png", "stages.png")
REPORT_TITLE = "# edgeface bench"


def check_report_dir(out_dir: str | Path) -> None:
    """``--report`` may name a new or empty folder, or one holding an earlier bench report (its README.md starts
    with the report's title): the report's file names (README.md) must not replace a user's own files."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    readme = out_dir / "README.md"
    ours = False
    if readme.is_file() and not readme.is_symlink():
        try:
            with open(readme, "rb") as fh:
                ours = fh.read(len(REPORT_TITLE)).decode("utf-8", "replace") == REPORT_TITLE
        except OSError:
            ours = False
    clash = [n for n in REPORT_FILES if os.path.lexists(out_dir / n)]
    if clash and not ours:
        raise EdgefaceError(f"--report {out_dir} holds {', '.join(clash)} that a bench report did not write; "
                            f"choose a new or empty folder (the report would replace them)")


def write_report(rows: list[dict], warnings: list[str], out_dir: str | Path, *, command: str = "",
                 data: Optional[str] = None, faces: Optional[dict] = None) -> Path:
    """PNG plots + README.md into ``out_dir`` (built in a temp folder, then moved into place). ``faces`` (from
    run_bench's ``faces_out``): one "where INT8 disagrees most" picture per INT8 artifact."""
    with report_folder(out_dir) as tmp:
        plot_latency(rows, tmp / "latency.png")
        plot_throughput(rows, tmp / "throughput.png")
        plot_accuracy_latency(rows, tmp / "accuracy_latency.png")
        pictures = []
        if faces and faces.get("poses"):
            from ..runtime.stream import write_disagreement

            for k, (label, pose) in enumerate(faces["poses"].items()):
                name = f"int8_disagreement_{k}.png"
                write_disagreement(tmp / name, faces["crops"], pose, faces["reference_pose"])
                pictures.append((label, name))
        (tmp / "README.md").write_text(markdown_summary(rows, warnings, command=command, data=data,
                                                        pictures=pictures))
    return Path(out_dir)


@contextmanager
def report_folder(out_dir: str | Path):
    """A temporary folder beside ``out_dir`` to build a report in; its files move into ``out_dir`` when the
    block succeeds (an earlier report's files of the same names are replaced), and it is removed always."""
    out_dir = Path(out_dir)
    check_report_dir(out_dir)
    # A full disk or read-only folder: one error line naming --report, and no folder left behind.
    with removed_on_failure(out_dir.parent, make=True), disk_errors(out_dir):
        tmp = Path(tempfile.mkdtemp(prefix=".bench-report-", dir=out_dir.parent))
        try:
            yield tmp
            with removed_on_failure(out_dir):
                out_dir.mkdir(parents=True, exist_ok=True)
                for f in tmp.iterdir():
                    os.replace(f, out_dir / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def markdown_summary(rows: list[dict], warnings: list[str], *, command: str = "", data: Optional[str] = None,
                     pictures: tuple = ()) -> str:
    dev = rows[0]["device"] if rows else {}
    r0 = rows[0] if rows else {}
    how = (f"{r0.get('iterations')} timed calls" if r0 else "")
    lines = [REPORT_TITLE, ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"**Device:** {device_line(dev)}", ""]
    if dev.get("isa_flags"):
        lines += [f"ISA features: {', '.join(dev['isa_flags'])}", ""]
    lines += [markdown_table(rows), ""]
    lines += ["## How these numbers were taken", "",
              "- Latency: `time.perf_counter_ns()` around each `Predictor.predict` call on uint8 BGR crops "
              "(preprocessing included), after the warm-up calls; p50/p90/p99 interpolate linearly between "
              f"order statistics. First row: {how}, warm-up {r0.get('warmup')} calls, {r0.get('rounds')} rounds.",
              "- Artifacts are interleaved: each round gives every artifact a block of calls, the order rotating "
              "each round, so drift in clock speed or background load hits all alike.",
              "- Each artifact × batch × threads runs in its own fresh process: load time (Predictor created and "
              "session ready), first inference and peak RSS (`VmHWM` of that process: interpreter + runtime + "
              "model + buffers; MB = 10⁶ bytes) belong to it alone.",
              "- Throughput = images per second of timed call time (batch × calls / Σ latency).",
              f"- Accuracy: pose MAE against labels and blur on synthetic blur of the same faces"
              f"{f' from `{data}`' if data else ''}; deviation Δ = |output − FP32 output| "
              f"from the FP32 reference `{r0.get('reference')}` on the same faces ({r0.get('faces') or '-'}); the "
              f"mean MAE is the mean of the yaw, pitch and roll columns.", ""]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    lines += ["## Plots", "", "![latency](latency.png)", "", "![throughput](throughput.png)", "",
              "![accuracy vs latency](accuracy_latency.png)", ""]
    for label, name in pictures:
        lines += [f"### Where INT8 disagrees most: `{label}`", "",
                  f"The faces of {r0.get('faces') or 'the bench inputs'} whose pose differs most from the FP32 "
                  f"reference's, FP32 left, INT8 right.", "", f"![where INT8 disagrees most]({name})", ""]
    return "\n".join(lines)
