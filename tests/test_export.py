"""ONNX and ncnn export: structure, ModelSpec round trip, atomic writes, formats from the engine registry, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.core.artifact import (INPUT_KIND_KEY, ncnn_paths, read_ncnn_info, read_ncnn_spec, read_onnx_input_kind,
                                    read_onnx_spec)
from edgeface.engines import registry
from edgeface.export import export, export_onnx
from edgeface.export.ncnn import rename_ncnn_blobs
from edgeface.core.spec import SPEC_KEY
from export_cache import exported, parity_checkpoint

# Operators TensorRT 8.6's ONNX parser supports that this network may use (a short, explicit list: a new op
# appearing in the export should be a decision, not an accident).


@pytest.fixture(scope="module")
def arts(checkpoint):
    pytest.importorskip("torch")
    return exported(parity_checkpoint(str(checkpoint)))


def test_onnx_structure_and_spec(arts, checkpoint):
    from edgeface.engines.torch.checkpoint import read_checkpoint

    checkpoint = parity_checkpoint(str(checkpoint))
    m = onnx.load(str(arts["onnx"]))
    onnx.checker.check_model(m, full_check=True)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 17
    (inp,) = m.graph.input
    assert inp.name == "input"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 112, 112]
    assert [o.name for o in m.graph.output] == ["blur", "pose"]
    for o in m.graph.output:
        assert o.type.tensor_type.shape.dim[0].dim_param == "batch"
    # Every operator TensorRT 8.5+ parses (the rotation head's decode adds Asin, Atan, Slice, Sqrt, Div, Sub, Neg),
    # and the whole preflight a Jetson bundle passes.
    from edgeface.engines.tensorrt.preflight import TRT85_SUPPORTED_OPS, check_onnx_for_tensorrt

    ops = {n.op_type for n in m.graph.node}
    assert ops <= TRT85_SUPPORTED_OPS, f"ops TensorRT does not parse: {ops - TRT85_SUPPORTED_OPS}"
    assert check_onnx_for_tensorrt(arts["onnx"]) == []
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)  # folded by export + onnxslim
    spec = read_onnx_spec(arts["onnx"])
    assert spec.to_dict() == read_checkpoint(checkpoint)["spec"]
    assert read_onnx_input_kind(arts["onnx"]) == "float32_nchw"


def test_onnx_dynamic_batch_runs(arts):
    import onnxruntime as ort

    s = ort.InferenceSession(str(arts["onnx"]), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        blur, pose = s.run(None, {"input": np.zeros((n, 3, 112, 112), np.float32)})
        assert blur.shape == (n, 1) and pose.shape == (n, 3)


def test_folded_preprocess_graph(arts):
    m = onnx.load(str(arts["onnx_folded"]))
    (inp,) = m.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [112, 112, 3]
    assert read_onnx_input_kind(arts["onnx_folded"]) == "uint8_nhwc_bgr"
    from edgeface.engines.tensorrt.preflight import TRT85_SUPPORTED_OPS, check_onnx_for_tensorrt

    assert {n.op_type for n in m.graph.node} <= TRT85_SUPPORTED_OPS
    assert check_onnx_for_tensorrt(arts["onnx_folded"]) == []
    # TensorRT takes a uint8 input only when it is cast to float straight away
    (consumer,) = [n for n in m.graph.node if inp.name in n.input]
    assert consumer.op_type == "Cast"


def test_prepend_preprocess_both_orders_match_numpy(arts, synthetic_crops):
    import onnxruntime as ort

    from edgeface.core.fold import prepend_preprocess
    from edgeface.core.preprocess import to_input

    spec = read_onnx_spec(arts["onnx"])
    ref = ort.InferenceSession(str(arts["onnx"]), providers=["CPUExecutionProvider"])
    want = ref.run(None, {"input": to_input(synthetic_crops, spec)})
    for cast_first in (True, False):
        proto = prepend_preprocess(onnx.load(str(arts["onnx"])), spec, cast_first=cast_first)
        onnx.checker.check_model(proto, full_check=True)
        s = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = s.run(None, {"input": synthetic_crops})
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-5)
    with pytest.raises(EdgefaceError, match="float32 NCHW input"):
        prepend_preprocess(onnx.load(str(arts["onnx_folded"])), spec)


def test_onnx_without_spec_and_corrupt_files(tmp_path, arts):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(g), str(foreign))
    with pytest.raises(EdgefaceError, match="no edgeface ModelSpec"):
        read_onnx_spec(foreign)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(arts["onnx"].read_bytes()[:5000])
    with pytest.raises(EdgefaceError, match="truncated|not an ONNX|not a readable"):
        read_onnx_spec(truncated)
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model")
    with pytest.raises(EdgefaceError):
        read_onnx_spec(text)
    with pytest.raises(EdgefaceError, match="does not exist"):
        read_onnx_spec(tmp_path / "missing.onnx")
    # A spec entry that is not JSON is refused too.
    m = onnx.load(str(arts["onnx"]))
    for p in m.metadata_props:
        if p.key == SPEC_KEY:
            p.value = "{not json"
    bad = tmp_path / "badspec.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(EdgefaceError, match="not valid JSON"):
        read_onnx_spec(bad)


def test_failed_export_leaves_no_file(tmp_path, checkpoint, monkeypatch):
    out = tmp_path / "m.onnx"

    def broken(*a, **k):
        raise onnx.checker.ValidationError("injected failure")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    with pytest.raises(EdgefaceError, match="onnx.checker"):
        export_onnx(checkpoint, out)
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_non_checkpoint(tmp_path):
    with pytest.raises(EdgefaceError, match="not a PyTorch checkpoint"):
        export_onnx(tmp_path / "x.onnx", tmp_path / "y.onnx")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(EdgefaceError):
        export_onnx(bad, tmp_path / "y.onnx")
    assert not (tmp_path / "y.onnx").exists()


def test_ncnn_files_and_blob_names(arts):
    for key, prec in (("ncnn_fp32", "fp32"), ("ncnn_fp16", "fp16")):
        param, binf, spec_file = ncnn_paths(arts[key])
        # Only the artifact trio: pnnx's TorchScript, .pnnx.* and generated Python stay out.
        assert sorted(p.name for p in param.parent.iterdir()) == ["model.ncnn.bin", "model.ncnn.param",
                                                                  "model.spec.json"]
        text = param.read_text()
        lines = [line.split() for line in text.splitlines()[2:]]
        blobs = {b for parts in lines for b in parts[4:4 + int(parts[2]) + int(parts[3])]}
        assert {"input", "blur", "pose"} <= blobs and not {"in0", "out0", "out1"} & blobs
        spec, info = read_ncnn_spec(param), read_ncnn_info(param)
        assert info["precision"] == prec and info["blobs"] == {"input": "input", "blur": "blur", "pose": "pose"}
        assert spec.input_size == 112
    # fp16 weight storage halves the weights file (give or take headers).
    r = arts["ncnn_fp16"].with_suffix(".bin").stat().st_size / arts["ncnn_fp32"].with_suffix(".bin").stat().st_size
    assert 0.45 < r < 0.6


def test_rename_ncnn_blobs_touches_names_only():
    text = "7767517\n2 2\nInput in0 0 1 in0\nBinaryOp mul 1 1 in0 out0 0=2 1=1 2=90.0\n"
    out = rename_ncnn_blobs(text, {"in0": "input", "out0": "pose"})
    assert out.splitlines()[2:] == ["Input input 0 1 input", "BinaryOp mul 1 1 input pose 0=2 1=1 2=90.0"]
    with pytest.raises(EdgefaceError, match="header"):
        rename_ncnn_blobs("garbage\n", {})


def test_ncnn_spec_missing(tmp_path, arts):
    param = tmp_path / "model.ncnn.param"
    param.write_text(arts["ncnn_fp32"].read_text())
    with pytest.raises(EdgefaceError, match="model.spec.json"):
        read_ncnn_spec(param)


def test_formats_come_from_the_registry():
    from edgeface.export import EXPORTERS, formats

    for engine in registry.ENGINES:
        assert registry.engine_of_artifact(f"x/{engine.artifact}") is engine
        assert registry.by_format(engine.format) is engine
    assert set(formats()) == set(EXPORTERS) and all(callable(f) for f in EXPORTERS.values())
    assert registry.engine_of_artifact("a/b.ncnn.param").format == "ncnn"
    with pytest.raises(EdgefaceError, match="unknown artifact type"):
        registry.engine_of_artifact("model.tflite")
    with pytest.raises(EdgefaceError, match="unknown format"):
        registry.by_format("coreml")


def test_formats_export_validation(tmp_path, checkpoint):
    with pytest.raises(EdgefaceError, match="precision"):
        export("onnx", checkpoint, tmp_path, precision="int8")
    with pytest.raises(EdgefaceError, match="fold-preprocess"):
        export("ncnn", checkpoint, tmp_path, fold_preprocess=True)


def test_tensorrt_export_needs_tensorrt(tmp_path, checkpoint):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here; its build is tested by the TensorRT tests")
    with pytest.raises(EdgefaceError, match="TensorRT|tensorrt"):
        export("tensorrt", checkpoint, tmp_path)
    assert not (tmp_path / "model.engine").exists()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeface", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_cli_export_onnx_and_errors(tmp_path, checkpoint):
    r = _cli("export", checkpoint, "--format", "onnx", "--fold-preprocess", "--out", tmp_path / "o",
             "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["format"] == "onnx" and report["fold_preprocess"] is True
    assert onnx.load(report["artifact"]).metadata_props and read_onnx_input_kind(report["artifact"]) == "uint8_nhwc_bgr"
    assert INPUT_KIND_KEY in {p.key for p in onnx.load(report["artifact"]).metadata_props}
    for bad in (("--format", "ncnn", "--precision", "int8"), ("--format", "tflite")):
        r = _cli("export", checkpoint, *bad, "--out", tmp_path / "bad")
        assert r.returncode != 0
        assert "Traceback" not in r.stderr and "error:" in r.stderr
        assert len([line for line in r.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
