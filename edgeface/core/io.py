"""Files that appear whole or not at all, their sha256, and JSON of numpy-bearing objects.

Every write in edgeface that replaces a file goes through ``atomic_path``: the content is written to a
temporary sibling (same folder, so the rename cannot cross file systems) and renamed onto the target only
when the writer finished; on any error the temporary file is removed and the target is left as it was.
"""
from __future__ import annotations

import errno
import glob
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
    """``path`` (a file about to be written) is none of ``inputs`` (paths, or None) and does not replace a file
    inside an input folder (``--json BUNDLE/manifest.json``, ``--json DATA/labels.csv``), nor write anything
    into an input bundle. Compared by resolved identity (device and inode of the file or of its folders), so
    links, ``./`` and ``..`` spellings and bind mounts are caught too."""
    from .errors import EdgefaceError

    path = Path(path)
    ancestors = _existing_ancestors(path)
    for src in inputs:
        if src is None:
            continue
        if same_file(path, src):
            raise EdgefaceError(f"{what} {path} is also an input of this command ({src}); writing it would destroy "
                                f"that input: choose another path")
        folder = _identity(src)
        if folder is None or not os.path.isdir(src):
            continue
        if folder in ancestors and (_exists_resolved(path) or os.path.lexists(Path(src) / "manifest.json")):
            raise EdgefaceError(f"{what} {path} is inside {src}, an input of this command; writing it would change "
                                f"that input: choose a path outside it")


def check_folder_not_an_input(folder: str | Path, what: str, inputs) -> None:
    """``folder`` (an output folder that will be replaced as a whole) neither is nor holds one of ``inputs``:
    ``deploy --model B/model.pt --out B --force`` would delete the checkpoint it deploys."""
    from .errors import EdgefaceError

    target = _identity(folder)
    if target is None:
        return
    for src in inputs:
        if src is not None and target in _existing_ancestors(Path(src), include_self=True):
            raise EdgefaceError(f"{what} {folder} holds {src}, an input of this command; replacing the folder would "
                                f"delete it: choose another {what}")


def _exists_resolved(path) -> bool:
    """Whether ``path`` names an existing entry once resolved (``D/none/../labels.csv`` is D/labels.csv)."""
    try:
        return os.path.lexists(path) or os.path.lexists(os.path.realpath(path))
    except (OSError, ValueError):
        return False


def _identity(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError, TypeError):
        return None
    return st.st_dev, st.st_ino


def _existing_ancestors(path: Path, include_self: bool = False) -> set[tuple[int, int]]:
    """(device, inode) of every existing folder above ``path`` (resolved, links followed)."""
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return set()
    ids = set()
    for q in ([real] if include_self else []) + list(real.parents):
        ident = _identity(q)
        if ident is not None:
            ids.add(ident)
    return ids


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
    file gets the permissions of an ordinary new file (0666 minus the umask), not mkstemp's 0600. The
    sibling's name always fits the file system's name limit (a 250-byte name gets a hashed one), and a full
    disk, a read-only folder or a name that is too long ends in one EdgefaceError, with nothing left behind.
    """
    path = Path(path)
    check_output_file(path, "output")
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_sibling_file(path)
    try:
        with disk_errors(path):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


# -- names that fit, and the errors of a full, read-only or otherwise unwritable disk -------------------
_NAME_MAX = 255  # bytes in one path component on every file system edgeface writes to (ext4, xfs, tmpfs...)


def name_max(folder: str | Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, TypeError):
        return _NAME_MAX


def sibling_stem(name: str, room: int, folder: str | Path = ".") -> str:
    """``name`` itself when ``.NAME`` plus ``room`` more bytes fits the folder's name limit, else a short hash
    of it: temporary and staging siblings of a 250-byte output name must not fail with ENAMETOOLONG."""
    if len(os.fsencode(name)) + 1 + room <= name_max(folder):
        return name
    return "h" + hashlib.sha256(os.fsencode(name)).hexdigest()[:24]


def _new_sibling_file(path: Path) -> Path:
    import secrets

    stem = sibling_stem(path.name, 24, path.parent)
    for _ in range(100):
        tmp = path.parent / f".{stem}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


_DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free some space or choose another place",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose another place",
    errno.EFBIG: "the file is larger than this file system allows; choose another place",
    errno.EROFS: "the file system is read-only; choose a writable place",
    errno.ENAMETOOLONG: "a name in the path is too long for the file system; choose a shorter path",
    errno.EACCES: "permission denied; choose a place you may write to",
    errno.EPERM: "operation not permitted; choose a place you may write to",
    errno.EIO: "the device reported an I/O error; check the disk",
}


def os_error_message(e: OSError, path: str | Path | None = None) -> str:
    """One line for an OSError: what failed on which path, and what to do about it."""
    # The path the caller writes names the problem best; else the destination of a copy or rename (filename2).
    where = path if path is not None else next(
        (f for f in (getattr(e, "filename2", None), getattr(e, "filename", None)) if f is not None), None)
    if isinstance(where, bytes):
        where = os.fsdecode(where)
    where = str(where) if where is not None else None
    if where is not None and len(where) > 300:
        where = where[:150] + "..." + where[-60:]
    why = _DISK_ERRNOS.get(e.errno) or ((e.strerror or type(e).__name__).lower() + "; check the path")
    return f"cannot write {where}: {why}" if where else f"cannot write: {why}"


def disk_full(path: str | Path) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing parent) has no room left for a
    block: writers that wrap ENOSPC in their own exception (torch's RuntimeError) are recognised by this."""
    p = Path(path).absolute()
    for q in (p, *p.parents):
        try:
            st = os.statvfs(q)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize < (64 << 10) or (st.f_files > 0 and st.f_favail == 0)
    return False


