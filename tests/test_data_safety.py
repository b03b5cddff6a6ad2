"""Issue 23, data loss and crashes: outputs never destroy what edgeface did not write (--force over a user's
folder, outputs that are inputs by another spelling), full disks / read-only mounts / long names end in one
`error:` line with nothing left behind, interrupted video drawing leaves no truncated file, hostile image files
and names never crash the process, and the OpenCV face detector is safe from several threads."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from conftest import edgeface_cli as _cli, one_line_error as _one_line_error

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PT = REPO / "edgeface" / "weights" / "default.pt"






def _ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    return r


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _deploy(out: Path, *extra):
    return _cli("deploy", "--target", "x86", "--backend", "onnxruntime", "--no-verify", "--out", out, *extra)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    b = tmp_path_factory.mktemp("bundle") / "b"
    _ok(_deploy(b))
    return b


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(6):
        img = cv2.GaussianBlur(rng.integers(0, 255, (112, 112, 3), np.uint8), (0, 0), 3)
        cv2.imwrite(str(folder / f"{i}.png"), img)
    return folder


def _face_png(path: Path, value: int = 90) -> Path:
    path.write_bytes(cv2.imencode(".png", np.full((112, 112, 3), value, np.uint8))[1].tobytes())  # any name
    return path


# -- 5. --force trusts sealed content, not a file name ---------------------------------------------------------
def test_deploy_force_never_replaces_a_folder_by_its_file_names(tmp_path, bundle):
    app = tmp_path / "d"
    app.mkdir()
    (app / "manifest.json").write_text('{"name":"app"}')
    (app / "index.html").write_text("x")
    listy = tmp_path / "listy"
    listy.mkdir()
    (listy / "manifest.json").write_text("[]")
    added = tmp_path / "added"  # a real bundle with a user's file dropped in
    shutil.copytree(bundle, added)
    (added / "notes.txt").write_text("mine")
    edited = tmp_path / "edited"  # a real bundle whose model the user replaced
    shutil.copytree(bundle, edited)
    (edited / "model.onnx").write_bytes(b"my own model")
    for folder, why in ((app, "sealed digest"), (listy, "sealed digest"), (added, "notes.txt"),
                        (edited, "model.onnx")):
        before = _tree(folder)
        _one_line_error(_deploy(folder, "--force"), why)
        assert _tree(folder) == before, folder
    # A bundle exactly as deploy wrote it (plus a device-built engine) is edgeface's to replace.
    ours = tmp_path / "ours"
    shutil.copytree(bundle, ours)
    (ours / "engines").mkdir()
    (ours / "engines" / "abc.engine").write_bytes(b"built on the device")
    _ok(_deploy(ours, "--force"))
    assert json.loads((ours / "manifest.json").read_text())["bundle_sha256"]


def test_quantize_force_never_replaces_a_folder_by_its_file_names(tmp_path, calib):
    for name, record, text in (("q1", "quantize.json", '{"method": "minmax"}'), ("q2", "manifest.json", "[]")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / record).write_text(text)
        (folder / "mine.txt").write_text("x")
        before = _tree(folder)
        _one_line_error(_cli("quantize", "--calib", calib, "--backend", "onnxruntime", "--num", "6", "--out",
                             folder, "--force"), "did not write")
        assert _tree(folder) == before
    out = tmp_path / "q"
    quantize = ("quantize", "--calib", calib, "--backend", "onnxruntime", "--num", "6", "--out", out)
    _ok(_cli(*quantize))
    report = json.loads((out / "quantize.json").read_text())
    # the artifact and its "where INT8 disagrees most" picture, both sealed
    assert set(report["files"]) == {"onnxruntime/model.onnx", "onnxruntime/int8_disagreement.png"}
    assert report["sealed_sha256"]
    _ok(_cli(*quantize, "--force"))  # its own sealed output: replaced
    (out / "onnxruntime" / "model.onnx").write_bytes(b"edited")  # no longer what quantize sealed
    _one_line_error(_cli(*quantize, "--force"), "model.onnx")
    assert (out / "onnxruntime" / "model.onnx").read_bytes() == b"edited"


def test_qat_output_folder_must_be_its_own(tmp_path):
    from edgeface.core.io import atomic_write_json, seal_record
    from edgeface.quantize.qat.train import check_qat_out

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "qat.json").write_text("{}")
    (mine / "thesis.tex").write_text("x")
    with pytest.raises(EdgefaceError, match="not provably"):
        check_qat_out(mine)
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "model.pt").write_bytes(b"w")
    atomic_write_json(ours / "qat.json", seal_record({"kind": "qat"}, ours, skip={"qat.json"}))
    check_qat_out(ours)
    with pytest.raises(EdgefaceError, match="holds"):
        check_qat_out(ours, inputs=[ours / "model.pt"])


# -- 6. commands never overwrite their own inputs, whatever the spelling ----------------------------------------
def test_outputs_inside_an_input_are_refused(tmp_path, bundle):
    b = tmp_path / "B"
    shutil.copytree(bundle, b)
    img = _face_png(tmp_path / "face.png")
    before = _tree(b)
    for spelling in (b / "manifest.json", f"{tmp_path}/./B/../B/manifest.json", "B/manifest.json"):
        _one_line_error(_cli("predict", b, img, "--crops", "--json", spelling, cwd=tmp_path), "inside")
    (tmp_path / "link").symlink_to(b)
    _one_line_error(_cli("predict", tmp_path / "link", img, "--crops", "--json", b / "manifest.json"), "inside")
    _one_line_error(_cli("predict", b, img, "--crops", "--json", b / "new.json"), "inside")  # a bundle is sealed
    assert _tree(b) == before

    data = tmp_path / "D"
    data.mkdir()
    labels = "file,x,y,w,h,yaw,pitch,roll\nface.png,0,0,112,112,0,0,0\n"
    (data / "labels.csv").write_text(labels)
    _face_png(data / "face.png")
    _one_line_error(_cli("eval", b, "--data", data, "--json", data / "labels.csv"), "inside")
    _one_line_error(_cli("eval", b, "--data", data, "--json", data / "sub" / ".." / "labels.csv"), "inside")
    assert (data / "labels.csv").read_text() == labels

    shutil.copy(DEFAULT_PT, b / "model.pt")
    before = _tree(b)
    _one_line_error(_deploy(b, "--model", b / "model.pt", "--force"), "model.pt")
    assert _tree(b) == before


def test_export_never_replaces_a_users_companion_file(tmp_path):
    d = tmp_path / "D"
    d.mkdir()
    (d / "model.spec.json").write_text('{"mine": 1}')
    _one_line_error(_cli("export", "--format", "ncnn", "--out", d), "model.spec.json")
    assert (d / "model.spec.json").read_text() == '{"mine": 1}'
    e = tmp_path / "E"
    e.mkdir()
    (e / "model.ncnn.bin").write_bytes(b"my weights")
    _one_line_error(_cli("export", "--format", "ncnn", "--out", e), "model.ncnn.bin")
    assert (e / "model.ncnn.bin").read_bytes() == b"my weights"
    # its own earlier export is replaced
    f = tmp_path / "F"
    _ok(_cli("export", "--format", "ncnn", "--out", f))
    _ok(_cli("export", "--format", "ncnn", "--out", f))
    assert sorted(p.name for p in f.iterdir()) == ["model.ncnn.bin", "model.ncnn.param", "model.spec.json"]


# -- 7. full disks and read-only mounts ---------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
    """A real 20 MB tmpfs (root and mount permission needed): the disk-full and read-only cases for real."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {r.stderr.strip()[:120]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(fs: Path) -> None:
    with open(fs / "fill", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    try:
        with open(fs / "fill2", "wb") as fh:  # the last partial blocks
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass


def _disk_commands(fs: Path, bundle: Path, calib: Path, img: Path, data: Path) -> dict:
    return {
        "deploy": ("deploy", "--target", "x86", "--backend", "onnxruntime", "--no-verify", "--out", fs / "bundle"),
        "export onnx": ("export", "--out", fs / "exp"),
        "export ncnn": ("export", "--format", "ncnn", "--out", fs / "expn"),
        "quantize": ("quantize", "--calib", calib, "--backend", "onnxruntime", "--num", "6", "--out", fs / "q"),
        "predict --json": ("predict", bundle, img, "--crops", "--json", fs / "p.json"),
        "info --json": ("info", "--json", fs / "i.json"),
        "bench --report": ("bench", bundle, "--batch", "1", "--iters", "3", "--warmup", "1", "--report", fs / "rep"),
        "eval --json": ("eval", bundle, "--data", data, "--json", fs / "e.json"),
        "train": ("train", "--recipe", REPO / "recipes" / "train" / "mbv2_025.yaml", "--out", fs / "train",
                  "--epochs", "1", "--epoch-size", "16", "--limit", "16", "--data-root", data.parent),
    }


@pytest.mark.parametrize("mode", ["full", "read-only"])
def test_full_or_read_only_disk_is_one_error_line_and_leaves_nothing(small_fs, mode, bundle, calib, tmp_path,
                                                                     shared_data):
    img = _face_png(tmp_path / "face.png")
    data = shared_data / "pointing04"
    if mode == "full":
        _fill(small_fs)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    before = sorted(p.name for p in small_fs.iterdir())
    failures = []
    for name, args in _disk_commands(small_fs, bundle, calib, img, data).items():
        r = _cli(*args, timeout=600)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        if r.returncode != 2 or "Traceback" in r.stderr or not lines or not lines[-1].startswith("error:"):
            failures.append((name, r.returncode, r.stderr[-600:]))
        elif not any(w in lines[-1] for w in ("no space left", "read-only")):
            failures.append((name, "message", lines[-1]))
        left = sorted(p.name for p in small_fs.iterdir())
        if left != before:
            failures.append((name, "left behind", sorted(set(left) - set(before))))
            for p in small_fs.iterdir():
                if p.name not in before:
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    assert not failures, failures


def test_atomic_writes_map_disk_errors_and_clean_up(small_fs):
    from edgeface.core.io import atomic_path, atomic_write_bytes

    _fill(small_fs)
    with pytest.raises(EdgefaceError, match="no space left") as e:
        atomic_write_bytes(small_fs / "big.bin", b"x" * (1 << 20))
    assert "\n" not in str(e.value)
    import torch

    with pytest.raises(EdgefaceError, match="no space left"):  # torch wraps ENOSPC in a RuntimeError
        with atomic_path(small_fs / "w.pt") as tmp:
            torch.save({"w": torch.zeros(1 << 20)}, tmp)
    assert sorted(p.name for p in small_fs.iterdir()) == ["fill", "fill2"]


# -- 12. long but valid names -------------------------------------------------------------------------------------
def test_long_but_valid_names_work(tmp_path, bundle):
    from edgeface.core.io import atomic_write_text, make_staging_dir

    long_json = tmp_path / ("j" * 240 + ".json")  # 245 bytes: the name limit is 255
    _ok(_cli("info", "--json", long_json))
    assert json.loads(long_json.read_text())
    long_out = tmp_path / ("o" * 240)
    _ok(_deploy(long_out))
    _ok(_deploy(long_out, "--force"))  # staging and aside folders beside it fit too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([long_json.name, long_out.name])
    name = tmp_path / ("n" * 255)
    atomic_write_text(name, "fits")
    assert name.read_text() == "fits" and make_staging_dir(name).is_dir()


def test_huge_cache_path_is_one_error_line(tmp_path, calib):
    env = dict(os.environ, EDGEFACE_CACHE=str(tmp_path / ("c" * 5000)))
    _one_line_error(_cli("quantize", "--calib", calib, "--backend", "onnxruntime", "--num", "6", "--out",
                         tmp_path / "q", env=env), "too long")
    assert not (tmp_path / "q").exists()


# -- 8. temporary folders carry the PID and are cleaned by the next run -----------------------------------------
def test_every_temp_folder_carries_the_pid_and_is_cleaned(tmp_path, monkeypatch):
    import tempfile

    from edgeface.core.io import clean_stale_temp

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for kind in ("onnx", "pnnx", "ov", "qat-onnx", "qat-conv", "quant", "fp32"):
        (tmp_path / f"edgeface-{kind}-{dead}-x1y2").mkdir()
    removed = clean_stale_temp()
    assert len(removed) == 7 and not list(tmp_path.iterdir())
    # The exporters name theirs with the PID (no tempfile.TemporaryDirectory(prefix="edgeface-...") left).
    for src in (REPO / "edgeface").rglob("*.py"):
        text = src.read_text()
        assert 'TemporaryDirectory(prefix="edgeface-' not in text, src


# -- 11. the OpenCV detector from several threads ---------------------------------------------------------------
def _frames(shared_data, n: int = 16) -> list:
    from edgeface.core.preprocess import read_image

    files = sorted((shared_data / "pointing04" / "images").iterdir())[:n]
    # Several sizes, so that concurrent calls also fight over FaceDetectorYN's input size.
    return [cv2.resize(read_image(f), None, fx=s, fy=s) for f, s in zip(files, [1.0, 0.75, 0.5, 1.25] * n)]


@pytest.mark.parametrize("how", ["opencv", "auto-without-onnxruntime"])
def test_opencv_detector_from_eight_threads_equals_serial(shared_data, how, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from edgeface.runtime import detector as detector_mod
    from edgeface.runtime.predictor import Predictor

    if how == "opencv":
        det = detector_mod.FaceDetector(engine="opencv")
    else:  # the path engine="auto" takes on a Pi without onnxruntime
        monkeypatch.setattr(detector_mod, "_onnxruntime_available", lambda: False)
        det = detector_mod.FaceDetector()
    assert det.engine == "opencv"
    frames = _frames(shared_data)
    with Predictor(None, threads=1) as p:
        p.detector = det
        serial = [[f.as_dict() for f in p.predict_frame(fr)] for fr in frames]
        assert sum(map(len, serial)) >= len(frames) // 2  # faces were found: the comparison means something
        jobs = frames * 6
        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(lambda fr: [f.as_dict() for f in p.predict_frame(fr)], jobs))
    assert parallel == serial * 6


# -- 9, 10. hostile image files and names -------------------------------------------------------------------------
def _bombs(folder: Path) -> dict:
    """Headers declaring 16000 x 16000 pixels (256 MP) in every format OpenCV decodes: a few bytes each that
    would decode to gigabytes (the Radiance one did: 3.7 GB)."""
    import struct

    side = 16000
    exr_attr = lambda name, typ, value: name + b"\0" + typ + b"\0" + struct.pack("<i", len(value)) + value  # noqa: E731
    bombs = {
        "hdr.hdr": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (side, side) + b"\x02\x02" * 64,
        "hdr-as.jpg": (b"#?RGBE\nFORMAT=32-bit_rle_rgbe\nEXPOSURE=1.0\n\n+X %d +Y %d\n" % (side, side)
                       + b"\x02\x02" * 64),
        "pfm.pfm": b"PF\n%d %d\n-1.0\n" % (side, side) + b"\0" * 64,
        "pam.pam": b"P7\nWIDTH %d\nHEIGHT %d\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" % (side, side) + b"\0" * 64,
        "ppm-comment.ppm": b"P6\n# a comment\n%d %d\n255\n" % (side, side) + b"\0" * 64,
        "sun.ras": struct.pack(">8I", 0x59A66A95, side, side, 24, 0, 1, 0, 0) + b"\0" * 64,
        "j2k.j2k": b"\xff\x4f\xff\x51" + struct.pack(">HHIIII", 47, 0, side, side, 0, 0) + b"\0" * 64,
        "exr.exr": b"\x76\x2f\x31\x01\x02\0\0\0" + exr_attr(b"dataWindow", b"box2i",
                                                           struct.pack("<4i", 0, 0, side - 1, side - 1)) + b"\0" * 9,
        "tif.tif": b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 2) + struct.pack("<HHII", 256, 4, 1, side)
                   + struct.pack("<HHII", 257, 4, 1, side) + b"\0" * 64,
    }
    for name, data in bombs.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in bombs}


