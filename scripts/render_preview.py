#!/usr/bin/env python3
"""The render bank's preview: a PNG grid of source faces (val people) and their re-rendered views, labelled.

    python3 scripts/render_preview.py --data ../shared/data --out docs/img/render-preview.png

Builds (or reuses from the cache) the rendered wide-pose val set that `edgeface eval` measures, then draws
each source's model crop beside renders of it, sorted by yaw, with yaw/pitch/roll printed on each tile.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    from edgeface.core.errors import EdgefaceError
    from edgeface.model.render_bank import VAL_CONFIG, build_bank, preview
    from edgeface.core.spec import ModelSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "render-preview.png")
    ap.add_argument("--faces", type=int, default=5)
    ap.add_argument("--views", type=int, default=4, help="renders per face")
    args = ap.parse_args()
    try:
        # More than one view per source, so each row shows the same face turned to several angles.
        cfg = replace(VAL_CONFIG, views=args.views, limit=40, yaw_min=20.0)
        spec = ModelSpec()
        bank = build_bank(args.data, cfg, spec, 1.6, split="val", seed_offset=2)
        print(preview(bank, args.data, cfg, "val", spec, args.out, n_faces=args.faces, per_face=args.views))
    except EdgefaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
