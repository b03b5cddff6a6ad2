"""ONNX Runtime: CPU by default; CUDA / TensorRT execution providers are used when the installed
onnxruntime has them (onnxruntime-gpu). Full graph optimizations, the thread count honoured.

A float-input artifact gets its preprocessing folded in at load time (``core.fold.prepend_preprocess``, in
memory; the file is untouched), so the session takes the uint8 NHWC BGR crops as they are: ORT's threads
do the preprocessing, and numpy's ``to_input`` beside the session cost more of its throughput than the folded
graph does (``scripts/bench_predictor.py``; the figures are in docs/figures.md). A graph whose input is not one
float32 tensor is left as it is. ``fold_preprocess=False`` keeps the float input.
"""
from __future__ import annotations

import numpy as np

from ...core.artifact import (INPUT_KIND_KEY, PRECISION_KEY, has_external_data, inline_external_data, onnx_metadata,
                              parse_onnx)
from ...core.graphcheck import check_onnx
from ...core.errors import EdgefaceError
from ...core.fold import prepend_preprocess
from ...core.spec import FLOAT_NCHW, UINT8_NHWC
from ..base import Backend
from .session import make_session

# Preferred first; only those the installed onnxruntime offers are used.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend(Backend):
    """Options: ``providers`` (list, overrides the preference), ``allow_spinning`` (bool; worker threads
    busy-wait between runs — lowest latency, burns CPU; default ORT's), ``optimized_model_path``,
    ``fold_preprocess`` (bool, default True: uint8 crops in, normalised inside the session; see the module
    docstring), ``simulate_qdq`` (bool, default off: run a Q/DQ graph's QuantizeLinear / DequantizeLinear
    nodes as written, around float operators, instead of fusing them into onnxruntime's int8 kernels. That
    is the quantized graph's exact arithmetic, which is what checking another engine's INT8 form here
    needs: on x86 CPUs without VNNI those int8 kernels saturate intermediate sums, and S8S8 graphs deviate
    further from FP32 than the graph itself does; docs/figures.md)."""

    name = "onnxruntime"
    OPTIONS = frozenset({"providers", "allow_spinning", "optimized_model_path", "fold_preprocess", "simulate_qdq"})
    MANIFEST_OPTIONS = {"allow_spinning": (bool, lambda v: True), "fold_preprocess": (bool, lambda v: True)}

    def _load_impl(self) -> None:
        import onnxruntime as ort

        self.folded_at_load = False
        fold = self.options.get("fold_preprocess", True)
        # The file is read once (from a verified bundle: the very bytes its manifest vouched for); one parse
        # serves the metadata, the checks and the fold, and the session gets bytes, never the path, so the
        # model that runs is the model that was checked.
        data = self.read_file(self.artifact)
        proto = parse_onnx(data, self.artifact)
        meta = onnx_metadata(proto)
        self.input_kind = meta.get(INPUT_KIND_KEY, FLOAT_NCHW)
        self.fixed_batch = check_onnx(proto, self.spec, self.input_kind, self.artifact.name,
                                      built_by_edgeface=self.signed)
        model: bytes = data
        if has_external_data(proto):
            inline_external_data(proto, self.artifact, self.read_file)
            model = proto.SerializeToString()
        if self.input_kind == FLOAT_NCHW and fold:
            folded = self._folded_bytes(proto)
            if folded is not None:
                model, self.input_kind, self.folded_at_load = folded, UINT8_NHWC, True
        self.precision = meta.get(PRECISION_KEY, self.precision)
        config = {}
        spinning = self.options.get("allow_spinning")
        if spinning is not None:
            config["session.intra_op.allow_spinning"] = "1" if spinning else "0"
        if self.options.get("simulate_qdq"):
            config["session.disable_quant_qdq"] = "1"
        available = ort.get_available_providers()
        providers = self.options.get("providers") or [p for p in PROVIDER_PREFERENCE if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise EdgefaceError(f"onnxruntime here lacks {', '.join(missing)} (it has {', '.join(available)}); "
                                f"install onnxruntime-gpu for CUDA/TensorRT")
        try:
            self._sess = make_session(model, threads=self.threads, providers=providers, config=config,
                                      optimized_model_path=self.options.get("optimized_model_path"))
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise EdgefaceError(f"onnxruntime cannot load {self.artifact.name} "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        inputs = self._sess.get_inputs()
        out_names = [o.name for o in self._sess.get_outputs()]
        if len(inputs) != 1 or set(self.spec.output_names) - set(out_names):
            raise EdgefaceError(f"{self.artifact.name} has inputs {[i.name for i in inputs]} and outputs {out_names}; "
                                f"its ModelSpec wants one input and outputs {list(self.spec.output_names)}")
        self._input_name = inputs[0].name
        self._out_names = list(self.spec.output_names)
        self._providers = self._sess.get_providers()

    def _folded_bytes(self, proto) -> bytes | None:
        """The artifact with preprocessing prepended, or None where its input is not one float32 tensor."""
        try:
            return prepend_preprocess(proto, self.spec, cast_first=False).SerializeToString()
        except EdgefaceError:
            return None

    def _run_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        # run() hands x to ORT without a copy (contiguous, right dtype) and returns fresh numpy outputs.
        outs = self._sess.run(self._out_names, {self._input_name: x})
        return dict(zip(self._out_names, outs))

    @property
    def session(self):
        """The raw onnxruntime.InferenceSession (for benchmarking the engine without edgeface around it)."""
        self.load()
        return self._sess

    def _info_impl(self) -> dict:
        import onnxruntime as ort

        return {"version": ort.__version__, "providers": getattr(self, "_providers", None),
                "preprocess_folded_at_load": getattr(self, "folded_at_load", False),
                "simulate_qdq": bool(self.options.get("simulate_qdq", False))}

    def _close_impl(self) -> None:
        self._sess = None
