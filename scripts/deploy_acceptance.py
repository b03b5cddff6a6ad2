#!/usr/bin/env python3
"""Issue 7's acceptance, measured: deploy x86 / rpi / jetson bundles at fp32 and int8 and print the verify figures.

    python3 scripts/deploy_acceptance.py [--model CKPT] [--calib ../shared/data/celeba] [--out bundles] [--json FILE]

Each bundle is checked against the FP32 torch reference on held-out faces (the val split of ../shared/data)
by `edgeface deploy` itself; this script only collects what each deploy measured, and opens every bundle
the way a device does (Predictor for x86 / rpi; the manifest and TensorRT ONNX check for jetson).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--calib", default=str(REPO.parent / "shared" / "data" / "celeba"))
    ap.add_argument("--out", type=Path, default=Path("bundles"))
    ap.add_argument("--targets", default="x86,rpi,jetson")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from rich.console import Console

    from edgeface import Predictor
    from edgeface.core.errors import EdgefaceError
    from edgeface.deploy import deploy
    from edgeface.deploy.verify import synthetic_faces
    from edgeface.runtime.bundle import ANY_DEVICE, open_bundle

    console = Console(stderr=True)
    rows = []
    for target in args.targets.split(","):
        for precision in args.precisions.split(","):
            console.rule(f"{target} {precision}")
            try:
                res = deploy(target, args.model, precision=precision, calib=args.calib if precision == "int8" else None,
                             out=args.out / f"{target}-{precision}", force=True, console=console)
            except EdgefaceError as e:  # refused by its accuracy budget (or anything else deploy refuses): a row
                rows.append({"target": target, "precision": precision, "passed": False, "refused": str(e)})
                continue
            v = res.verify
            row = {"target": target, "precision": precision, "backend": res.backend, "bundle": str(res.bundle),
                   "size_mb": round(sum(f["bytes"] for f in res.manifest["files"].values()) / 1e6, 3),
                   "seconds": round(res.seconds, 1), "n_faces": v["n_faces"], "data": v["data"],
                   "pose_max_abs": v["pose_max_abs"], "pose_p99_abs": v["pose_p99_abs"],
                   "pose_mean_abs": v["pose_mean_abs"],
                   "pose_max_abs_blurred": v["pose_max_abs_blurred"],
                   "blur_max_abs": v["blur_max_abs"], "pose_mae_ref": v["reference"]["pose_mean_mae"],
                   "pose_mae_bundle": v["bundle"]["pose_mean_mae"], "pose_mae_increase": v["pose_mae_increase"],
                   "blur_spearman_ref": v["reference"]["blur_spearman"],
                   "blur_spearman_bundle": v["bundle"]["blur_spearman"],
                   "passed": v["passed"], "runtime": v["runtime"]}
            if res.backend == "tensorrt":
                from edgeface.engines.tensorrt.preflight import check_onnx_for_tensorrt

                info = open_bundle(res.bundle, device=ANY_DEVICE)
                row["tensorrt_onnx_problems"] = check_onnx_for_tensorrt(info.artifact)
                row["runs_here"] = "no (engine is built on the Jetson)"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Predictor(str(res.bundle)) as p:
                        n = len(p.predict(synthetic_faces(p.spec, 4)))
                row["runs_here"] = f"Predictor(bundle) ok ({n} crops)"
            rows.append(row)
    import platform

    from edgeface.core.device import device_info

    flags = set(device_info(include_power=False)["isa_flags"])  # the x86 INT8 form depends on these
    report = {"machine": platform.machine(), "cpu_int8": "avx512_vnni" if "avx512_vnni" in flags else
              "avx_vnni" if "avx_vnni" in flags else "avx2 (no VNNI)" if "avx2" in flags else "other", "bundles": rows}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
