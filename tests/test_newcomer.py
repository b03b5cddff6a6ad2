"""A newcomer's first hour, scripted: each verb as a user types it, on the shared data pack (../shared/data).

What is checked is what a person sees: the shipped model runs without being named, every input appears in the
output, long work shows progress on a terminal (a pseudo-terminal here) and ends with a summary, and the
numbers say what they are. Counts are small: CI has 2 cores.
"""
from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "edgeface", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=env)


def run_cli_tty(*args, cwd=None, timeout=600, columns=120, stdout_too=False) -> tuple[int, str, str]:
    """(exit code, stdout, what stderr showed) with stderr on a pseudo-terminal, as in a user's shell: rich draws
    its progress bars only there. ``stdout_too``: stdout on the same terminal (its text is then in the third)."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": str(columns), "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgeface", *map(str, args)],
                            stdout=slave if stdout_too else subprocess.PIPE, stderr=slave, cwd=cwd or REPO, env=env)
    os.close(slave)
    chunks: list[bytes] = []

    def read():
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not b:
                return
            chunks.append(b)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=timeout)
    reader.join(10)
    os.close(master)
    return proc.returncode, (out or b"").decode(), b"".join(chunks).decode(errors="replace")


def rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip().startswith("{")]


def one_line_error(proc, *needles) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def frames_dir(shared_data, tmp_path_factory) -> Path:
    """Six full frames from Pointing'04 (384x288, one face each, the face well under half the frame)."""
    d = tmp_path_factory.mktemp("frames")
    for f in sorted((shared_data / "pointing04" / "images").glob("*.jpg"))[:6]:
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="module")
def video(frames_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (384, 288))
    assert wr.isOpened()
    for f in sorted(frames_dir.glob("*.jpg")) * 2:
        wr.write(cv2.imread(str(f)))
    wr.release()
    return path


# -- predict ---------------------------------------------------------------------------------------------------
def test_predict_photo_without_a_model_argument(frames_dir, tmp_path):
    """`edgeface predict photo.jpg` runs the shipped model; it used to take the photo for the model."""
    shutil.copy(sorted(frames_dir.glob("*.jpg"))[0], tmp_path / "photo.jpg")
    proc = run_cli("predict", "photo.jpg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (r,) = rows(proc.stdout)
    assert r["image"] == "photo.jpg" and r["face"] == 0 and -90 <= r["yaw"] <= 90 and 0 <= r["blur"] <= 1
    # one number format in the record: at most 3 decimals everywhere (it mixed 3 and 5)
    numbers = re.findall(r"-?\d+\.(\d+)", json.dumps(r))
    assert numbers and max(len(d) for d in numbers) <= 3
    assert re.search(r"predict: 1 image\(s\), 0 video/camera source\(s\), 1 face record\(s\)", proc.stderr)
    # the same with the model named, first or with --model: the same record
    for args in (("default", "photo.jpg"), ("photo.jpg", "--model", "default"),
                 (REPO / "edgeface" / "weights" / "default.onnx", "photo.jpg")):
        again = run_cli("predict", *args, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert rows(again.stdout) == [r]


def test_predict_image_without_a_face_yields_a_no_face_record(tmp_path):
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((240, 320, 3), 128, np.uint8))
    proc = run_cli("predict", "wall.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert rows(proc.stdout) == [{"image": "wall.png", "faces": 0, "backend": "onnxruntime", "precision": "fp32"}]
    assert "1 image(s) without a face" in proc.stderr


def test_predict_names_the_real_mistake(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 64, 3), 128, np.uint8))
    one_line_error(run_cli("predict", "notes.txt", cwd=tmp_path), "notes.txt is not an image or video (.txt)",
                   "predict takes a model")
    one_line_error(run_cli("predict", "missing.jpg", cwd=tmp_path), "image missing.jpg does not exist")
    one_line_error(run_cli("predict", "missing.onnx", "a.png", cwd=tmp_path), "model missing.onnx does not exist")
    one_line_error(run_cli("predict", "a.png", "model.onnx", cwd=tmp_path), "model.onnx is a model",
                   "give it first or with --model")
    one_line_error(run_cli("predict", "typo", cwd=tmp_path), "typo does not exist")


