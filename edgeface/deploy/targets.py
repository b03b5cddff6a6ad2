"""Deployment targets as data: one YAML file per device under ``recipes/targets/``.

Adding a device is adding a file: ``edgeface deploy --target NAME`` finds ``recipes/targets/NAME.yaml``
(or takes a path to a YAML file). Every file is validated strictly before any work starts. The fields
every target has are below; each engine adds the section named after it (its fields, defaults and checks
come from the engine registry, ``TargetSection``), and turns it into the options its runner gets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import EdgefaceError
from ..core.limits import finite, short
from ..core.recipe import RECIPES_DIR, REQUIRED, load_yaml, validate
from ..core.spec import FLOAT_NCHW, INPUT_KINDS, PRECISIONS
from ..engines import registry

TARGETS_DIR = RECIPES_DIR / "targets"
MAX_TARGET_THREADS = 256  # a target names a device's threads; the device bounds them again by its own cores
MAX_TARGET_BATCH = 1024   # deploy measures the engines at this batch: 1e8 would allocate terabytes

# The largest change of pose is bounded by the angle the head turned (pose_max_rotation), by the largest change
# of one Euler angle (pose_max_abs), or by both; a budget names at least one (deploy.verify.BUDGET_KEYS).
_BUDGET = {"pose_max_rotation": (float, None), "pose_max_abs": (float, None), "pose_p99_abs": REQUIRED,
           "pose_mean_abs": REQUIRED, "blur_max_abs": REQUIRED, "pose_mae_increase": REQUIRED}

TARGET_SCHEMA: dict[str, Any] = {
    "name": REQUIRED,
    "description": "",
    "device": REQUIRED,              # what edgeface.core.device.detect_device() reports on that machine
    "backend": REQUIRED,
    "default_precision": "fp32",
    "precisions": ["fp32"],
    "threads": 0,                    # 0 = let the backend use every core
    "batch": 1,                      # the batch size the device runs: what deploy's engine choice measures
    "measure": [],                   # engines deploy measures on the device and picks the faster of (they
    #                                  run the same bundle format as `backend`, the default when none can run)
    "input_layout": FLOAT_NCHW,
    "portable": False,
    "onnx": {"opset": 17},
    # + one section per engine that reads one: "ncnn", "tensorrt", ... (target_schema(), from the registry)
    "quantization": {"format": ""},
    # {precision: budget}: one for each precision the target lists (checked in load_target)
    "verify": (dict, REQUIRED),
}


def target_schema() -> dict[str, Any]:
    """TARGET_SCHEMA and the section of every registered engine that reads one."""
    return {**TARGET_SCHEMA, **{e.name: dict(e.target.defaults) for e in registry.ENGINES if e.target is not None}}


def backends() -> list[str]:
    """The engines a target may name: those whose artifacts a bundle can carry."""
    return [e.name for e in registry.deployable()]


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
    t = validate(load_yaml(path), target_schema(), where)
    for field_name, value, allowed in (("backend", t["backend"], backends()),
                                       ("default_precision", t["default_precision"], PRECISIONS),
                                       ("input_layout", t["input_layout"], INPUT_KINDS)):
        if value not in allowed:
            raise EdgefaceError(f"{where}: field '{field_name}' is {short(value)}; choose one of {', '.join(allowed)}")
    for p in t["precisions"]:
        if p not in PRECISIONS:
            raise EdgefaceError(f"{where}: field 'precisions' has {short(p)}; choose from {', '.join(PRECISIONS)}")
    if t["default_precision"] not in t["precisions"]:
        raise EdgefaceError(f"{where}: default_precision {t['default_precision']} is not in precisions "
                            f"{short(t['precisions'])}")
    if t["name"] != path.stem and path.parent == TARGETS_DIR:
        raise EdgefaceError(f"{where}: field 'name' is {short(t['name'])} but the file is {path.name}; make them agree")
    if (not isinstance(t["threads"], int) or isinstance(t["threads"], bool)
            or not 0 <= t["threads"] <= MAX_TARGET_THREADS):
        raise EdgefaceError(f"{where}: field 'threads' must be an integer from 0 to {MAX_TARGET_THREADS}")
    if not isinstance(t["batch"], int) or isinstance(t["batch"], bool) or not 1 <= t["batch"] <= MAX_TARGET_BATCH:
        raise EdgefaceError(f"{where}: field 'batch' must be an integer from 1 to {MAX_TARGET_BATCH}")
    check_candidates(t, t["measure"], where)
    t["verify"] = check_budgets(t["verify"], t["precisions"], where)
    for prec, budget in t["verify"].items():
        for k, v in budget.items():
            if v is None:
                continue
            if not finite(v) or v < 0:  # a NaN budget would pass every verification (x > NaN is False)
                raise EdgefaceError(f"{where}: field 'verify.{prec}.{k}' must be a number >= 0, got {short(v)}")
    for engine in registry.ENGINES:
        if engine.target is not None:
            engine.target.check(t[engine.name], where)
    return t


def check_budgets(verify: dict, precisions: list, where: str) -> dict:
    """``verify:``: a budget (every field of ``_BUDGET``) for each precision the target lists; one for a
    precision it does not list is allowed (a budget kept for later), an unknown precision is not."""
    out = {}
    for prec, budget in verify.items():
        if prec not in PRECISIONS:
            raise EdgefaceError(f"{where}: unknown field 'verify.{short(prec)}' (known fields: "
                                f"{', '.join(PRECISIONS)})")
        if not isinstance(budget, dict):
            raise EdgefaceError(f"{where}: field 'verify.{prec}' must be a mapping, got {type(budget).__name__}")
        out[prec] = validate(budget, _BUDGET, where, f"verify.{prec}.")
        if out[prec]["pose_max_rotation"] is None and out[prec]["pose_max_abs"] is None:
            raise EdgefaceError(f"{where}: field 'verify.{prec}' bounds no largest change of pose; add "
                                f"'pose_max_rotation' (degrees the head may turn) or 'pose_max_abs'")
    for prec in precisions:
        if prec not in out:
            raise EdgefaceError(f"{where}: missing required field 'verify.{prec}' (a budget for each of precisions)")
    return out


def check_candidates(target: dict, names, where: str) -> None:
    """Engines deploy may pick between for ``target`` must be deployable and run the target's bundle format."""
    if not isinstance(names, list):
        raise EdgefaceError(f"{where}: field 'measure' must be a list of engine names")
    fmt = registry.get(target["backend"]).bundle_format
    for name in names:
        if name not in backends():
            raise EdgefaceError(f"{where}: field 'measure' has {name!r}; choose from {', '.join(backends())}")
        if registry.get(name).bundle_format != fmt:
            raise EdgefaceError(f"{where}: field 'measure' has {name!r}, which does not run the {fmt} bundle "
                                f"that backend {target['backend']!r} gets")


def backend_options(target: dict, precision: str, backend: str | None = None) -> dict[str, Any]:
    """Options the device's engine (``backend``, default the target's) runs the bundle with (written into the
    manifest): the thread count, and what the engine makes of its own section of the target."""
    engine = registry.get(backend or target["backend"])
    opts: dict[str, Any] = {"threads": target["threads"] or None}
    if engine.target is not None:
        opts.update(engine.target.runner_options(target[engine.name], precision))
    return opts
