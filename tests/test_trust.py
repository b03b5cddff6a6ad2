"""Issue 23, first half: signatures without races, trust that fails closed, foreign ONNX files checked at load.

Through the real engines (onnxruntime, OpenVINO, ncnn) and real files: the races run another process that
swaps a bundle's model or removes and restores its manifest in a loop while this one loads the bundle."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.core.spec import ModelSpec
from conftest import ed25519_keypair, edgeface_cli as _cli, one_line_error as _one_line_error

CROPS = np.random.default_rng(7).integers(0, 255, (3, 112, 112, 3), np.uint8)






def _crop_png(d: Path) -> Path:
    import cv2

    p = d / "crop.png"
    cv2.imwrite(str(p), CROPS[0])
    return p


def _one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


# -- keys, bundles, models --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {name: ed25519_keypair(d, name) for name in ("good", "other", "third")}


def _bundle(src_files: dict, d: Path, backend="onnxruntime", artifact="model.onnx", target="x86", sign=None,
            spec=None) -> Path:
    from edgeface.core.artifact import read_onnx_spec
    from edgeface.runtime import bundle
    from edgeface.runtime.signing import sign_manifest

    d.mkdir(parents=True, exist_ok=True)
    for name, src in src_files.items():
        shutil.copy(src, d / name)
    if spec is None:
        spec = read_onnx_spec(d / artifact) if artifact.endswith(".onnx") else ModelSpec()
    bundle.write_manifest(d, target=target, backend=backend, precision="fp32", artifact=artifact, spec=spec)
    if sign is not None:
        sign_manifest(d, sign)
    return d


def _shifted_onnx(src: Path, dst: Path, degrees: float = 7.0) -> Path:
    """The same model with every angle shifted: valid, in range, signed by nobody, easy to tell apart."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    out = next(o for o in m.graph.output if o.name == "pose")
    for node in m.graph.node:
        node.output[:] = ["pose_raw" if o == "pose" else o for o in node.output]
    m.graph.initializer.append(numpy_helper.from_array(np.float32([degrees]), "tamper_shift"))
    m.graph.node.append(helper.make_node("Add", ["pose_raw", "tamper_shift"], ["pose"]))
    assert out.name == "pose"
    onnx.save(m, str(dst))
    return dst


def _pose(pred) -> np.ndarray:
    return pred.predict(CROPS).pose


# -- 1. the bytes verified are the bytes loaded ----------------------------------------------------------------------
_SWAPPER = r"""
import os, sys, time
good, bad, target, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
tmp = target + ".swap"
end = time.time() + seconds
n = 0
while time.time() < end:
    src = bad if n % 2 else good
    try:
        os.link(src, tmp)
    except FileExistsError:
        os.unlink(tmp); continue
    os.replace(tmp, target)
    n += 1
print(n)
"""

_FLICKER = r"""
import os, sys, time
target, seconds = sys.argv[1], float(sys.argv[2])
aside = target + "-aside"
end = time.time() + seconds
n = 0
while time.time() < end:
    os.rename(target, aside)
    os.rename(aside, target)
    n += 1
print(n)
"""


def _race(script: str, *args, seconds: float = 4.0):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args), str(seconds)], stdout=subprocess.PIPE,
                            text=True)


def test_model_swapped_after_verification_never_runs(arts, tmp_path, keys):
    """680 of 2,637 loads ran the tampered model: the hash was taken on one read and the engine read the file
    again. Another process now swaps model.onnx between the signed file and a tampered one for 4 s while this
    one loads the bundle under trusted keys: every load runs the signed model or is refused."""
    from edgeface.runtime.predictor import Predictor

    key, pub, _, _ = keys["good"]
    d = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "b", sign=key)
    good = tmp_path / "good.onnx"
    shutil.copy(arts["onnx"], good)
    bad = _shifted_onnx(arts["onnx"], tmp_path / "bad.onnx")
    with Predictor(d, threads=1, trusted_keys=[pub]) as p:
        want = _pose(p)
    with Predictor(bad, threads=1) as p:
        assert np.abs(_pose(p) - want).max() > 5  # the tampered model is told apart by its answers
    swapper = _race(_SWAPPER, good, bad, d / "model.onnx")
    ran, refused, tampered, other = 0, 0, 0, []
    try:
        while swapper.poll() is None:
            try:
                with Predictor(d, threads=1, trusted_keys=[pub]) as p:
                    got = _pose(p)
            except EdgefaceError as e:
                refused += 1
                assert "\n" not in str(e)
                continue
            except Exception as e:  # noqa: BLE001 - anything else is a failure, counted and shown
                other.append(repr(e))
                continue
            ran += 1
            tampered += int(np.abs(got - want).max() > 1e-4)
    finally:
        swapper.wait(timeout=30)
    swaps = int(swapper.stdout.read() or 0)
    assert tampered == 0, f"{tampered} of {ran} loads ran the tampered model ({swaps} swaps)"
    assert not other, other[:3]
    assert swaps > 100 and ran + refused > 5, (swaps, ran, refused)


