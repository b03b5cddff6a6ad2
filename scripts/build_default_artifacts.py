#!/usr/bin/env python3
"""Export the shipped default checkpoint to torch-free artifacts beside it, so a Raspberry Pi or a
Jetson without PyTorch still gets the default model from ``Predictor()``:

    edgeface/weights/default.onnx                                   (onnxruntime; TensorRT builds from it)
    edgeface/weights/default.ncnn.param / default.ncnn.bin / default.spec.json   (ncnn, fp32 weights)

Run it whenever edgeface/weights/default.pt changes:  python3 scripts/build_default_artifacts.py
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgeface.core.artifact import shipped_artifact  # noqa: E402
from edgeface.engines import registry  # noqa: E402

# The shipped default model and its torch-free exports, named as the engine registry names their artifacts.
DEFAULT_PT, DEFAULT_ONNX, DEFAULT_NCNN = (shipped_artifact(registry.by_format(f).suffix) for f in ("torch", "onnx",
                                                                                                   "ncnn"))


def main() -> int:
    from edgeface.core.errors import EdgefaceError
    from edgeface.export import export_ncnn, export_onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_PT, help="source checkpoint (default: %(default)s)")
    args = ap.parse_args()
    try:
        onnx_path = export_onnx(args.checkpoint, DEFAULT_ONNX)
        ncnn_path = export_ncnn(args.checkpoint, DEFAULT_NCNN, precision="fp32")
        check = verify(args.checkpoint)
    except EdgefaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"onnx": str(onnx_path), "ncnn": str(ncnn_path), "parity_vs_torch": check}, indent=2))
    return 0


def verify(checkpoint: Path) -> dict:
    """Max |Δ| of each default artifact against the torch checkpoint on generated crops: a broken export
    must not be shipped."""
    import numpy as np

    from edgeface.runtime.predictor import Predictor

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (8, 112, 112, 3), dtype=np.uint8)
    with Predictor(checkpoint, backend="torch") as ref:
        r = ref.predict(crops)
    out = {}
    for path in (DEFAULT_ONNX, DEFAULT_NCNN):
        with Predictor(path) as p:
            q = p.predict(crops)
        d = {"blur_max_abs": float(np.abs(q.blur - r.blur).max()),
             "pose_max_abs": float(np.abs(q.pose - r.pose).max())}
        if d["blur_max_abs"] > 1e-3 or d["pose_max_abs"] > 0.05:
            from edgeface.core.errors import EdgefaceError

            raise EdgefaceError(f"{path.name} disagrees with the checkpoint ({d}); not shipping it")
        out[path.name] = d
    return out


if __name__ == "__main__":
    sys.exit(main())
