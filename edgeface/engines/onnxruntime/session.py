"""The one place an onnxruntime ``InferenceSession`` is set up: the engine's runner, the face detector
(``runtime/detector.py``) and calibration statistics (``quantize/calibrate/stats.py``) all call
``make_session``, so threads, graph optimisation, execution mode and logging are set alike everywhere.

onnxruntime is imported when a session is made, not when this module is: the detector imports this lazily
and falls back to OpenCV where onnxruntime is absent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

CPU_ONLY = ("CPUExecutionProvider",)


def make_session(model: Union[bytes, str, Path], *, threads: Optional[int] = None, optimize: bool = True,
                 providers: Sequence[str] = CPU_ONLY, config: Optional[Mapping[str, str]] = None,
                 optimized_model_path: Union[str, Path, None] = None):
    """An ``onnxruntime.InferenceSession`` for ``model`` (the serialized model, or a path).

    ``threads``: intra-op threads (falsy: onnxruntime's default). Execution is sequential with one inter-op
    thread: the models here are one chain of ops, and parallel mode only adds overhead. ``optimize=False``
    turns graph optimisation off (calibration observes every tensor, which fused nodes would hide); otherwise
    all optimisations run. ``config``: session config entries (``session.intra_op.allow_spinning`` ...).
    Warnings (unused initialisers and the like) are not logged: they are noise for users.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = int(threads)
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    if optimized_model_path:
        so.optimized_model_filepath = str(optimized_model_path)
    so.log_severity_level = 3
    if isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, sess_options=so, providers=list(providers))
