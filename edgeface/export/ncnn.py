"""ncnn export through pnnx: ``<stem>.ncnn.param``, ``<stem>.ncnn.bin`` and the ModelSpec in ``<stem>.spec.json``.

pnnx's side files (TorchScript, .pnnx.*, generated Python) stay in a temporary folder; the three artifact
files are renamed into place only once all exist, the .param last (it is what a loader looks for).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..core.artifact import ncnn_paths
from ..core.errors import EdgefaceError
from ..core.io import atomic_path, temp_dir
from ..core.spec import FLOAT_NCHW, ModelSpec
from .source import require_torch, resolve_model

NCNN_INPUT_BLOB, NCNN_OUTPUT_BLOBS = "in0", ("out0", "out1")  # what pnnx names them (outputs in forward order)


def export_ncnn(model_or_checkpoint=None, out_param: str | Path = "model.ncnn.param", *, precision: str = "fp32",
                fold_preprocess: bool = False, spec: ModelSpec | None = None) -> Path:
    """Export to ncnn through pnnx: ``<stem>.ncnn.param``, ``<stem>.ncnn.bin`` and ``<stem>.spec.json``.

    ``precision="fp16"`` stores weights as fp16 (half the size; ~1e-3 deviation). pnnx's blobs ``in0`` /
    ``out0`` / ``out1`` are renamed in the .param to the spec's names (``input``, ``blur``, ``pose``), and
    the map is recorded in the spec file too. ncnn takes the uint8 crops itself (``Mat.from_pixels``), so
    there is nothing to fold (``fold_preprocess`` must stay False).
    """
    if fold_preprocess:
        raise EdgefaceError("ncnn normalises uint8 crops itself; there is no folded-preprocessing ncnn export")
    torch = require_torch()
    if precision not in ("fp32", "fp16"):
        raise EdgefaceError(f"ncnn export supports precision fp32 or fp16, not {precision!r}")
    try:
        import pnnx
    except ImportError:
        raise EdgefaceError("ncnn export needs pnnx: pip install 'edgeface[train]' (or pip install pnnx)") from None
    param_out, bin_out, spec_out = ncnn_paths(out_param)
    if not param_out.name.endswith(".ncnn.param"):
        raise EdgefaceError(f"ncnn artifact name {param_out.name} must end in .ncnn.param")
    model, spec = resolve_model(model_or_checkpoint, spec)
    if len(spec.output_names) != len(NCNN_OUTPUT_BLOBS):
        raise EdgefaceError(f"ncnn export expects {len(NCNN_OUTPUT_BLOBS)} outputs, the spec has {spec.output_names}")
    s = spec.input_size
    param_out.parent.mkdir(parents=True, exist_ok=True)
    with temp_dir("pnnx") as td:
        td = Path(td)
        log = td / "pnnx.log"
        try:
            with _redirect_native_output(log), warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                pnnx.export(model, str(td / "m.pt"), (torch.zeros(1, 3, s, s),), fp16=(precision == "fp16"))
        except Exception as e:  # noqa: BLE001 - pnnx raises RuntimeError and friends
            raise EdgefaceError(f"pnnx failed ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                                f"see `pnnx` output by running it by hand") from None
        raw_param, raw_bin = td / "m.ncnn.param", td / "m.ncnn.bin"
        if not (raw_param.is_file() and raw_bin.is_file()):
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
            raise EdgefaceError(f"pnnx wrote no ncnn files ({tail[0][:160] if tail else 'no output'})")
        blobs = {spec.input_name: NCNN_INPUT_BLOB, **dict(zip(spec.output_names, NCNN_OUTPUT_BLOBS))}
        renamed = rename_ncnn_blobs(raw_param.read_text(), {v: k for k, v in blobs.items()})
        (td / "final.param").write_text(renamed)
        info = {"format": "ncnn", "precision": precision, "input_kind": FLOAT_NCHW,
                "blobs": {k: k for k in blobs}, "pnnx_blobs": blobs, "spec": spec.to_dict()}
        (td / "final.spec.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        # Rename the weights and spec first and the .param last: the .param is what a loader looks for.
        for src, dst in ((raw_bin, bin_out), (td / "final.spec.json", spec_out), (td / "final.param", param_out)):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    return param_out


def rename_ncnn_blobs(param_text: str, mapping: dict[str, str]) -> str:
    """Rename blobs (and same-named layers) in an ncnn .param text; only name fields change, never params.

    Line layout: ``Type Name nBottom nTop bottom... top... key=value...``.
    """
    lines = param_text.splitlines()
    if len(lines) < 3 or lines[0].strip() != "7767517":
        raise EdgefaceError("pnnx produced an ncnn .param with an unexpected header; update pnnx")
    out = lines[:2]
    for line in lines[2:]:
        parts = line.split()
        if len(parts) < 4:
            out.append(line)
            continue
        nb, nt = int(parts[2]), int(parts[3])
        for i in [1, *range(4, 4 + nb + nt)]:
            parts[i] = mapping.get(parts[i], parts[i])
        out.append(" ".join(parts))
    missing = [old for old in mapping if not any(f" {mapping[old]}" in l for l in out[2:])]
    if missing:
        raise EdgefaceError(f"ncnn .param lacks the blobs {missing} pnnx normally writes; update pnnx or edgeface")
    return "\n".join(out) + "\n"


@contextmanager
def _redirect_native_output(log_path: Path):
    """Send native (C++) stdout/stderr to a file: pnnx prints hundreds of pass-log lines."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)
