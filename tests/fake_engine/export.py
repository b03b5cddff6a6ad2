"""The fake engine's exporter: edgeface's ONNX export, written under the fake artifact's name (needs torch).

Exporting takes minutes on a busy test machine, so each checkpoint's ONNX is exported once per process and
copied for every later export."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from edgeface.core.errors import EdgefaceError
from edgeface.export import export_onnx


@functools.lru_cache(maxsize=None)
def _onnx_of(model: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="edgeface-fake-engine-"))
    atexit.register(shutil.rmtree, folder, True)
    return export_onnx(model if model else None, folder / "model.onnx")


def export_fake(model, out_path, *, precision: str = "fp32", fold_preprocess: bool = False, **options) -> Path:
    if precision != "fp32" or fold_preprocess or options:
        raise EdgefaceError("the fake engine exports FP32 float NCHW only")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_onnx_of(str(model) if model is not None else ""), out_path)
    return out_path
