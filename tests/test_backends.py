"""Every backend installed here against the torch reference, on real and generated crops, plus each
backend's lifecycle, options and failure modes.

Bounds (issue 3): FP32 max |Δ| ≤ 0.05° pose and ≤ 1e-3 blur; FP16 ≤ 0.5° and ≤ 0.01. Measured deviations
are printed (``pytest -s``) and recorded as junit properties.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from edgeface.engines.registry import REGISTRY, available_backends, get_backend_class
from edgeface.core.spec import FLOAT_NCHW, UINT8_NHWC
from edgeface.core.errors import EdgefaceError, MissingBackendError
from edgeface.core.artifact import load_onnx
from edgeface.runtime.predictor import Predictor
from edgeface.core.spec import ModelSpec
from export_cache import reference

BOUNDS = {"fp32": (0.05, 1e-3), "fp16": (0.5, 0.01)}

# (id, artifact key, backend, options, precision class)
CASES = [
    ("onnxruntime-fp32", "onnx", "onnxruntime", {}, "fp32"),  # preprocessing folded in at load time
    ("onnxruntime-fp32-float-input", "onnx", "onnxruntime", {"fold_preprocess": False}, "fp32"),
    ("onnxruntime-fp32-folded", "onnx_folded", "onnxruntime", {}, "fp32"),
    ("ncnn-fp32", "ncnn_fp32", "ncnn", {"fp16": False}, "fp32"),
    ("ncnn-fp32-float-input", "ncnn_fp32", "ncnn", {"fp16": False, "pixel_input": False}, "fp32"),
    ("ncnn-fp16-weights", "ncnn_fp16", "ncnn", {"fp16": False}, "fp16"),
    ("ncnn-fp16-arithmetic", "ncnn_fp16", "ncnn", {"fp16": True}, "fp16"),
    ("openvino-fp32", "onnx", "openvino", {}, "fp32"),  # preprocessing folded in with PrePostProcessor
    ("openvino-fp32-float-input", "onnx", "openvino", {"fold_preprocess": False}, "fp32"),
    ("openvino-fp32-folded", "onnx_folded", "openvino", {}, "fp32"),
    ("openvino-fp32-throughput", "onnx", "openvino", {"hint": "throughput", "requests": 2}, "fp32"),
    ("tensorrt-fp32", "onnx", "tensorrt", {"precision": "fp32"}, "fp32"),
    ("tensorrt-fp16", "onnx", "tensorrt", {"precision": "fp16"}, "fp16"),
]




def _needs(backend):
    if importlib.util.find_spec(REGISTRY[backend].package) is None:
        pytest.skip(f"{backend} is not installed here (pip install 'edgeface[{REGISTRY[backend].extra}]'); "
                    f"its parity runs on the device")


def _parity(arts, ckpt, crops, case_id, key, backend, options, prec, record_property):
    _needs(backend)
    blur_ref, pose_ref = reference(ckpt, crops)
    options = dict(options)
    precision = options.pop("precision", None)
    with Predictor(arts[key], backend=backend, threads=2, precision=precision, **options) as p:
        r = p.predict(crops)
        assert p.backend == backend
    pose_dev = float(np.abs(r.pose - pose_ref).max())
    blur_dev = float(np.abs(r.blur - blur_ref).max())
    pose_bound, blur_bound = BOUNDS[prec]
    print(f"\n[parity] {case_id:26s} n={len(crops):3d} pose max|Δ| {pose_dev:.2e}°  blur max|Δ| {blur_dev:.2e}")
    record_property(f"{case_id}.pose_max_abs", pose_dev)
    record_property(f"{case_id}.blur_max_abs", blur_dev)
    assert r.blur.shape == (len(crops),) and r.yaw.shape == (len(crops),)
    assert pose_dev <= pose_bound, f"{case_id}: pose deviates {pose_dev:.4f}° > {pose_bound}°"
    assert blur_dev <= blur_bound, f"{case_id}: blur deviates {blur_dev:.5f} > {blur_bound}"


@pytest.mark.parametrize("case_id,key,backend,options,prec", CASES, ids=[c[0] for c in CASES])
def test_parity_real_crops(arts, ckpt, face_crops, case_id, key, backend, options, prec, record_property):
    _parity(arts, ckpt, face_crops, case_id, key, backend, options, prec, record_property)


@pytest.mark.parametrize("case_id,key,backend,options,prec", CASES, ids=[c[0] for c in CASES])
def test_parity_generated_crops(arts, ckpt, synthetic_crops, case_id, key, backend, options, prec,
                                record_property):
    _parity(arts, ckpt, synthetic_crops, case_id, key, backend, options, prec, record_property)


def test_reference_is_not_trivial(ckpt, synthetic_crops):
    # Parity only means something if the outputs vary with the input.
    blur, pose = reference(ckpt, synthetic_crops)
    assert np.ptp(pose, axis=0).min() > 1.0 and np.ptp(blur) > 0.01
    assert np.isfinite(pose).all() and ((blur >= 0) & (blur <= 1)).all()


# -- lifecycle and options ----------------------------------------------------------------------------
def test_lifecycle_is_lazy_and_closes(arts):
    spec = ModelSpec()
    b = get_backend_class("onnxruntime")(arts["onnx"], spec, threads=1, fold_preprocess=False)
    assert b.loaded is False  # construction loads nothing
    with b:
        out = b.run(np.zeros((2, 3, 112, 112), np.float32))
        assert out["blur"].shape == (2, 1) and out["pose"].shape == (2, 3)
        assert out["blur"].dtype == np.float32
        assert b.info()["providers"] == ["CPUExecutionProvider"]
    assert b.loaded is False


def test_onnxruntime_session_options(arts):
    import onnxruntime as ort

    with Predictor(arts["onnx"], backend="onnxruntime", threads=1) as p:
        so = p.backend_session.session.get_session_options()
        assert so.intra_op_num_threads == 1
        assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(EdgefaceError, match="CUDAExecutionProvider"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("CUDA is available here")
        Predictor(arts["onnx"], backend="onnxruntime", providers=["CUDAExecutionProvider"])


def test_one_onnxruntime_session_factory():
    """The runner, the face detector and calibration statistics all set up their sessions through
    engines/onnxruntime/session.py: nothing else builds an InferenceSession or its options."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from edgeface.engines.onnxruntime.session import make_session

    pkg = Path(__file__).resolve().parents[1] / "edgeface"
    builders = sorted(str(f.relative_to(pkg)) for f in pkg.rglob("*.py")
                      if re.search(r"\b(InferenceSession|SessionOptions)\(", f.read_text(encoding="utf-8")))
    assert builders == [str(Path("engines/onnxruntime/session.py"))]
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    so = make_session(model.SerializeToString(), threads=2, optimize=False).get_session_options()
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1 and so.log_severity_level == 3
    assert so.graph_optimization_level.name == "ORT_DISABLE_ALL"


