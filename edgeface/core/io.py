"""Files that appear whole or not at all, their sha256, and JSON of numpy-bearing objects.

Every write in edgeface that replaces a file goes through ``atomic_path``: the content is written to a
temporary sibling (same folder, so the rename cannot cross file systems) and renamed onto the target only
when the writer finished; on any error the temporary file is removed and the target is left as it was.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_CHUNK = 1 << 20


def check_output_file(path: str | Path | None, what: str, inputs=()) -> None:
    """An output file path the user gave: not a folder, no file where its folder should be, and not one of
    the command's ``inputs`` (``--json model.onnx`` would replace the model it measures with its report)."""
    from .errors import EdgefaceError

    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise EdgefaceError(f"{what} {p} is a folder; pass a file path to write")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise EdgefaceError(f"{what} {p}: {parent} is a file, not a folder; choose another path")
            break
    check_not_an_input(p, what, inputs)


def check_not_an_input(path: str | Path, what: str, inputs) -> None:
    """``path`` (about to be written) is none of ``inputs`` (paths, or None), links and ``./`` spellings included."""
    from .errors import EdgefaceError

    for src in inputs:
        if src is not None and same_file(path, src):
            raise EdgefaceError(f"{what} {path} is also an input of this command ({src}); writing it would destroy "
                                f"that input: choose another path")


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one existing file (False when either is missing or unreadable)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError, TypeError):
        return False


def check_output_dir(path: str | Path | None, what: str) -> None:
    """An output folder path the user gave: not a file, and no file where one of its parents should be."""
    from .errors import EdgefaceError

    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise EdgefaceError(f"{what} {p} is a file; pass a folder path (a new or an edgeface-written one)")
    check_output_file(p / "x", what) if not p.exists() else None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it onto ``path`` when the block succeeds.

    For writers that want a path (``onnx.save``, ``torch.save``, ``shutil.copyfile``, ``np.savez``). The
    file gets the permissions of an ordinary new file (0666 minus the umask), not mkstemp's 0600.
    """
    path = Path(path)
    check_output_file(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """``obj`` as JSON (numpy values and paths converted, see ``to_jsonable``) plus a final newline.

    The text is made before anything touches the disk, so an object that cannot be serialised raises
    without leaving a file behind.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=to_jsonable) + "\n"
    return atomic_write_text(path, text)


def to_jsonable(o: Any) -> Any:
    """``json.dumps(default=...)`` for what edgeface results hold: numpy scalars and arrays, paths, sets."""
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    if hasattr(o, "tolist") and callable(o.tolist):  # numpy scalars and arrays (torch tensors alike)
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def read_text_file(path: str | Path, what: str, fix: str, encoding: str = "utf-8") -> str:
    """The text of a small file edgeface wrote (a spec, a calibration cache): one EdgefaceError line naming
    ``what`` and ``fix`` when it is missing or not ``encoding`` text, instead of a decode traceback."""
    from .errors import EdgefaceError

    p = Path(path)
    if not p.is_file():
        raise EdgefaceError(f"{what} {p} does not exist; {fix}")
    try:
        return p.read_text(encoding=encoding)
    except UnicodeDecodeError:
        raise EdgefaceError(f"{what} {p} is not text ({encoding}; a binary or foreign file?); {fix}") from None


def npz_shapes(path: str | Path) -> dict[str, tuple] | None:
    """{array name: shape} read from the .npy headers inside an .npz (nothing decompressed beyond the headers);
    None when it is not a readable zip of .npy files (np.load then names the problem)."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(path) as zf:
            shapes = {}
            for info in zf.infolist()[:64]:
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                            np.lib.format.read_array_header_2_0)
                    shapes[info.filename[:-4]] = tuple(read(fh)[0])
            return shapes
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return None


def silence_native_stderr(make):
    """Run ``make`` with file descriptor 2 on /dev/null: native libraries (FFmpeg, ncnn) print their own lines
    ("moov atom not found", "parse magic failed") that the caller turns into one clear error line."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return make()
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        return make()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# -- staging folders and temporary folders that a killed run leaves behind ----------------------------------
PARTIAL_TAG = ".partial-"   # .NAME.partial-PID-xxxx beside an output folder being written
OLD_TAG = ".old-"           # .NAME.old-PID-xxxx: a replaced output on its way out
TEMP_PREFIX = "edgeface-"   # edgeface-KIND-PID-xxxx in the temp dir
STALE_UNTAGGED_S = 24 * 3600  # an edgeface-* temp folder without a PID (older edgeface) is stale after a day


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def make_staging_dir(out: Path) -> Path:
    """An empty folder beside ``out`` to write it in (an ordinary folder's permissions), named so that the
    next run can tell it was left by a process that died (``clean_stale_partials``)."""
    out = Path(out)
    staged = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{PARTIAL_TAG}{os.getpid()}-"))
    os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes 0700
    return staged


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove ``.NAME.partial-PID-*`` / ``.NAME.old-PID-*`` folders beside ``out`` whose process is gone."""
    out = Path(out)
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.*-*"):
        for tag in (PARTIAL_TAG, OLD_TAG):
            prefix = f".{out.name}{tag}"
            if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink():
                try:
                    pid = int(p.name[len(prefix):].split("-", 1)[0])
                except ValueError:
                    continue
                if pid != os.getpid() and not pid_alive(pid):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
    return removed


def temp_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A TemporaryDirectory named edgeface-KIND-PID-*: removed on normal exit, and by ``clean_stale_temp`` in
    the next run when a kill left it behind."""
    return tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{kind}-{os.getpid()}-")


def clean_stale_temp(now: float | None = None) -> list[Path]:
    """Remove this user's edgeface-* folders in the temp dir whose process is gone (or, without a PID in the
    name, that are more than a day old)."""
    import time

    now = time.time() if now is None else now
    removed: list[Path] = []
    root = Path(tempfile.gettempdir())
    try:
        entries = list(root.glob(f"{TEMP_PREFIX}*"))
    except OSError:
        return removed
    for p in entries:
        try:
            if p.is_symlink() or not p.is_dir() or p.stat().st_uid != os.getuid():
                continue
            parts = p.name[len(TEMP_PREFIX):].split("-")
            pid = next((int(x) for x in parts[1:2] if x.isdigit()), None)
            if pid is not None:
                stale = pid != os.getpid() and not pid_alive(pid)
            else:
                stale = now - p.stat().st_mtime > STALE_UNTAGGED_S
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
