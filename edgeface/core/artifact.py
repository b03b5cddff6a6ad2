"""What an artifact says about itself: its ModelSpec and metadata, read without running it.

Every artifact carries its ModelSpec, so it is never run with the wrong preprocessing:

    ONNX            inside, in ``metadata_props``: ``edgeface.spec`` (the ModelSpec as JSON),
                    ``edgeface.input_kind``, ``edgeface.precision`` and, on quantization-aware
                    artifacts, ``edgeface.quantization``
    ncnn            beside, in ``<stem>.spec.json``: the ModelSpec, the precision, the input kind and the
                    map from the spec's names to ncnn blob names
    TensorRT        beside, in the engine record ``<name>.engine.json`` (what the engine was built for and
                    from; written by ``edgeface.engines.tensorrt.cache``), or a ``model.spec.json``

The readers here need no inference engine; the ONNX ones need the ``onnx`` package, imported on use.
PyTorch checkpoints are read by ``edgeface.engines.torch.checkpoint`` (that needs torch).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import EdgefaceError
from .spec import FLOAT_NCHW, SPEC_KEY, ModelSpec

INPUT_KIND_KEY = "edgeface.input_kind"      # ONNX metadata: FLOAT_NCHW (default) or UINT8_NHWC
PRECISION_KEY = "edgeface.precision"        # ONNX metadata: the artifact's precision
QUANT_KEY = "edgeface.quantization"         # ONNX metadata: JSON, {"method": "qat", ...} on QAT artifacts
ENGINE_RECORD_FORMAT = "edgeface.tensorrt-engine"

# The shipped default model: default.pt and its torch-free exports (default.onnx, default.ncnn.*).
WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
SHIPPED_STEM = "default"


# -- ONNX ---------------------------------------------------------------------------------------------------
def load_onnx(path: str | Path, load_external_data: bool = False):
    """The ONNX proto; EdgefaceError for a missing, truncated or empty file."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise EdgefaceError(f"ONNX file {p} does not exist")
    return _checked_proto(lambda: onnx.load(str(p), load_external_data=load_external_data), p)


def parse_onnx(data: bytes, name: str | Path):
    """The ONNX proto of these bytes (a model file read once); EdgefaceError for truncated or foreign bytes."""
    import onnx

    return _checked_proto(lambda: onnx.load_from_string(data), Path(name).name)


def _checked_proto(read, label):
    """``read()``'s ONNX proto; EdgefaceError naming ``label`` for truncated, foreign or empty bytes."""
    try:
        proto = read()
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise EdgefaceError(f"{label} is not a readable ONNX model ({type(e).__name__}); it may be truncated — "
                            f"re-export it with `edgeface export`") from None
    if not proto.graph.node:
        raise EdgefaceError(f"{label} is not an ONNX model (empty graph); re-export it with `edgeface export`")
    return proto


def has_external_data(proto) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in proto.graph.initializer)


def inline_external_data(proto, artifact: str | Path, read) -> None:
    """Fill the proto's external tensors from the files ``read(path) -> bytes`` returns (a verified bundle's
    bytes, or the disk read once), so the engine is handed one self-contained model and reads no file itself.
    A location outside the artifact's folder is refused."""
    from onnx.external_data_helper import uses_external_data

    folder = Path(artifact).parent
    cache: dict[str, bytes] = {}
    for t in proto.graph.initializer:
        if not uses_external_data(t):
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc or Path(loc).is_absolute() or ".." in Path(loc).parts or "/" in loc or "\\" in loc:
            raise EdgefaceError(f"{Path(artifact).name} keeps tensor {t.name[:40]!r} in {loc[:60]!r}, outside its "
                                f"folder; re-export it with `edgeface export`")
        if loc not in cache:
            cache[loc] = read(folder / loc)
        blob = cache[loc]
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else len(blob) - offset
        except ValueError:
            raise EdgefaceError(f"{Path(artifact).name}: tensor {t.name[:40]!r} has a malformed external data "
                                f"entry; re-export it") from None
        if offset < 0 or length < 0 or offset + length > len(blob):
            raise EdgefaceError(f"{Path(artifact).name}: tensor {t.name[:40]!r} lies past the end of {loc} "
                                "(truncated?); "
                                f"re-export it")
        t.raw_data = blob[offset:offset + length]
        del t.external_data[:]
        t.data_location = 0  # onnx.TensorProto.DEFAULT


def onnx_metadata(proto) -> dict[str, str]:
    return {m.key: m.value for m in proto.metadata_props}


def set_onnx_metadata(proto, items: dict[str, str]) -> None:
    """Set ``items`` in the proto's metadata_props, replacing entries of the same keys and keeping the rest."""
    keep = [p for p in proto.metadata_props if p.key not in items]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in items.items():
        proto.metadata_props.add(key=k, value=v)


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


def check_foreign_onnx(path: str | Path) -> ModelSpec:
    """The ModelSpec of a loose ONNX that a tool will run or rewrite (quantize's source model), after the
    foreign-model checks of ``core.graphcheck``: inputs and outputs that fit the spec, no control flow."""
    from .graphcheck import check_onnx

    proto = load_onnx(path)
    meta = onnx_metadata(proto)
    if SPEC_KEY not in meta:
        raise EdgefaceError(f"{path} has no edgeface ModelSpec in its metadata (a foreign ONNX?); export it with "
                            f"`edgeface export` so preprocessing and outputs are known")
    spec = ModelSpec.from_json(meta[SPEC_KEY])
    check_onnx(proto, spec, meta.get(INPUT_KIND_KEY, FLOAT_NCHW), Path(path).name, built_by_edgeface=False)
    return spec