def test_every_decodable_format_is_size_checked_before_decoding(tmp_path):
    from edgeface.core.preprocess import image_format_and_size, read_image

    for name, path in _bombs(tmp_path).items():
        with pytest.raises(EdgefaceError, match="declares 16000 x 16000") as e:
            read_image(path)
        assert "\n" not in str(e.value), name
    (tmp_path / "unknown.jpg").write_bytes(b"\x00\x01 not a format anyone knows" * 10)
    with pytest.raises(EdgefaceError, match="not in a format edgeface reads"):
        read_image(tmp_path / "unknown.jpg")
    # Real files of every format this OpenCV writes: sniffed by content, sized, decoded.
    img = (np.random.default_rng(0).random((61, 97, 3)) * 255).astype(np.uint8)
    written = 0
    for ext in ("png", "jpg", "bmp", "webp", "tif", "ppm", "pam", "pfm", "hdr", "pic", "ras", "sr", "gif", "jp2",
                "avif"):
        path = tmp_path / f"ok.{ext}"
        try:
            ok = cv2.imwrite(str(path), img if ext not in ("pfm", "hdr", "pic") else img.astype(np.float32) / 255)
        except cv2.error:
            ok = False
        if not ok:
            continue  # this OpenCV build has no encoder for it
        written += 1
        assert image_format_and_size(path.read_bytes())[1] == (97, 61), ext
        assert read_image(path).shape == (61, 97, 3), ext
    assert written >= 10


