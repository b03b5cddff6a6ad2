"""Export a checkpoint to deployable artifacts: ONNX (opset 17) and ncnn (through pnnx).

Every artifact carries its ModelSpec: inside the ONNX ``metadata_props`` (key ``edgeface.spec``), or in a
``<stem>.spec.json`` beside the ncnn ``.param``/``.bin``. Artifacts are written to a temporary name and
renamed, so an interrupted export never leaves a half-written file behind.

Folded preprocessing (``fold_preprocess=True``): the graph takes uint8 NHWC BGR crops and does the cast,
channel swap, normalisation and NCHW transpose itself, so a camera frame's crop needs no Python copy. The
artifact records this as ``input_kind = "uint8_nhwc_bgr"`` (ONNX metadata key ``edgeface.input_kind``, or
``"input_kind"`` in the ncnn spec file), which backends read to know what to feed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import EdgefaceError
from .spec import SPEC_KEY, ModelSpec

INPUT_KIND_KEY = "edgeface.input_kind"     # ONNX metadata: "float32_nchw" (default) or "uint8_nhwc_bgr"
PRECISION_KEY = "edgeface.precision"       # ONNX metadata: weight precision of the artifact
FLOAT_NCHW = "float32_nchw"                # same strings as edgeface.backends.base
UINT8_NHWC = "uint8_nhwc_bgr"
DEFAULT_OPSET = 17                         # TensorRT 8.6 (JetPack 5) parses ONNX up to opset 17


# -- helpers ----------------------------------------------------------------------------------------
def _torch():
    try:
        import torch
    except ImportError:
        raise EdgefaceError("exporting needs PyTorch: pip install 'edgeface[train]'") from None
    return torch


def resolve_model(model_or_checkpoint, spec: ModelSpec | None = None):
    """(torch model in eval mode, spec) from a module, a checkpoint path, or None (shipped default)."""
    torch = _torch()
    if isinstance(model_or_checkpoint, torch.nn.Module):
        model = model_or_checkpoint
        if spec is None:
            spec = ModelSpec(width=getattr(model, "width", 0.25))
        return model.eval(), spec
    from .checkpoint import load_model

    if model_or_checkpoint is not None and not str(model_or_checkpoint).endswith(".pt"):
        raise EdgefaceError(f"{model_or_checkpoint} is not a PyTorch checkpoint (.pt); export starts from a checkpoint")
    model, ck_spec, _ = load_model(model_or_checkpoint)
    return model, spec or ck_spec


def prepend_preprocess(proto, spec: ModelSpec, cast_first: bool = True):
    """Return ``proto`` (a float32-NCHW-input ONNX) taking uint8 (N, S, S, 3) BGR instead.

    Cast, Transpose to NCHW, Gather (only when the spec wants RGB), Mul, Add, i.e.
    input[c] = bgr[..., idx[c]] * scale[c] + bias[c] from preprocess.input_affine, feed the original graph.
    ``cast_first`` (for artifacts: TensorRT takes uint8 only as a network input cast straight to float);
    without it the layout ops move 1-byte pixels, a quarter of the memory traffic (for ORT at load time).
    A 1x1 Conv would do the affine in one node but ran ~25 % slower in ORT than Mul and Add.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from .preprocess import input_affine

    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise EdgefaceError(f"cannot fold preprocessing into a graph with inputs {[i.name for i in inputs]}; "
                            f"it needs one float32 NCHW input")
    old = inputs[0]
    s = spec.input_size
    batch = old.type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or (batch.dim_value if batch.HasField("dim_value") else "batch")
    name = old.name
    inner = f"{name}__normalised"
    for node in graph.node:
        for k, used in enumerate(node.input):
            if used == name:
                node.input[k] = inner
    scale, bias, idx = input_affine(spec)
    consts = {"edgeface_scale": np.asarray(scale, np.float32).reshape(1, 3, 1, 1),
              "edgeface_bias": np.asarray(bias, np.float32).reshape(1, 3, 1, 1)}
    cast = [helper.make_node("Cast", [name], [f"{name}__float"], to=TensorProto.FLOAT, name="edgeface_cast")]
    layout = [helper.make_node("Transpose", [name], [f"{name}__nchw"], perm=[0, 3, 1, 2], name="edgeface_nchw")]
    if list(idx) != [0, 1, 2]:
        consts["edgeface_channel_order"] = np.asarray(idx, np.int64)
        layout.append(helper.make_node("Gather", [f"{name}__nchw", "edgeface_channel_order"], [f"{name}__planar"],
                                       axis=1, name="edgeface_channel_order"))
    else:
        layout.append(helper.make_node("Identity", [f"{name}__nchw"], [f"{name}__planar"], name="edgeface_planar"))
    # chain the two groups: the first takes the graph input, the second the first's output
    first, second = (cast, layout) if cast_first else (layout, cast)
    second[0].input[0] = first[-1].output[0]
    planar = second[-1].output[0]
    pre = first + second
    pre += [helper.make_node("Mul", [planar, "edgeface_scale"], [f"{name}__scaled"], name="edgeface_scale"),
            helper.make_node("Add", [f"{name}__scaled", "edgeface_bias"], [inner], name="edgeface_bias")]
    nodes = pre + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    pos = list(graph.input).index(old)
    graph.input.remove(old)
    graph.input.insert(pos, helper.make_tensor_value_info(name, TensorProto.UINT8, [batch_dim, s, s, 3]))
    _set_metadata(proto, {INPUT_KIND_KEY: UINT8_NHWC})
    return proto


