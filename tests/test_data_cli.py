"""Readers (labels.csv, AFLW2000-3D .mat fixtures, image folders), bad input through the CLI, smoke training."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.faces.data import find_sets, load_samples
from edgeface.core.errors import EdgefaceError

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgeface", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), err
    for n in needles:
        assert n in lines[-1], lines[-1]


def make_aflw_fixture(folder: Path, n: int = 4) -> list[tuple[float, float, float]]:
    """AFLW2000-3D layout: imageNNNNN.jpg + .mat with Pose_Para (pitch, yaw, roll radians, tx, ty, tz, s)
    and pt2d (2 x 21, -1 for missing landmarks)."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    poses = [(10.0, -20.0, 5.0), (-45.0, 12.0, -8.0), (120.0, 0.0, 0.0), (0.0, 0.0, 3.0)][:n]
    rng = np.random.default_rng(0)
    for i, (yaw, pitch, roll) in enumerate(poses):
        img = rng.integers(0, 255, (450, 450, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"image{i:05d}.jpg"), img)
        pts = np.stack([rng.uniform(150, 300, 21), rng.uniform(160, 320, 21)])
        pts[:, 3] = -1  # a missing landmark must not stretch the box
        pp = np.array([[math.radians(pitch), math.radians(yaw), math.radians(roll), 225, 225, 0, 1e-3]])
        savemat(str(folder / f"image{i:05d}.mat"), {"Pose_Para": pp, "pt2d": pts,
                                                   "pt3d_68": rng.uniform(0, 450, (3, 68))})
    return poses


def test_aflw2000_reader(tmp_path):
    make_aflw_fixture(tmp_path / "aflw")
    s = load_samples(tmp_path / "aflw")
    assert len(s) == 3  # the 120 deg yaw image is dropped by the +-99 protocol
    assert s[0].yaw == pytest.approx(10.0) and s[0].pitch == pytest.approx(-20.0) and s[0].roll == pytest.approx(5.0)
    x, y, w, h = s[0].box
    assert x >= 150 and y >= 160 and x + w <= 300 and y + h <= 320


def test_labels_csv_teacher_fallback_and_errors(tmp_path):
    d = tmp_path / "set"
    (d / "images").mkdir(parents=True)
    cv2.imwrite(str(d / "images" / "a.jpg"), np.zeros((50, 50, 3), np.uint8))
    (d / "labels.csv").write_text("file,x,y,w,h,yaw,pitch,roll,t_yaw,t_pitch,t_roll,split\n"
                                  "images/a.jpg,1,2,30,30,NaN,5,,12,7,3,val\n"
                                  "images/a.jpg,1,2,30,30,80,5,,70,7,30,train\n")
    val = load_samples(d, split="val")
    assert len(val) == 1 and val[0].yaw == 12 and val[0].pitch == 5 and val[0].roll == 3
    tr = load_samples(d, split="train")
    assert math.isnan(tr[0].roll)  # teacher roll is not trusted on a profile
    (d / "labels.csv").write_text("file,x,y\nimages/a.jpg,1,2\n")
    with pytest.raises(EdgefaceError, match="lacks column"):
        load_samples(d)


