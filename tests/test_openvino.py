"""The OpenVINO engine, with the real OpenVINO (no mocks): parity with the torch reference (ONNX, folded
ONNX, IR, async requests), the INT8 Q/DQ ONNX's accuracy cost on the val splits, backend="auto" on x86,
deploy's measured choice recorded in the manifest, and a missing OpenVINO named in one line.

FP32 parity vs the torch reference on the ONNX runs in tests/test_backends.py (its CASES); the
throughput acceptance is scripts/bench_openvino.py's (timing needs a quiet machine)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.core.spec import FLOAT_NCHW, UINT8_NHWC
from edgeface.engines import registry
from edgeface.runtime.predictor import Predictor
from export_cache import reference

pytest.importorskip("openvino", reason="pip install 'edgeface[openvino]'")

REPO = Path(__file__).resolve().parents[1]
POSE_BOUND, BLUR_BOUND = 0.05, 1e-3          # FP32 through OpenVINO vs torch (the acceptance)
INT8_MAE_COST = 0.3                          # INT8 through OpenVINO: rise of pose mean MAE on the val splits


@pytest.fixture(scope="module")
def ir(ckpt, tmp_path_factory) -> dict:
    from edgeface.export import export

    root = tmp_path_factory.mktemp("ir")
    return {"plain": export("openvino", ckpt, root / "plain"),
            "folded": export("openvino", ckpt, root / "folded", fold_preprocess=True)}


def _dev(pred: Predictor, ckpt, crops):
    blur_ref, pose_ref = reference(ckpt, crops)
    r = pred.predict(crops)
    return float(np.abs(r.pose - pose_ref).max()), float(np.abs(r.blur - blur_ref).max())


@pytest.mark.parametrize("which", ["plain", "folded"])
def test_ir_export_and_parity(ir, ckpt, synthetic_crops, which):
    xml = ir[which]
    assert xml.name == "model.xml" and xml.with_suffix(".bin").is_file() and (xml.parent / "model.spec.json").is_file()
    assert registry.engine_of_artifact(xml).name == "openvino"
    with Predictor(xml) as p:  # auto: only OpenVINO runs an IR
        assert p.backend == "openvino" and p.input_kind == UINT8_NHWC
        assert p.info()["preprocess_folded_at_load"] is (which == "plain")  # the folded IR has it saved inside
        pose, blur = _dev(p, ckpt, synthetic_crops)
    assert pose <= POSE_BOUND and blur <= BLUR_BOUND, (pose, blur)


# -- precision: what is asked for is what runs, on every x86 CPU --------------------------------------------------
def _needs_bf16():
    from edgeface.engines.openvino import BF16_ISA, bf16_missing

    if bf16_missing() is not None:
        pytest.skip(f"this CPU has none of {', '.join(BF16_ISA)}: no native bf16 to run")


def test_fp32_compiles_pinned_to_f32_and_matches_torch(arts, ckpt, synthetic_crops):
    """OpenVINO's CPU plugin defaults to bf16 wherever the CPU computes it (avx512_bf16, AMX): an FP32 model
    is compiled with INFERENCE_PRECISION_HINT=f32, and the compiled model's own property says so (a check
    that runs on any CPU). Parity with torch on noise-like crops too (bf16 strayed 3.5 deg there)."""
    import openvino as ov

    noise = np.random.default_rng(1).integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    for artifact in (arts["onnx"], arts["onnx_folded"]):
        with Predictor(artifact, backend="openvino") as p:
            compiled = p.backend_session.compiled_model
            assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
            assert p.precision == "fp32" and p.info()["precision"] == "fp32"
            assert p.info()["inference_precision"] == "f32"
            for crops in (synthetic_crops, noise):
                pose, blur = _dev(p, ckpt, crops)
                assert pose <= POSE_BOUND and blur <= BLUR_BOUND, (artifact.name, pose, blur)


def test_the_pin_matters_where_the_cpu_has_bf16():
    """Where the CPU computes bf16, OpenVINO's own default is bf16: without the pin, "FP32" ran in bf16."""
    import openvino as ov

    _needs_bf16()
    assert ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == ov.Type.bf16