def test_onnxruntime_can_run_qdq_as_written(arts):
    """simulate_qdq: Q/DQ nodes run as written (the graph's exact arithmetic), how another engine's INT8 form is
    checked here; ORT's x86 int8 kernels saturate on CPUs without VNNI."""
    with Predictor(arts["onnx"], backend="onnxruntime", simulate_qdq=True) as p:
        so = p.backend_session.session.get_session_options()
        assert so.get_session_config_entry("session.disable_quant_qdq") == "1" and p.info()["simulate_qdq"] is True
    with Predictor(arts["onnx"], backend="onnxruntime") as p:
        assert p.info()["simulate_qdq"] is False


def test_input_kinds(arts):
    with Predictor(arts["onnx"]) as p:
        assert p.input_kind == UINT8_NHWC  # folded in at load time
        assert p.info()["preprocess_folded_at_load"] is True
    with Predictor(arts["onnx"], fold_preprocess=False) as p:
        assert p.input_kind == FLOAT_NCHW
    with Predictor(arts["onnx_folded"]) as p:
        assert p.input_kind == UINT8_NHWC
    with Predictor(arts["ncnn_fp32"]) as p:
        assert p.input_kind == UINT8_NHWC  # ncnn normalises uint8 pixels natively by default
    with Predictor(arts["ncnn_fp32"], pixel_input=False) as p:
        assert p.input_kind == FLOAT_NCHW


@pytest.mark.parametrize("key,backend,options", [("onnx", "onnxruntime", {}),
                                                 ("onnx", "onnxruntime", {"fold_preprocess": False}),
                                                 ("onnx_folded", "onnxruntime", {}), ("ncnn_fp32", "ncnn", {})])
def test_backend_rejects_wrong_input(arts, key, backend, options):
    with Predictor(arts[key], backend=backend, **options) as p:
        b = p.backend_session
        good = np.zeros((1, 112, 112, 3), np.uint8) if b.input_kind == UINT8_NHWC else np.zeros((1, 3, 112, 112),
                                                                                                np.float32)
        b.run(good)
        for bad in (good.astype(np.float64), good[:, :, :50], good[0], good[:0]):
            with pytest.raises(EdgefaceError) as e:
                b.run(bad)
            assert "\n" not in str(e.value)


