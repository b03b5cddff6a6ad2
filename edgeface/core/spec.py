"""ModelSpec: everything a runtime needs to feed the model and read its outputs.

It travels inside every checkpoint, in ONNX ``metadata_props`` and beside ncnn/TensorRT artifacts,
so an artifact is never run with the wrong preprocessing.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgefaceError

SPEC_KEY = "edgeface.spec"  # key in ONNX metadata_props / manifest
# The newest ModelSpec version this edgeface reads. A spec records the oldest version that reads it right: 1, or 2
# with mirror_average (an edgeface that predates it would answer from one pass where the model wants two, a
# silent change of answers; it refuses a version 2 spec instead, "upgrade edgeface").
SPEC_VERSION = 2
MIRROR_SPEC_VERSION = 2

# Numeric precisions an artifact, a bundle or a TensorRT engine can have (export, quantize, deploy, build).
# bf16 is a precision an engine runs an FP32 artifact at (OpenVINO on x86 CPUs with avx512_bf16 / amx_bf16),
# not one an artifact stores: a bf16 bundle carries the FP32 ONNX.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

# What an artifact's input takes: the float32 NCHW batch normalised as the ModelSpec says, or the uint8
# NHWC BGR crops themselves (preprocessing folded into the graph, or done inside the engine as ncnn does).
FLOAT_NCHW = "float32_nchw"
UINT8_NHWC = "uint8_nhwc_bgr"
INPUT_KINDS = (FLOAT_NCHW, UINT8_NHWC)
MIN_INPUT, MAX_INPUT = 16, 1024   # input sides a ModelSpec may name
WIDTHS = (0.25, 0.5, 0.75, 1.0)  # the MobileNetV2 width multipliers the torch engine builds
ARCHS = ("mobilenetv2",)          # the networks the torch engine builds (engines/torch/network.build_model)
# How the network reads pose: three Euler angles straight from a linear layer, or a rotation (6D, two columns
# made orthonormal) turned into the same Euler angles inside the graph. Either way the output is (N, 3) degrees.
POSE_HEADS = ("euler", "rot6d")


def _short(value) -> str:
    from .limits import short

    return short(value)


@dataclass(frozen=True)
class CropRule:
    """How a face box (x, y, w, h) becomes the square model input.

    side = scale * max(w, h); centre = box centre + (shift_x * w, shift_y * h). Pixels outside the
    image are filled by replicating the border (``border``), then the square is resized to the input size.
    """

    scale: float = 1.4
    shift_x: float = 0.0
    shift_y: float = 0.0
    border: str = "replicate"  # "replicate" | "constant"


@dataclass(frozen=True)
class OutputSpec:
    name: str
    fields: tuple[str, ...]
    units: str


@dataclass(frozen=True)
class ModelSpec:
    input_size: int = 112
    channel_order: str = "RGB"  # the order the network consumes; images arrive BGR and are swapped
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)  # on 0..255 values, in channel_order
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    crop: CropRule = field(default_factory=CropRule)
    outputs: tuple[OutputSpec, ...] = (
        OutputSpec("blur", ("blur",), "score 0 (sharp) .. 1 (unusable)"),
        OutputSpec("pose", ("yaw", "pitch", "roll"), "degrees, AFLW2000-3D Pose_Para convention"),
    )
    input_name: str = "input"
    arch: str = "mobilenetv2"
    width: float = 0.25
    pose_head: str = "euler"
    # The answer for a face is the mean of the network's answers for its crop and for the crop's mirror image
    # (whose yaw and roll change sign): two passes per face, done by the runtime (Predictor) for every engine,
    # so an ncnn graph, which has no batch, needs nothing of its own. Off for artifacts from before v5.1.0.
    mirror_average: bool = False
    model_version: str = "0.0.0"
    spec_version: int = 1

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outputs"] = [asdict(o) for o in self.outputs]
        d["spec_version"] = max(int(self.spec_version), MIRROR_SPEC_VERSION if self.mirror_average else 1)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        if not isinstance(d, dict):
            raise EdgefaceError("ModelSpec is not a JSON object; re-export the artifact with `edgeface export`")
        try:
            d = dict(d)
            if int(d.get("spec_version", 1)) > SPEC_VERSION:
                raise EdgefaceError(
                    f"ModelSpec version {d['spec_version']} is newer than this edgeface understands; upgrade edgeface")
            d["crop"] = CropRule(**d.get("crop", {}))
            d["outputs"] = tuple(OutputSpec(o["name"], tuple(o["fields"]), o["units"]) for o in d["outputs"])
            d["mean"] = tuple(float(v) for v in d["mean"])
            d["std"] = tuple(float(v) for v in d["std"])
            known = set(cls.__dataclass_fields__)
            spec = cls(**{k: v for k, v in d.items() if k in known})
        except EdgefaceError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise EdgefaceError(f"ModelSpec is malformed ({type(e).__name__}: {str(e)[:80]}); re-export the artifact "
                                f"with `edgeface export`") from None
        return spec.validate()

    def validate(self) -> "ModelSpec":
        """Every value in range, checked once where a spec enters (checkpoint, ONNX metadata, spec file,
        manifest). Returns self; EdgefaceError naming the field otherwise."""
        def bad(field_name: str, why: str):
            raise EdgefaceError(f"ModelSpec field '{field_name}' {why}; re-export the artifact with `edgeface export`")

        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int) \
                or not MIN_INPUT <= self.input_size <= MAX_INPUT:
            bad("input_size", f"must be a whole number from {MIN_INPUT} to {MAX_INPUT}, got {_short(self.input_size)}")
        if not isinstance(self.channel_order, str) or self.channel_order.upper() not in ("RGB", "BGR"):
            bad("channel_order", f"must be RGB or BGR, got {_short(self.channel_order)}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(number(x) for x in v):
                bad(name, "must be three finite numbers")
        if not all(abs(x) <= 1e6 for x in self.mean):
            bad("mean", "is out of range (|mean| <= 1e6 on 0..255 values)")
        if not all(1e-6 <= x <= 1e6 for x in self.std):
            bad("std", f"must be three numbers from 1e-6 to 1e6 (a std of 0 divides by zero), got {list(self.std)}")
        c = self.crop
        if not all(number(v) for v in (c.scale, c.shift_x, c.shift_y)):
            bad("crop", "needs finite numbers for scale, shift_x and shift_y")
        if not 0.1 <= c.scale <= 10:
            bad("crop.scale", f"must be from 0.1 to 10, got {c.scale:.6g}")
        if not (abs(c.shift_x) <= 2 and abs(c.shift_y) <= 2):
            bad("crop.shift_x/shift_y", "must be within -2..2 (in box sides)")
        if c.border not in ("replicate", "constant"):
            bad("crop.border", f"must be replicate or constant, got {_short(c.border)}")
        names = self.output_names
        want = (("blur", ("blur",)), ("pose", ("yaw", "pitch", "roll")))
        if len(self.outputs) != 2 or any(o.name != n or tuple(o.fields) != f for o, (n, f) in zip(self.outputs, want)):
            bad("outputs", f"must be blur (blur) then pose (yaw, pitch, roll), got {_short(list(names))}")
        if not isinstance(self.input_name, str) or not self.input_name or len(self.input_name) > 256:
            bad("input_name", "must be a non-empty name")
        if not number(self.width) or self.width not in WIDTHS:
            bad("width", f"must be one of {', '.join(map(str, WIDTHS))}, got {_short(self.width)}")
        for name in ("arch", "model_version"):
            if not isinstance(getattr(self, name), str):
                bad(name, "must be a string")
        if self.pose_head not in POSE_HEADS:
            bad("pose_head", f"must be one of {', '.join(POSE_HEADS)}, got {_short(self.pose_head)}")
        if not isinstance(self.mirror_average, bool):
            bad("mirror_average", f"must be true or false, got {_short(self.mirror_average)}")
        if self.arch not in ARCHS:
            bad("arch",
                f"must be one of {', '.join(ARCHS)} (the networks this edgeface builds), got {_short(self.arch)}")
        return self

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise EdgefaceError(f"ModelSpec is not valid JSON ({e.msg}); re-export the artifact") from None
        except RecursionError:
            raise EdgefaceError("ModelSpec JSON is nested too deeply to be a spec; re-export the artifact") from None

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_json

        atomic_write_json(path, self.to_dict(), sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        from .io import read_text_file

        return cls.from_json(read_text_file(path, "ModelSpec file", "re-export the artifact with `edgeface export`"))

    # -- convenience ---------------------------------------------------------------------------
    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)