def test_hdr_bomb_is_refused_by_predict_and_as_calibration(tmp_path):
    bombs = _bombs(tmp_path)
    _one_line_error(_cli("predict", "default", bombs["hdr-as.jpg"], "--crops"), "declares")
    calib = tmp_path / "calib"
    calib.mkdir()
    _face_png(calib / "a.png")
    shutil.copy(bombs["hdr.hdr"], calib / "b.jpg")
    _one_line_error(_cli("quantize", "--calib", calib, "--backend", "onnxruntime", "--out", tmp_path / "q"), "declares")
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q.*"))


def test_names_that_are_not_utf8_are_read(tmp_path, calib):
    name = os.fsdecode(b"\xff\xfe.png")
    img = _face_png(tmp_path / name)
    r = _ok(_cli("predict", "default", img, "--crops"))
    assert len([ln for ln in r.stdout.splitlines() if ln.startswith("{")]) == 1
    cal = tmp_path / "cal"
    shutil.copytree(calib, cal)
    shutil.copy(img, cal / os.fsdecode(b"caf\xe9.png"))
    _ok(_cli("quantize", "--calib", cal, "--backend", "onnxruntime", "--num", "7", "--out", tmp_path / "q"))
    assert (tmp_path / "q" / "onnxruntime" / "model.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_videos_and_drawings_with_names_that_are_not_utf8(tmp_path, bundle, long_video):
    folder = tmp_path / os.fsdecode(b"d\xe9j\xe0")
    folder.mkdir()
    video = folder / os.fsdecode(b"\xff.mp4")
    shutil.copy(long_video, video)
    out = folder / os.fsdecode(b"\xfe.mp4")
    r = _ok(_cli("predict", bundle, video, "--max-frames", "3", "--draw", out))
    assert len([ln for ln in r.stdout.splitlines() if '"frame"' in ln]) >= 2
    assert out.is_file() and out.stat().st_size > 0
    frame = tmp_path / "frame.png"
    shutil.copy(sorted((Path(os.environ.get("EDGEFACE_SHARED_DATA", REPO.parent / "shared" / "data")) / "pointing04"
                        / "images").iterdir())[0], frame)
    drawn = folder / os.fsdecode(b"\xfd.png")
    _ok(_cli("predict", bundle, frame, "--draw", drawn))
    assert drawn.read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.fsencode(p.name) for p in folder.iterdir()) == [b"\xfd.png", b"\xfe.mp4", b"\xff.mp4"]


