"""ModelSpec: everything a runtime needs to feed the model and read its outputs.

It travels inside every checkpoint, in ONNX ``metadata_props`` and beside ncnn/TensorRT artifacts,
so an artifact is never run with the wrong preprocessing.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import EdgefaceError

SPEC_KEY = "edgeface.spec"  # key in ONNX metadata_props / manifest
SPEC_VERSION = 1

# Numeric precisions an artifact, a bundle or a TensorRT engine can have (export, quantize, deploy, build).
PRECISIONS = ("fp32", "fp16", "int8")

# What an artifact's input takes: the float32 NCHW batch normalised as the ModelSpec says, or the uint8
# NHWC BGR crops themselves (preprocessing folded into the graph, or done inside the engine as ncnn does).
FLOAT_NCHW = "float32_nchw"
UINT8_NHWC = "uint8_nhwc_bgr"
INPUT_KINDS = (FLOAT_NCHW, UINT8_NHWC)


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
    model_version: str = "0.0.0"
    spec_version: int = SPEC_VERSION

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outputs"] = [asdict(o) for o in self.outputs]
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
            return cls(**{k: v for k, v in d.items() if k in known})
        except EdgefaceError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise EdgefaceError(f"ModelSpec is malformed ({e!r}); re-export the artifact with `edgeface export`") from None

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise EdgefaceError(f"ModelSpec is not valid JSON ({e.msg}); re-export the artifact") from None

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_json

        atomic_write_json(path, self.to_dict(), sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        p = Path(path)
        if not p.is_file():
            raise EdgefaceError(f"ModelSpec file {p} is missing; re-export the artifact with `edgeface export`")
        return cls.from_json(p.read_text())

    # -- convenience ---------------------------------------------------------------------------
    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)