def test_bf16_is_asked_for_and_runs_as_bf16(arts, ckpt, face_crops):
    _needs_bf16()
    with Predictor(arts["onnx"], backend="openvino", precision="bf16") as p:
        assert p.precision == "bf16" and p.info()["inference_precision"] == "bf16"
        pose, blur = _dev(p, ckpt, face_crops)
    # bf16 keeps 8 bits of mantissa: visibly off the FP32 parity bound, far inside INT8's deviation
    assert POSE_BOUND < pose < 5.0 and blur < 0.02, (pose, blur)


def test_precisions_an_engine_cannot_run_are_one_error(arts):
    from edgeface.engines.openvino import BF16_ISA, bf16_missing, precision_problem, precisions_for

    # the rule, for CPUs this one is not
    assert "avx512_bf16 or amx_bf16" in bf16_missing({"avx2", "fma", "avx512f", "avx512_vnni"})
    assert bf16_missing({"avx512_bf16"}) is None and bf16_missing({"amx_bf16"}) is None
    assert precisions_for("fp32", {"avx2"}) == ["fp32"] and precisions_for("fp32", {"amx_bf16"}) == ["fp32", "bf16"]
    assert precisions_for("int8", {"amx_bf16"}) == ["int8"]
    assert "fp16" in precision_problem("fp32", "fp16", {"amx_bf16"})
    with pytest.raises(EdgefaceError, match="fp16"):
        Predictor(arts["onnx"], backend="openvino", precision="fp16")
    with pytest.raises(EdgefaceError, match="not int8"):
        Predictor(arts["onnx"], backend="openvino", precision="int8")
    # onnxruntime has no bf16 CPU path: it would run fp32 and call it bf16
    with pytest.raises(EdgefaceError, match="runs model.onnx in fp32, not the bf16"):
        Predictor(arts["onnx"], backend="onnxruntime", precision="bf16")
    if bf16_missing() is not None:  # this CPU: the error names the flags it lacks
        with pytest.raises(EdgefaceError, match=" or ".join(BF16_ISA)):
            Predictor(arts["onnx"], backend="openvino", precision="bf16")
        with pytest.raises(EdgefaceError, match=" or ".join(BF16_ISA)):
            Predictor(arts["onnx"], precision="bf16")
    else:  # backend="auto" with a precision asked for: the engine that runs it
        with Predictor(arts["onnx"], precision="bf16") as p:
            assert (p.backend, p.precision) == ("openvino", "bf16")


@pytest.mark.slow
def test_bench_runs_at_the_precision_asked_for(arts, tmp_path):
    _needs_bf16()
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "edgeface", "bench", str(arts["onnx"]), "--precision", "bf16",
                           "--batch", "8", "--iters", "5", "--rounds", "1", "--reference", str(arts["onnx"]),
                           "--json", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert (row["backend"], row["precision"]) == ("openvino", "bf16")


def test_async_requests_split_a_batch_and_match_one_request(arts, face_crops):
    crops = np.concatenate([face_crops, face_crops[::-1]])  # 64
    with Predictor(arts["onnx"], backend="openvino", threads=2) as one, \
            Predictor(arts["onnx"], backend="openvino", threads=2, hint="throughput", requests=4) as four:
        assert four.info()["requests"] == 4 and one.info()["requests"] == 1
        a, b = one.predict(crops), four.predict(crops)
        c = four.predict(crops[:5])  # too small to split: one request
    np.testing.assert_allclose(a.pose, b.pose, atol=1e-4)
    np.testing.assert_allclose(a.blur, b.blur, atol=1e-6)
    np.testing.assert_allclose(c.pose, a.pose[:5], atol=1e-4)


def test_options_checked_and_float_input_kept(arts):
    cls = registry.get_backend_class("openvino")
    with pytest.raises(EdgefaceError, match="no option 'fp16'.*hint"):
        cls(arts["onnx"], None, fp16=True)
    with pytest.raises(EdgefaceError, match="hint="):
        Predictor(arts["onnx"], backend="openvino", hint="fastest")
    with Predictor(arts["onnx"], backend="openvino", fold_preprocess=False) as p:
        assert p.input_kind == FLOAT_NCHW