@contextmanager
def disk_errors(path: str | Path):
    """Turn a write's OSError (full disk, read-only mount, name too long, no permission) into one EdgefaceError
    line naming ``path``; so also a library's own exception when the disk is full (torch raises RuntimeError)."""
    from .errors import EdgefaceError

    try:
        yield
    except EdgefaceError:
        raise
    except OSError as e:
        raise EdgefaceError(os_error_message(e, path)) from None
    except Exception:  # noqa: BLE001 - writers wrap ENOSPC in their own types
        if disk_full(path):
            raise EdgefaceError(os_error_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)) from None
        raise


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
    with disk_errors(out):
        staged = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{_staging_stem(out)}{PARTIAL_TAG}{os.getpid()}-"))
        os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes 0700
    return staged


def aside_path(out: Path) -> Path:
    """Where a replaced output folder waits while the new one is renamed into place."""
    import time

    out = Path(out)
    return out.parent / f".{_staging_stem(out)}{OLD_TAG}{os.getpid()}-{int(time.time())}"


def replace_folder(staged: Path, out: Path) -> None:
    """Rename the finished folder ``staged`` onto ``out``. An existing ``out`` (the caller has checked it is
    edgeface's) waits aside until the new one is in place, then is deleted."""
    if not Path(out).exists():
        os.replace(staged, out)
        return
    aside = aside_path(out)
    os.rename(out, aside)
    os.replace(staged, out)
    shutil.rmtree(aside, ignore_errors=True)


def move_files_into(src: Path, dest: Path) -> None:
    """Move every entry of the finished folder ``src`` into ``dest`` (made if missing): a report's files land
    beside the user's other files there, and those of an older report with the same names are replaced."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        target = dest / f.name
        if target.is_dir() and f.is_dir():
            shutil.rmtree(target)
        os.replace(f, target)


def _staging_stem(out: Path) -> str:
    return sibling_stem(out.name, 40, out.parent if out.parent.is_dir() else ".")


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove ``.NAME.partial-PID-*`` / ``.NAME.old-PID-*`` folders beside ``out`` whose process is gone."""
    out = Path(out)
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    stem = _staging_stem(out)
    for p in out.parent.glob(f".{glob.escape(stem)}.*-*"):
        for tag in (PARTIAL_TAG, OLD_TAG):
            prefix = f".{stem}{tag}"
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
            pid = next((int(x) for x in parts[1:] if x.isdigit()), None)  # KIND may hold dashes
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


# -- output folders edgeface wrote, recognised by their sealed content -------------------------------------
SEAL_KEY = "sealed_sha256"  # in a folder's record (quantize.json): sha256 of the record's canonical JSON