@contextmanager
def atomic_path(out_path: Path):
    """Yield a temporary sibling path; on success rename it onto ``out_path`` (no half-written artifact)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are ordinary files
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- ONNX -------------------------------------------------------------------------------------------
def export_onnx(model_or_checkpoint=None, out_path: str | Path = "model.onnx", *, spec: ModelSpec | None = None,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, fold_preprocess: bool = False,
                simplify: bool = True) -> Path:
    """Export to ONNX with the legacy TorchScript exporter (exact to ~1e-6 at opset 17) and return the path.

    Input ``spec.input_name``: float32 (N, 3, S, S) normalised, or uint8 (N, S, S, 3) BGR when
    ``fold_preprocess``; outputs named after the spec (``blur`` (N, 1), ``pose`` (N, 3)). The ModelSpec is
    stored in ``metadata_props`` and the model passes ``onnx.checker``.
    """
    torch = _torch()
    import onnx

    out_path = Path(out_path)
    model, spec = resolve_model(model_or_checkpoint, spec)
    s = spec.input_size
    dummy = torch.zeros(1, 3, s, s)
    names = list(spec.output_names)
    axes = {spec.input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}} if dynamic_batch else None
    with tempfile.TemporaryDirectory(prefix="edgeface-onnx-") as td:
        raw = Path(td) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning is expected here
            try:
                torch.onnx.export(model, (dummy,), str(raw), dynamo=False, opset_version=opset,
                                  input_names=[spec.input_name], output_names=names, dynamic_axes=axes,
                                  do_constant_folding=True)
            except Exception as e:  # noqa: BLE001 - exporter errors come in many types
                raise EdgefaceError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        proto = onnx.load(str(raw))
    if simplify:
        proto = _simplify(proto)
    _set_metadata(proto, {SPEC_KEY: spec.to_json(), INPUT_KIND_KEY: FLOAT_NCHW, PRECISION_KEY: "fp32"})
    if fold_preprocess:
        proto = prepend_preprocess(proto, spec)
    proto.producer_name = "edgeface"
    from . import __version__

    proto.producer_version = __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise EdgefaceError(f"exported ONNX fails onnx.checker ({str(e).splitlines()[0][:200]})") from None
    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
    return out_path


def _simplify(proto):
    try:
        import onnxslim
    except ImportError:
        warnings.warn("onnxslim is not installed; the ONNX is exported unsimplified (pip install onnxslim)")
        return proto
    try:
        slim = onnxslim.slim(proto)
    except Exception as e:  # noqa: BLE001 - a failed simplification must not lose the export
        warnings.warn(f"onnxslim failed ({type(e).__name__}); keeping the unsimplified graph")
        return proto
    return slim if slim is not None else proto


def _set_metadata(proto, items: dict[str, str]) -> None:
    keep = [p for p in proto.metadata_props if p.key not in items]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in items.items():
        proto.metadata_props.add(key=k, value=v)


def load_onnx(path: str | Path, load_external_data: bool = False):
    """The ONNX proto; EdgefaceError for a missing, truncated or empty file."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise EdgefaceError(f"ONNX file {p} does not exist")
    try:
        proto = onnx.load(str(p), load_external_data=load_external_data)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise EdgefaceError(f"{p} is not a readable ONNX model ({type(e).__name__}); it may be truncated — "
                            f"re-export it with `edgeface export`") from None
    if not proto.graph.node:
        raise EdgefaceError(f"{p} is not an ONNX model (empty graph); re-export it with `edgeface export`")
    return proto