def test_auto_on_x86_follows_the_batch_rule(arts, monkeypatch):
    """docs/engines.md: a bare FP32 ONNX on x86 runs on onnxruntime below batch 8; from 8 on, on OpenVINO only
    where the CPU has AVX-512 (its FP32 kernels lose to onnxruntime's on AVX2). The CPU is this machine's."""
    monkeypatch.setenv("EDGEFACE_DEVICE", "x86")
    from edgeface.core.device import cpu_isa_flags
    from edgeface.engines.openvino import AUTO_FP32_ISA, AUTO_MIN_BATCH

    large = "openvino" if set(cpu_isa_flags()) & set(AUTO_FP32_ISA) else "onnxruntime"
    for batch, want in ((1, "onnxruntime"), (AUTO_MIN_BATCH - 1, "onnxruntime"), (AUTO_MIN_BATCH, large),
                        (64, large)):
        with Predictor(arts["onnx"], batch=batch) as p:
            assert p.backend == want, batch
    with Predictor(arts["onnx"], batch=64, backend="openvino") as p:  # an explicit backend wins
        assert p.backend == "openvino"
    with pytest.raises(EdgefaceError, match="batch"):
        Predictor(arts["onnx"], batch=0)


def test_auto_rule_keys_on_precision_and_the_cpu():
    """The rule itself, for CPUs this machine is not: INT8 on OpenVINO from batch 8 on any x86 CPU, FP32 only
    with AVX-512; other devices never prefer it."""
    engines = registry.ENGINES
    first = lambda *a, **k: registry.auto_order(engines, *a, **k)[0].name  # noqa: E731
    avx2, avx512 = {"avx2", "fma"}, {"avx2", "fma", "avx512f", "avx512_vnni"}
    assert first("x86", 64, "int8", avx2) == first("x86", 8, "int8", avx2) == "openvino"
    assert first("x86", 7, "int8", avx2) == "onnxruntime"
    assert first("x86", 64, "fp32", avx2) == first("x86", 64, None, avx2) == "onnxruntime"
    assert first("x86", 64, "fp32", avx512) == "openvino" and first("x86", 1, "fp32", avx512) == "onnxruntime"
    assert first("rpi", 64, "int8", avx512) == "ncnn"


# -- INT8: the same calibration, OpenVINO running the Q/DQ ONNX ------------------------------------------------
@pytest.mark.slow
def test_int8_qdq_through_openvino_costs_little_mae(shared_data, tmp_path, monkeypatch):
    from edgeface.quantize import quantize

    rep = quantize(None, shared_data / "celeba", backend=["onnxruntime", "openvino"], num=128,
                   out=tmp_path / "q", eval_data=shared_data)
    acc = rep["accuracy"]
    ov, ort = acc["openvino"], acc["onnxruntime"]
    print(f"\n[int8] pose mean MAE fp32 {acc['fp32']['pose_mean_mae']:.3f}  ort {ort['pose_mean_mae']:.3f} "
          f"({ort['pose_mae_rise']:+.3f})  openvino {ov['pose_mean_mae']:.3f} ({ov['pose_mae_rise']:+.3f})")
    assert ov["pose_mae_rise"] <= INT8_MAE_COST, ov["pose_mae_rise"]
    # the very same Q/DQ file onnxruntime gets: one calibration feeds both
    a, b = (Path(rep["out"]) / rep["artifacts"][e]["artifact"] for e in ("onnxruntime", "openvino"))
    assert a.read_bytes() == b.read_bytes()
    with Predictor(b, backend="openvino") as p:
        assert p.precision == "int8"
        # The preprocessing fold moves the pixels while they are bytes: no float Transpose or Gather before
        # the input's quantization (that order cost the Predictor a quarter of OpenVINO's INT8 throughput)
        runtime = p.backend_session.compiled_model.get_runtime_model()
        moves = [(rt["layerType"].astype(str), rt["runtimePrecision"].astype(str))
                 for rt in (op.get_rt_info() for op in runtime.get_ordered_ops())
                 if rt["layerType"].astype(str) in ("Transpose", "Gather")]
        assert moves and all(prec == "u8" for _, prec in moves), moves
    # backend="auto" reads the precision from the file: the INT8 Q/DQ goes to OpenVINO at large batches
    monkeypatch.setenv("EDGEFACE_DEVICE", "x86")
    if registry.is_installed("onnxruntime"):
        with Predictor(b, batch=64) as p64, Predictor(b, batch=1) as p1:
            assert (p64.backend, p1.backend) == ("openvino", "onnxruntime")


# -- deploy measures and records its choice ------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    from edgeface.deploy import deploy

    root = tmp_path_factory.mktemp("deploy")
    return deploy("x86", out=root / "b64", batch=64, verify=False, measure_seconds=2.0)


