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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PT = REPO / "edgeface" / "weights" / "default.pt"


def _cli(*args, timeout=300, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "edgeface", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def _one_line_error(r, match: str = ""):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), r.stderr[-2000:]
    assert match.lower() in r.stderr.lower(), r.stderr[-2000:]


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
    cv2.imwrite(str(path), np.full((112, 112, 3), value, np.uint8))
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
    assert set(report["files"]) == {"onnxruntime/model.onnx"} and report["sealed_sha256"]
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