# -- 8. video drawing: whole files only, on a full disk, on signals, after a kill ------------------------------
@pytest.fixture(scope="module")
def long_video(tmp_path_factory, shared_data) -> Path:
    from edgeface.core.preprocess import read_image

    folder = tmp_path_factory.mktemp("video")
    path = folder / "long.mp4"
    frames = [cv2.resize(read_image(f), (320, 240))
              for f in sorted((shared_data / "pointing04" / "images").iterdir())[:30]]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    for _ in range(20):
        for f in frames:
            w.write(f)
    w.release()
    return path


def _frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _draw_until_started(bundle, video, out):
    import time

    p = subprocess.Popen([sys.executable, "-m", "edgeface", "predict", bundle, video, "--draw", out],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".edgeface-draw-*")) and time.monotonic() < deadline:
        assert p.poll() is None, p.stderr.read()[-2000:]
        time.sleep(0.05)
    time.sleep(1.0)  # some frames in
    return p


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupted_draw_leaves_a_whole_video(tmp_path, bundle, long_video, sig, code):
    import signal

    out = tmp_path / "out.mp4"
    p = _draw_until_started(bundle, long_video, out)
    p.send_signal(getattr(signal, sig))
    err = p.communicate(timeout=60)[1]
    assert p.returncode == code, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-1].startswith("error: interrupted by " + sig), err[-2000:]
    assert out.is_file() and 0 < _frame_count(out) < 600  # the frames drawn so far, playable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_killed_draw_leaves_no_video_and_the_next_run_cleans_up(tmp_path, bundle, long_video):
    import signal

    out = tmp_path / "out.mp4"
    p = _draw_until_started(bundle, long_video, out)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not out.exists()  # never an unreadable out.mp4
    assert [q.name.startswith(".edgeface-draw-") for q in tmp_path.iterdir()] == [True]
    _ok(_cli("predict", bundle, long_video, "--draw", out, "--max-frames", "5"))
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out.mp4"] and _frame_count(out) == 5


def test_draw_on_a_full_disk_fails_and_leaves_nothing(small_fs, bundle, long_video):
    with open(small_fs / "fill", "wb") as fh:
        fh.write(b"\0" * (19 << 20))  # 1 MB left: the video runs out of space part way
    r = _cli("predict", bundle, long_video, "--draw", small_fs / "out.mp4", "--max-frames", "300")
    _one_line_error(r, "no space left")
    assert "Failed to write frame" not in r.stderr
    assert sorted(p.name for p in small_fs.iterdir()) == ["fill"]
