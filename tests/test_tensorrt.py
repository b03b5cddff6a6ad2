"""TensorRT: everything that runs without TensorRT runs here for real (engine-cache keys and stale/foreign
rejection on real files, build options, the ONNX preflight on real exported models, the calibration-cache
text format, `edgeface build` without TensorRT). The runtime tests need TensorRT and a GPU and skip here.
"""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeface.engines.tensorrt.calibrator import (calibration_header, hex_to_scale, parse_calibration_cache,
                                                      read_calibration_cache, read_calibration_cache_with_header,
                                                      restamp, scale_to_hex, scales_from_amax,
                                                      write_calibration_cache)
from edgeface.core.errors import EdgefaceError
from edgeface.core.artifact import read_engine_record as read_sidecar
from edgeface.core.io import sha256_file
from edgeface.engines.tensorrt.build import find_or_build_engine, plan_build
from edgeface.engines.tensorrt.cache import (DeviceFacts, engine_cache_key, engine_paths, expected_record, normalize_cc,
                                             write_engine)
from edgeface.engines.tensorrt.preflight import check_onnx_for_tensorrt

NO_TRT_REASON = "tensorrt not installed (needs NVIDIA's libraries; verified on device only)"
ORIN = DeviceFacts("8.5.2.2", "Orin", "8.7")
SHA = hashlib.sha256(b"model").hexdigest()


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except Exception:  # noqa: BLE001 - the bindings without libnvinfer fail with OSError
        return False


# -- cache key --------------------------------------------------------------------------------------------------
def test_cache_key_layout_and_every_component_changes_it():
    base = dict(onnx_sha256=SHA, precision="fp16", trt_version="8.5.2.2", gpu_name="Orin", compute_capability="8.7")
    key = engine_cache_key(**base)
    assert key == f"{SHA[:12]}/8-5-2-2_orin_sm87_fp16"
    variants = [dict(onnx_sha256=hashlib.sha256(b"other").hexdigest()), dict(precision="fp32"),
                dict(precision="int8"), dict(trt_version="10.3.0"), dict(gpu_name="Xavier"),
                dict(compute_capability="7.2"), dict(compute_capability="8.6")]
    keys = {engine_cache_key(**{**base, **v}) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert engine_cache_key(**base, extra={"batch": [1, 8, 64]}) != key
    assert engine_cache_key(**base, extra={"batch": [1, 8, 64]}) != engine_cache_key(**base,
                                                                                     extra={"batch": [1, 8, 32]})
    # the same device written three ways is the same key
    assert engine_cache_key(**{**base, "compute_capability": (8, 7)}) == key
    assert engine_cache_key(**{**base, "compute_capability": "87"}) == key


@pytest.mark.parametrize("bad", [dict(onnx_sha256="abc"), dict(precision="int4"), dict(compute_capability="eight")])
def test_cache_key_rejects_malformed_components(bad):
    base = dict(onnx_sha256=SHA, precision="fp16", trt_version="10.3", gpu_name="Orin", compute_capability="8.7")
    with pytest.raises(EdgefaceError):
        engine_cache_key(**{**base, **bad})


def test_normalize_cc():
    assert normalize_cc((12, 0)) == "12.0" and normalize_cc("sm_87") == "8.7" and normalize_cc("120") == "12.0"


# -- find_or_build_engine on real files (fake engine bytes; TensorRT's deserialiser stood in by `validate`) ------
class FakeBuilder:
    """Writes engine bytes + sidecar exactly as build_engine does (write_engine), recording each call."""

    def __init__(self, payload=b"ENGINE"):
        self.calls = []
        self.payload = payload

    def __call__(self, onnx_path, out_dir, *, engine_path, record, precision, **kw):
        self.calls.append(dict(onnx=onnx_path, precision=precision, **kw))
        rec = dict(record, onnx_file=Path(onnx_path).name, spec=None)
        return write_engine(engine_path, self.payload + Path(onnx_path).read_bytes()[:16], rec)


def _accept_engines(blob: bytes) -> bool:
    return blob.startswith(b"ENGINE")


@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"not really onnx, but hashed like one")
    return p


