"""OpenVINO IR as edgeface writes it: ``model.xml`` + ``model.bin`` and ``model.spec.json`` beside them
(the ModelSpec, the precision, the input kind). Read without OpenVINO."""
from __future__ import annotations

import json
from pathlib import Path

from ...core.errors import EdgefaceError
from ...core.spec import ModelSpec

FIX = "re-export with `edgeface export --format openvino`"


def ir_paths(xml: str | Path) -> tuple[Path, Path, Path]:
    """(.xml, .bin, .spec.json) of an IR named ``<stem>.xml``."""
    p = Path(xml)
    return p, p.with_suffix(".bin"), p.with_name(f"{p.stem}.spec.json")


def read_info(xml: str | Path, data: bytes | None = None) -> dict:
    """The spec file beside an IR: ``spec``, ``precision``, ``input_kind`` (``data``: its bytes, already read)."""
    xml, _, spec_file = ir_paths(xml)
    if data is None and not spec_file.is_file():
        raise EdgefaceError(f"{spec_file.name} (the ModelSpec) is missing beside {xml.name}; {FIX}")
    try:
        data = json.loads(data.decode("utf-8") if data is not None else spec_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgefaceError(f"{spec_file} is not valid JSON; {FIX}") from None
    if not isinstance(data, dict) or "spec" not in data:
        raise EdgefaceError(f"{spec_file} holds no ModelSpec; {FIX}")
    return data


def read_spec(xml: str | Path) -> ModelSpec:
    return ModelSpec.from_dict(read_info(xml)["spec"])
