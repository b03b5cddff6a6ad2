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
import tempfile
import time
from pathlib import Path

from ..core.errors import EdgefaceError
from ..runtime.bundle import is_bundle

PARTIAL_TAG = ".partial-"
OLD_TAG = ".old-"


def make_staging_dir(out: Path) -> Path:
    """An empty folder beside ``out`` to write the bundle in (an ordinary folder's permissions)."""
    staged = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{PARTIAL_TAG}{os.getpid()}-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle is an ordinary folder
    return staged


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove ``.NAME.partial-PID-*`` / ``.NAME.old-PID-*`` folders left by deploys that were killed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.*-*"):
        for tag in (PARTIAL_TAG, OLD_TAG):
            prefix = f".{out.name}{tag}"
            if p.name.startswith(prefix) and p.is_dir():
                try:
                    pid = int(p.name[len(prefix):].split("-", 1)[0])
                except ValueError:
                    continue
                if pid != os.getpid() and not _pid_alive(pid):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
    return removed


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EdgefaceError(f"--out {out} is a file; pass a folder path for the bundle")
    if out.is_dir() and any(out.iterdir()):
        if not is_bundle(out):
            raise EdgefaceError(f"--out {out} is a non-empty folder that is not a bundle; choose another --out "
                                f"(deploy never replaces a folder it did not write)")
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


def move_into_place(staged: Path, out: Path, force: bool) -> None:
    """Rename the finished bundle onto ``out``. With an existing bundle, swap atomically where the kernel can
    (no moment without a complete bundle at ``out``), else move it aside first and delete it after."""
    if not out.exists():
        os.rename(staged, out)
        return
    check_out(out, force)  # the folder may have appeared while we worked
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
        os.rename(staged, out)
        return
    if _exchange(staged, out):
        shutil.rmtree(staged)  # now holds the old bundle
        return
    aside = out.parent / f".{out.name}{OLD_TAG}{os.getpid()}-{int(time.time())}"
    os.rename(out, aside)
    os.rename(staged, out)
    shutil.rmtree(aside, ignore_errors=True)
