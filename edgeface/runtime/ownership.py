"""Whether a folder is a bundle exactly as edgeface wrote it: what `deploy --force` and `quantize --force` may
replace. Decided from the folder's sealed content, never from a file name (a user's folder may well hold a
manifest.json of its own)."""
from __future__ import annotations

from pathlib import Path

from ..core.io import sealed_folder_problem
from .bundle import DEVICE_BUILT_DIR, DIGEST_KEY, MANIFEST_NAME, SIGNATURE_NAME, manifest_digest

DEVICE_BUILT_SUFFIXES = (".engine", ".json", ".cache")  # what `edgeface build` writes into engines/


def _added_by_edgeface(rel: str) -> bool:
    """Files a bundle gains after deploy sealed it: its signature, and the engines the device built."""
    top, _, rest = rel.partition("/")
    return rel == SIGNATURE_NAME or (top == DEVICE_BUILT_DIR and "/" not in rest
                                     and rest.endswith(DEVICE_BUILT_SUFFIXES))


def bundle_not_ours(folder: str | Path) -> str | None:
    """None when ``folder`` is a bundle exactly as edgeface wrote it (its manifest's digest verifies and the
    folder holds exactly the files the manifest lists, each with its sha256), with at most its signature and
    device-built engines added; else why not, in a few words."""
    return sealed_folder_problem(folder, MANIFEST_NAME, key=DIGEST_KEY, digest=manifest_digest,
                                 allowed=_added_by_edgeface)