def _check_choice(choice: dict, backend: str, batch: int):
    assert choice["batch"] == batch and choice["host"] is None and choice["chosen"] == backend
    ips = {n: r["images_per_s"] for n, r in choice["engines"].items()}
    # OpenVINO's other hint is a candidate of its own where it can differ: all cores (the x86 target's
    # threads), a batch to split over its requests
    variants = {"openvino:throughput"} if batch >= 16 else set()
    assert set(ips) == {"onnxruntime", "openvino"} | variants and all(v > 0 for v in ips.values()), ips
    assert all(len(r["rounds_ips"]) >= 3 for r in choice["engines"].values())
    assert {n: r["options"].get("hint") for n, r in choice["engines"].items() if r["engine"] == "openvino"} == \
        {"openvino": "latency", **{v: "throughput" for v in variants}}
    best = max(ips, key=ips.get)
    # whatever the measurement says: the faster one, unless it wins by no more than the switch margin (the
    # interquartile spread of the paired per-round ratios, at least 3 %), which the choice records
    if best != "onnxruntime":
        switch = choice["switch"]
        assert switch["from"] == "onnxruntime" and switch["to"] == best and switch["margin"] >= 0.03
        assert switch["margin"] >= switch["spread_iqr"] and switch["rounds"] >= 5
        assert (choice["candidate"] == best) == (switch["paired_ratio"] > 1 + switch["margin"]), switch
    else:
        assert choice["candidate"] == best
    assert choice["chosen"] == choice["candidate"].partition(":")[0]
    assert choice["options"] == choice["engines"][choice["candidate"]]["options"]
    assert choice["candidate"] in choice["reason"]
    print(f"\n[deploy batch {batch}] {ips} -> {choice['candidate']}: {choice['reason']}")


@pytest.mark.slow
def test_deploy_measures_both_engines_and_records_the_choice(deployed, monkeypatch):
    from edgeface.deploy.pipeline import choose_engine
    from edgeface.deploy.targets import load_target

    manifest = json.loads((deployed.bundle / "manifest.json").read_text())
    assert manifest["backend"] == deployed.backend
    choice = manifest["engine_choice"]
    _check_choice(choice, manifest["backend"], 64)
    if manifest["backend"] == "openvino":  # the bundle runs with the settings that were measured fastest
        assert manifest["options"]["hint"] == choice["options"]["hint"]
    monkeypatch.setenv("EDGEFACE_DEVICE", "x86")
    with Predictor(deployed.bundle) as p:  # auto follows the bundle's choice
        assert p.backend == manifest["backend"]
    with Predictor(deployed.bundle, backend="onnxruntime") as p:  # an explicit backend still wins
        assert p.backend == "onnxruntime"
    # batch 1 on the same artifact (the step deploy runs)
    target = load_target("x86")
    engine, choice = choose_engine(target, deployed.bundle / "model.onnx", "fp32", backend=None, host=None,
                                   ssh_options={}, seconds=2.0)
    _check_choice(choice, engine, 1)
    # --backend forces, and only an engine the target's bundle runs on
    engine, choice = choose_engine(target, deployed.bundle / "model.onnx", "fp32", backend="openvino", host=None,
                                   ssh_options={}, seconds=2.0)
    assert engine == "openvino" and choice == {"forced": True, "reason": "--backend openvino"}
    with pytest.raises(EdgefaceError, match="--backend ncnn.*onnxruntime or openvino"):
        choose_engine(target, deployed.bundle / "model.onnx", "fp32", backend="ncnn", host=None, ssh_options={},
                      seconds=2.0)


# -- bf16 and --precision fastest through deploy: candidates measured, verified, the failed ones recorded -------
def _target_yaml(tmp_path, name: str, **budgets) -> Path:
    """recipes/targets/x86.yaml as a test target, with some precisions' verify budgets replaced."""
    import yaml

    t = yaml.safe_load((REPO / "recipes/targets/x86.yaml").read_text())
    t["name"] = name
    for precision, budget in budgets.items():
        t["verify"][precision] = budget
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(t))
    return path


TINY = {"pose_max_abs": 1e-9, "pose_p99_abs": 1e-9, "pose_mean_abs": 1e-9, "blur_max_abs": 1e-9,
        "pose_mae_increase": 1e-9}


