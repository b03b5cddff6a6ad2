"""edgeface bench: statistics checked against an independent timing, memory against /proc, the JSON contract,
the report folder, bad inputs."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeface.bench import stats
from edgeface.core import timing
from edgeface.faces.data import default_verify_data, find_sets
from edgeface.bench.runner import ACCURACY_KEYS, CONTRACT_KEYS, VS_FP32_KEYS, VS_REFERENCE_KEYS

LATENCY_KEYS = ("p50", "p90", "p99", "mean", "min", "max")


@pytest.fixture(scope="module")
def onnx_model(checkpoint, tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from edgeface.export import export_onnx

    return Path(export_onnx(checkpoint, tmp_path_factory.mktemp("bench") / "model.onnx"))


def edgeface(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeface", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_latency_stats_match_an_independent_implementation():
    rng = np.random.default_rng(0)
    ns = (rng.lognormal(0, 0.5, 997) * 1e6).astype(np.int64)  # skewed, like real latencies
    got = stats.latency_stats(ns)
    ms = [v / 1e6 for v in ns.tolist()]
    q = statistics.quantiles(ms, n=100, method="inclusive")  # q[k-1] = k-th percentile, linear interpolation
    assert got["p50"] == pytest.approx(statistics.median(ms), rel=1e-12)
    assert got["p90"] == pytest.approx(q[89], rel=1e-12) and got["p99"] == pytest.approx(q[98], rel=1e-12)
    assert got["mean"] == pytest.approx(statistics.fmean(ms)) and got["min"] == min(ms) and got["max"] == max(ms)
    assert stats.latency_stats(list(range(1_000_000, 101_000_000, 1_000_000)))["p90"] == pytest.approx(90.1)
    assert stats.throughput([2_000_000] * 10, batch=8) == pytest.approx(4000.0)  # 8 images per 2 ms


def test_interleaved_rounds_change_who_goes_first():
    """One scheduler for bench (rotating) and deploy's engine choice (alternating, for a time with a floor)."""
    seen: list[tuple[str, int]] = []

    def turn(s, r):
        seen.append((s, r))
        return f"{s}{r}"

    got = timing.interleaved_rounds("ABC", turn, rounds=3)
    assert "".join(s for s, _ in seen) == "ABCBCACAB"
    assert got == [["A0", "A1", "A2"], ["B0", "B1", "B2"], ["C0", "C1", "C2"]]
    seen.clear()
    timing.interleaved_rounds("ABC", turn, rounds=3, order="reverse")
    assert "".join(s for s, _ in seen) == "ABCCBAABC"
    seen.clear()
    got = timing.interleaved_rounds("AB", turn, seconds=0.0, min_rounds=4, order="reverse")
    assert len(got[0]) == len(got[1]) == 4 and "".join(s for s, _ in seen) == "ABBAABBA"
    with pytest.raises(ValueError):
        timing.interleaved_rounds("AB", turn, rounds=2, seconds=1.0)


def test_timing_agrees_with_independent_perf_counter_on_a_real_artifact(onnx_model, synthetic_crops):
    from edgeface.runtime.predictor import Predictor

    inner: list[int] = []
    with Predictor(onnx_model, backend="onnxruntime", threads=1) as p:
        def call(x):  # the same calls, timed independently from inside
            t0 = time.perf_counter_ns()
            p.predict(x)
            inner.append(time.perf_counter_ns() - t0)

        for _ in range(5):
            p.predict(synthetic_crops[:4])
        outer = stats.time_calls(call, synthetic_crops[:4], iters=200)
    assert len(outer) == len(inner) == 200
    overhead = np.asarray(outer) - np.asarray(inner)
    assert (overhead >= 0).all()  # the bench's interval encloses the call
    assert np.median(overhead) < 50_000  # and adds well under 50 µs to it
    s_outer, s_inner = stats.latency_stats(outer), stats.latency_stats(inner)
    for k in ("p50", "mean", "min"):
        assert s_outer[k] == pytest.approx(s_inner[k], rel=0.05, abs=0.05), k
    assert s_outer["min"] <= s_outer["p50"] <= s_outer["p90"] <= s_outer["p99"] <= s_outer["max"]
    # --duration: calls until that much time was timed, not far beyond it
    with Predictor(onnx_model, backend="onnxruntime", threads=1) as p:
        ns = stats.time_calls(p.predict, synthetic_crops[:1], seconds=0.2)
    assert 0.2 <= sum(ns) / 1e9 < 0.2 + max(ns) / 1e9 + 1e-9


