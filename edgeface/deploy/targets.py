"""Deployment targets as data: one YAML file per device under ``recipes/targets/``.

Adding a device is adding a file: ``edgeface deploy --target NAME`` finds ``recipes/targets/NAME.yaml``
(or takes a path to a YAML file). Every file is validated strictly before any work starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import EdgefaceError
from .recipes import RECIPES_DIR, REQUIRED, load_yaml, validate

TARGETS_DIR = RECIPES_DIR / "targets"
BACKENDS = ("onnxruntime", "ncnn", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_LAYOUTS = ("float32_nchw", "uint8_nhwc_bgr")
NCNN_FP16 = ("off", "on", "auto")

_BUDGET = {"pose_max_abs": REQUIRED, "pose_p99_abs": REQUIRED, "pose_mean_abs": REQUIRED, "blur_max_abs": REQUIRED,
           "pose_mae_increase": REQUIRED}

TARGET_SCHEMA: dict[str, Any] = {
    "name": REQUIRED,
    "description": "",
    "device": REQUIRED,              # what edgeface.bundle.detect_device() reports on that machine
    "backend": REQUIRED,
    "default_precision": "fp32",
    "precisions": ["fp32"],
    "threads": 0,                    # 0 = let the backend use every core
    "input_layout": "float32_nchw",
    "portable": False,
    "onnx": {"opset": 17},
    "ncnn": {"fp16": "off", "int8_arithmetic": True},
    "tensorrt": {"min_version": "8.5", "max_version": "10.99", "workspace_mb": 256, "int8_form": "qdq"},
    "quantization": {"format": ""},
    "verify": {"fp32": dict(_BUDGET), "fp16": dict(_BUDGET), "int8": dict(_BUDGET)},
}


def list_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.yaml"))


def target_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise EdgefaceError(f"target file {p} does not exist")
        return p
    cand = TARGETS_DIR / f"{name_or_path}.yaml"
    if not cand.is_file():
        raise EdgefaceError(f"unknown target {str(name_or_path)!r}; choose one of {', '.join(list_targets())} "
                            f"(or add recipes/targets/{name_or_path}.yaml)")
    return cand


def load_target(name_or_path: str | Path) -> dict[str, Any]:
    """The validated target recipe (defaults filled in). EdgefaceError naming the bad field."""
    path = target_path(name_or_path)
    where = f"target {path.name}"
    t = validate(load_yaml(path), TARGET_SCHEMA, where)
    for field_name, value, allowed in (("backend", t["backend"], BACKENDS),
                                       ("default_precision", t["default_precision"], PRECISIONS),
                                       ("input_layout", t["input_layout"], INPUT_LAYOUTS),
                                       ("ncnn.fp16", t["ncnn"]["fp16"], NCNN_FP16)):
        if value not in allowed:
            raise EdgefaceError(f"{where}: field '{field_name}' is {value!r}; choose one of {', '.join(allowed)}")
    for p in t["precisions"]:
        if p not in PRECISIONS:
            raise EdgefaceError(f"{where}: field 'precisions' has {p!r}; choose from {', '.join(PRECISIONS)}")
    if t["default_precision"] not in t["precisions"]:
        raise EdgefaceError(f"{where}: default_precision {t['default_precision']} is not in precisions {t['precisions']}")
    if t["name"] != path.stem and path.parent == TARGETS_DIR:
        raise EdgefaceError(f"{where}: field 'name' is {t['name']!r} but the file is {path.name}; make them agree")
    if not isinstance(t["threads"], int) or t["threads"] < 0:
        raise EdgefaceError(f"{where}: field 'threads' must be an integer >= 0")
    for prec, budget in t["verify"].items():
        for k, v in budget.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise EdgefaceError(f"{where}: field 'verify.{prec}.{k}' must be a number >= 0, got {v!r}")
    for k in ("min_version", "max_version"):
        if not _parse_version(t["tensorrt"][k]):
            raise EdgefaceError(f"{where}: field 'tensorrt.{k}' must be a version like \"8.5\"")
    return t


def _parse_version(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in str(text).split(".")[:3])
    except ValueError:
        return None


def tensorrt_version_ok(target: dict, version: str) -> bool:
    """Whether a TensorRT version lies within the target's [min_version, max_version]."""
    v = _parse_version(version.split("+")[0])
    lo, hi = _parse_version(target["tensorrt"]["min_version"]), _parse_version(target["tensorrt"]["max_version"])
    if v is None:
        return False
    n = max(len(lo), len(hi), len(v))
    pad = lambda t: t + (0,) * (n - len(t))  # noqa: E731
    return pad(lo) <= pad(v)[:n] and pad(v)[: len(hi)] <= pad(hi)


def backend_options(target: dict, precision: str) -> dict[str, Any]:
    """Options the device's backend runs the bundle with (written into the manifest)."""
    opts: dict[str, Any] = {"threads": target["threads"] or None}
    if target["backend"] == "ncnn":
        policy = "on" if precision == "fp16" else target["ncnn"]["fp16"]
        opts["fp16"] = {"on": True, "off": False, "auto": None}[policy]
        if precision == "int8":
            opts["int8"] = bool(target["ncnn"]["int8_arithmetic"])
    if target["backend"] == "tensorrt":
        opts["workspace_mb"] = target["tensorrt"]["workspace_mb"]
        opts["fp16"] = precision == "fp16"
        opts["int8"] = precision == "int8"
        opts["tensorrt_min_version"] = target["tensorrt"]["min_version"]
        opts["tensorrt_max_version"] = target["tensorrt"]["max_version"]
    return opts