def _find(onnx_file, cache, builder, facts=ORIN, precision="fp16", logs=None, **kw):
    return find_or_build_engine(onnx_file, precision, cache, facts=facts, validate=_accept_engines, build=builder,
                                log=(logs.append if logs is not None else lambda m: None), **kw)


def test_engine_is_built_once_then_reused(onnx_file, tmp_path):
    cache, builder = tmp_path / "cache", FakeBuilder()
    first = _find(onnx_file, cache, builder)
    assert first.is_file() and len(builder.calls) == 1
    assert first.relative_to(cache).parts[0] == sha256_file(onnx_file)[:12]
    assert builder.calls[0]["timing_cache"].name == "timing_8-5-2-2_orin_sm87.cache"
    second = _find(onnx_file, cache, builder)
    assert second == first and len(builder.calls) == 1
    rec = read_sidecar(first)
    assert rec["gpu_name"] == "Orin" and rec["engine_sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()


def test_other_device_precision_or_onnx_gets_its_own_engine(onnx_file, tmp_path):
    cache, builder = tmp_path / "cache", FakeBuilder()
    a = _find(onnx_file, cache, builder)
    b = _find(onnx_file, cache, builder, facts=DeviceFacts("10.3.0", "Orin", "8.7"))
    c = _find(onnx_file, cache, builder, precision="fp32")
    onnx_file.write_bytes(b"a re-exported model")
    d = _find(onnx_file, cache, builder)
    assert len({a, b, c, d}) == 4 and len(builder.calls) == 4


def test_foreign_sidecar_at_the_key_path_is_rebuilt_not_loaded(onnx_file, tmp_path):
    cache, builder, logs = tmp_path / "cache", FakeBuilder(), []
    path = _find(onnx_file, cache, builder)
    # An engine copied from a Xavier over this one, its sidecar saying so.
    side = path.with_name(path.name + ".json")
    rec = json.loads(side.read_text())
    rec.update(gpu_name="Xavier", compute_capability="7.2")
    side.write_text(json.dumps(rec))
    again = _find(onnx_file, cache, builder, logs=logs)
    assert len(builder.calls) == 2 and again == path
    assert "gpu_name is 'Xavier'" in logs[0]
    assert read_sidecar(path)["gpu_name"] == "Orin"


def test_truncated_engine_is_rebuilt(onnx_file, tmp_path):
    cache, builder, logs = tmp_path / "cache", FakeBuilder(), []
    path = _find(onnx_file, cache, builder)
    path.write_bytes(path.read_bytes()[:5])
    _find(onnx_file, cache, builder, logs=logs)
    assert len(builder.calls) == 2 and "sha256" in logs[0]
    assert path.read_bytes().startswith(b"ENGINE")


def test_engine_that_does_not_deserialise_is_rebuilt(onnx_file, tmp_path):
    cache, logs = tmp_path / "cache", []
    stale = FakeBuilder(payload=b"OLDTRT")    # consistent sidecar, but TensorRT rejects the blob
    _find(onnx_file, cache, stale)
    fresh = FakeBuilder()
    path = _find(onnx_file, cache, fresh, logs=logs)
    assert len(fresh.calls) == 1 and "deserialise" in logs[0] and path.read_bytes().startswith(b"ENGINE")


def test_missing_or_corrupt_sidecar_is_rebuilt(onnx_file, tmp_path):
    cache, builder, logs = tmp_path / "cache", FakeBuilder(), []
    path = _find(onnx_file, cache, builder)
    side = path.with_name(path.name + ".json")
    side.unlink()
    _find(onnx_file, cache, builder, logs=logs)
    side.write_text("{ not json")
    _find(onnx_file, cache, builder, logs=logs)
    assert len(builder.calls) == 3 and "missing" in logs[0] and "not valid JSON" in logs[1]


def test_a_build_that_does_not_match_its_key_is_refused(onnx_file, tmp_path):
    def wrong_builder(onnx_path, out_dir, *, engine_path, record, **kw):
        return write_engine(engine_path, b"ENGINE", dict(record, precision="fp32"))

    with pytest.raises(EdgefaceError, match="does not match its key"):
        _find(onnx_file, tmp_path / "cache", wrong_builder)


def test_calibration_cache_is_part_of_the_int8_key(onnx_file, tmp_path):
    cache, builder = tmp_path / "cache", FakeBuilder()
    calib = write_calibration_cache(tmp_path / "calib.cache", {"input": 0.0078})
    a = _find(onnx_file, cache, builder, precision="int8", calib_cache=calib)
    write_calibration_cache(calib, {"input": 0.0100})
    b = _find(onnx_file, cache, builder, precision="int8", calib_cache=calib)
    assert a != b and len(builder.calls) == 2
    assert read_sidecar(b)["extra"]["calib_sha256"] == sha256_file(calib)


def test_expected_record_is_exact():
    rec = expected_record(SHA, "fp16", DeviceFacts("10.3.0", "Orin", (8, 7)))
    assert rec["compute_capability"] == "8.7" and rec["trt_version"] == "10.3.0" and rec["extra"] == {}


# -- build options ------------------------------------------------------------------------------------------------
def test_build_options_fp16_on_jetpack5():
    o = plan_build("fp16", "input", [-1, 3, 112, 112], has_qdq=False, trt_version="8.5.2.2")
    assert o.builder_flags == ("FP16",) and o.network_flags == ("EXPLICIT_BATCH",)
    assert o.profile == {"input": ((1, 3, 112, 112), (8, 3, 112, 112), (64, 3, 112, 112))}
    assert o.workspace_bytes == 1024 << 20 and not o.uses_calibrator
    d = o.to_dict()
    assert d["profile"]["input"][2] == [64, 3, 112, 112] and d["builder_flags"] == ["FP16"]


def test_build_options_fp32_on_jetpack6_custom_profile_and_workspace():
    o = plan_build("fp32", "input", ["batch", 112, 112, 3], has_qdq=False, trt_version="10.3.0",
                   workspace_mb=256, min_batch=2, opt_batch=16, max_batch=32)
    assert o.builder_flags == () and o.network_flags == ()    # EXPLICIT_BATCH is a deprecated no-op in 10
    assert o.profile["input"] == ((2, 112, 112, 3), (16, 112, 112, 3), (32, 112, 112, 3))
    assert o.workspace_bytes == 256 << 20


def test_build_options_int8_explicit_and_implicit(tmp_path):
    qdq = plan_build("int8", "input", [-1, 3, 112, 112], has_qdq=True, trt_version="10.3.0")
    assert qdq.quantization == "explicit" and qdq.builder_flags == ("INT8",) and not qdq.uses_calibrator
    calib = write_calibration_cache(tmp_path / "calib.cache", {"input": 0.01})
    imp = plan_build("int8", "input", [-1, 3, 112, 112], has_qdq=False, trt_version="8.6.1", calib_cache=calib)
    assert imp.quantization == "implicit" and imp.uses_calibrator and imp.builder_flags == ("INT8",)
    assert any("deprecated" in n for n in imp.notes)
    # TensorRT 11 keeps only explicit quantization (strongly typed networks)
    q11 = plan_build("int8", "input", [-1, 3, 112, 112], has_qdq=True, trt_version="11.0.0")
    assert q11.network_flags == ("STRONGLY_TYPED",) and q11.builder_flags == ()


@pytest.mark.parametrize("args, match", [
    (dict(precision="int8", has_qdq=False), "calibration cache"),
    (dict(precision="int8", has_qdq=False, trt_version="11.0.0", calib_cache="x"), "removed implicit INT8"),
    (dict(precision="fp16", trt_version="11.0.0"), "strongly typed"),
    (dict(precision="fp16", has_qdq=True), "Q/DQ"),
    (dict(precision="bf16"), "precision"),
    (dict(trt_version="8.4.3"), "too old"),
    (dict(min_batch=8, opt_batch=4), "min <= opt <= max"),
    (dict(shape=[-1, 3, -1, 112]), "non-static"),
    (dict(workspace_mb=0), "workspace"),
    (dict(precision="int8", has_qdq=False, calib_cache="/nonexistent/calib.cache"), "does not exist"),
])
def test_build_options_refuse_what_tensorrt_would_reject(args, match):
    kw = dict(precision="fp16", has_qdq=False, trt_version="8.6.1")
    kw.update(args)
    shape = kw.pop("shape", [-1, 3, 112, 112])
    precision = kw.pop("precision")
    with pytest.raises(EdgefaceError, match=match):
        plan_build(precision, "input", shape, **kw)


def test_static_batch_onnx_pins_the_profile():
    o = plan_build("fp16", "input", [4, 3, 112, 112], has_qdq=False, trt_version="8.6.1")
    assert o.profile["input"] == ((4, 3, 112, 112),) * 3 and o.notes


# -- ONNX preflight on real exported models -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, request):
    pytest.importorskip("torch")
    from conftest import random_checkpoint
    from edgeface.export import export_onnx

    d = tmp_path_factory.mktemp("trt_onnx")
    ckpt = random_checkpoint(d / "random.pt")
    return {"fp32": export_onnx(ckpt, d / "model.onnx"),
            "folded": export_onnx(ckpt, d / "model.uint8.onnx", fold_preprocess=True)}


def test_exported_onnx_passes_tensorrt_preflight(exported):
    assert check_onnx_for_tensorrt(exported["fp32"]) == []


def test_folded_preprocessing_onnx_passes_tensorrt_preflight(exported):
    import onnx

    m = onnx.load(str(exported["folded"]))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert check_onnx_for_tensorrt(exported["folded"]) == []


def test_int8_qdq_onnx_passes_tensorrt_preflight(exported, tmp_path):
    """The S8S8 symmetric Q/DQ form TensorRT takes, made by onnxruntime's quantizer on the real model."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((4, 3, 112, 112)).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.batches, None)

    out = tmp_path / "model.int8.qdq.onnx"
    quantize_static(str(exported["fp32"]), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    assert check_onnx_for_tensorrt(out) == []
    # the same model with an asymmetric (uint8, non-zero zero point) activation is refused
    asym = tmp_path / "asym.onnx"
    quantize_static(str(exported["fp32"]), str(asym), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    problems = check_onnx_for_tensorrt(asym)
    assert any("zero point is uint8" in p for p in problems)
    assert any("zero point is int32" in p for p in problems)   # ORT's default int32 bias quantization


def _tiny_model(nodes, opset=17, inputs=None, outputs=None, initializers=(), domain_imports=()):
    from onnx import TensorProto, helper

    inputs = inputs or [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])]
    outputs = outputs or [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in domain_imports]]
    return helper.make_model(graph, opset_imports=imports)


def _save(model, path):
    import onnx

    onnx.save(model, str(path))
    return path


def test_preflight_refuses_opset_18(tmp_path):
    from onnx import helper

    p = _save(_tiny_model([helper.make_node("Relu", ["input"], ["out"])], opset=18), tmp_path / "o18.onnx")
    problems = check_onnx_for_tensorrt(p)
    assert len(problems) == 1 and "opset 18 > 17" in problems[0]
    assert check_onnx_for_tensorrt(p, max_opset=20) == []


def test_preflight_refuses_unsupported_and_custom_ops(tmp_path):
    from onnx import helper

    nodes = [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Hardmax", ["a"], ["b"]),
             helper.make_node("DFT", ["b"], ["c"]), helper.make_node("Gelu", ["c"], ["out"], domain="com.microsoft")]
    p = _save(_tiny_model(nodes, domain_imports=("com.microsoft",)), tmp_path / "ops.onnx")
    text = " | ".join(check_onnx_for_tensorrt(p))
    assert "DFT, Hardmax" in text and "com.microsoft.Gelu" in text


def test_preflight_refuses_reducemean_noop_attribute_at_opset_17(tmp_path):
    from onnx import helper

    node = helper.make_node("ReduceMean", ["input"], ["out"], axes=[2, 3], keepdims=0, noop_with_empty_axes=0)
    problems = check_onnx_for_tensorrt(_save(_tiny_model([node]), tmp_path / "rm.onnx"))
    assert any("noop_with_empty_axes" in p for p in problems)
    ok = helper.make_node("ReduceMean", ["input"], ["out"], axes=[2, 3], keepdims=0)
    assert check_onnx_for_tensorrt(_save(_tiny_model([ok]), tmp_path / "rm_ok.onnx")) == []


def test_preflight_refuses_dynamic_sample_dims_and_bad_types(tmp_path):
    from onnx import TensorProto, helper

    dyn = _tiny_model([helper.make_node("Relu", ["input"], ["out"])],
                      inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", 4])])
    assert any("dim 2 is dynamic" in p for p in check_onnx_for_tensorrt(_save(dyn, tmp_path / "dyn.onnx")))
    i16 = _tiny_model([helper.make_node("Cast", ["input"], ["out"], to=TensorProto.FLOAT)],
                      inputs=[helper.make_tensor_value_info("input", TensorProto.INT16, ["N", 3, 4, 4])])
    assert any("INT16" in p for p in check_onnx_for_tensorrt(_save(i16, tmp_path / "i16.onnx")))
    # uint8 is fine as an input Cast to float, not as an input other layers consume
    u8_bad = _tiny_model([helper.make_node("Relu", ["input"], ["r"]),
                          helper.make_node("Cast", ["r"], ["out"], to=TensorProto.FLOAT)],
                         inputs=[helper.make_tensor_value_info("input", TensorProto.UINT8, ["N", 4, 4, 3])])
    assert any("uint8 input" in p for p in check_onnx_for_tensorrt(_save(u8_bad, tmp_path / "u8.onnx")))


def test_preflight_checks_constant_inputs_and_maxpool_indices(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Shape", ["input"], ["s"]),
             helper.make_node("Slice", ["input", "st", "en", "s"], ["sl"]),
             helper.make_node("MaxPool", ["sl"], ["out", "idx"], kernel_shape=[2, 2])]
    inits = [helper.make_tensor("st", TensorProto.INT64, [1], [0]),
             helper.make_tensor("en", TensorProto.INT64, [1], [2])]
    problems = check_onnx_for_tensorrt(_save(_tiny_model(nodes, initializers=inits), tmp_path / "c.onnx"))
    assert any("Slice" in p and "constant" in p for p in problems)
    assert any("Indices" in p for p in problems)


def test_preflight_on_a_missing_or_garbage_file(tmp_path):
    with pytest.raises(EdgefaceError, match="does not exist"):
        check_onnx_for_tensorrt(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xff" * 50)
    with pytest.raises(EdgefaceError, match="not a readable ONNX"):
        check_onnx_for_tensorrt(junk)


# -- calibration cache text format ----------------------------------------------------------------------------------
def test_calibration_cache_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    scales = {f"/backbone/conv{i}/Conv_output_0": float(np.float32(s)) for i, s in enumerate(rng.uniform(1e-4, 0.2,
                                                                                                         40))}
    scales["input"] = 0.0078125
    scales["tf:style:0"] = 0.5            # names may contain ':' — the last one separates the value
    scales["(Unnamed Layer* 64) [Shuffle]_output"] = 0.0
    path = write_calibration_cache(tmp_path / "calib.cache", scales, header=calibration_header("8.6.1"))
    header, back = read_calibration_cache_with_header(path)
    assert header == "TRT-8601-EntropyCalibration2"
    assert back == scales and list(back) == list(scales)
    for name, s in scales.items():
        assert struct.pack(">f", back[name]) == struct.pack(">f", s)
    lines = path.read_text().splitlines()
    assert lines[0] == header and lines[1 + list(scales).index("input")] == "input: 3c000000"


def test_calibration_cache_reads_tensorrts_own_output():
    """Lines as TensorRT writes them: hex without leading zeros and a bare 0 for a zero scale."""
    text = "TRT-8401-EntropyCalibration2\ninput: 3caa54fc\n371: 3caa54fc\n(Unnamed Layer* 64) [Shuffle]_output: 0\n" \
           "405: 3c209a08\n"
    header, scales = parse_calibration_cache(text)
    assert header == "TRT-8401-EntropyCalibration2" and scales["(Unnamed Layer* 64) [Shuffle]_output"] == 0.0
    assert scales["input"] == pytest.approx(0.020792, rel=1e-4)
    assert scale_to_hex(scales["405"]) == "3c209a08"


def test_header_versions_and_restamp():
    assert calibration_header("8.5.2.2") == "TRT-8502-EntropyCalibration2"
    assert calibration_header("10.3.0") == "TRT-100300-EntropyCalibration2"
    assert calibration_header("10.14.1", "minmax") == "TRT-101401-MinMaxCalibration"
    stamped = restamp("TRT-8601-EntropyCalibration2\ninput: 3c000000\n", "10.3.0")
    assert stamped == "TRT-100300-EntropyCalibration2\ninput: 3c000000\n"


def test_scales_from_amax_and_hex():
    assert scales_from_amax({"x": 127.0, "y": 1.0}) == {"x": 1.0, "y": float(np.float32(1 / 127))}
    assert scale_to_hex(1.0) == "3f800000" and hex_to_scale("3f800000") == 1.0 and hex_to_scale("0") == 0.0


@pytest.mark.parametrize("text, match", [
    ("hello\ninput: 3c000000\n", "not a TensorRT calibration cache"),
    ("TRT-8601-EntropyCalibration2\ninput 3c000000\n", "line 2"),
    ("TRT-8601-EntropyCalibration2\ninput: zz\n", "line 2"),
    ("TRT-8601-EntropyCalibration2\ninput: 7fc00000\n", "finite"),
    ("TRT-8601-EntropyCalibration2\n", "no tensor scales"),
    ("TRT-8601-EntropyCalibration2\na: 3c000000\na: 3c000000\n", "twice"),
])
def test_corrupt_calibration_caches_are_refused(tmp_path, text, match):
    p = tmp_path / "calib.cache"
    p.write_text(text)
    with pytest.raises(EdgefaceError, match=match):
        read_calibration_cache(p)


def test_binary_or_missing_cache_and_bad_scales_leave_nothing(tmp_path):
    p = tmp_path / "calib.cache"
    with pytest.raises(EdgefaceError, match="does not exist"):
        read_calibration_cache(p)
    p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(EdgefaceError, match="not text"):
        read_calibration_cache(p)
    out = tmp_path / "new.cache"
    with pytest.raises(EdgefaceError, match="finite"):
        write_calibration_cache(out, {"a": 0.1, "b": float("nan")})
    assert not out.exists() and not list(tmp_path.glob(".new.cache*"))


# -- the command line without TensorRT ------------------------------------------------------------------------------
@pytest.mark.skipif(_has_tensorrt(), reason="tensorrt is installed: the no-TensorRT message cannot be shown")
def test_build_without_tensorrt_is_one_clear_line(tmp_path, exported):
    r = subprocess.run([sys.executable, "-m", "edgeface", "build", str(exported["fp32"])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert "TensorRT is not installed here; run this on the Jetson: pip install 'edgeface[tensorrt]'" in err[0]


@pytest.mark.skipif(_has_tensorrt(), reason="tensorrt is installed")
def test_tensorrt_backend_without_tensorrt_names_the_extra():
    from edgeface.engines.registry import get_backend_class
    from edgeface.core.errors import MissingBackendError

    with pytest.raises(MissingBackendError, match=r"edgeface\[tensorrt\]"):
        get_backend_class("tensorrt")


def test_engine_spec_comes_from_the_sidecar(tmp_path):
    from edgeface.core.artifact import read_engine_record, read_engine_spec
    from edgeface.core.spec import ModelSpec

    spec = ModelSpec(model_version="1.2.3")
    engine, _ = engine_paths(tmp_path, "k/e")
    write_engine(engine, b"ENGINE", dict(expected_record(SHA, "fp16", ORIN), spec=spec.to_dict()))
    got, rec = read_engine_spec(engine), read_engine_record(engine)
    assert got == spec and rec["precision"] == "fp16"
    write_engine(engine, b"ENGINE", dict(expected_record(SHA, "fp16", ORIN), spec=None))
    with pytest.raises(EdgefaceError, match="no ModelSpec"):
        read_engine_spec(engine)


def test_tensorrt_version_range():
    from edgeface.engines.tensorrt.library import require_version_in_range, version_in_range

    assert version_in_range("10.3.0", "8.5", "10.99") and version_in_range("8.5.2.2", "8.5", "10.99")
    assert not version_in_range("8.4.3", "8.5", "10.99") and not version_in_range("11.0.0", "8.5", "10.99")
    require_version_in_range("10.3.0", None, None)  # a bare artifact carries no range
    with pytest.raises(EdgefaceError, match=r"TensorRT 11.0.0 on this device is outside the range .* \(8.5 to 10.99\)"):
        require_version_in_range("11.0.0", "8.5", "10.99")


def test_jetson_tensorrt_range_is_enforced_on_the_device(tmp_path, exported):
    """Defect: the jetson target's TensorRT range was written into bundles and never checked. On a device with a
    TensorRT outside it, `edgeface build` and the Predictor now refuse the bundle in one line, before CUDA."""
    from edgeface.core.artifact import read_onnx_spec
    from edgeface.deploy.targets import backend_options, load_target
    from edgeface.runtime.bundle import write_manifest

    fake = tmp_path / "site" / "tensorrt"  # the device's TensorRT, as far as the version goes
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "11.0.0"\n')
    bundle = tmp_path / "jetson"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(Path(exported["fp32"]).read_bytes())
    jetson = load_target("jetson")
    write_manifest(bundle, target="jetson", backend="tensorrt", precision="fp32", artifact="model.onnx",
                   spec=read_onnx_spec(bundle / "model.onnx"), target_recipe=jetson,
                   options=backend_options(jetson, "fp32"))
    env = dict(__import__("os").environ, PYTHONPATH=str(fake.parent), EDGEFACE_DEVICE="jetson")
    for args in (["-m", "edgeface", "build", str(bundle)],
                 ["-c", f"from edgeface import Predictor; Predictor({str(bundle)!r})"]):
        r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode != 0
        assert "TensorRT 11.0.0 on this device is outside the range" in r.stderr and "(8.5 to 10.99)" in r.stderr, \
            r.stderr[-1500:]


# -- runtime (TensorRT + GPU only) ------------------------------------------------------------------------------------
@pytest.fixture
def trt():
    if not _has_tensorrt():
        pytest.skip(NO_TRT_REASON)
    import tensorrt

    return tensorrt


def test_runtime_build_run_and_cache(trt, exported, tmp_path, synthetic_crops):
    """On a GPU: build an FP32 engine, run it against onnxruntime, reuse it from the cache."""
    import onnxruntime as ort

    from edgeface.engines.tensorrt.runner import TensorRTBackend
    from edgeface.core.artifact import read_onnx_spec
    from edgeface.core.preprocess import to_input

    spec = read_onnx_spec(exported["fp32"])
    x = to_input(synthetic_crops, spec)
    ref = dict(zip(["blur", "pose"], ort.InferenceSession(str(exported["fp32"]), providers=["CPUExecutionProvider"])
                   .run(["blur", "pose"], {"input": x})))
    with TensorRTBackend(exported["fp32"], spec, precision="fp32", cache_dir=tmp_path / "engines", max_batch=16) as b:
        out = b.run(x)
        info = b.info()
    assert np.abs(out["pose"] - ref["pose"]).max() <= 0.05 and np.abs(out["blur"] - ref["blur"]).max() <= 1e-3
    assert info["version"] == trt.__version__ and info["batch_profile"] == [1, 16]
    engines = list((tmp_path / "engines").rglob("*.engine"))
    assert len(engines) == 1
    mtime = engines[0].stat().st_mtime_ns
    with TensorRTBackend(exported["fp32"], spec, precision="fp32", cache_dir=tmp_path / "engines", max_batch=16) as b:
        b.run(x[:3])
    assert engines[0].stat().st_mtime_ns == mtime   # reused, not rebuilt


def test_runtime_folded_uint8_engine(trt, exported, tmp_path, synthetic_crops):
    from edgeface.core.spec import UINT8_NHWC
    from edgeface.engines.tensorrt.runner import TensorRTBackend
    from edgeface.core.artifact import read_onnx_spec

    spec = read_onnx_spec(exported["folded"])
    with TensorRTBackend(exported["folded"], spec, precision="fp16", cache_dir=tmp_path / "engines") as b:
        out = b.run(synthetic_crops)
        assert b.input_kind == UINT8_NHWC
    assert out["pose"].shape == (len(synthetic_crops), 3) and np.isfinite(out["pose"]).all()
