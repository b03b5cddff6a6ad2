"""OpenVINO on the CPU: the ONNX (FP32 or INT8 Q/DQ) or an IR, compiled with a thread count and a
performance hint.

A float-input artifact gets the ModelSpec's preprocessing folded in when it loads, with OpenVINO's own
PrePostProcessor (uint8 NHWC BGR in; element type, layout, channel order, mean and scale become part of the
compiled graph), so the Predictor hands uint8 crops straight in, as it does to onnxruntime. A batch runs on
one infer request, or is split over several asynchronous ones (``requests``) where the throughput hint gives
OpenVINO more than one stream; outputs are copied out of the requests before they are reused.
"""
from __future__ import annotations

import numpy as np

from ...core.artifact import (INPUT_KIND_KEY, PRECISION_KEY, has_external_data, inline_external_data, onnx_metadata,
                              parse_onnx)
from ...core.graphcheck import check_io, check_onnx
from ...core.errors import EdgefaceError
from ...core.preprocess import input_affine
from ...core.spec import FLOAT_NCHW, UINT8_NHWC
from ..base import Backend
from . import FLOAT_HINTS, MIN_CHUNK
from . import precision_problem as _precision_problem


def compiled_precision(compiled) -> str:
    """The float precision a compiled model runs at, in OpenVINO's words ("f32", "bf16", "f16"): its
    INFERENCE_PRECISION_HINT property, which holds what the plugin actually chose, default or not."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


def fold_preprocess(model, spec):
    """(model, folded): uint8 (N, S, S, 3) BGR in, the ModelSpec's channel order, mean and std as
    PrePostProcessor steps (``preprocess.input_affine`` in OpenVINO's terms). A channel order it has no
    step for leaves the model as it is (folded False)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    s = spec.input_size
    _, _, idx = input_affine(spec)
    if list(idx) not in ([0, 1, 2], [2, 1, 0]):
        return model, False
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_shape([-1, s, s, 3])
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    # Layout and channel order first, on the 1-byte pixels, then to float: in this order OpenVINO fuses the
    # float steps into one pass and, on an INT8 Q/DQ graph, into the input's quantization. Converting first
    # left a float Gather and Transpose in the graph, and the Predictor ran the INT8 Q/DQ well below the raw
    # float request; in this order it keeps up with it (the figures are in docs/engines.md).
    steps = ppp.input().preprocess().convert_layout(ov.Layout("NCHW"))
    if list(idx) == [2, 1, 0]:
        steps.reverse_channels()
    steps.convert_element_type(ov.Type.f32)
    steps.mean([float(m) for m in spec.mean]).scale([float(v) for v in spec.std])
    return ppp.build(), True


def _ov_elem(port) -> str:
    name = port.get_element_type().get_type_name()   # "f32", "u8", ...
    return {"f32": "float32", "u8": "uint8", "f16": "float16", "i8": "int8", "i32": "int32", "i64": "int64",
            "f64": "float64", "boolean": "bool"}.get(name, name)


def _ov_dims(port):
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return None
    return [d.get_length() if d.is_static else None for d in shape]


class OpenVinoBackend(Backend):
    """Options: ``hint`` ("latency" default, or "throughput": OpenVINO's PERFORMANCE_HINT), ``requests``
    (int; infer requests a batch is split over, run asynchronously; 0/None: 1 with the latency hint,
    OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS with the throughput hint), ``fold_preprocess`` (bool,
    default True: uint8 crops in, normalised inside the compiled graph), ``device`` (default "CPU")."""

    name = "openvino"
    OPTIONS = frozenset({"hint", "requests", "fold_preprocess", "device"})
    # What a bundle's manifest may set (runtime/bundle.py): no paths, bounded request counts.
    MANIFEST_OPTIONS = {"hint": (str, lambda v: v in ("latency", "throughput")),
                        "requests": ((int, type(None)), lambda v: v is None or 0 <= v <= 64),
                        "fold_preprocess": (bool, lambda v: True),
                        "device": (str, lambda v: v in ("CPU", "GPU", "AUTO"))}

    def _load_impl(self) -> None:
        import openvino as ov

        from .ir import read_info

        hint = (self.options.get("hint") or "latency").lower()
        if hint not in ("latency", "throughput"):
            raise EdgefaceError(f"openvino option hint={hint!r}; choose latency or throughput")
        self.folded_at_load = False
        # Every file is read once (from a verified bundle: the bytes its manifest vouched for) and OpenVINO
        # reads the model from those bytes, never from the path: the model that runs is the one checked.
        self._core = ov.Core()
        if self.artifact.suffix == ".xml":
            from .ir import ir_paths

            _, bin_path, spec_path = ir_paths(self.artifact)
            info = read_info(self.artifact, self.read_file(spec_path))
            self.input_kind = info.get("input_kind", FLOAT_NCHW)
            stored = info.get("precision", "fp32")
            xml_bytes, weights = self.read_file(self.artifact), self.read_file(bin_path)
            model = self._read(lambda: self._core.read_model(xml_bytes, ov.Tensor(np.frombuffer(weights, np.uint8))))
            self._weights = weights  # the Tensor may share this memory: keep it alive with the model
            self.fixed_batch = check_io(self.artifact.name, self.spec, self.input_kind,
                                        [(i.get_any_name(), _ov_elem(i), _ov_dims(i)) for i in model.inputs],
                                        {n: (_ov_elem(o), _ov_dims(o)) for o in model.outputs for n in o.get_names()})
        else:
            data = self.read_file(self.artifact)
            proto = parse_onnx(data, self.artifact)
            meta = onnx_metadata(proto)
            self.input_kind = meta.get(INPUT_KIND_KEY, FLOAT_NCHW)
            stored = meta.get(PRECISION_KEY, "fp32")
            self.fixed_batch = check_onnx(proto, self.spec, self.input_kind, self.artifact.name,
                                          built_by_edgeface=self.signed)
            if has_external_data(proto):
                inline_external_data(proto, self.artifact, self.read_file)
                data = proto.SerializeToString()
            model = self._read(lambda: self._core.read_model(data))
        # What runs: the precision asked for (a bf16 bundle carries the FP32 ONNX), else the artifact's own.
        wanted = self.requested_precision or stored
        problem = _precision_problem(stored, wanted)
        if problem:
            raise EdgefaceError(f"{self.artifact.name}: {problem}")
        self.precision = wanted
        if len(model.inputs) != 1:
            raise EdgefaceError(f"{self.artifact.name} has {len(model.inputs)} inputs; its ModelSpec wants one")
        out_names = [n for o in model.outputs for n in o.get_names()]
        if set(self.spec.output_names) - set(out_names):
            raise EdgefaceError(f"{self.artifact.name} has outputs {out_names}; its ModelSpec wants "
                                f"{list(self.spec.output_names)}")
        if self.input_kind == FLOAT_NCHW and self.options.get("fold_preprocess", True):
            model, self.folded_at_load = fold_preprocess(model, self.spec)
            if self.folded_at_load:
                self.input_kind = UINT8_NHWC
        config = {"PERFORMANCE_HINT": hint.upper()}
        if wanted in FLOAT_HINTS:  # pinned: left alone, the CPU plugin picks bf16 wherever the CPU has it
            config["INFERENCE_PRECISION_HINT"] = FLOAT_HINTS[wanted]
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        try:
            self._compiled = self._core.compile_model(model, self.options.get("device") or "CPU", config)
        except Exception as e:  # noqa: BLE001
            raise EdgefaceError(f"OpenVINO cannot compile {self.artifact.name} "
                                f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})") from None
        self.inference_precision = compiled_precision(self._compiled)
        n = self.options.get("requests") or 0
        if not n:
            n = 1 if hint == "latency" else int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._requests = [self._compiled.create_infer_request() for _ in range(max(1, int(n)))]
        self._outputs = [self._compiled.output(name) for name in self.spec.output_names]
        self._hint = hint

    @classmethod
    def precision_problem(cls, stored: str, wanted: str) -> str | None:
        """An FP32 artifact at fp32, or at bf16 on a CPU with avx512_bf16 / amx_bf16; INT8 at int8."""
        return _precision_problem(stored, wanted)

    def _check_precision(self) -> None:
        """The compiled model runs at the float precision asked for (its INFERENCE_PRECISION_HINT property),
        or this is an error naming both: never an "fp32" model silently computing in bf16. An INT8 Q/DQ
        model's float layers run at OpenVINO's default, reported as ``inference_precision``."""
        want = FLOAT_HINTS.get(self.precision)
        if want is None or self.inference_precision == want:
            return
        fix = ("run it on onnxruntime, or report this OpenVINO version" if self.precision == "fp32" else
               "this CPU has no native path for it; use --precision fp32")
        raise EdgefaceError(f"OpenVINO compiled {self.artifact.name} to run in {self.inference_precision}, not the "
                            f"{want} asked for (INFERENCE_PRECISION_HINT={want}); {fix}")

    def _read(self, read):
        try:
            return read()
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
            raise EdgefaceError(f"OpenVINO cannot read {self.artifact.name} "
                                f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160]})") from None

    def _run_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n = x.shape[0]
        k = min(len(self._requests), max(1, n // MIN_CHUNK))
        if k == 1:
            r = self._requests[0]
            r.infer({0: x}, share_inputs=True)
            return {name: r.get_tensor(o).data.copy()
                    for name, o in zip(self.spec.output_names, self._outputs)}
        bounds = np.linspace(0, n, k + 1).astype(int)
        used = self._requests[:k]
        for r, a, b in zip(used, bounds[:-1], bounds[1:]):
            r.start_async({0: x[a:b]}, share_inputs=True)  # x outlives the requests: we wait for all below
        for r in used:
            r.wait()
        return {name: np.concatenate([r.get_tensor(o).data for r in used])
                for name, o in zip(self.spec.output_names, self._outputs)}

    @property
    def compiled_model(self):
        """The raw openvino.CompiledModel (for benchmarking the engine without edgeface around it)."""
        self.load()
        return self._compiled

    def _info_impl(self) -> dict:
        import openvino as ov

        return {"version": ov.__version__, "hint": getattr(self, "_hint", self.options.get("hint", "latency")),
                "requests": len(getattr(self, "_requests", []) or []) or self.options.get("requests"),
                "preprocess_folded_at_load": getattr(self, "folded_at_load", False),
                "inference_precision": getattr(self, "inference_precision", None)}

    def _close_impl(self) -> None:
        self._requests = []
        self._outputs = []
        self._compiled = None
        self._core = None
        self._weights = None
