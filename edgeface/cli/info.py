"""`edgeface info`: versions, engines, the device, the default model's card."""
from __future__ import annotations

import importlib
import platform
from pathlib import Path
from typing import Optional

import typer

from ..core import __version__
from ..core.device import X86, X86_MACHINES, device_info
from ..engines import registry
from ..engines.registry import available_backends
from .output import check_output_file, out_console, write_json

NAME = "info"


def command(json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON.")):
    """Versions, installed backends, the detected device and the default model's card."""
    check_output_file(json_out, "--json")
    report = collect_info()
    print_info(report, out_console)
    write_json(json_out, report)


def _version(mod: str):
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception:
        return None


def collect_info() -> dict:
    report = {"edgeface": __version__, "python": platform.python_version(), "platform": platform.platform(),
              "machine": platform.machine(),
              "packages": {m: _version(m) for m in dict.fromkeys(["numpy", "cv2", "onnx",
                                                                  *(e.package for e in registry.ENGINES)])}}
    report["device"] = device_info()
    report["backends"] = available_backends()
    if platform.machine().lower() in X86_MACHINES:
        report["precisions"] = precisions_here(X86)
    report["default_model"] = default_model_card()
    return report


def precisions_here(device: str) -> dict:
    """What `--precision` can ask for on this machine, and the engines preferred on ``device`` that run it (bf16:
    OpenVINO, only where the CPU computes it natively), or why none does."""
    engines = [e.name for e in registry.ENGINES if device in e.preferred_on]
    out = {}
    for precision in ("fp32", "int8", "bf16"):
        stored = "int8" if precision == "int8" else "fp32"
        why = {name: registry.precision_problem(name, precision, stored) for name in engines}
        runs = [name for name, problem in why.items() if problem is None]
        out[precision] = ", ".join(runs) or "; ".join(f"{n}: {w.split(';')[0]}" for n, w in why.items())
    return out


def default_model_card() -> dict:
    """The shipped weights' card; its details need torch (a torch-free device gets a note instead)."""
    from ..engines.torch.checkpoint import DEFAULT_WEIGHTS

    card = {"weights": str(DEFAULT_WEIGHTS), "size_mb": round(DEFAULT_WEIGHTS.stat().st_size / 1e6, 3)
            if DEFAULT_WEIGHTS.exists() else None}
    try:
        from ..engines.torch.checkpoint import load_model
        from ..engines.torch.network import count_macs, count_params

        model, spec, meta = load_model(None)
        card.update(arch=f"{spec.arch} x{spec.width}",
                    input=f"{spec.input_size}x{spec.input_size} {spec.channel_order}",
                    params=count_params(model), macs=count_macs(model, spec.input_size),
                    version=spec.model_version, val=meta.get("val"),
                    passes="2 a face: its crop and the crop's mirror image, answers averaged" if spec.mirror_average
                    else "1 a face")
    except Exception as e:  # torch missing on a device, or no weights yet
        card["note"] = f"model details need torch and the weights ({type(e).__name__})"
    return card


def print_info(report: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"edgeface {report['edgeface']}", show_header=False)

    def row(key, value):
        if value is not None:  # an unmeasured fact is left out, not shown as "None"
            t.add_row(key, escape(str(value)))  # escape: "pip install 'edgeface[ort]'" is not rich markup

    row("python", report["python"])
    row("platform", report["platform"])
    for k, v in report["packages"].items():
        row(k, v or "not installed")
    for k, v in (report.get("backends") or {}).items():
        row(f"backend {k}", v)
    for k, v in (report.get("precisions") or {}).items():
        row(f"precision {k}", v)
    for k, v in (report.get("device") or {}).items():
        row(f"device {k}", v)
    card = report["default_model"]
    for k in ("arch", "input", "version", "passes", "size_mb", "note"):
        row(f"model {k}", card.get(k))
    if card.get("params") is not None:
        row("model params", f"{card['params'] / 1e6:.3f} M")
        row("model MACs", f"{card['macs'] / 1e6:.2f} M multiply-adds")
    console.print(t)
