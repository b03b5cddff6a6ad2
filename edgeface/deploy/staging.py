"""Staging a bundle: it is written in a temporary folder beside ``--out`` and renamed into place when whole.

The temporary folder lives beside ``--out`` (``.NAME.partial-PID-XXXX``) so the final rename is atomic: an
interrupted deploy leaves no folder at ``--out`` that looks like a bundle, and an existing bundle is swapped
out only once the new one is complete (``--force``). Leftover partial folders of dead deploys are removed
by the next deploy into the same place.
"""
from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path

from ..core.errors import EdgefaceError

# The staging folder and the stale-partials sweep live in core/io (quantize uses them too).
from ..core.io import (OLD_TAG, PARTIAL_TAG, aside_path, check_folder_not_an_input, clean_stale_partials,  # noqa: E402,F401
                       make_staging_dir, pid_alive as _pid_alive, replace_folder)
from ..runtime.ownership import bundle_not_ours  # noqa: E402


def check_out(out: Path, force: bool, inputs=()) -> None:
    """--out may be new, empty, or (with --force) a bundle edgeface wrote, proven by its sealed manifest: the
    digest verifies and the folder holds exactly the files it lists. A user's folder that merely has a
    manifest.json, a bundle someone added files to, and a folder holding one of this deploy's ``inputs``
    (``--model B/model.pt --out B``) are never replaced, --force or not."""
    if out.exists() and not out.is_dir():
        raise EdgefaceError(f"--out {out} is a file; pass a folder path for the bundle")
    check_folder_not_an_input(out, "--out", inputs)
    if out.is_dir() and any(out.iterdir()):
        why = bundle_not_ours(out)
        if why is not None:
            raise EdgefaceError(f"--out {out} is a non-empty folder that is not a bundle edgeface wrote ({why}); "
                                f"choose another --out (deploy never replaces a folder it did not write)")
        if not force:
            raise EdgefaceError(f"bundle {out} already exists; pass --force to replace it")


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def move_into_place(staged: Path, out: Path, force: bool, inputs=()) -> None:
    """Rename the finished bundle onto ``out``. With an existing bundle, swap atomically where the kernel can
    (no moment without a complete bundle at ``out``), else move it aside first and delete it after."""
    if not out.exists():
        os.rename(staged, out)
        return
    check_out(out, force, inputs)  # the folder may have appeared (or changed) while we worked
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
        os.rename(staged, out)
        return
    if _exchange(staged, out):
        shutil.rmtree(staged)  # now holds the old bundle
        return
    replace_folder(staged, out)