def test_ncnn_fp16_policy():
    from edgeface.engines.ncnn.runner import cpu_has_fp16, fp16_in_cpuinfo

    pi5 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm"
    pi4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08"
    assert fp16_in_cpuinfo(pi5) is True
    assert fp16_in_cpuinfo(pi4) is False
    assert fp16_in_cpuinfo("flags : fpu vme avx2 f16c") is False  # x86 has no "Features" line
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        assert cpu_has_fp16() is False


def test_ncnn_defaults_and_info(arts):
    from edgeface.engines.ncnn.runner import cpu_has_fp16

    with Predictor(arts["ncnn_fp32"], threads=1) as p:
        info = p.info()
        assert info["fp16_arithmetic"] is cpu_has_fp16() and info["vulkan"] is False
        assert p.backend_session._net.opt.num_threads == 1
        assert p.precision == ("fp16" if cpu_has_fp16() else "fp32")
    with Predictor(arts["ncnn_fp16"], fp16=False) as p:
        assert p.precision == "fp16" and p.info()["weights"] == "fp16"


def test_corrupt_artifacts_fail_cleanly(arts, tmp_path):
    # Truncated ONNX.
    t = tmp_path / "t" / "model.onnx"
    t.parent.mkdir()
    t.write_bytes(arts["onnx"].read_bytes()[: arts["onnx"].stat().st_size // 3])
    # ncnn: garbage .param; truncated .bin.
    d = tmp_path / "n"
    d.mkdir()
    src = arts["ncnn_fp32"]
    (d / "model.spec.json").write_text(src.with_name("model.spec.json").read_text())
    (d / "model.ncnn.param").write_text("not an ncnn param file\n")
    (d / "model.ncnn.bin").write_bytes(src.with_name("model.ncnn.bin").read_bytes())
    d2 = tmp_path / "n2"
    d2.mkdir()
    (d2 / "model.spec.json").write_text(src.with_name("model.spec.json").read_text())
    (d2 / "model.ncnn.param").write_text(src.read_text())
    (d2 / "model.ncnn.bin").write_bytes(src.with_name("model.ncnn.bin").read_bytes()[:1000])
    d3 = tmp_path / "n3"
    d3.mkdir()
    (d3 / "model.spec.json").write_text(src.with_name("model.spec.json").read_text())
    (d3 / "model.ncnn.param").write_text(src.read_text())
    for path in (t, d / "model.ncnn.param", d2 / "model.ncnn.param", d3 / "model.ncnn.param"):
        with pytest.raises(EdgefaceError) as e:
            Predictor(path)
        assert "\n" not in str(e.value), str(e.value)


def test_missing_backend_names_extra(monkeypatch):
    import edgeface.engines.registry as reg

    monkeypatch.setattr(reg, "is_installed", lambda name: name != "ncnn")
    with pytest.raises(MissingBackendError, match=r"edgeface\[ncnn\]"):
        reg.get_backend_class("ncnn")
    assert set(available_backends()) == set(REGISTRY)


def test_tensorrt_backend_skips_without_tensorrt():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed; its runtime tests run instead")
    with pytest.raises(MissingBackendError, match="tensorrt"):
        get_backend_class("tensorrt")


def test_torch_backend_matches_model(ckpt, synthetic_crops):
    import torch

    from edgeface.engines.torch.checkpoint import load_model
    from edgeface.core.preprocess import to_input

    model, spec, _ = load_model(ckpt)
    with torch.no_grad():
        blur, pose = model(torch.from_numpy(to_input(synthetic_crops, spec)))
    with get_backend_class("torch")(ckpt, spec) as b:
        out = b.run(to_input(synthetic_crops, spec))
    # channels_last vs NCHW kernels differ in summation order only.
    assert np.abs(out["pose"] - pose.numpy()).max() < 1e-3
    assert np.abs(out["blur"] - blur.numpy()).max() < 1e-5


def test_onnxruntime_folds_only_a_single_float_input(arts):
    spec = ModelSpec()
    cls = get_backend_class("onnxruntime")
    assert cls(arts["onnx"], spec)._folded_bytes(load_onnx(arts["onnx"])) is not None
    # an artifact already taking uint8 is left as it is (the fold needs one float32 input)
    assert cls(arts["onnx_folded"], spec)._folded_bytes(load_onnx(arts["onnx_folded"])) is None