def test_peak_rss_is_what_proc_reports():
    def vm(field):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

    assert stats.peak_rss_mb() == pytest.approx(vm("VmHWM") * 1024 / 1e6, abs=2.0)
    # The peak is a high-water mark: earlier tests in this process may have set it above today's RSS, so the
    # block is sized to go 200 MB past the old peak, and the peak must follow it.
    before = stats.peak_rss_mb()
    block = np.ones(int((before - stats.rss_mb()) * 1e6 + 200e6) // 8)  # touched
    assert stats.peak_rss_mb() - before > 150
    assert stats.rss_mb() == pytest.approx(vm("VmRSS") * 1024 / 1e6, abs=5.0)
    del block


def test_bench_cli_json_contract_and_report(onnx_model, tmp_path):
    # The same model twice under two names: two interleaved subjects, each in its own process.
    twin = tmp_path / "twin" / "model.onnx"
    twin.parent.mkdir()
    twin.write_bytes(onnx_model.read_bytes())
    r = edgeface("bench", onnx_model, twin, "--batch", "1,4", "--iters", "40", "--warmup", "3", "--rounds", "4",
                 "--json", tmp_path / "bench.json", "--report", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert isinstance(rows, list) and len(rows) == 4
    assert {(row["artifact"].split("/")[0], row["batch"]) for row in rows} == \
        {(onnx_model.parent.name, 1), (onnx_model.parent.name, 4), ("twin", 1), ("twin", 4)}
    for row in rows:
        assert set(CONTRACT_KEYS) <= set(row)
        assert set(row["latency_ms"]) == set(LATENCY_KEYS)
        lat = row["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert row["iterations"] == 40 and len(row["latencies_ms"]) == 40
        assert stats.latency_stats(np.asarray(row["latencies_ms"]) * 1e6)["p50"] == pytest.approx(lat["p50"], abs=1e-4)
        assert row["throughput_ips"] == pytest.approx(row["batch"] * 40 / (sum(row["latencies_ms"]) / 1e3), rel=1e-3)
        assert row["backend"] == "onnxruntime" and row["precision"] == "fp32" and row["threads"] == 1
        assert row["load_ms"] > 0 and row["first_inference_ms"] > 0
        # whole-process peak RSS: more than the interpreter before loading, less than a runaway
        assert row["rss_before_load_mb"] < row["peak_rss_mb"] < 2000
        assert row["size_mb"] == pytest.approx(os.path.getsize(onnx_model) / 1e6)
        if default_verify_data() is None:
            assert row["accuracy"] is None  # no --data and no data pack here: not measured, so null
        else:  # no --data: the val splits of the data pack, 64 faces of each set (what deploy verifies on)
            n_sets = len(find_sets(default_verify_data()))
            assert row["accuracy"]["n"] == row["vs_reference"]["n_faces"] == 64 * n_sets
            assert row["faces"].startswith("data val split (") and row["faces"].count(":64") == n_sets
        assert set(VS_REFERENCE_KEYS) <= set(row["vs_reference"]) == set(VS_FP32_KEYS)
        assert row["vs_reference"]["pose_max_abs"] == 0.0  # identical models, identical inputs
        assert row["device"]["cpu_model"] and row["device"]["cores"] >= 1
    report = tmp_path / "report"
    for name in ("latency.png", "throughput.png", "accuracy_latency.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "README.md").read_text()
    assert "| artifact |" in md and "latency.png" in md and "perf_counter_ns" in md
    assert "p50 ms" in r.stdout and "img/s" in r.stdout


def test_bench_accuracy_on_labelled_data(onnx_model, shared_data, tmp_path):
    r = edgeface("bench", onnx_model, "--data", shared_data / "pointing04", "--limit", "24", "--batch", "1",
                 "--iters", "20", "--warmup", "2", "--rounds", "2", "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    row = json.loads((tmp_path / "b.json").read_text())[0]
    assert set(row["accuracy"]) == set(ACCURACY_KEYS) and row["accuracy"]["n"] == 24
    assert row["faces"] == "pointing04 val split (pointing04:24)"
    # the same numbers edgeface.evaluate gives for the same faces and model
    from edgeface.faces.evaluate import comparison_faces, evaluate_crops
    from edgeface.runtime.predictor import open_model

    pred, _ = open_model(str(onnx_model), "onnxruntime")
    with pred:
        crops, poses, _ = comparison_faces(shared_data / "pointing04", pred.spec, per_set=24)
        want = evaluate_crops(pred.blur_and_pose, crops, poses)
    for k in ("yaw_mae", "pitch_mae", "mean_mae", "blur_mae"):
        assert row["accuracy"][k] == pytest.approx(want[k], rel=1e-5), k
    assert "too short" in r.stderr or "timed calls" in r.stderr  # 20 calls: the bench says it is too few


@pytest.mark.parametrize("args, message", [
    (["missing.onnx"], "does not exist"),
    (["{onnx}", "--batch", "1,x"], "--batch takes comma-separated integers"),
    (["{onnx}", "--iters", "10", "--duration", "1"], "not both"),
    (["{onnx}", "--data", "{nolabels}"], "no labels.csv"),
    (["{onnx}", "--host", "root@127.0.0.1", "--identity", "/nonexistent/key"], "--identity"),
])
def test_bench_bad_input_is_one_line(onnx_model, tmp_path, args, message):
    nolabels = tmp_path / "faces"
    nolabels.mkdir()
    import cv2

    cv2.imwrite(str(nolabels / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    r = edgeface("bench", *[a.format(onnx=onnx_model, nolabels=nolabels) for a in args])
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_reference_runs_on_the_benchmarked_backend(monkeypatch, tmp_path, onnx_model, checkpoint):
    """Defect: the reference's worker ignored --backend. It now runs on the benchmarked engine when that engine
    runs the reference's format, and on the reference's own engine otherwise (a checkpoint runs in torch)."""
    from edgeface.bench import runner

    loads = []

    class RecordingWorker:
        def __init__(self, label):
            pass

        def call(self, cmd, **kw):
            if cmd == "load":
                loads.append(kw["backend"])
            if cmd == "outputs":
                np.savez(kw["out"], blur=np.zeros(1), pose=np.zeros((1, 3)))
            return {}

        def close(self):
            pass

    monkeypatch.setattr(runner, "Worker", RecordingWorker)
    for reference, backend in ((onnx_model, "tensorrt"), (onnx_model, "onnxruntime"), (checkpoint, "ncnn"),
                               (onnx_model, "auto")):
        runner.reference_outputs(str(reference), backend, tmp_path / "inputs.npz", tmp_path)
    assert loads == ["tensorrt", "onnxruntime", "auto", "auto"]