def _check_candidates_recorded(choice: dict):
    """Every candidate has its triple, its throughput and its verification figures in engine_choice."""
    assert set(choice["candidates"]) == set(choice["engines"]) == set(choice["verification"])
    for name, cand in choice["candidates"].items():
        assert set(cand) >= {"engine", "precision", "hint"}
        measured = choice["engines"][name]
        assert measured["images_per_s"] > 0 and measured["precision"] == cand["precision"]
        v = choice["verification"][name]
        assert v["passed"] == (not v["exceeded"]) and v["pose_max_abs"] is not None


@pytest.mark.slow
def test_deploy_bf16_runs_bf16_within_its_own_budget(tmp_path, shared_data, monkeypatch):
    _needs_bf16()
    from edgeface.deploy import deploy

    res = deploy("x86", precision="bf16", batch=64, out=tmp_path / "b", verify_data=shared_data, measure_seconds=1.0)
    manifest = json.loads((res.bundle / "manifest.json").read_text())
    assert (res.precision, manifest["precision"], manifest["backend"]) == ("bf16", "bf16", "openvino")
    choice = manifest["engine_choice"]
    assert {c["precision"] for c in choice["candidates"].values()} == {"bf16"}
    assert {c["engine"] for c in choice["candidates"].values()} == {"openvino"}  # onnxruntime has no bf16 path
    assert "onnxruntime@bf16" in choice["not_run_here"]
    _check_candidates_recorded(choice)
    acc = manifest["accuracy"]
    assert acc["passed"] and acc["budget"] == load_x86_budget("bf16")
    assert acc["pose_max_abs"] > POSE_BOUND, "bf16 is not FP32: had this passed the FP32 limit, it ran f32"
    monkeypatch.setenv("EDGEFACE_DEVICE", "x86")
    with Predictor(res.bundle) as p:
        assert (p.backend, p.precision, p.info()["inference_precision"]) == ("openvino", "bf16", "bf16")


def load_x86_budget(precision: str) -> dict:
    from edgeface.deploy.targets import load_target

    return load_target("x86")["verify"][precision]


@pytest.mark.slow
def test_fastest_skips_a_candidate_that_fails_verification(tmp_path, shared_data):
    """FP32's budget made impossible: every fp32 candidate is measured, verified, recorded as failed and
    skipped, and the bundle is the fastest bf16 candidate (a CPU without bf16: see the next test)."""
    _needs_bf16()
    from edgeface.deploy import deploy

    target = _target_yaml(tmp_path, "tiny-fp32", fp32=TINY)
    res = deploy(str(target), precision="fastest", batch=64, out=tmp_path / "b", verify_data=shared_data,
                 measure_seconds=1.0)
    manifest = json.loads((res.bundle / "manifest.json").read_text())
    choice = manifest["engine_choice"]
    _check_candidates_recorded(choice)
    precisions = {n: c["precision"] for n, c in choice["candidates"].items()}
    assert set(precisions.values()) == {"fp32", "bf16"} and "int8" in choice["not_run_here"]  # no --calib
    assert all(not v["passed"] for n, v in choice["verification"].items() if precisions[n] == "fp32")
    assert manifest["precision"] == "bf16" and choice["candidate"].endswith("@bf16")
    passing_bf16 = [n for n in choice["ranked"] if choice["verification"][n]["passed"]]
    assert choice["candidate"] == passing_bf16[0] or choice["candidate"] == choice["switch"]["from"]
    assert "failed verification" in choice["reason"] or choice["ranked"][0] == choice["candidate"]


@pytest.mark.slow
def test_every_candidate_failing_names_the_float_limit_not_calibration(tmp_path, shared_data):
    """Runs on any x86 CPU: fp32 over an impossible budget is a float precision matter; the error lists each
    candidate and does not ask for calibration images."""
    target = _target_yaml(tmp_path, "tiny-all", fp32=TINY)
    proc = subprocess.run([sys.executable, "-m", "edgeface", "deploy", "--target", str(target), "--batch", "64",
                           "--out", str(tmp_path / "b"), "--verify-data", str(shared_data)], capture_output=True,
                          text=True, cwd=REPO, env={**__import__("os").environ, "COLUMNS": "400"}, timeout=600)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "exceeds the accuracy budget for every candidate" in lines[0] and "onnxruntime" in lines[0]
    assert "openvino" in lines[0] and "float precision limit" in lines[0] and "--calib" not in lines[0]
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


