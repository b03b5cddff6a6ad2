"""edgeface quantize: calibrators, the statistics cache, the three INT8 emitters and their errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.quantize.calibrate import stats as stats_mod
from edgeface.quantize.calibrate.calibrators import get_calibrator
from edgeface.quantize.calibrate.stats import cache_keys, load_stats, stats_from_arrays
from edgeface.core.errors import EdgefaceError
from edgeface.core.spec import ModelSpec

from conftest import random_checkpoint

POSE_BUDGET = 0.5   # degrees, mean |INT8 - FP32| pose
BLUR_BUDGET = 0.01


# -- calibrators ------------------------------------------------------------------------------------
def test_entropy_clips_heavy_tail_minmax_does_not():
    rng = np.random.default_rng(0)
    x = rng.laplace(0, 1, 200_000)
    x[:20] = 60.0  # a few outliers
    st = stats_from_arrays({"t": x})
    mm = get_calibrator("minmax").tensor_range(st, "t", True)[1]
    ent = get_calibrator("entropy").tensor_range(st, "t", True)[1]
    pct = get_calibrator("percentile").tensor_range(st, "t", True)[1]
    assert mm == pytest.approx(60.0)
    assert 3.0 < ent < 0.5 * mm, ent
    assert pct < 0.5 * mm
    # MSE weighs the outliers' squared clipping error: it keeps 20 far outliers, but clips a plain
    # Laplace tail (rounding error over 200k values outweighs the few clipped ones).
    plain = stats_from_arrays({"t": rng.laplace(0, 1, 200_000)})
    assert get_calibrator("mse").tensor_range(plain, "t", True)[1] < 0.9 * plain.absmax(0)


def test_calibrators_survive_constant_and_zero_tensors():
    st = stats_from_arrays({"c": np.full(1000, 3.25), "z": np.zeros(50), "n": np.full(10, -2.0)})
    for m in ("minmax", "percentile", "entropy", "mse"):
        c = get_calibrator(m)
        lo, hi = c.tensor_range(st, "c", False)
        assert lo == 0.0 and hi == pytest.approx(3.25, rel=1e-3), m
        assert c.tensor_range(st, "c", True)[1] == pytest.approx(3.25, rel=1e-3)
        assert c.tensor_range(st, "z", True)[1] > 0  # never a zero scale
        assert c.tensor_range(st, "n", False)[0] == pytest.approx(-2.0, rel=1e-3)


def test_unknown_method_is_an_error():
    with pytest.raises(EdgefaceError, match="unknown calibration method"):
        get_calibrator("kl2")


# -- the end-to-end pipeline (one run shared by the tests below) ------------------------------------
def _write_crops(folder: Path, crops: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(crops):
        cv2.imwrite(str(folder / f"face{i:03d}.png"), c)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_crops):
    """quantize() once for all three backends with a spy counting statistics collections."""
    from edgeface.quantize import quantize

    tmp = tmp_path_factory.mktemp("quant")
    ckpt = random_checkpoint(tmp / "random.pt")
    calib = _write_crops(tmp / "calib", synthetic_crops)
    calls = []
    real = stats_mod.collect_statistics

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    stats_mod.collect_statistics = spy
    try:
        rep = quantize(ckpt, calib, backend="all", num=16, out=tmp / "out", cache_dir=tmp / "cache")
        rep2 = quantize(ckpt, calib, backend="onnxruntime", num=16, out=tmp / "out2", cache_dir=tmp / "cache")
    finally:
        stats_mod.collect_statistics = real
    return {"tmp": tmp, "ckpt": ckpt, "calib": calib, "rep": rep, "rep2": rep2, "calls": calls}


def test_one_statistics_pass_feeds_all_backends(run):
    rep, rep2 = run["rep"], run["rep2"]
    assert len(run["calls"]) == 1  # collected once, for three backends and a second run
    assert not rep["calibration"]["stats_reused"] and rep2["calibration"]["stats_reused"]
    assert rep["stats_cache_path"] == rep2["stats_cache_path"]
    assert rep["calibration"]["stats_cache"] == Path(rep["stats_cache_path"]).name  # a name, not this host's path
    out = Path(rep["out"])
    for rel in ("onnxruntime/model.onnx", "tensorrt/model.onnx", "tensorrt/calib.cache",
                "ncnn/model.ncnn.param", "ncnn/model.ncnn.bin", "ncnn/model.spec.json", "quantize.json"):
        assert (out / rel).is_file(), rel
    assert not list(out.parent.glob("*.partial"))
    # the heads stay float, and say so
    assert any("pose_head" in n for n in rep["policy"]["float_nodes"])


def test_statistics_cache_corrupt_or_mismatched(run, tmp_path):
    path = Path(run["rep"]["stats_cache_path"])
    st = load_stats(path)
    keys = {k: st.header[k] for k in cache_keys("x", ModelSpec(), "y")}
    assert load_stats(path, keys).names == st.names
    with pytest.raises(EdgefaceError, match="different model"):
        load_stats(path, dict(keys, model_sha256="0" * 64))
    with pytest.raises(EdgefaceError, match="different calibration set"):
        load_stats(path, dict(keys, calib_fingerprint="f" * 64))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(EdgefaceError, match="corrupt") as e:
        load_stats(bad)
    assert "\n" not in str(e.value)


def test_tensorrt_qdq_symmetric_runs_in_ort_and_cache_round_trips(run):
    import onnx

    from edgeface.quantize.emit.onnx import check_symmetric_qdq
    from edgeface.quantize.guard import artifact_runner, deviation
    from edgeface.engines.tensorrt.calibrator import read_calibration_cache

    out = Path(run["rep"]["out"]) / "tensorrt"
    m = onnx.load(str(out / "model.onnx"))
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 50 and check_symmetric_qdq(out / "model.onnx") == []
    assert m.opset_import[0].version == 17
    scales = read_calibration_cache(out / "calib.cache")
    st = load_stats(run["rep"]["stats_cache_path"])
    assert set(scales) == set(st.names)
    i = st.index("input")
    assert scales["input"] == pytest.approx(st.absmax(i) / 127, rel=1e-6)  # input is minmax-protected? no: any
    crops = np.stack([cv2.imread(str(p)) for p in sorted(run["calib"].glob("*.png"))])
    d = deviation(artifact_runner(out / "model.onnx", "onnxruntime"),
                  artifact_runner(_fp32_onnx(run), "onnxruntime"), crops)
    assert 0 < d["pose_mean_abs"] < POSE_BUDGET and d["blur_max_abs"] < BLUR_BUDGET


def _fp32_onnx(run) -> Path:
    from edgeface.export import export_onnx

    p = run["tmp"] / "fp32" / "model.onnx"
    if not p.is_file():
        export_onnx(run["ckpt"], p)
    return p


def test_ncnn_int8_runs_in_ncnn_and_matches_fp32(run, face_crops):
    from edgeface.quantize.guard import artifact_runner, deviation
    from edgeface.export import export_ncnn

    fp32 = export_ncnn(run["ckpt"], run["tmp"] / "ncnn32" / "model.ncnn.param")
    int8 = Path(run["rep"]["out"]) / "ncnn" / "model.ncnn.param"
    text = int8.read_text()
    assert text.count(" 8=2") + text.count(" 8=1") == run["rep"]["artifacts"]["ncnn"]["quantized_layers"] >= 50
    # int8 weights in the .bin: well under half the FP32 size
    assert int8.with_suffix(".bin").stat().st_size < 0.5 * fp32.with_suffix(".bin").stat().st_size
    d = deviation(artifact_runner(int8, "ncnn"), artifact_runner(fp32, "ncnn"), face_crops)
    assert 0 < d["pose_mean_abs"] < POSE_BUDGET and d["blur_max_abs"] < BLUR_BUDGET, d


def test_ort_u8s8_on_real_crops_within_budget(run, face_crops):
    import onnx

    from edgeface.quantize.guard import artifact_runner, deviation

    path = Path(run["rep"]["out"]) / "onnxruntime" / "model.onnx"
    m = onnx.load(str(path))
    zp_types = {i.data_type for i in m.graph.initializer if i.name.endswith("_zero_point")}
    assert onnx.TensorProto.UINT8 in zp_types  # uint8 activations: the form ORT runs fast on x86
    d = deviation(artifact_runner(path, "onnxruntime"), artifact_runner(_fp32_onnx(run), "onnxruntime"), face_crops)
    assert 0 < d["pose_mean_abs"] < POSE_BUDGET and d["blur_max_abs"] < BLUR_BUDGET, d


def test_u8s8_weights_fit_int16_pairs_without_vnni(run, tmp_path):
    """reduce_range gives 7-bit weights (a pair of uint8 x int8 products fits int16 on AVX2); the default
    follows this CPU, and the artifact quantize wrote says which it is."""
    import onnx
    from onnx import numpy_helper

    from edgeface.core.device import x86_int8_without_vnni
    from edgeface.quantize.calibrate.policy import make_plan
    from edgeface.quantize.emit.onnx import emit_onnxruntime

    def weight_extremes(path):
        m = onnx.load(str(path))
        q = [numpy_helper.to_array(i) for i in m.graph.initializer
             if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
        assert q
        return min(int(a.min()) for a in q), max(int(a.max()) for a in q)

    fp32 = _fp32_onnx(run)
    plan = make_plan(onnx.load(str(fp32)), load_stats(run["rep"]["stats_cache_path"]), "minmax")
    lo, hi = weight_extremes(emit_onnxruntime(fp32, tmp_path / "rr.onnx", plan.ranges_asym, plan.float_nodes,
                                              reduce_range=True))
    assert -64 <= lo and hi <= 64 and hi - lo > 100  # 7 bits (ORT: [-64, 64]; 255 * 64 * 2 < 32767), and used
    lo, hi = weight_extremes(emit_onnxruntime(fp32, tmp_path / "full.onnx", plan.ranges_asym, plan.float_nodes,
                                              reduce_range=False))
    assert min(lo, -hi) < -64  # full 8-bit range
    written = run["rep"]["artifacts"]["onnxruntime"]
    assert written["reduce_range"] == x86_int8_without_vnni()
    assert ("7-bit" in written["form"]) == x86_int8_without_vnni()


def test_ranges_read_back_from_qdq_graph(run):
    from edgeface.quantize.emit.onnx import ranges_from_qdq

    trt = Path(run["rep"]["out"]) / "tensorrt" / "model.onnx"
    float_model, sym, asym = ranges_from_qdq(trt)
    assert not [n for n in float_model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    st = load_stats(run["rep"]["stats_cache_path"])
    name = next(n for n in sym if n in st)
    assert sym[name][1] == pytest.approx(st.absmax(st.index(name)), rel=0.02)


# -- bad input: one line, nothing left behind -------------------------------------------------------
def test_bad_calibration_folders(tmp_path, checkpoint):
    from edgeface.quantize import quantize

    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("not an image")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "face.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    no_size = r"face.jpg \(JPEG\) has a header that gives no width and height"
    for folder, msg in ((empty, "is empty"), (texts, "has no images"), (broken, no_size),
                        (tmp_path / "missing", "does not exist")):
        out = tmp_path / f"out-{folder.name}"
        with pytest.raises(EdgefaceError, match=msg):
            quantize(checkpoint, folder, backend="onnxruntime", out=out, cache_dir=tmp_path / "c")
        assert not out.exists() and not list(tmp_path.glob(".out-*"))


def test_cli_error_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "edgeface", "quantize", "--calib", str(empty), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "empty" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()


def test_max_drop_keeps_the_most_sensitive_layers_in_float(run):
    """--max-drop ranks the layers (as --analyze does) and keeps the fewest most sensitive ones in float: none when
    INT8 already fits, the top 1, 2, 4 ... otherwise; the search's outcome is in the report."""
    from edgeface.quantize import quantize

    tmp = run["tmp"]
    loose = quantize(run["ckpt"], run["calib"], backend="onnxruntime", num=16, out=tmp / "loose", max_drop=90.0,
                     cache_dir=tmp / "cache")
    ranking = loose["sensitivity"]["ranking"]
    assert len(ranking) > 10 and all({"layer", "pose_gain"} <= set(r) for r in ranking)
    assert loose["max_drop"]["onnxruntime"] == {**loose["max_drop"]["onnxruntime"], "float_layers": [], "fits": True}
    tight = quantize(run["ckpt"], run["calib"], backend="onnxruntime", num=16, out=tmp / "tight", max_drop=0.0,
                     cache_dir=tmp / "cache")
    kept = tight["artifacts"]["onnxruntime"]["extra_float_layers"]
    assert kept and kept == tight["max_drop"]["onnxruntime"]["float_layers"]
    assert kept == [r["layer"] for r in tight["sensitivity"]["ranking"][:len(kept)]]  # the most sensitive first
