"""The rpi bundle on ARM: an emulated Debian arm64 userland (qemu-user) runs it with the aarch64 ncnn wheel.

.ci/arm_emulated.sh prepares the rootfs and sets EDGEFACE_ARM_ROOTFS; scripts/arm_emulated_check.py does
the work (and prints the same report as JSON). Cortex-A72 (Raspberry Pi 4), fp16 off: equal to x86 within
1e-4. Cortex-A76 (Raspberry Pi 5), fp16 on: within 0.5 deg / 0.01. Neither imports torch (none is
installed in the rootfs).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("arm_emulated_check", REPO / "scripts" / "arm_emulated_check.py")
arm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(arm)


def _rootfs() -> Path:
    err = os.environ.get("EDGEFACE_ARM_ROOTFS_ERROR")
    if err:  # CI tried to build it and failed: that is a failure, not a skip
        pytest.fail(f"EDGEFACE_ARM_ROOTFS_ERROR: {err}")
    root = os.environ.get("EDGEFACE_ARM_ROOTFS")
    if not root:
        pytest.skip("no aarch64 rootfs: run `source .ci/arm_emulated.sh` as root (sets EDGEFACE_ARM_ROOTFS)")
    if os.geteuid() != 0:
        pytest.skip("running the aarch64 rootfs needs chroot, i.e. root")
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("qemu-aarch64 is not registered with binfmt_misc (run .ci/arm_emulated.sh)")
    path = Path(root)
    if not (path / "usr/bin/python3").exists() or not (path / "opt/site/ncnn").is_dir():
        pytest.fail(f"EDGEFACE_ARM_ROOTFS={root} lacks python3 or the aarch64 wheels; re-run .ci/arm_emulated.sh")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory, checkpoint):
    root = _rootfs()
    bundle = tmp_path_factory.mktemp("arm") / "rpi-fp32"
    proc = subprocess.run([sys.executable, "-m", "edgeface", "deploy", "--target", "rpi", "--model", str(checkpoint),
                           "--out", str(bundle), "--no-verify"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return arm.check(root, bundle)


@pytest.mark.qemu
@pytest.mark.slow
def test_pi4_equals_x86(report):
    run = report["runs"]["cortex-a72"]
    assert run["machine"] == "aarch64" and run["backend"] == "ncnn" and run["fp16_arithmetic"] is False
    assert run["ncnn"] == report["x86"]["ncnn"], "the aarch64 ncnn must be the x86 one's version"
    assert run["pose_max_abs"] <= 1e-4 and run["blur_max_abs"] <= 1e-4, run


@pytest.mark.qemu
@pytest.mark.slow
def test_pi5_with_the_bundles_policy_equals_x86(report):
    run = report["runs"]["cortex-a76"]  # the rpi target keeps fp16 off, so a Pi 5 gives the x86 numbers too
    assert run["machine"] == "aarch64" and run["fp16_arithmetic"] is False
    assert run["pose_max_abs"] <= 1e-4 and run["blur_max_abs"] <= 1e-4, run


@pytest.mark.qemu
@pytest.mark.slow
def test_pi5_fp16_is_measured_and_reported(report):
    run = report["runs"]["cortex-a76-fp16"]
    assert run["machine"] == "aarch64" and run["fp16_arithmetic"] is True
    # fp16 arithmetic really ran: its rounding shows (identical outputs would mean fp16 was silently off)
    assert run["pose_max_abs"] > 1e-5
    assert run["within_bound"] == (run["pose_max_abs"] <= arm.FP16_BOUND["pose_deg"]
                                   and run["blur_max_abs"] <= arm.FP16_BOUND["blur"])
    if not run["within_bound"]:
        import warnings

        warnings.warn(f"fp16 on a Pi 5 deviates {run['pose_max_abs']:.3g} deg / {run['blur_max_abs']:.3g} blur from "
                      f"fp32 (bound {arm.FP16_BOUND}); the rpi target keeps fp16 off")


@pytest.mark.qemu
@pytest.mark.slow
def test_full_frames_on_arm_equal_x86(report, shared_data):
    """predict_frame (the shipped detector, the crop, the model) on real val frames: the faces x86 finds."""
    assert report["frames"] >= 4
    for name in ("cortex-a72", "cortex-a76"):
        frames = report["runs"][name]["full_frames"]
        assert frames["same_faces"] and frames["faces"] > 0, frames
        assert frames["box_max_px"] <= arm.FRAME_BOUND["box_px"], frames
        assert frames["pose_max_abs"] <= arm.FRAME_BOUND["pose_deg"]
        assert frames["blur_max_abs"] <= arm.FRAME_BOUND["blur"]


@pytest.mark.qemu
@pytest.mark.slow
def test_arm_runtime_is_torch_free(report):
    for run in report["runs"].values():
        assert run["torch_imported"] is False and run["onnx_imported"] is False
    assert report["passed"] is True