def test_predict_video_shows_progress_and_ends_with_a_summary(video):
    code, out, err = run_cli_tty("predict", video)
    assert code == 0, err
    recs = rows(out)
    assert sorted({r["frame"] for r in recs}) == list(range(12))
    summary = re.search(r"clip\.mp4: 12 frames, (\d+) faces, (\d+) tracks, ([0-9.]+) FPS", err)
    assert summary, err
    assert int(summary.group(1)) == sum(1 for r in recs if "face" in r) >= 10
    assert int(summary.group(2)) == len({r["track"] for r in recs if "track" in r})
    # the progress bar, drawn on the terminal: the frames task reaches 12/12
    assert "clip.mp4 frames" in err and "12/12" in err, err


# -- quantize, deploy and bench: full-frame calibration, one set of INT8 figures, no host paths ------------------
@pytest.fixture(scope="module")
def calib_frames(shared_data, tmp_path_factory) -> Path:
    """48 full frames from a user's 'camera' (Pointing'04, 384x288, varied poses): no labels, no crops."""
    d = tmp_path_factory.mktemp("camera-frames")
    for f in sorted((shared_data / "pointing04" / "images").glob("*.jpg"))[::50][:48]:
        shutil.copy(f, d / f.name)
    return d


VS_FP32 = re.compile(r"vs FP32 on \d+ faces \(.*?\): pose \|Δ\| max [0-9.]+°, p99 [0-9.]+°, mean [0-9.]+°, "
                     r"head turned by at most [0-9.]+°; blur \|Δ\| max [0-9.]+; "
                     r"pose mean MAE [0-9.]+° \(FP32 [0-9.]+°, [+-][0-9.]+°\)")


def test_int8_figures_agree_across_quantize_deploy_bench_and_manifests_hold_no_host_path(calib_frames, tmp_path):
    """The same INT8 artifact on the same faces reads the same in all three tools (one computation, one line), and
    neither deploy's manifest.json nor quantize's quantize.json carries a path of the host that built them."""
    ckpt = tmp_path / "mine.pt"
    shutil.copy(REPO / "edgeface" / "weights" / "default.pt", ckpt)
    bundle, qout = tmp_path / "bundle", tmp_path / "quantized"
    dep = run_cli("deploy", "--target", "x86", "--precision", "int8", "--calib", calib_frames, "--model", ckpt,
                  "--backend", "onnxruntime", "--out", bundle, cwd=tmp_path)
    assert dep.returncode == 0, dep.stderr
    q = run_cli("quantize", ckpt, "--calib", calib_frames, "--backend", "onnxruntime", "--out", qout, cwd=tmp_path)
    assert q.returncode == 0, q.stderr
    # full frames: the shipped detector found and cropped the faces, and the count is reported, with a warning
    assert "calibration: 48 full frames in camera-frames0/, 48 faces found and cropped by the shipped detector" \
        in q.stderr, q.stderr
    assert "warning: only 48 faces for calibration (at least 100 recommended)" in q.stderr
    b = run_cli("bench", bundle, "--reference", ckpt, "--batch", "1", "--iters", "10", "--rounds", "1",
                "--warmup", "1", "--report", tmp_path / "report", cwd=tmp_path)
    assert b.returncode == 0, b.stderr
    # "where INT8 disagrees most": a picture in both reports, the faces of largest |INT8 - FP32| pose
    for png in (tmp_path / "report" / "int8_disagreement_0.png", qout / "onnxruntime" / "int8_disagreement.png"):
        sheet = cv2.imread(str(png))
        assert sheet is not None and sheet.shape[1] >= 3 * 2 * 192, png
    assert "Where INT8 disagrees most" in (tmp_path / "report" / "README.md").read_text()
    lines = [VS_FP32.findall(text) for text in (dep.stderr, q.stdout, b.stdout)]
    assert all(len(found) == 1 for found in lines), (dep.stderr, q.stdout, b.stdout)
    assert lines[0] == lines[1] == lines[2]
    assert "on 320 faces (data val split (aflw2000_dev:64, celeba:64, pointing04:64, qmul:64, utkface:64))" \
        in lines[0][0]
    # no path of this host in what travels: the tmp dir, the cwd, $HOME, the repository, the calibration folder
    host_paths = {str(tmp_path), os.getcwd(), os.path.expanduser("~"), str(REPO), str(calib_frames),
                  os.environ["EDGEFACE_CACHE"]}
    for written in (bundle / "manifest.json", qout / "quantize.json"):
        text = written.read_text()
        for p in host_paths:
            assert p not in text, (written, p)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["model"] == "mine.pt" and len(manifest["source"]["sha256"]) == 64
    assert manifest["calibration"]["folder"] == calib_frames.name
    assert manifest["calibration"]["faces"] == 48 and manifest["calibration"]["kind"] == "full frames"