def test_manifest_flicker_is_never_a_plain_folder(arts, tmp_path, keys):
    """88 of 217,044 loads under trusted keys ran a tampered model unverified when manifest.json vanished for a
    moment (the folder was then taken as a plain folder), and 25 raised a raw FileNotFoundError. The bundle here
    holds a tampered model; another process removes and restores its manifest for 4 s: every load is refused
    with one line."""
    from edgeface.runtime.predictor import Predictor

    key, pub, _, _ = keys["good"]
    d = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "b", sign=key)
    _shifted_onnx(arts["onnx"], d / "model.onnx")  # the signed manifest no longer matches it
    flicker = _race(_FLICKER, d / "manifest.json")
    loads, ran, other = 0, 0, []
    try:
        while flicker.poll() is None:
            loads += 1
            try:
                with Predictor(d, threads=1, trusted_keys=[pub]):
                    ran += 1
            except EdgefaceError as e:
                assert "\n" not in str(e)
            except Exception as e:  # noqa: BLE001
                other.append(repr(e))
    finally:
        flicker.wait(timeout=30)
    flips = int(flicker.stdout.read() or 0)
    assert ran == 0, f"{ran} of {loads} loads ran a tampered bundle unverified"
    assert not other, other[:3]
    assert flips > 100 and loads > 20, (flips, loads)


def test_engines_load_the_verified_bytes_not_the_disk(arts, tmp_path, keys):
    """Deterministic form of the swap: the bundle is verified, then its files change on disk before the engine
    loads. onnxruntime, OpenVINO and ncnn all run the verified bytes; a file the manifest does not list is
    refused, not read."""
    from edgeface.engines import registry
    from edgeface.runtime.bundle import ANY_DEVICE, open_bundle, verified_paths

    onnx_b = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "onnx")
    ncnn_src = Path(arts["ncnn_fp32"])
    ncnn_files = {"model.ncnn.param": ncnn_src, "model.ncnn.bin": ncnn_src.with_name("model.ncnn.bin"),
                  "model.spec.json": ncnn_src.with_name("model.spec.json")}
    ncnn_b = _bundle(ncnn_files, tmp_path / "ncnn", backend="ncnn", artifact="model.ncnn.param", target="rpi",
                     spec=ModelSpec.from_dict(json.loads(ncnn_files["model.spec.json"].read_text())["spec"]))
    cases = [("onnxruntime", onnx_b, "model.onnx"), ("openvino", onnx_b, "model.onnx"),
             ("ncnn", ncnn_b, "model.ncnn.bin")]
    for engine, d, victim in cases:
        if not registry.is_installed(engine):
            pytest.skip(f"{engine} is not installed")
        info = open_bundle(d, device=ANY_DEVICE)
        cls = registry.get_backend_class(engine)

        def run(**kw):
            b = cls(info.artifact, info.spec, threads=1, **kw)
            b.load()
            x = CROPS if b.input_kind != "float32_nchw" else _float(CROPS, info.spec)
            out = b.run(x)["pose"]
            b.close()
            return out

        want = run(verified_files=verified_paths(info))
        original = (d / victim).read_bytes()
        if victim.endswith(".onnx"):
            _shifted_onnx(arts["onnx"], d / victim)
        else:  # zero a stretch of ncnn weights
            blob = bytearray(original)
            blob[len(blob) // 3: len(blob) // 3 + 40000] = bytes(40000)
            (d / victim).write_bytes(bytes(blob))
        assert np.abs(run() - want).max() > 1e-3, engine  # read from disk: the changed model
        np.testing.assert_array_equal(run(verified_files=verified_paths(info)), want, err_msg=engine)
        (d / victim).write_bytes(original)
    info = open_bundle(onnx_b, device=ANY_DEVICE)
    files = verified_paths(info)
    files.pop(str(info.artifact))
    with pytest.raises(EdgefaceError, match="not listed in the bundle's manifest") as e:
        registry.get_backend_class("onnxruntime")(info.artifact, info.spec, verified_files=files).load()
    _one_line(e)


def _float(crops, spec):
    from edgeface.core.preprocess import to_input

    return to_input(crops, spec)


def test_manifest_that_vanishes_is_an_error_not_a_plain_folder(arts, tmp_path, keys):
    """The snapshot decides: a manifest listed in it and gone when read is a one-line error (never a plain folder,
    never FileNotFoundError), with trusted keys or without."""
    from edgeface.core.snapshot import FolderSnapshot
    from edgeface.runtime.bundle import open_bundle

    key, pub, _, _ = keys["good"]
    d = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "b", sign=key)
    for trusted in (None, [pub]):
        with FolderSnapshot(d) as snap:
            (d / "manifest.json").rename(tmp_path / "aside.json")
            try:
                with pytest.raises(EdgefaceError, match="disappeared") as e:
                    open_bundle(d, trusted_keys=trusted, snapshot=snap)
            finally:
                (tmp_path / "aside.json").rename(d / "manifest.json")
        _one_line(e)