def test_centre_people_removes_person_offsets_only(tmp_path):
    """Three people whose teacher disagrees with the rig by +10, 0 and -4 deg yaw near frontal: the median
    person (0) keeps their labels, the others move by their offset from it; profiles do not count in the
    measurement, and a teacher-filled label is not moved."""
    d = tmp_path / "lab"
    (d / "images").mkdir(parents=True)
    cv2.imwrite(str(d / "images" / "a.jpg"), np.zeros((50, 50, 3), np.uint8))
    lines = ["file,x,y,w,h,yaw,pitch,roll,t_yaw,t_pitch,t_roll,group,split"]
    for person, off in (("A", 10.0), ("B", 0.0), ("C", -4.0)):
        for yaw in (-30, -15, 0, 15, 30):
            lines.append(f"images/a.jpg,1,2,30,30,{yaw},0,,{yaw + off},{off / 2},,{person},train")
        for _ in range(6):  # profiles, where the teacher is off by +60 for A: must not count
            lines.append(f"images/a.jpg,1,2,30,30,90,0,,{90 + 60 * (person == 'A')},0,,{person},train")
    lines.append("images/a.jpg,1,2,30,30,,,,7,3,,A,train")  # teacher only
    (d / "labels.csv").write_text("\n".join(lines) + "\n")
    plain = load_samples(d, split="train")
    centred = load_samples(d, split="train", centre_people=True)
    shift = {}
    for p, c in zip(plain[:-1], centred[:-1]):
        shift.setdefault(c.group, set()).add((round(c.yaw - p.yaw, 3), round(c.pitch - p.pitch, 3)))
    # the teacher-only row keeps the teacher's 7 / 3 exactly
    assert (centred[-1].yaw, centred[-1].pitch) == (7.0, 3.0)
    assert shift["A"] == {(10.0, 5.0)} and shift["B"] == {(0.0, 0.0)} and shift["C"] == {(-4.0, -2.0)}


def test_image_folder_and_find_sets(tmp_path, shared_data):
    d = tmp_path / "crops"
    d.mkdir()
    cv2.imwrite(str(d / "x.png"), np.zeros((60, 60, 3), np.uint8))
    assert len(load_samples(d)) == 1
    # The data pack's five sets, sorted by name: four training sets and aflw2000_dev, validation only (every row
    # of it is split 'val', so nothing in it can reach a training split).
    assert [p.name for p in find_sets(shared_data)] == ["aflw2000_dev", "celeba", "pointing04", "qmul", "utkface"]
    with pytest.raises(EdgefaceError, match="no usable images with split 'train'"):
        load_samples(shared_data / "aflw2000_dev", split="train")
    assert len(load_samples(shared_data / "aflw2000_dev", split="val")) == 950


def test_cli_bad_inputs(tmp_path):
    assert_one_line_error(run_cli("eval", "--data", tmp_path / "nope"), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("eval", "--data", empty), "no labels.csv")
    bad = tmp_path / "badcsv"
    bad.mkdir()
    (bad / "labels.csv").write_text("file,x\na.jpg,1\n")
    assert_one_line_error(run_cli("eval", "--data", bad), "lacks column")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "a.jpg").write_bytes(b"not a jpeg at all")
    (corrupt / "labels.csv").write_text("file,x,y,w,h,yaw,pitch,roll\na.jpg,0,0,10,10,0,0,0\n")
    assert_one_line_error(run_cli("eval", "--data", corrupt, "--split", ""), "is not in a format edgeface reads")
    ck = tmp_path / "bad.pt"
    ck.write_bytes(b"garbage")
    assert_one_line_error(run_cli("eval", ck, "--data", corrupt, "--split", ""), "not a readable edgeface checkpoint")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: train\ndata: {sets: [{name: x}]}\ntrain: {epohcs: 3}\n")
    assert_one_line_error(run_cli("train", "--recipe", recipe), "unknown field 'train.epohcs'")