# -- bench ------------------------------------------------------------------------------------------------------
def test_bench_frames_report_progress_and_frame_count(video, tmp_path):
    """--report with --frames writes its report (it was silently ignored); the frame count is in --help and in
    the output; the faces columns say what they count; progress is drawn per artifact x faces."""
    code, out, err = run_cli_tty("bench", "default", "--frames", video, "--faces", "1,2", "--frame-count", "3",
                                 "--report", tmp_path / "report", cwd=tmp_path)
    assert code == 0, err
    assert "the first 3 of 12 frames of clip.mp4" in out
    assert "faces put in each frame" in out and "faces detected per frame" in out
    md = (tmp_path / "report" / "README.md").read_text()
    assert md.startswith("# edgeface bench (full frames)") and "| default.onnx | onnxruntime fp32 | 2 |" in md
    assert (tmp_path / "report" / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "frames bench (3 frames)" in err and "2/2" in err, err  # the progress bar reached its end
    assert "bench --frames: 1 artifact(s), 3 frames of clip.mp4" in err
    help_text = run_cli("bench", "--help", cwd=tmp_path).stdout
    assert "--frame-count" in help_text and "default: 16" in help_text


def test_bench_takes_the_data_pack_folder_and_shows_progress(shared_data, tmp_path):
    """`bench ... --data ../shared/data` (a folder of sets, as eval takes it) measures accuracy on each set's val
    split; it was refused for having no labels.csv. Progress is drawn per artifact and batch block."""
    code, out, err = run_cli_tty("bench", "default", "--data", shared_data, "--limit", "4", "--batch", "1,2",
                                 "--iters", "4", "--rounds", "2", "--warmup", "1", "--json", tmp_path / "b.json",
                                 cwd=tmp_path)
    assert code == 0, err
    rows = json.loads((tmp_path / "b.json").read_text())
    n_sets = len([p for p in shared_data.iterdir() if (p / "labels.csv").is_file()])
    assert len(rows) == 2 and all(r["accuracy"]["n"] == 4 * n_sets for r in rows)
    assert rows[0]["faces"].startswith("data val split (aflw2000_dev:4, celeba:4, pointing04:4")
    assert "benchmark" in err and "4/4 blocks" in err, err  # 2 batch sizes x 2 rounds, drawn on the terminal
    assert "bench: 1 artifact(s) x 2 batch size(s) x 1 thread count(s), 2 rows" in err


# -- pictures ---------------------------------------------------------------------------------------------------
def test_draw_keeps_the_label_inside_and_the_blur_bar_visible():
    """A face touching the top edge had its pose label cut off; the blur bar was a 6 px sliver."""
    from edgeface.runtime.predictor import Face
    from edgeface.runtime.stream import draw_faces

    frame = np.zeros((240, 320, 3), np.uint8)
    face = Face((20.0, 0.0, 100.0, 110.0), [(50, 40), (90, 40), (70, 60), (55, 85), (85, 85)], 0.9,
                (15.0, 0.0, 110.0, 110.0), 0.75, 10.0, -5.0, 2.0)
    drawn = draw_faces(frame, [face])
    white = (drawn == 255).all(axis=2)
    assert white[0:18, 20:200].sum() > 30  # the label's text, inside the image at its top edge
    # the bar under the box: an outlined strip at least 8 px high, 75 % filled with a red-leaning colour
    rows = np.flatnonzero(white[112:150, 20])
    assert len(rows) >= 2 and rows[-1] - rows[0] >= 8
    mid = 112 + (rows[0] + rows[-1]) // 2
    filled = drawn[mid, 22:118]
    assert (filled[:, 2] > filled[:, 1]).mean() > 0.6  # red > green over ~75 % of the width
    # a face at the bottom edge: the bar moves inside the image
    low = Face((20.0, 180.0, 60.0, 60.0), [(40, 200), (60, 200), (50, 210), (42, 225), (58, 225)], 0.9,
               (20.0, 180.0, 60.0, 60.0), 0.2, 0.0, 0.0, 0.0)
    assert (draw_faces(frame, [low])[225:240, 20:80] == 255).all(axis=2).any()


def test_accuracy_axis_starts_at_zero(tmp_path):
    """accuracy_latency.png zoomed to 7.2-7.5 deg, so 0.09 deg looked large: the axis starts at zero now."""
    from edgeface.bench.report import plot_accuracy_latency

    def row(name, p50, mae):
        return {"artifact": name, "backend": "onnxruntime", "precision": "fp32", "batch": 1, "threads": 1,
                "latency_ms": {"p50": p50, "min": p50 * 0.9, "p90": p50 * 1.2}, "accuracy": {"mean_mae": mae, "n": 9}}

    ylim = plot_accuracy_latency([row("a", 1.0, 7.36), row("b", 0.8, 7.45)], tmp_path / "acc.png")
    assert ylim[0] == 0 and ylim[1] > 7.45
    assert (tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"


def test_default_output_folders_are_ignored_by_git():
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert {"/bundles/", "/quantized/"} <= ignored


def _small_set(shared_data: Path, name: str, dest: Path, n: int = 12) -> Path:
    """The first ``n`` val rows of a data-pack set, with their images: an eval that takes seconds."""
    lines = (shared_data / name / "labels.csv").read_text().splitlines()
    split = lines[0].split(",").index("split")
    rows = [ln for ln in lines[1:] if ln.split(",")[split] == "val"][:n]
    (dest / "images").mkdir(parents=True)
    for ln in rows:
        shutil.copy(shared_data / name / ln.split(",")[0], dest / ln.split(",")[0])
    (dest / "labels.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return dest


def test_eval_shows_progress_per_set_and_full_headers_at_140_columns(shared_data, tmp_path):
    a = _small_set(shared_data, "pointing04", tmp_path / "p04")
    b = _small_set(shared_data, "qmul", tmp_path / "qmul")
    code, _, screen = run_cli_tty("eval", "--data", a, "--data", b, "--no-rendered", columns=140, stdout_too=True)
    assert code == 0, screen
    # the per-set progress bar was drawn (rich refreshes on a timer, so which set it caught varies)
    assert "eval sets" in screen and re.search(r"eval (p04|qmul) \(12 faces\)", screen), screen
    assert "…" not in screen, screen  # no header cut short ("blur_spea…"): they fold onto two lines instead
    assert "spearman" in screen and "blur sharp" in screen
    assert re.search(r"eval: default model \(torch\) on 2 set\(s\), 24 faces", screen)


def test_bench_over_ssh_sends_the_faces_bench_measures_here(shared_data, tmp_path):
    """bench --host with --data on a folder of sets: the device gets each set's chosen rows (the same rule as a
    local bench: the split, --limit of each set by the same seed) and only their images."""
    import io
    import tarfile

    from edgeface.bench.remote import _add_data
    from edgeface.faces.evaluate import comparison_samples

    a = _small_set(shared_data, "pointing04", tmp_path / "sets" / "p04", n=10)
    _small_set(shared_data, "qmul", tmp_path / "sets" / "qmul", n=10)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        assert _add_data(tar, str(tmp_path / "sets"), "val", 4) == "data"
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = tar.getnames()
        p04_rows = tar.extractfile("data/p04/labels.csv").read().decode().splitlines()[1:]
    assert sorted(n.split("/")[1] for n in names if n.endswith("labels.csv")) == ["p04", "qmul"]
    assert len([n for n in names if n.endswith(".jpg")]) == 8
    want = {s.path.name for s in dict(comparison_samples(tmp_path / "sets", per_set=4))[a]}
    assert {Path(r.split(",")[0]).name for r in p04_rows} == want
