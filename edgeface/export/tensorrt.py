"""The TensorRT artifact: the ONNX first (kept beside the engine: it is the portable source), then the engine,
built on this machine (which must be the device that runs it; see ``edgeface.engines.tensorrt``)."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import EdgefaceError
from ..engines import registry
from .onnx import export_onnx


def export_tensorrt(model_or_checkpoint=None, out_path: str | Path = "model.engine", *, precision: str = "fp16",
                    fold_preprocess: bool = False, workspace_mb: int = 1024, timing_cache=None, calib_cache=None,
                    **onnx_options) -> Path:
    try:
        from ..engines.tensorrt.build import build_engine
        from ..engines.tensorrt.library import import_tensorrt
    except ImportError as e:
        raise EdgefaceError(f"TensorRT engine building is unavailable ({e}); "
                            f"pip install 'edgeface[tensorrt]' on the Jetson/GPU that will run it") from None
    import_tensorrt()  # fail before the ONNX export when TensorRT is absent (MissingBackendError, one line)
    out_path = Path(out_path)
    onnx_path = export_onnx(model_or_checkpoint, out_path.with_name(registry.by_format("onnx").artifact),
                            fold_preprocess=fold_preprocess, **onnx_options)
    return build_engine(onnx_path, out_path.parent, precision=precision, workspace_mb=workspace_mb,
                        timing_cache=timing_cache, calib_cache=calib_cache, engine_path=out_path)