def onnx_metadata(proto) -> dict[str, str]:
    return {m.key: m.value for m in proto.metadata_props}


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ONNX's metadata_props as a dict (external weights are not loaded). EdgefaceError if unreadable."""
    return onnx_metadata(load_onnx(path))


def read_onnx_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec stored in an ONNX's metadata_props; EdgefaceError when missing, corrupt or foreign."""
    meta = read_onnx_metadata(path)
    if SPEC_KEY not in meta:
        raise EdgefaceError(f"{path} has no edgeface ModelSpec in its metadata (a foreign ONNX?); export it with "
                            f"`edgeface export` so preprocessing and outputs are known")
    return ModelSpec.from_json(meta[SPEC_KEY])


def read_onnx_input_kind(path: str | Path) -> str:
    return read_onnx_metadata(path).get(INPUT_KIND_KEY, FLOAT_NCHW)


# -- ncnn (filled in by export_ncnn below) -----------------------------------------------------------
def ncnn_paths(param_path: str | Path) -> tuple[Path, Path, Path]:
    """(.param, .bin, .spec.json) for an ncnn artifact named ``<stem>.ncnn.param``."""
    p = Path(param_path)
    name = p.name
    stem = name[: -len(".ncnn.param")] if name.endswith(".ncnn.param") else p.stem
    return p, p.with_name(f"{stem}.ncnn.bin"), p.with_name(f"{stem}.spec.json")


def read_ncnn_spec(param_path: str | Path) -> tuple[ModelSpec, dict[str, Any]]:
    """(ModelSpec, artifact info) from the spec file beside an ncnn ``.param``.

    Artifact info holds ``blobs`` (spec name -> ncnn blob name), ``precision`` and ``input_kind``.
    """
    param, binf, spec_file = ncnn_paths(param_path)
    if not spec_file.is_file():
        raise EdgefaceError(f"{spec_file.name} (the ModelSpec) is missing beside {param.name}; "
                            f"re-export with `edgeface export --format ncnn`")
    try:
        data = json.loads(spec_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgefaceError(f"{spec_file} is not valid JSON; re-export with `edgeface export --format ncnn`") from None
    if not isinstance(data, dict) or "spec" not in data:
        raise EdgefaceError(f"{spec_file} holds no ModelSpec; re-export with `edgeface export --format ncnn`")
    spec = ModelSpec.from_dict(data["spec"])
    info = {k: v for k, v in data.items() if k != "spec"}
    return spec, info


NCNN_INPUT_BLOB, NCNN_OUTPUT_BLOBS = "in0", ("out0", "out1")  # what pnnx names them (outputs in forward order)


def export_ncnn(model_or_checkpoint=None, out_param: str | Path = "model.ncnn.param", *,
                spec: ModelSpec | None = None, precision: str = "fp32") -> Path:
    """Export to ncnn through pnnx: ``<stem>.ncnn.param``, ``<stem>.ncnn.bin`` and ``<stem>.spec.json``.

    ``precision="fp16"`` stores weights as fp16 (half the size; ~1e-3 deviation). pnnx's blobs ``in0`` /
    ``out0`` / ``out1`` are renamed in the .param to the spec's names (``input``, ``blur``, ``pose``), and
    the map is recorded in the spec file too. pnnx's side files (TorchScript, .pnnx.*, generated Python)
    stay in a temporary folder; the three artifact files are renamed into place only once all exist.
    """
    torch = _torch()
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
    with tempfile.TemporaryDirectory(prefix="edgeface-pnnx-") as td:
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
