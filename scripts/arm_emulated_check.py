#!/usr/bin/env python3
"""The rpi bundle, run on ARM: x86 vs an emulated Raspberry Pi (qemu-user aarch64), as JSON.

    sudo .ci/arm_emulated.sh                        # prepares the rootfs, then runs this
    python3 scripts/arm_emulated_check.py --rootfs /var/cache/edgeface/rootfs-...   [--bundle DIR] [--json FILE]

Host side: deploy the rpi bundle (`edgeface deploy --target rpi`, unless --bundle is given), run it here
with Predictor(bundle), copy bundle + inputs + the edgeface source into the rootfs, and run this same file
there (``run`` mode) under ``QEMU_CPU=cortex-a72`` (Raspberry Pi 4, fp16 off: must equal x86 within 1e-4)
and ``QEMU_CPU=cortex-a76`` (Raspberry Pi 5, fp16 storage/arithmetic on: a looser bound). The ARM side
imports edgeface with no torch installed and asserts torch was never imported. It also runs full val frames
through ``predict_frame`` (the shipped YuNet detector, the crop, the model) on both sides. Prints the max
deviations as JSON; exits 1 when a bound is exceeded.

Needs root (chroot). The ``run`` mode is what executes inside the rootfs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXACT_BOUND = 1e-4                               # fp16 off: ncnn's fp32 NEON vs x86 kernels
FP16_BOUND = {"pose_deg": 0.5, "blur": 0.01}     # fp16 on (Pi 5): half-precision arithmetic
# (QEMU_CPU, fp16 on, board, run name). The bundle's own policy (fp16 off) must be exact on both Pis; fp16 on
# is measured and reported against FP16_BOUND but does not decide `passed` (with the trained model it gave
# 9.3 deg: fp16 arithmetic is not safe for this model, which is why recipes/targets/rpi.yaml keeps it off).
RUNS = (("cortex-a72", False, "Raspberry Pi 4", "cortex-a72"), ("cortex-a76", False, "Raspberry Pi 5", "cortex-a76"),
        ("cortex-a76", True, "Raspberry Pi 5", "cortex-a76-fp16"))
# Full frames (detector + crop + model), fp16 off: the parity budget of an FP32 artifact, boxes within half a pixel.
FRAME_BOUND = {"box_px": 0.5, "pose_deg": 0.05, "blur": 1e-3}
IN_ROOT = "/opt/edgeface-check"                  # work folder inside the rootfs


# -- inside the rootfs (or anywhere): run the bundle on the saved inputs ------------------------------------
def run_mode(args) -> int:
    import numpy as np

    t0 = time.perf_counter()
    from edgeface import Predictor  # noqa: F401 - the import itself is part of the check

    crops = np.load(args.inputs)
    options = {} if args.fp16 is None else {"fp16": bool(int(args.fp16))}
    with Predictor(args.bundle, **options) as p:
        r = p.predict(crops)
        info = p.info()
        frames = _frame_results(p, np.load(args.frames)) if args.frames else {}
    np.savez(args.out, blur=r.blur, pose=r.pose, **frames)
    report = {"machine": platform.machine(), "python": platform.python_version(),
              "torch_imported": "torch" in sys.modules, "onnx_imported": "onnx" in sys.modules,
              "backend": info.get("backend"), "ncnn": info.get("version"),
              "fp16_arithmetic": info.get("fp16_arithmetic"),
              "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(report))
    return 0


def _frame_results(predictor, frames) -> dict:
    """predict_frame on each saved full frame (detector + crop + model), flattened over the faces found."""
    import numpy as np

    counts, rows = [], []
    for key in sorted(frames.keys(), key=lambda k: int(k[1:])):  # a dict of frames, or the .npz saved from it
        # OpenCV's detector on both sides (an aarch64 Pi has no onnxruntime): the comparison is ARM vs x86
        faces = predictor.predict_frame(frames[key], engine="opencv")
        counts.append(len(faces))
        rows += [[*f.box, f.score, f.yaw, f.pitch, f.roll, f.blur] for f in faces]
    return {"frame_counts": np.array(counts), "frame_faces": np.array(rows, np.float64).reshape(-1, 9)}


def _frame_deviation(got, ref: dict) -> dict:
    """Full frames on ARM vs x86: the same faces found, and how far boxes and outputs moved."""
    import numpy as np

    if "frame_counts" not in got.files:
        return {"same_faces": False, "error": "the ARM run returned no frame results"}
    same = bool(np.array_equal(got["frame_counts"], ref["frame_counts"]))
    if not same:
        return {"same_faces": False, "faces_arm": int(got["frame_counts"].sum()),
                "faces_x86": int(ref["frame_counts"].sum())}
    d = np.abs(got["frame_faces"] - ref["frame_faces"])
    return {"same_faces": True, "faces": int(ref["frame_counts"].sum()), "box_max_px": float(d[:, :4].max(initial=0)),
            "score_max_abs": float(d[:, 4].max(initial=0)), "pose_max_abs": float(d[:, 5:8].max(initial=0)),
            "blur_max_abs": float(d[:, 8].max(initial=0))}


# -- host side ---------------------------------------------------------------------------------------------
def _frames(n_per_set: int = 2):
    """Full val frames (the detector's input) from each set, or none without ../shared/data."""
    import cv2

    from edgeface.faces.data import default_verify_data, find_sets, load_samples

    data = default_verify_data()
    if data is None:
        return {}
    frames = []
    for folder in find_sets(data):
        for s in load_samples(folder, split="val")[:n_per_set]:
            img = cv2.imread(str(s.path), cv2.IMREAD_COLOR)
            if img is not None:
                frames.append(img)
    return {f"f{i}": f for i, f in enumerate(frames)}


def _inputs(n_per_set: int = 8):
    """Real val faces when ../shared/data is present (what matters), else the deterministic synthetic set."""
    import numpy as np

    from edgeface.deploy.verify import default_verify_data, synthetic_faces
    from edgeface.core.spec import ModelSpec

    data = default_verify_data()
    if data is None:
        return synthetic_faces(ModelSpec(), 32), "synthetic images (no ../shared/data)"
    from edgeface.faces.data import find_sets, load_samples
    from edgeface.faces.evaluate import load_crops

    samples = []
    for folder in find_sets(data):
        samples += load_samples(folder, split="val")[:n_per_set]
    return np.ascontiguousarray(load_crops(samples, ModelSpec())), f"{len(samples)} val faces from {data}"


def _copy_source(root: Path) -> None:
    """The edgeface package as a device would get it, minus training weights and caches."""
    dest = root / IN_ROOT.lstrip("/") / "src"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(REPO / "edgeface", dest / "edgeface",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pt", "*.pyc"))
    shutil.copy2(Path(__file__), dest / "arm_emulated_check.py")


def _chroot_run(root: Path, cpu: str, fp16: bool, timeout: float) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "QEMU_CPU": cpu,
           "PYTHONPATH": f"{IN_ROOT}/src:/opt/site", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    out = f"{IN_ROOT}/out-{cpu}-fp16{int(fp16)}.npz"
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"  # looked up on the host's PATH, not the env below
    cmd = [chroot, str(root), "/usr/bin/python3", f"{IN_ROOT}/src/arm_emulated_check.py", "run",
           "--bundle", f"{IN_ROOT}/bundle", "--inputs", f"{IN_ROOT}/inputs.npy", "--out", out, "--fp16", str(int(fp16))]
    if (root / IN_ROOT.lstrip("/") / "frames.npz").exists():
        cmd += ["--frames", f"{IN_ROOT}/frames.npz"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"ARM run ({cpu}) failed with code {proc.returncode}: {' | '.join(tail)}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["wall_s"] = round(time.perf_counter() - t0, 2)
    report["out"] = str(root / out.lstrip("/"))
    return report


def check(root: Path, bundle: Path | None = None, timeout: float = 300.0, log=print) -> dict:
    """The whole comparison; returns the JSON-able report (``passed`` says whether the bounds held)."""
    import numpy as np

    from edgeface import Predictor

    if os.geteuid() != 0:
        raise PermissionError("chroot needs root")
    if not (root / "usr/bin/python3").exists():
        raise FileNotFoundError(f"{root} holds no python3; build it with .ci/arm_emulated.sh")
    with tempfile.TemporaryDirectory(prefix="edgeface-arm-") as td:
        if bundle is None:
            bundle = Path(td) / "rpi-fp32"
            log("deploying the rpi bundle on x86 (edgeface deploy --target rpi)")
            proc = subprocess.run([sys.executable, "-m", "edgeface", "deploy", "--target", "rpi", "--precision", "fp32",
                                   "--out", str(bundle), "--no-verify"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"edgeface deploy --target rpi failed: {proc.stderr.strip().splitlines()[-1:]}")
        crops, inputs_desc = _inputs()
        frames = _frames()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "an rpi bundle on x86" is the point here
            with Predictor(str(bundle)) as p:
                ref = p.predict(crops)
                x86_info = p.info()
                ref_frames = _frame_results(p, frames) if frames else {}
        work = root / IN_ROOT.lstrip("/")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.copytree(bundle, work / "bundle")
        np.save(work / "inputs.npy", crops)
        if frames:
            np.savez(work / "frames.npz", **frames)
        _copy_source(root)
        report = {"bundle": str(bundle), "inputs": inputs_desc, "n": int(len(crops)), "frames": len(frames),
                  "x86": {"backend": x86_info.get("backend"), "ncnn": x86_info.get("version"),
                          "fp16_arithmetic": x86_info.get("fp16_arithmetic"), "machine": platform.machine()},
                  "runs": {}}
        passed = True
        try:
            for cpu, fp16, board, run_name in RUNS:
                log(f"running in the aarch64 rootfs with QEMU_CPU={cpu} ({board}, fp16 {'on' if fp16 else 'off'})")
                run = _chroot_run(root, cpu, fp16, timeout)
                got = np.load(run.pop("out"))
                pose_dev = float(np.abs(got["pose"] - ref.pose).max())
                blur_dev = float(np.abs(got["blur"] - ref.blur).max())
                bound = {"pose_deg": EXACT_BOUND, "blur": EXACT_BOUND} if not fp16 else dict(FP16_BOUND)
                within = pose_dev <= bound["pose_deg"] and blur_dev <= bound["blur"]
                ok = (run["machine"] == "aarch64" and not run["torch_imported"] and bool(run["fp16_arithmetic"]) == fp16
                      and (within or fp16))
                frame_dev = _frame_deviation(got, ref_frames) if frames else None
                if frame_dev is not None and not fp16:
                    # The detector (OpenCV's DNN) has its own NEON kernels: float rounding may move a box by a
                    # fraction of a pixel, and the crop and outputs with it; a different face count is a bug.
                    frame_dev["bound"] = dict(FRAME_BOUND)
                    frame_dev["within_bound"] = bool(
                        frame_dev["same_faces"] and frame_dev["box_max_px"] <= FRAME_BOUND["box_px"]
                        and frame_dev["pose_max_abs"] <= FRAME_BOUND["pose_deg"]
                        and frame_dev["blur_max_abs"] <= FRAME_BOUND["blur"])
                    ok &= frame_dev["within_bound"]
                passed &= ok
                report["runs"][run_name] = {"board": board, "fp16": fp16, "pose_max_abs": pose_dev,
                                            "blur_max_abs": blur_dev, "bound": bound, "within_bound": within,
                                            "passed": ok, **({"full_frames": frame_dev} if frame_dev else {}), **run}
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report["passed"] = passed
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode")
    r = sub.add_parser("run", help="(inside the rootfs) run a bundle on saved inputs")
    r.add_argument("--bundle", required=True)
    r.add_argument("--inputs", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--fp16", default=None)
    r.add_argument("--frames", default=None, help="an .npz of full frames to run predict_frame on")
    ap.add_argument("--rootfs", default=os.environ.get("EDGEFACE_ARM_ROOTFS"))
    ap.add_argument("--bundle", type=Path, default=None, help="an rpi bundle (default: deploy one now)")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = ap.parse_args()
    if args.mode == "run":
        return run_mode(args)
    if not args.rootfs:
        ap.error("--rootfs (or EDGEFACE_ARM_ROOTFS) is required; .ci/arm_emulated.sh prepares it")
    report = check(Path(args.rootfs), args.bundle, log=lambda m: print(m, file=sys.stderr))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