# -- 2. trust that fails closed -----------------------------------------------------------------------------------
def test_empty_trusted_keys_refuse_everything(arts, tmp_path, keys):
    from edgeface.runtime.bundle import open_bundle
    from edgeface.runtime.predictor import Predictor

    key, pub, _, _ = keys["good"]
    signed = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "signed", sign=key)
    unsigned = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "unsigned")
    for empty in ([], ()):
        for target in (signed, unsigned, arts["onnx"], None):
            with pytest.raises(EdgefaceError, match="trusted_keys is empty") as e:
                Predictor(target, trusted_keys=empty)
            _one_line(e)
        with pytest.raises(EdgefaceError, match="trusted_keys is empty"):
            open_bundle(signed, trusted_keys=empty)
    for bad in ([""], [" "], "", ["/nonexistent/key.pub"]):
        with pytest.raises(EdgefaceError):
            Predictor(signed, trusted_keys=bad)
    with Predictor(signed, threads=1, trusted_keys=[pub]) as p:
        assert p.bundle.signed


def test_key_files_with_several_keys_trust_every_key(arts, tmp_path, keys):
    """A key file with two keys used only the first. Now every key in it is trusted (PEM blocks or OpenSSH
    lines, comments allowed), or the whole file is refused when any part of it is not an Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from edgeface.runtime.predictor import Predictor

    (_, _, gpem, gssh), (ok, _, opem, ossh), (tk, _, _, _) = keys["good"], keys["other"], keys["third"]
    by_second = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "b2", sign=ok)
    by_third = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "b3", sign=tk)
    pem2 = tmp_path / "two.pem"
    pem2.write_bytes(gpem + opem)
    ssh2 = tmp_path / "authorized"
    ssh2.write_bytes(b"# deploy keys\n" + gssh + b" ci@build\n\n" + ossh + b" release\n")
    for keyfile in (pem2, ssh2):
        with Predictor(by_second, threads=1, trusted_keys=[keyfile]) as p:  # the second key counts
            assert p.bundle.signed
        with pytest.raises(EdgefaceError, match="not signed by a trusted key"):
            Predictor(by_third, trusted_keys=[keyfile])
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, content, match in [("junk", gpem + b"not a key\n", "not a PEM or OpenSSH"),
                                 ("rsa", gpem + rsa_pem, "not Ed25519"),
                                 ("empty", b"# nothing here\n", "holds no key"),
                                 ("broken", gpem + opem[:60] + b"\n-----END PUBLIC KEY-----\n", "refused")]:
        f = tmp_path / f"{name}.pub"
        f.write_bytes(content)
        with pytest.raises(EdgefaceError, match=match) as e:
            Predictor(by_second, trusted_keys=[f])
        _one_line(e)


def test_env_trusted_keys_with_several_files_and_keys(arts, tmp_path, keys, monkeypatch):
    from edgeface.runtime.predictor import Predictor

    (_, gpub, _, _), (ok, opub, _, _) = keys["good"], keys["other"]
    d = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "b", sign=ok)
    monkeypatch.setenv("EDGEFACE_TRUSTED_KEYS", f"{gpub}{os.pathsep}{os.pathsep} {opub} ")
    with Predictor(d, threads=1):
        pass
    monkeypatch.setenv("EDGEFACE_TRUSTED_KEYS", " \t ")
    with pytest.raises(EdgefaceError, match="names no key"):
        Predictor(d)
    r = _cli("predict", d, _crop_png(tmp_path), "--crops", env={**os.environ, "EDGEFACE_TRUSTED_KEYS": "\n"})
    _one_line_error(r, "names no key")


def test_signed_bundle_refuses_what_its_signature_does_not_cover(arts, tmp_path, keys):
    """A planted engines/ folder (or any unlisted file) in a signed bundle was not refused: the signature did
    not cover it. Under trusted keys it is refused now; a device that trusts no key still tolerates engines/
    (older `edgeface build` runs wrote it there), while unlisted model files are refused as before."""
    from edgeface.runtime.predictor import Predictor

    key, pub, _, _ = keys["good"]
    for plant, match in [("engines/model.engine", "engines"), ("engines", "engines"), ("notes.txt", "notes.txt"),
                         ("sub/model.onnx.data", "sub")]:
        d = _bundle({"model.onnx": arts["onnx"]}, tmp_path / plant.replace("/", "_"), sign=key)
        target = d / plant
        if plant == "engines":
            target.mkdir()
        else:
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(b"planted")
        with pytest.raises(EdgefaceError, match="does not list") as e:
            Predictor(d, trusted_keys=[pub])
        assert match in str(e.value)
        _one_line(e)
        if plant.startswith("engines"):
            with Predictor(d, threads=1):  # no trusted keys: the device-built cache folder is tolerated
                pass


# -- 3. foreign ONNX files carrying edgeface's metadata --------------------------------------------------------------
def _foreign(path: Path, *, pose_cols=3, blur_cols=1, in_type="float", batch="N", rows=None, declare=True,
             flow=None, spec=None) -> Path:
    """A small valid ONNX with edgeface's metadata that is not an edgeface model in one way."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = spec or ModelSpec()
    s = spec.input_size
    elem = TensorProto.FLOAT if in_type == "float" else TensorProto.UINT8
    x = helper.make_tensor_value_info("input", elem, [batch, 3, s, s])
    nodes, inits = [], []
    src = "input"
    if in_type != "float":
        nodes.append(helper.make_node("Cast", ["input"], ["xf"], to=TensorProto.FLOAT))
        src = "xf"
    nodes += [helper.make_node("GlobalAveragePool", [src], ["gap"]), helper.make_node("Flatten", ["gap"], ["feat"])]
    rng = np.random.default_rng(0)
    for name, cols in (("blur", blur_cols), ("pose", pose_cols)):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (3, cols)).astype(np.float32), f"w_{name}"))
        nodes.append(helper.make_node("MatMul", ["feat", f"w_{name}"], [f"{name}_lin"]))
        last = f"{name}_lin"
        if name == "blur":
            nodes.append(helper.make_node("Sigmoid", [last], ["blur_act"]))
            last = "blur_act"
        if rows:  # one row whatever the batch
            nodes.append(helper.make_node("ReduceMean", [last], [f"{name}_row"], axes=[0], keepdims=1))
            last = f"{name}_row"
        nodes.append(helper.make_node("Identity", [last], [name]))
    if flow == "loop":
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("Add", ["v_in", "one"], ["v_out"])],
            "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                     helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                     helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
            [numpy_helper.from_array(np.float32(1), "one")])
        inits += [numpy_helper.from_array(np.int64(1 << 62), "trip"), numpy_helper.from_array(np.bool_(True), "cond"),
                  numpy_helper.from_array(np.float32(0), "v0"), numpy_helper.from_array(np.float32(0), "zero")]
        nodes.append(helper.make_node("Loop", ["trip", "cond", "v0"], ["v_final"], body=body))
        nodes.append(helper.make_node("Mul", ["v_final", "zero"], ["nothing"]))
        # blur = sigmoid(...) + 0 * (the loop's result): the loop is on the path the run needs
        for n in nodes:
            n.output[:] = ["blur_pre" if o == "blur" else o for o in n.output]
        nodes.append(helper.make_node("Add", ["blur_pre", "nothing"], ["blur"]))
    if flow == "if":  # a harmless If: control flow all the same, refused in a model edgeface did not build
        then = helper.make_graph([helper.make_node("Identity", ["gap"], ["t"])], "then", [],
                                 [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
        inits.append(numpy_helper.from_array(np.bool_(True), "c"))
        nodes.append(helper.make_node("If", ["c"], ["gap2"], then_branch=then, else_branch=then))
    out_batch = 1 if rows else batch
    outs = [helper.make_tensor_value_info("blur", TensorProto.FLOAT, [out_batch, blur_cols] if declare else None),
            helper.make_tensor_value_info("pose", TensorProto.FLOAT, [out_batch, pose_cols] if declare else None)]
    graph = helper.make_graph(nodes, "foreign", [x], outs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeface")
    m.ir_version = 8
    helper.set_model_props(m, {"edgeface.spec": spec.to_json()})
    onnx.save(m, str(path))
    return path


FOREIGN = [
    ("pose2", dict(pose_cols=2), "'pose' of shape"),
    ("pose4", dict(pose_cols=4), "'pose' of shape"),
    ("blur2", dict(blur_cols=2), "'blur' of shape"),
    ("uint8", dict(in_type="uint8"), "takes uint8 input"),
    ("onerow", dict(rows=True), "rows"),
    ("loop", dict(flow="loop"), r"control flow \(Loop\)"),
    ("if", dict(flow="if"), r"control flow \(If\)"),
]


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name,kw,match", FOREIGN, ids=[f[0] for f in FOREIGN])
def test_foreign_onnx_refused_at_load(tmp_path, engine, name, kw, match):
    from edgeface.engines import registry
    from edgeface.runtime.predictor import Predictor

    if not registry.is_installed(engine):
        pytest.skip(f"{engine} is not installed")
    m = _foreign(tmp_path / "m.onnx", **kw)
    t0 = time.perf_counter()
    with pytest.raises(EdgefaceError, match=match) as e:
        Predictor(m, backend=engine, threads=1)
    _one_line(e)
    assert time.perf_counter() - t0 < 30  # a Loop of 2**62 is refused before it runs


def test_foreign_onnx_checked_at_run_time_too(tmp_path):
    """Outputs whose shapes the graph does not declare: the rows are counted on every run (3 crops, 3 rows)."""
    from edgeface.runtime.predictor import Predictor

    with Predictor(_foreign(tmp_path / "p4.onnx", pose_cols=4, declare=False), threads=1) as p:
        with pytest.raises(EdgefaceError, match=r"'pose' of shape \(3, 4\)") as e:
            p.predict(CROPS)
        _one_line(e)
    with Predictor(_foreign(tmp_path / "row.onnx", rows=True, declare=False), threads=1) as p:
        with pytest.raises(EdgefaceError, match=r"shape \(1, 1\) float32 for a batch of 3") as e:
            p.predict(CROPS)
        _one_line(e)
    with Predictor(_foreign(tmp_path / "ok.onnx", declare=False), threads=1) as p:
        assert len(p.predict(CROPS)) == 3


def test_fixed_batch_runs_its_batch_and_refuses_others(tmp_path):
    from edgeface.runtime.predictor import Predictor

    with Predictor(_foreign(tmp_path / "b4.onnx", batch=4), threads=1) as p:
        assert len(p.predict(np.concatenate([CROPS, CROPS[:1]]))) == 4
        with pytest.raises(EdgefaceError, match="fixes its batch at 4 and got 3") as e:
            p.predict(CROPS)
        _one_line(e)


def test_resealed_manifest_with_another_input_size(arts, tmp_path):
    """A manifest resealed with input_size 64 gave onnxruntime's raw InvalidArgument; now one line, at load."""
    from edgeface.runtime.bundle import manifest_digest
    from edgeface.runtime.predictor import Predictor

    d = _bundle({"model.onnx": arts["onnx"]}, tmp_path / "b")
    m = json.loads((d / "manifest.json").read_text())
    m["spec"]["input_size"] = 64
    m["bundle_sha256"] = manifest_digest(m)
    (d / "manifest.json").write_text(json.dumps(m))
    for engine in ("onnxruntime", "openvino"):
        with pytest.raises(EdgefaceError, match="input_size 64") as e:
            Predictor(d, backend=engine)
        _one_line(e)
    _one_line_error(_cli("predict", d, _crop_png(tmp_path), "--crops"), "input_size 64")


@pytest.mark.parametrize("verb", ["predict", "eval", "quantize", "bench"])
def test_foreign_loop_in_every_entry_point(tmp_path, verb, shared_data):
    """A Loop of 2**62 iterations hung all five entry points; each ends in one error line now."""
    m = _foreign(tmp_path / "loop.onnx", flow="loop")
    crop = _crop_png(tmp_path)
    args = {"predict": ["predict", m, crop, "--crops"],
            "eval": ["eval", m, "--data", shared_data / "pointing04"],
            "quantize": ["quantize", m, "--calib", shared_data / "pointing04", "--backend", "onnxruntime",
                         "--out", tmp_path / "q"],
            "bench": ["bench", m, "--iters", "3", "--warmup", "1", "--batch", "1"]}[verb]
    r = _cli(*args, timeout=240)
    _one_line_error(r, "control flow")
    assert not (tmp_path / "q").exists()


def test_edgeface_exports_have_no_control_flow(arts):
    """The rule above costs edgeface's own models nothing: its exports never hold Loop, Scan or If."""
    import onnx

    from edgeface.core.graphcheck import control_flow_ops

    for key in ("onnx", "onnx_folded"):
        assert control_flow_ops(onnx.load(str(arts[key]))) == [], key


# -- 4. the small ones ---------------------------------------------------------------------------------------------
def test_camera_index_out_of_range(tmp_path):
    """--camera 2147483648 gave a TypeError traceback from OpenCV."""
    for index in ("2147483648", "99999999999999999999", "100000"):
        _one_line_error(_cli("predict", "default", "--camera", index), "camera index")
    from edgeface.runtime.stream import open_video

    with pytest.raises(EdgefaceError, match="out of range"):
        open_video(2 ** 31)


def test_recipe_with_unknown_arch(tmp_path):
    """A recipe with arch: resnet50 gave a ValueError traceback."""
    import yaml

    from edgeface.engines.torch.network import build_model

    base = yaml.safe_load(Path("recipes/train/mbv2_025.yaml").read_text())
    base.setdefault("model", {})["arch"] = "resnet50"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(base))
    _one_line_error(_cli("train", "--recipe", recipe, "--out", tmp_path / "out"), "arch")
    assert not (tmp_path / "out").exists()
    with pytest.raises(EdgefaceError, match="arch"):
        build_model(ModelSpec(arch="resnet50"))
    with pytest.raises(EdgefaceError, match="arch"):
        ModelSpec.from_dict({**ModelSpec().to_dict(), "arch": "resnet50"})


def test_empty_cache_variable_never_means_the_current_folder(tmp_path, monkeypatch):
    """EDGEFACE_CACHE='' put the calibration cache into the current folder."""
    from edgeface.quantize.calibrate.stats import cache_path_for

    monkeypatch.chdir(tmp_path)
    for value in ("", "  "):
        monkeypatch.setenv("EDGEFACE_CACHE", value)
        p = cache_path_for({"k": 1})
        assert p.is_absolute() and Path.home() in p.parents, p
    monkeypatch.setenv("EDGEFACE_CACHE", str(tmp_path / "c"))
    assert (tmp_path / "c") in cache_path_for({"k": 1}).parents


def test_close_during_concurrent_predicts_never_reloads(arts):
    """close() while other threads predicted let the backend load again afterwards (run() loaded lazily)."""
    from edgeface.runtime.predictor import Predictor

    p = Predictor(arts["onnx"], threads=1)
    stop = threading.Event()
    errors: list[str] = []

    def work():
        while not stop.is_set():
            try:
                p.predict(CROPS[:1])
            except EdgefaceError as e:
                if "closed" not in str(e):
                    errors.append(str(e))
                return
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
                return

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    p.close()
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[:3]
    assert not p.backend_session.loaded
    with pytest.raises(EdgefaceError, match="closed"):
        p.predict(CROPS[:1])
    with pytest.raises(EdgefaceError, match="closed"):
        p.backend_session.run(np.zeros((1, 112, 112, 3), np.uint8))
    assert not p.backend_session.loaded
