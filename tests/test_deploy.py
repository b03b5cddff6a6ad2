"""edgeface deploy: bundles for x86 / rpi / jetson, their manifest checks, and every refusal path.

Real components throughout: the exporter, onnxruntime, ncnn (x86 wheel), the quantizer, Predictor(bundle).
The jetson bundle is checked up to the engine build (TensorRT cannot be installed here).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeface.runtime.bundle import (ANY_DEVICE, BUNDLE_VERSION, MANIFEST_NAME, check_target, open_bundle,
                                     read_manifest,
                             sha256_file, write_manifest)
from edgeface.core.errors import EdgefaceError

REPO = Path(__file__).resolve().parents[1]


def _deploy(target, checkpoint, out, **kw):
    from edgeface.deploy import deploy

    return deploy(target, str(checkpoint), out=out, **kw)


def _cli(*args, timeout=300):
    env = dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "edgeface", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def _error_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]


class _LazyBundles(dict):
    """target -> DeployResult of an FP32 bundle, deployed on first use (so `-k` runs deploy only what they need)."""

    def __init__(self, root: Path, checkpoint: Path):
        super().__init__()
        self.root, self.checkpoint = root, checkpoint

    def __missing__(self, target):
        from edgeface.deploy.targets import load_target

        # Each on the engine its target names: x86 would otherwise measure onnxruntime against OpenVINO on this
        # (busy) machine and keep the faster; tests/test_openvino.py checks that choice.
        self[target] = _deploy(target, self.checkpoint, self.root / target, precision="fp32",
                               backend=load_target(target)["backend"])
        return self[target]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, checkpoint):
    """x86, rpi and jetson FP32 bundles (verified on held-out faces when present), each deployed once."""
    return _LazyBundles(tmp_path_factory.mktemp("bundles"), checkpoint)


@pytest.fixture(scope="module")
def reference(checkpoint):
    from edgeface.runtime.predictor import open_model

    pred, _ = open_model(str(checkpoint))
    yield pred.blur_and_pose
    pred.close()


def _crops():
    from edgeface.core.spec import ModelSpec
    from edgeface.deploy.verify import synthetic_faces

    return synthetic_faces(ModelSpec(), 12)


# -- what a bundle holds -------------------------------------------------------------------------------------
@pytest.mark.parametrize("target,backend,artifact", [("x86", "onnxruntime", "model.onnx"),
                                                     ("rpi", "ncnn", "model.ncnn.param"),
                                                     ("jetson", "tensorrt", "model.onnx")])
def test_manifest_lists_every_file_with_its_hash(bundles, checkpoint, target, backend, artifact):
    res = bundles[target]
    m = read_manifest(res.bundle)
    assert (m["target"], m["backend"], m["precision"], m["artifact"]) == (target, backend, "fp32", artifact)
    on_disk = sorted(p.name for p in res.bundle.iterdir() if p.name != MANIFEST_NAME)
    assert sorted(m["files"]) == on_disk
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(res.bundle / name)
        assert entry["bytes"] == (res.bundle / name).stat().st_size
    assert m["bundle_version"] == BUNDLE_VERSION and m["edgeface_version"]
    assert m["tools"]["edgeface"] and m["tools"]["onnx"] and m["tools"]["python"]
    assert m["spec"]["input_size"] == 112 and m["spec"]["outputs"][1]["name"] == "pose"
    assert m["target_recipe"]["name"] == target
    # the weights' terms, where a program reads them: the shipped weights' own, else what the recipe stated
    from edgeface.engines.torch.checkpoint import DEFAULT_WEIGHTS, SHIPPED_WEIGHTS_TERMS, UNSTATED_TERMS

    shipped = Path(checkpoint).resolve() == DEFAULT_WEIGHTS.resolve()
    assert m["weights_terms"] == (SHIPPED_WEIGHTS_TERMS if shipped else UNSTATED_TERMS)
    acc = m["accuracy"]
    assert acc["passed"] is True and acc["n_faces"] >= 12
    # FP32 artifacts reproduce the torch model: far inside the budget, not just inside it.
    assert acc["pose_max_abs"] < 1e-2 and acc["blur_max_abs"] < 1e-3
    assert not any(p.name.startswith(f".{target}.") for p in res.bundle.parent.iterdir()), "temp folder left behind"


def test_targets_are_data(tmp_path):
    from edgeface.deploy.targets import list_targets, load_target

    assert {"x86", "rpi", "jetson"} <= set(list_targets())
    rpi = load_target("rpi")
    assert rpi["backend"] == "ncnn" and rpi["ncnn"]["fp16"] == "off" and rpi["verify"]["int8"]["pose_mean_abs"] > 0
    assert load_target("jetson")["onnx"]["opset"] <= 17
    bad = tmp_path / "toaster.yaml"
    bad.write_text((REPO / "recipes/targets/x86.yaml").read_text().replace("threads: 0", "threadz: 0"))
    with pytest.raises(EdgefaceError, match="unknown field 'threadz'"):
        load_target(bad)
    bad.write_text((REPO / "recipes/targets/x86.yaml").read_text().replace("backend: onnxruntime", "backend: tflite"))
    with pytest.raises(EdgefaceError, match="'backend' is 'tflite'"):
        load_target(bad)


def test_rpi_int8_setting_reaches_ncnn(arts, tmp_path):
    """Defect: targets wrote the option `int8` while ncnn read `int8_arithmetic`, so the rpi target's INT8 setting
    never reached ncnn (whose own default is on: only `int8_arithmetic: false` showed it)."""
    from edgeface import Predictor
    from edgeface.deploy.targets import backend_options, load_target

    off = tmp_path / "rpi-no-int8.yaml"
    off.write_text((REPO / "recipes/targets/rpi.yaml").read_text()
                   .replace("name: rpi", "name: rpi-no-int8").replace("int8_arithmetic: true",
                                                                      "int8_arithmetic: false"))
    for target, want in (("rpi", True), (off, False)):
        options = backend_options(load_target(target), "int8")
        with Predictor(arts["ncnn_fp32"], **options) as p:
            assert p.backend_session._net.opt.use_int8_inference is want, target
            assert p.info()["int8_arithmetic"] is want
    # rpi int8 bundles deployed before the fix name it `int8` in their manifest: it is honoured too
    with Predictor(arts["ncnn_fp32"], int8=False) as p:
        assert p.backend_session._net.opt.use_int8_inference is False


# -- running bundles here ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["x86", "rpi"])
def test_predictor_runs_the_bundle(bundles, reference, target):
    import warnings

    from edgeface import Predictor

    crops = _crops()
    ref_blur, ref_pose = reference(crops)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Predictor(str(bundles[target].bundle)) as p:
            r = p.predict(crops)
            assert p.backend == bundles[target].backend and p.precision == "fp32"
    np.testing.assert_allclose(r.pose, ref_pose, atol=1e-2)
    np.testing.assert_allclose(r.blur, ref_blur, atol=1e-3)
    foreign = [w for w in caught if "deployed for" in str(w.message)]
    assert bool(foreign) == (target == "rpi"), "an rpi bundle on x86 runs, with a warning that speed differs"


def test_jetson_bundle_up_to_the_engine_build(bundles):
    from edgeface.engines.tensorrt.preflight import check_onnx_for_tensorrt

    res = bundles["jetson"]
    assert check_onnx_for_tensorrt(res.bundle / "model.onnx", max_opset=17) == []
    info = open_bundle(res.bundle, device=ANY_DEVICE)
    assert info.backend == "tensorrt" and info.options["workspace_mb"] > 0 and info.input_kind == "float32_nchw"
    assert "TensorRT engine" in res.manifest["accuracy"]["runtime"]


def test_bundle_for_another_target_is_refused(bundles):
    from edgeface import Predictor

    with pytest.raises(EdgefaceError, match=r"deployed for target 'jetson' \(tensorrt\).*deploy --target x86"):
        Predictor(str(bundles["jetson"].bundle))
    # A device-bound target whose backend *is* installed still needs an explicit opt-in.
    m = dict(read_manifest(bundles["x86"].bundle), target="edge-gpu", target_recipe={"portable": False})
    with pytest.raises(EdgefaceError, match="allow_foreign_target=True"):
        check_target(bundles["x86"].bundle, m, device="x86", allow_foreign_target=False)
    assert check_target(bundles["x86"].bundle, m, device="x86", allow_foreign_target=True)


# -- a damaged bundle ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage,match", [
    ("flip", r"bundle file model.ncnn.bin does not match its sha256 .*re-run edgeface deploy"),
    ("truncate", r"bundle file model.ncnn.bin has \d+ bytes, the manifest says \d+"),
    ("delete", r"bundle file model.ncnn.bin is missing"),
    ("extra", r"holds model.onnx, which its manifest does not list"),
    ("manifest", r"manifest.json is not valid JSON"),
    ("future", r"format version 99 .* upgrade edgeface"),
    ("escape", r"lists '\.\./x', which is outside the bundle"),
])
def test_tampered_bundle_one_clear_line(bundles, tmp_path, damage, match):
    from edgeface import Predictor

    b = tmp_path / "b"
    shutil.copytree(bundles["rpi"].bundle, b)
    binf = b / "model.ncnn.bin"
    if damage == "flip":
        data = bytearray(binf.read_bytes())
        data[len(data) // 2] ^= 0x01
        binf.write_bytes(bytes(data))
    elif damage == "truncate":
        binf.write_bytes(binf.read_bytes()[:-4])
    elif damage == "delete":
        binf.unlink()
    elif damage == "extra":
        shutil.copy(bundles["x86"].bundle / "model.onnx", b / "model.onnx")
    elif damage == "manifest":
        (b / MANIFEST_NAME).write_text((b / MANIFEST_NAME).read_text()[:-20])
    else:
        m = json.loads((b / MANIFEST_NAME).read_text())
        if damage == "future":
            m["bundle_version"] = 99
        else:  # resealed: someone who can recompute the bundle digest is still refused by the path check
            from edgeface.runtime.bundle import manifest_digest

            m["files"]["../x"] = {"sha256": "0" * 64}
            m["bundle_sha256"] = manifest_digest(m)
        (b / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(EdgefaceError, match=match) as e:
        Predictor(str(b))
    assert "\n" not in str(e.value)


def test_tampered_bundle_cli_prints_one_error_line(bundles, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(bundles["x86"].bundle, b)
    with open(b / "model.onnx", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02\x03")
    img = tmp_path / "face.png"
    import cv2

    cv2.imwrite(str(img), _crops()[0])
    proc = _cli("predict", str(b), str(img), "--crops")
    lines = _error_lines(proc)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(lines) == 1
    assert "model.onnx does not match its sha256" in lines[0] and "re-run edgeface deploy" in lines[0]


# -- refusals and the atomic write ---------------------------------------------------------------------------------
def test_existing_bundle_needs_force(bundles, checkpoint, tmp_path):
    b = tmp_path / "x86"
    shutil.copytree(bundles["x86"].bundle, b)
    before = read_manifest(b)
    proc = _cli("deploy", "--target", "x86", "--model", str(checkpoint), "--out", str(b), "--no-verify")
    assert proc.returncode == 2 and _error_lines(proc) == [f"error: bundle {b} already exists; pass --force to replace "
                                                           "it"]
    assert read_manifest(b) == before
    junk = tmp_path / "photos"
    junk.mkdir()
    (junk / "cat.jpg").write_bytes(b"x")
    proc = _cli("deploy", "--target", "x86", "--model", str(checkpoint), "--out", str(junk), "--force")
    assert proc.returncode == 2 and "not a bundle" in _error_lines(proc)[0] and (junk / "cat.jpg").exists()


def test_int8_without_calib_is_one_line(checkpoint, tmp_path):
    proc = _cli("deploy", "--target", "rpi", "--precision", "int8", "--model", str(checkpoint), "--out",
                str(tmp_path / "b"))
    lines = _error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: --precision int8 needs calibration images: pass --calib DIR")
    assert not (tmp_path / "b").exists()
    proc = _cli("deploy", "--target", "x86", "--precision", "fp16", "--model", str(checkpoint), "--out",
                str(tmp_path / "b"))
    assert proc.returncode == 2 and "supports --precision fp32|bf16|int8|fastest, not fp16" in proc.stderr


def test_budget_bounds_the_turn_of_the_head_not_one_euler_angle():
    """A profile face whose answer tilts by 5 deg reads ~30 deg apart in pitch and roll: pose_max_rotation passes
    it, a budget on one Euler angle (pose_max_abs, still honoured where a target sets it) does not."""
    from edgeface.deploy.verify import verify_bundle
    from edgeface.faces.data import synthetic_faces
    from edgeface.core.spec import ModelSpec
    from edgeface.faces.pose import rotate_pose

    crops = synthetic_faces(ModelSpec(), n=8)
    ref_pose, tilted = (85.0, 0.0, 0.0), rotate_pose(85.0, 0.0, 0.0, 5.0)

    def runner(pose):
        return lambda batch: (np.zeros(len(batch), np.float32), np.tile(np.float32(pose), (len(batch), 1)))

    budget = {"pose_max_rotation": 6.0, "pose_max_abs": None, "pose_p99_abs": 90.0, "pose_mean_abs": 90.0,
              "blur_max_abs": 1.0, "pose_mae_increase": 90.0}
    truth = np.full((len(crops), 3), np.nan, np.float32)
    res = verify_bundle(runner(tilted), runner(ref_pose), crops, truth, budget)
    assert res["pose_max_abs"] > 25 and abs(res["pose_max_rotation"] - 5.0) < 1e-3
    assert res["passed"], res["exceeded"]
    res = verify_bundle(runner(tilted), runner(ref_pose), crops, truth, {**budget, "pose_max_abs": 6.0})
    assert not res["passed"] and res["exceeded"][0].startswith("pose_max_abs")
    res = verify_bundle(runner(rotate_pose(85.0, 0.0, 0.0, 8.0)), runner(ref_pose), crops, truth, budget)
    assert not res["passed"] and res["exceeded"][0].startswith("pose_max_rotation")


def test_a_budget_must_bound_the_largest_change(tmp_path):
    from edgeface.deploy.targets import load_target

    text = (REPO / "recipes/targets/x86.yaml").read_text().replace("name: x86", "name: loose")
    loose = tmp_path / "loose.yaml"
    loose.write_text(text.replace("fp32: {pose_max_rotation: 0.05, ", "fp32: {"))
    with pytest.raises(EdgefaceError, match=r"verify.fp32' bounds no largest change of pose; add 'pose_max_rotation'"):
        load_target(str(loose))


def test_over_budget_is_refused_and_writes_nothing(checkpoint, tmp_path):
    from edgeface.deploy import deploy

    strict = tmp_path / "strict-x86.yaml"
    text = (REPO / "recipes/targets/x86.yaml").read_text().replace("name: x86", "name: strict-x86")
    strict.write_text(text.replace("fp32: {pose_max_rotation: 0.05", "fp32: {pose_max_rotation: 0.0"))
    out = tmp_path / "b"
    with pytest.raises(EdgefaceError, match=r"exceeds the accuracy budget .*\(pose_max_rotation .* > 0\b.*"
                                            r"float precision limit.*--no-verify") as err:
        deploy(str(strict), str(checkpoint), out=out)
    assert "--calib" not in str(err.value)  # FP32 has nothing to calibrate
    assert not out.exists() and not list(tmp_path.glob(".b.*"))


def test_interrupted_deploy_leaves_the_old_bundle_whole(bundles, checkpoint, tmp_path):
    from edgeface.deploy.staging import clean_stale_partials

    out = tmp_path / "x86"
    shutil.copytree(bundles["x86"].bundle, out)
    before = {p.name: sha256_file(p) for p in out.iterdir()}
    proc = subprocess.Popen([sys.executable, "-m", "edgeface", "deploy", "--target", "x86", "--model", str(checkpoint),
                             "--out", str(out), "--force"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(tmp_path.glob(".x86.partial-*")):
            assert proc.poll() is None, "deploy ended before it could be interrupted"
            time.sleep(0.05)
        partials = list(tmp_path.glob(".x86.partial-*"))
        assert partials, "the deploy never created its temporary folder"
        time.sleep(1.0)  # let it get into the export
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    open_bundle(out)  # still a complete, verified bundle
    leftovers = [p for p in tmp_path.iterdir() if p.name != "x86"]
    assert leftovers and all(p.name.startswith(".x86.partial-") for p in leftovers), "hidden, clearly partial"
    assert clean_stale_partials(out) == leftovers  # the next deploy removes them (their pid is dead)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x86"]


def test_force_replaces_atomically(bundles, tmp_path):
    from edgeface.deploy.staging import move_into_place

    out = tmp_path / "rpi"
    shutil.copytree(bundles["rpi"].bundle, out)
    staged = tmp_path / ".rpi.partial-1-x"
    shutil.copytree(bundles["x86"].bundle, staged)
    with pytest.raises(EdgefaceError, match="already exists"):
        move_into_place(staged, out, force=False)
    move_into_place(staged, out, force=True)
    assert read_manifest(out)["target"] == "x86" and sorted(p.name for p in tmp_path.iterdir()) == ["rpi"]


def test_write_manifest_refuses_links_and_missing_artifact(tmp_path):
    from edgeface.core.spec import ModelSpec

    (tmp_path / "model.onnx").write_bytes(b"abc")
    with pytest.raises(EdgefaceError, match="model.ncnn.param is not in the bundle folder"):
        write_manifest(tmp_path, target="x86", backend="ncnn", precision="fp32", artifact="model.ncnn.param",
                       spec=ModelSpec())
    os.symlink("/etc/passwd", tmp_path / "model.bin")
    with pytest.raises(EdgefaceError, match="symbolic link"):
        write_manifest(tmp_path, target="x86", backend="onnxruntime", precision="fp32", artifact="model.onnx",
                       spec=ModelSpec())


# -- INT8 -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("target", ["x86", "rpi", "jetson"])
def test_int8_bundle_with_calibration(shared_data, checkpoint, tmp_path, target):
    res = _deploy(target, checkpoint, tmp_path / target, precision="int8", calib=shared_data / "celeba")
    m = res.manifest
    assert m["precision"] == "int8" and m["calibration"]["images"] > 0 and m["accuracy"]["passed"]
    if target == "jetson":
        from edgeface.engines.tensorrt.preflight import check_onnx_for_tensorrt

        assert m["calib_cache"] == "calib.cache" and (res.bundle / "calib.cache").is_file()
        assert check_onnx_for_tensorrt(res.bundle / "model.onnx") == []
        info = open_bundle(res.bundle, device=ANY_DEVICE)
        assert info.options["calib_cache"] == str(res.bundle / "calib.cache")
    else:
        from edgeface import Predictor

        with Predictor(str(res.bundle)) as p:
            assert p.predict(_crops()).pose.shape == (12, 3)



# -- --host: a real OpenSSH server on 127.0.0.1 plays the device (the bench tests' loopback sshd) ---------------
from test_ssh import sshd  # noqa: E402,F401 - reuse the fixture: host key, client key, known_hosts


@pytest.mark.ssh
@pytest.mark.slow
def test_deploy_to_host_over_ssh(bundles, sshd, tmp_path):  # noqa: F811
    from functools import partial

    from edgeface.bench.remote import bench_bundle_on_device
    from edgeface.deploy.remote import deploy_remote
    from edgeface.deploy.targets import load_target

    name = f"x86-remote-{os.getpid()}"
    bundle = tmp_path / name
    shutil.copytree(bundles["x86"].bundle, bundle)
    landed = Path.home() / "edgeface-bundles" / name  # this machine is the device
    d = sshd["dir"]
    try:
        rep = deploy_remote(bundle, sshd["host"], load_target("x86"), remote_python=sys.executable,
                            port=sshd["port"], identity=d / "client_key", known_hosts=d / "known_hosts",
                            bench=partial(bench_bundle_on_device, duration=0.2, rounds=2, warmup=2))
        assert rep["check"] == {"target": "x86", "backend": "onnxruntime"}
        assert {p.name: sha256_file(p) for p in landed.iterdir()} == {p.name: sha256_file(p) for p in bundle.iterdir()}
        row = rep["bench"][0]
        assert row["backend"] == "onnxruntime" and row["latency_ms"]["p50"] > 0
        assert row["device"]["ssh_port"] == sshd["port"]
        assert not list(landed.parent.glob(f"{name}.*")), "no .partial/.old left on the device"
    finally:
        shutil.rmtree(landed, ignore_errors=True)


@pytest.mark.ssh
@pytest.mark.slow
def test_deploy_cli_with_host_benches_on_the_device(sshd, tmp_path):  # noqa: F811
    """`edgeface deploy --host`: the CLI hands deploy the device bench (deploy imports nothing from bench), and
    the device's latency is printed."""
    out = tmp_path / f"x86-cli-{os.getpid()}"
    landed = Path.home() / "edgeface-bundles" / out.name
    d = sshd["dir"]
    try:
        r = subprocess.run([sys.executable, "-m", "edgeface", "deploy", "--target", "x86", "--backend", "onnxruntime",
                            "--out", str(out), "--host", sshd["host"], "--port", str(sshd["port"]),
                            "--identity", str(d / "client_key"), "--known-hosts", str(d / "known_hosts"),
                            "--remote-python", sys.executable, "--json", str(tmp_path / "r.json")],
                           capture_output=True, text=True, timeout=900, env=dict(os.environ, COLUMNS="200"))
        assert r.returncode == 0, r.stderr[-3000:]
        bench = json.loads((tmp_path / "r.json").read_text())["remote"]["bench"]
        assert bench and bench[0]["backend"] == "onnxruntime" and bench[0]["latency_ms"]["p50"] > 0
        assert f"{sshd['host']}: onnxruntime fp32 batch" in r.stdout
    finally:
        shutil.rmtree(landed, ignore_errors=True)