def test_write_json_leaves_no_file_when_the_report_cannot_be_written(tmp_path):
    """Defect: --json wrote into a temporary file and left it behind when json.dump failed half way."""
    from edgeface.cli.output import write_json

    with pytest.raises(TypeError):
        write_json(tmp_path / "report.json", {"fine": 1, "not json": object()})
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "report.json", {"score": np.float32(0.5), "path": Path("a/b"), "n": np.int64(3)})
    assert json.loads((tmp_path / "report.json").read_text()) == {"score": 0.5, "path": "a/b", "n": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_info_prints_model_card():
    proc = run_cli("info", "--json", "/dev/stdout")
    assert proc.returncode == 0, proc.stderr
    assert "model" in proc.stdout


def test_smoke_training_and_eval(tmp_path, shared_data):
    out = tmp_path / "run"
    proc = run_cli("train", "--recipe", "recipes/train/mbv2_025.yaml", "--epochs", "1", "--limit", "48",
                   "--epoch-size", "128", "--data-root", shared_data, "--out", out, "--json", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.pt").is_file() and (out / "last.pt").is_file()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"pointing04", "qmul", "utkface", "celeba", "rendered", "aflw2000_dev"}
    assert all(metrics[k]["n"] == 48 for k in ("pointing04", "qmul", "utkface", "celeba", "aflw2000_dev"))
    # the real-photo dev set is measured every epoch, by |yaw| bin, and picks best.pt
    assert set(metrics["aflw2000_dev"]["by_yaw"]) == {"0-30", "30-60", "60+"}
    assert (out / "best.pt").is_file()
    # the rendered wide-pose val set: 48 sources from each in-the-wild set, reported by |yaw| bin
    assert metrics["rendered"]["n"] == 96 and set(metrics["rendered"]["by_yaw"]) == {"0-30", "30-60", "60+"}
    # resume continues from last.pt (no epochs left: it only re-evaluates)
    proc = run_cli("train", "--recipe", "recipes/train/mbv2_025.yaml", "--epochs", "1", "--limit", "48",
                   "--epoch-size", "128", "--data-root", shared_data, "--out", out, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("eval", out / "model.pt", "--data", shared_data / "pointing04", "--json", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "e.json").read_text())["sets"]["pointing04"]
    assert res["n"] == 372 and res["yaw_mae"] is not None and res["blur_spearman"] is not None
    assert sum(b["n"] for b in res["by_yaw"].values()) == 372


def test_a_dev_set_is_never_trained_on(tmp_path):
    """data.dev_sets chooses between models; a recipe that also trains on one is refused before any work."""
    recipe = (REPO / "recipes" / "train" / "mbv2_025_v3.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.replace("    - {name: celeba, weight: 1.0}",
                                  "    - {name: celeba, weight: 1.0}\n    - {name: aflw2000_dev, weight: 1.0}"))
    assert_one_line_error(run_cli("train", "--recipe", bad, "--out", tmp_path / "o"), "never trained on")
    assert not (tmp_path / "o").exists()


def test_weight_average_is_the_exponential_moving_average():
    """train.ema: after each step the average moves (1 - decay) of the way to the weights; BatchNorm statistics too."""
    torch = pytest.importorskip("torch")
    from edgeface.model.train import WeightAverage

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(model, decay=0.5)
    avg.update()  # the first update copies the weights
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
    avg.update()
    assert torch.allclose(avg.module[0].weight, start + 0.5)
    assert torch.allclose(avg.module[1].running_mean, torch.full((2,), 1.0))


def test_training_with_a_weight_average_measures_both_and_resumes(tmp_path, shared_data):
    """Each epoch measures the average and, beside it, the raw weights on the dev set; --resume restores both."""
    recipe = (REPO / "recipes" / "train" / "mbv2_025.yaml").read_text()
    assert "\n  warmup_epochs: 1.0\n" in recipe
    ema = tmp_path / "ema.yaml"
    ema.write_text(recipe.replace("\n  warmup_epochs: 1.0\n", "\n  warmup_epochs: 1.0\n  ema: 0.9\n", 1))
    out = tmp_path / "run"
    args = ("--limit", "32", "--epoch-size", "64", "--data-root", shared_data, "--out", out)
    proc = run_cli("train", "--recipe", ema, "--epochs", "1", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("train", "--recipe", ema, "--epochs", "2", *args, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch = pytest.importorskip("torch")
    last = torch.load(out / "last.pt", weights_only=True)
    history = last["meta"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(set(h["raw_dev_mean_mae"]) == {"aflw2000_dev"} for h in history)
    assert {"raw_weights", "weight_average"} <= set(last["train_state"])
    raw, kept = last["train_state"]["raw_weights"], last["state_dict"]
    assert any(not torch.equal(raw[k], kept[k]) for k in kept if kept[k].is_floating_point())