def record_digest(record: dict, key: str = SEAL_KEY) -> str:
    """sha256 of ``record``'s canonical JSON (sorted keys, no spaces) without its own digest field ``key``;
    the record lists every file's sha256, so the digest covers the whole folder."""
    body = {k: v for k, v in record.items() if k != key}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=to_jsonable)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def folder_files(root: str | Path, skip=()) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}} of every file under ``root`` but ``skip`` (names at the top)."""
    root = Path(root)
    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel in skip or p.is_dir() and not p.is_symlink():
            continue
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return files


def seal_record(record: dict, root: str | Path, skip=()) -> dict:
    """``record`` with the files of ``root`` and its seal added: what ``sealed_folder_problem`` checks."""
    # Normalised through JSON first (tuples, paths, numpy values, int keys): the digest is then over exactly
    # what a later reader loads back.
    record = json.loads(json.dumps({**record, "files": folder_files(root, skip)}, default=to_jsonable))
    record[SEAL_KEY] = record_digest(record)
    return record


def sealed_folder_problem(root: str | Path, record_name: str, *, key: str = SEAL_KEY, digest=None,
                          allowed=lambda rel: False) -> str | None:
    """None when folder ``root`` is provably one edgeface wrote: its ``record_name`` JSON carries a digest of
    itself (``digest(record)``, by default ``record_digest``) and lists exactly the files the folder holds,
    each with its sha256. Otherwise why not, in a few words. A user's folder cannot pass by accident (it
    would need a self-consistent sha256 over the sha256 of each of its files), so a folder that passes may be
    replaced; anything else (a user's own manifest.json, an extra file dropped in, an edited model) may not.
    ``allowed(rel)``: files beyond the list that edgeface itself adds later (a bundle's signature, engines
    built on the device)."""
    root = Path(root)
    rec_path = root / record_name
    if rec_path.is_symlink() or not rec_path.is_file():
        return f"it has no {record_name} that edgeface wrote"
    try:
        if rec_path.stat().st_size > 4 << 20:
            return f"its {record_name} is too large to be edgeface's"
        record = json.loads(rec_path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return f"its {record_name} is not edgeface's JSON"
    if not isinstance(record, dict) or not isinstance(record.get(key), str) or not isinstance(record.get("files"),
                                                                                              dict):
        return f"its {record_name} carries no sealed digest"
    try:
        sealed = (digest or (lambda r: record_digest(r, key)))(record) == record[key]
    except (TypeError, ValueError):
        sealed = False
    if not sealed:
        return f"its {record_name} does not match its sealed digest"
    listed = record["files"]
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel == record_name or (p.is_dir() and not p.is_symlink()):
            continue
        if rel in listed:
            entry = listed[rel]
            if p.is_symlink() or not isinstance(entry, dict) or entry.get("sha256") != sha256_file(p):
                return f"{rel} is not the file edgeface wrote there"
        elif not allowed(rel):
            return f"it holds {rel}, which edgeface did not write"
    missing = [rel for rel in listed if not (root / rel).is_file()]
    if missing:
        return f"{missing[0]} is missing from it"
    return None


@contextmanager
def removed_on_failure(folder: str | Path, make: bool = True):
    """Make ``folder`` (and missing parents; ``make=False``: leave that to the block); when the block fails,
    remove again those of them that did not exist before and are empty, so a failed command (a full disk, a
    bad input found late) leaves no output folder behind."""
    folder = Path(folder)
    made = [q for q in [folder, *folder.parents] if not os.path.lexists(q)]
    if make:
        with disk_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for q in made:  # deepest first
            try:
                q.rmdir()
            except OSError:  # not empty (or never made): keep it and what is above it
                break
        raise


# -- paths for native libraries ------------------------------------------------------------------------------
def native_name(path: str | Path) -> str | None:
    """``path`` as a str that OpenCV and FFmpeg can take (valid UTF-8), or None: a name holding bytes that are
    not UTF-8 (Python keeps them as surrogates) crashed ``cv2.imread`` and is refused by ``VideoCapture``."""
    s = os.fspath(path)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return s


@contextmanager
def native_path(path: str | Path, *, folder: bool = False):
    """A path native code can open for ``path`` (``folder``: for the folder ``path`` names, so that a file
    with an ASCII name can be made in it): ``path`` itself when it is UTF-8, else ``/proc/self/fd/N`` through
    a descriptor held open for the block (Linux)."""
    from .errors import EdgefaceError

    s = native_name(path)
    if s is not None:
        yield s
        return
    if not os.path.isdir("/proc/self/fd"):
        raise EdgefaceError(f"{path!s} has a name that is not UTF-8, which OpenCV cannot open here; rename it")
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