def test_bf16_without_the_cpu_flag_is_one_error_line(tmp_path):
    from edgeface.engines.openvino import BF16_ISA, bf16_missing

    if bf16_missing() is None:
        from edgeface.core.device import cpu_isa_flags

        has = sorted(set(cpu_isa_flags()) & set(BF16_ISA))
        pytest.skip(f"this CPU has {', '.join(has)}: the error for a CPU without bf16 needs such a CPU")
    proc = subprocess.run([sys.executable, "-m", "edgeface", "deploy", "--target", "x86", "--precision", "bf16",
                           "--out", str(tmp_path / "b")], capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "avx512_bf16 or amx_bf16" in lines[0] and not (tmp_path / "b").exists()


# -- OpenVINO not installed ------------------------------------------------------------------------------------
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "openvino":
                raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
""")


def _without_openvino(tmp_path, code: str, args=()):
    script = tmp_path / "no_openvino.py"
    script.write_text(BLOCKER + textwrap.dedent(code))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EDGEFACE_DEVICE": "x86", "PYTHONDONTWRITEBYTECODE": "1",
           "COLUMNS": "200", "PYTHONPATH": str(REPO)}  # this worktree's edgeface, not the venv's
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def test_missing_openvino_names_the_extra_in_one_line(tmp_path, synthetic_crops):
    import cv2

    crop = tmp_path / "face.png"
    cv2.imwrite(str(crop), synthetic_crops[0])
    cli = """
        import sys
        from edgeface.cli import main
        sys.argv = ["edgeface", *sys.argv[1:]]
        main()
    """
    proc = _without_openvino(tmp_path, cli, ["predict", "default", crop, "--crops", "--backend", "openvino"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "pip install 'edgeface[openvino]'" in lines[0]
    # everything else works: auto picks onnxruntime whatever the batch, and deploy's measurement skips OpenVINO
    proc = _without_openvino(tmp_path, cli, ["predict", "default", crop, "--crops"])
    assert proc.returncode == 0 and '"backend": "onnxruntime"' in proc.stdout, proc.stderr[-2000:]
    proc = _without_openvino(tmp_path, """
        import json
        from edgeface.core.artifact import WEIGHTS_DIR
        from edgeface.deploy.choose import measure_and_choose
        from edgeface.runtime.predictor import Predictor
        assert Predictor(WEIGHTS_DIR / "default.onnx", batch=64).backend == "onnxruntime"
        r = measure_and_choose(WEIGHTS_DIR / "default.onnx", ["onnxruntime", "openvino"], "onnxruntime", batch=64,
                               threads=1, seconds=0.5)
        print(json.dumps({"chosen": r["chosen"], "skipped": r["engines"]["openvino"].get("skipped"),
                          "reason": r["reason"]}))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["chosen"] == "onnxruntime" and "edgeface[openvino]" in r["skipped"], r


# -- with --host, the measurement runs on the device -----------------------------------------------------------
from test_ssh import sshd  # noqa: E402,F401 - reuse the fixture: this machine is the device


@pytest.mark.ssh
@pytest.mark.slow
def test_measurement_runs_on_the_host_over_ssh(sshd, tmp_path):  # noqa: F811
    from edgeface.core.artifact import WEIGHTS_DIR
    from edgeface.deploy.remote import REMOTE_DIR, measure_remote

    folder = tmp_path / ".x86.partial-1"
    folder.mkdir()
    artifact = folder / "model.onnx"
    artifact.write_bytes((WEIGHTS_DIR / "default.onnx").read_bytes())
    # the device's python: this worktree's edgeface (the SSH session starts in the user's home)
    py = tmp_path / "device-python"
    py.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    d = sshd["dir"]
    r = measure_remote([artifact], sshd["host"], engines=["onnxruntime", "openvino"], default="onnxruntime",
                       batch=8, threads=1, options={"openvino": {"hint": "latency"}}, seconds=1.0,
                       remote_python=str(py), port=sshd["port"], identity=d / "client_key",
                       known_hosts=d / "known_hosts")
    assert r["host"] == sshd["host"] and r["batch"] == 8 and r["threads"] == 1
    assert r["chosen"] in ("onnxruntime", "openvino") and r["chosen"] in r["reason"]
    assert all(e["images_per_s"] > 0 for e in r["engines"].values())
    assert not (Path.home() / REMOTE_DIR / ".measure-x86.partial-1").exists(), "the scratch copy is removed"
