"""ncnn export through pnnx: ``<stem>.ncnn.param``, ``<stem>.ncnn.bin`` and the ModelSpec in ``<stem>.spec.json``.

pnnx's side files (TorchScript, .pnnx.*, generated Python) stay in a temporary folder; the three artifact
files are renamed into place only once all exist, the .param last (it is what a loader looks for).
"""
from __future__ import annotations

import json
import math
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
    rot6d = getattr(model, "pose_head_kind", "euler") == "rot6d"
    if rot6d:  # pnnx cannot convert the in-graph decode: export the 6D head, then append the decode as ncnn layers
        model = _raw_pose_head(model)
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
        names = {v: k for k, v in blobs.items()}
        if rot6d:
            names[NCNN_OUTPUT_BLOBS[1]] = ROT6D_BLOB
        renamed = rename_ncnn_blobs(raw_param.read_text(), names)
        if rot6d:
            renamed = append_layers(renamed, rot6d_decode_layers(ROT6D_BLOB, spec.output_names[1]))
        (td / "final.param").write_text(renamed)
        info = {"format": "ncnn", "precision": precision, "input_kind": FLOAT_NCHW,
                "blobs": {k: k for k in blobs}, "pnnx_blobs": blobs, "spec": spec.to_dict()}
        (td / "final.spec.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        # Rename the weights and spec first and the .param last: the .param is what a loader looks for.
        for src, dst in ((raw_bin, bin_out), (td / "final.spec.json", spec_out), (td / "final.param", param_out)):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    return param_out


ROT6D_BLOB = "pose_rot6d"  # the 6D head's output inside an ncnn graph with a rot6d pose head


def _raw_pose_head(model):
    """The rot6d network as a module that returns (blur, 6D head), for pnnx to trace without the decode (the
    decode follows as ncnn layers: rot6d_decode_layers)."""
    torch = require_torch()

    class RawPoseHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net.heads(x)

    return RawPoseHead().eval()


def rot6d_decode_layers(src: str, dst: str) -> list[tuple]:
    """The rot6d decode of ``engines/torch/network.py`` (Gram-Schmidt, then yaw/pitch/roll in degrees) as ncnn
    layers on the 1-D blob ``src`` (6 values), ending in ``dst`` (3 values).

    Each layer is (type, name, bottoms, tops, params). ncnn op codes: BinaryOp 0 add, 1 sub, 2 mul, 3 div;
    UnaryOp 1 neg, 5 sqrt, 12 asin, 14 atan; Clip 0=min 1=max; Slice/Concat on axis 0."""
    layers: list[tuple] = []

    def op(kind, bottoms, params):
        top = f"r6_{len(layers)}"
        layers.append((kind, f"rot6d_{len(layers)}", list(bottoms), [top], params))
        return top

    def binary(a, b, code):
        return op("BinaryOp", [a, b], f"0={code}")

    def scalar(a, code, value):
        return op("BinaryOp", [a], f"0={code} 1=1 2={value!r}")

    def dot(u, v):
        return binary(binary(binary(u[0], v[0], 2), binary(u[1], v[1], 2), 0), binary(u[2], v[2], 2), 0)

    def normalised(v):
        norm = op("Clip", [op("UnaryOp", [dot(v, v)], "0=5")], "0=1.000000e-06 1=3.402823e+38")
        return [binary(c, norm, 3) for c in v]

    parts = [f"r6_in{i}" for i in range(6)]
    layers.append(("Slice", "rot6d_slice", [src], parts, "-23300=6,1,1,1,1,1,1 1=0"))
    c1 = normalised(parts[:3])
    d = dot(c1, parts[3:])
    c2 = normalised([binary(a, binary(d, c, 2), 1) for a, c in zip(parts[3:], c1)])

    def cross(i, j):
        return binary(binary(c1[i], c2[j], 2), binary(c1[j], c2[i], 2), 1)

    c3 = [cross(1, 2), cross(2, 0), cross(0, 1)]
    deg = 180.0 / math.pi
    yaw = scalar(op("UnaryOp", [op("Clip", [c3[0]], "0=-9.999990e-01 1=9.999990e-01")], "0=12"), 2, -deg)
    pitch = scalar(op("UnaryOp", [binary(c3[1], op("Clip", [c3[2]], "0=1.000000e-05 1=3.402823e+38"), 3)], "0=14"),
                   2, deg)
    roll = scalar(op("UnaryOp", [binary(c2[0], op("Clip", [c1[0]], "0=1.000000e-05 1=3.402823e+38"), 3)], "0=14"),
                  2, deg)
    layers.append(("Concat", "rot6d_euler", [yaw, pitch, roll], [dst], "0=0"))
    return layers


def append_layers(param_text: str, layers: list[tuple]) -> str:
    """An ncnn .param with ``layers`` appended. A blob read by several layers gets a Split, as ncnn expects
    (one consumer per blob); the header's layer and blob counts are rewritten."""
    lines = param_text.strip().splitlines()
    readers: dict[str, int] = {}
    for _, _, bottoms, _, _ in layers:
        for b in bottoms:
            readers[b] = readers.get(b, 0) + 1
    splits = {b: [f"{b}_s{i}" for i in range(n)] for b, n in readers.items() if n > 1}
    produced = {t for _, _, _, tops, _ in layers for t in tops}
    out: list[str] = []

    def emit_split(blob):
        if blob in splits:
            out.append(f"Split split_{blob} 1 {len(splits[blob])} {blob} {' '.join(splits[blob])}")

    for blob in splits:
        if blob not in produced:  # a blob of the original graph: split it before the new layers read it
            emit_split(blob)
    taken: dict[str, int] = {}
    for kind, name, bottoms, tops, params in layers:
        ins = []
        for b in bottoms:
            ins.append(splits[b][taken.get(b, 0)] if b in splits else b)
            taken[b] = taken.get(b, 0) + 1
        out.append(f"{kind} {name} {len(ins)} {len(tops)} {' '.join(ins)} {' '.join(tops)} {params}".rstrip())
        for t in tops:
            emit_split(t)
    layer_count, blob_count = (int(v) for v in lines[1].split())
    new_blobs = sum(len(l[3]) for l in layers) + sum(len(v) for v in splits.values())
    header = f"{layer_count + len(out)} {blob_count + new_blobs}"
    return "\n".join([lines[0], header, *lines[2:], *out]) + "\n"


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