def read_onnx_input_kind(path: str | Path) -> str:
    return read_onnx_metadata(path).get(INPUT_KIND_KEY, FLOAT_NCHW)


# -- ncnn ---------------------------------------------------------------------------------------------------
def ncnn_paths(param_path: str | Path) -> tuple[Path, Path, Path]:
    """(.param, .bin, .spec.json) of an ncnn artifact named ``<stem>.ncnn.param``."""
    p = Path(param_path)
    name = p.name
    stem = name[: -len(".ncnn.param")] if name.endswith(".ncnn.param") else p.stem
    return p, p.with_name(f"{stem}.ncnn.bin"), p.with_name(f"{stem}.spec.json")


def read_ncnn_spec(param_path: str | Path) -> ModelSpec:
    """The ModelSpec in the spec file beside an ncnn ``.param``."""
    return ModelSpec.from_dict(_read_ncnn_spec_file(param_path)["spec"])


def read_ncnn_info(param_path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """The rest of that file: ``blobs`` (spec name -> ncnn blob name), ``precision`` and ``input_kind``.
    ``data``: the spec file's bytes, already read (from a verified bundle)."""
    return {k: v for k, v in _read_ncnn_spec_file(param_path, data).items() if k != "spec"}


def _read_ncnn_spec_file(param_path: str | Path, raw: bytes | None = None) -> dict:
    param, _, spec_file = ncnn_paths(param_path)
    fix = "re-export with `edgeface export --format ncnn`"
    if raw is not None:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise EdgefaceError(f"{spec_file} is not valid JSON; {fix}") from None
    elif not spec_file.is_file():
        raise EdgefaceError(f"{spec_file.name} (the ModelSpec) is missing beside {param.name}; "
                            f"re-export with `edgeface export --format ncnn`")
    else:
        data = _read_json(spec_file, fix)
    if not isinstance(data, dict) or "spec" not in data:
        raise EdgefaceError(f"{spec_file} holds no ModelSpec; {fix}")
    blobs = data.get("blobs", {})
    if not isinstance(blobs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in blobs.items()):
        raise EdgefaceError(f"{spec_file} field 'blobs' must map names to ncnn blob names; {fix}")
    for key in ("precision", "input_kind", "format"):
        if key in data and not isinstance(data[key], str):
            raise EdgefaceError(f"{spec_file} field '{key}' must be a string; {fix}")
    return data


# -- TensorRT engines ----------------------------------------------------------------------------------------
def engine_record_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_engine_record(engine_path: str | Path) -> dict:
    """The record beside an engine (TensorRT version, GPU, precision, ModelSpec); EdgefaceError when missing
    or not an edgeface engine record."""
    side = engine_record_path(engine_path)
    if not side.is_file():
        raise EdgefaceError(f"{side.name} (the engine's record: TensorRT version, GPU, precision, ModelSpec) is "
                            f"missing beside {Path(engine_path).name}; rebuild it with `edgeface build`")
    data = _read_json(side, "rebuild the engine with `edgeface build`")
    if not isinstance(data, dict) or data.get("format") != ENGINE_RECORD_FORMAT:
        raise EdgefaceError(f"{side} is not an edgeface engine record; rebuild the engine with `edgeface build`")
    return data


def read_engine_spec(engine_path: str | Path) -> ModelSpec:
    """An engine's ModelSpec: from its record, else from a spec file beside it."""
    engine_path = Path(engine_path)
    spec = read_engine_record(engine_path).get("spec")
    if spec is not None:
        return ModelSpec.from_dict(spec)
    beside = spec_beside(engine_path)
    if beside is None:
        raise EdgefaceError(f"{engine_path.name} carries no ModelSpec (record without spec, no model.spec.json "
                            f"beside it); rebuild it from the edgeface ONNX with `edgeface build`")
    return ModelSpec.from_dict(beside)


def spec_beside(path: str | Path) -> dict | None:
    """A ModelSpec (as a dict) stored beside an artifact: ``model.spec.json`` (a bare spec, or an ncnn-style
    file holding one under ``spec``) or a bundle's ``manifest.json``. None when there is none."""
    path = Path(path)
    for cand in (path.with_name("model.spec.json"), path.with_name("manifest.json")):
        if not cand.is_file():
            continue
        try:
            if cand.stat().st_size > MAX_SIDE_FILE_BYTES:
                continue
            data = json.loads(cand.read_bytes().decode("utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(data, dict):
            spec = data.get("spec", data if "input_size" in data else None)
            if isinstance(spec, dict):
                return spec
    return None


# -- the shipped default model ----------------------------------------------------------------------------
def shipped_artifact(suffix: str, weights_dir: Path | None = None) -> Path:
    """Where the shipped default model of this artifact suffix lives (it may be absent)."""
    return (weights_dir or WEIGHTS_DIR) / f"{SHIPPED_STEM}{suffix}"


MAX_SIDE_FILE_BYTES = 4 << 20  # a spec or engine record is a few kB


def _read_json(path: Path, fix: str):
    if path.stat().st_size > MAX_SIDE_FILE_BYTES:
        raise EdgefaceError(f"{path} is larger than {MAX_SIDE_FILE_BYTES >> 20} MB, not an edgeface side file; {fix}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgefaceError(f"{path} is not valid JSON; {fix}") from None
    except RecursionError:
        raise EdgefaceError(f"{path} is nested too deeply to be an edgeface side file; {fix}") from None
