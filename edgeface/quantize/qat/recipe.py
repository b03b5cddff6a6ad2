"""The quantization-aware training recipe (``kind: qat``): its schema, checked field by field before any work,
and the INT8 scheme it states."""
from __future__ import annotations

from pathlib import Path

from ...core.errors import EdgefaceError
from ...core.recipe import load_yaml, validate
from ...engines import registry

SCHEMES = {"weights": ("int8_per_channel_symmetric",), "activations": ("int8_per_tensor_symmetric",),
           "heads": ("float", "int8")}


def int8_engines() -> list[str]:
    """What ``export.emit`` may list: every engine with an INT8 form."""
    return [e.name for e in registry.with_int8()]


def qat_schema() -> dict:
    from ...model.train import TRAIN_SCHEMA

    return {
        "kind": "qat",
        "start": (str, None),  # start weights; None = the shipped edgeface/weights/default.pt
        "data": TRAIN_SCHEMA["data"],
        "render": TRAIN_SCHEMA["render"],  # QAT sees the rendered views the FP32 weights learned from
        "augment": TRAIN_SCHEMA["augment"],
        "loss": TRAIN_SCHEMA["loss"],
        "train": {"epochs": 4, "epoch_size": 8192, "batch_size": 128, "lr": 1.0e-4, "weight_decay": 0.0,
                  "warmup_epochs": 0.25, "seed": 0, "threads": 2, "workers": 1,
                  "freeze_bn_after_epoch": 2, "freeze_observers_after_epoch": 3},
        "quant": {"weights": "int8_per_channel_symmetric", "activations": "int8_per_tensor_symmetric",
                  "weight_range": [-127, 127], "activation_range": [-127, 127], "observer_averaging": 0.01,
                  "heads": "float"},
        "export": {"opset": 17, "dynamic_batch": True, "emit": int8_engines()},
        "out": "runs/qat_mbv2_025",
    }


def load_qat_recipe(path) -> dict:
    """Validated recipe; every problem (unknown key, wrong type, missing start weights) is one line."""
    from ...engines.torch.checkpoint import DEFAULT_WEIGHTS
    from ...model.train import check_data_sections

    where = f"recipe {path}"
    recipe = validate(load_yaml(path), qat_schema(), where)
    if recipe["kind"] != "qat":
        raise EdgefaceError(f"{where}: field 'kind' is {recipe['kind']!r}; a quantization-aware recipe has kind 'qat'")
    check_data_sections(recipe, where)
    q, t = recipe["quant"], recipe["train"]
    for key, allowed in SCHEMES.items():
        if q[key] not in allowed:
            raise EdgefaceError(f"{where}: field 'quant.{key}' is {q[key]!r}; the deployed scheme is "
                                f"{' or '.join(map(repr, allowed))}")
    for key in ("weight_range", "activation_range"):
        r = q[key]
        if not (len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
                and -128 <= r[0] < 0 < r[1] <= 127 and r[0] == -r[1]):
            raise EdgefaceError(f"{where}: field 'quant.{key}' must be a symmetric int8 range [-N, N] with "
                                f"N <= 127 (TensorRT takes zero point 0 only), got {r!r}")
    if not 0 < q["observer_averaging"] <= 1:
        raise EdgefaceError(f"{where}: field 'quant.observer_averaging' must be in (0, 1], got "
                            f"{q['observer_averaging']}")
    for key in ("epochs", "epoch_size", "batch_size", "threads"):
        if t[key] < 1:
            raise EdgefaceError(f"{where}: field 'train.{key}' must be >= 1, got {t[key]}")
    for key in ("freeze_bn_after_epoch", "freeze_observers_after_epoch"):
        if t[key] < 0:
            raise EdgefaceError(f"{where}: field 'train.{key}' must be >= 0 (0 = frozen from the start)")
    if t["lr"] <= 0:
        raise EdgefaceError(f"{where}: field 'train.lr' must be > 0, got {t['lr']}")
    emit = recipe["export"]["emit"]
    bad = [b for b in emit if b not in int8_engines()]
    if bad or not emit:
        raise EdgefaceError(f"{where}: field 'export.emit' must list some of {', '.join(int8_engines())}, got {emit!r}")
    if recipe["export"]["opset"] < 13:
        raise EdgefaceError(f"{where}: field 'export.opset' must be >= 13 (per-channel Q/DQ), got "
                            f"{recipe['export']['opset']}")
    start = Path(recipe["start"]) if recipe["start"] else DEFAULT_WEIGHTS
    if not start.is_file():
        hint = ("the shipped default weights are not there yet; train them or set 'start' to a checkpoint"
                if recipe["start"] is None else "set it to an FP32 checkpoint written by `edgeface train`")
        raise EdgefaceError(f"{where}: field 'start': checkpoint {start} does not exist; {hint}")
    recipe["start"] = str(start)
    return recipe


def scheme_from_recipe(recipe: dict):
    """The recipe's ``quant`` section as the quantizer's Int8Scheme (imports torch)."""
    from .quantizer import Int8Scheme

    q = recipe["quant"]
    return Int8Scheme(weight_range=tuple(q["weight_range"]), activation_range=tuple(q["activation_range"]),
                      averaging_constant=float(q["observer_averaging"]), quantize_heads=q["heads"] == "int8")
