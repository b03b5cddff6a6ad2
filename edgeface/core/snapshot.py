"""Read a folder as one snapshot, and each file in it once: the bytes edgeface verifies are the bytes it loads.

A bundle is checked (manifest, signature, every file's sha256) and then loaded. Done by path, each step
would open the files again, and another process could swap a file or remove the manifest between the
check and the load. ``FolderSnapshot`` opens the folder once and lists its entries once; every later
read goes through that folder's descriptor, never follows a symbolic link, refuses anything that is not
a regular file (a FIFO would block forever) and returns the bytes, which the caller hashes and hands on
to the engine as they are. Nothing here needs more than the standard library.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import EdgefaceError

MAX_FILE_BYTES = 4 << 30       # no edgeface model file comes near; a bigger one is refused, not read
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_AT_SUPPORTED = os.open in os.supports_dir_fd and os.listdir in os.supports_fd


class FolderSnapshot:
    """One open folder: ``names`` (its entries, listed once) and ``read(rel)`` through its descriptor.

    Use as a context manager. Where the platform cannot open files relative to a folder descriptor the
    reads fall back to paths (still without following links in the last component)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, _DIR_FLAGS) if _AT_SUPPORTED else None
            self.names = frozenset(os.listdir(self._fd if self._fd is not None else self.path))
        except FileNotFoundError:
            raise EdgefaceError(f"{self.path} does not exist") from None
        except NotADirectoryError:
            raise EdgefaceError(f"{self.path} is not a folder") from None
        except PermissionError:
            raise EdgefaceError(f"{self.path} cannot be read (permission denied)") from None

    def __enter__(self) -> "FolderSnapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading ----------------------------------------------------------------------------------------
    def read(self, rel: str, limit: int = MAX_FILE_BYTES) -> bytes:
        """The bytes of ``rel`` ('/'-separated, inside the folder). FileNotFoundError when it is not there
        (the caller words that); EdgefaceError for a link, a non-regular file or one over ``limit`` bytes."""
        return _read_regular(self._open(rel), str(self.path / rel), limit)

    def _open(self, rel: str) -> int:
        parts = rel.split("/")
        if self._fd is None:
            try:
                return os.open(self.path.joinpath(*parts), _FILE_FLAGS)
            except OSError as e:
                self._raise(e, rel)
        opened: list[int] = []
        try:
            dfd = self._fd
            for part in parts[:-1]:
                dfd = os.open(part, _DIR_FLAGS | getattr(os, "O_NOFOLLOW", 0), dir_fd=dfd)
                opened.append(dfd)
            return os.open(parts[-1], _FILE_FLAGS, dir_fd=dfd)
        except OSError as e:
            self._raise(e, rel)
        finally:
            for fd in opened:
                os.close(fd)

    def _raise(self, e: OSError, rel: str):
        if isinstance(e, FileNotFoundError):
            raise e
        if e.errno in (errno.ELOOP, errno.ENOTDIR, getattr(errno, "EMLINK", -1)):
            raise EdgefaceError(f"{self.path / rel} is (or passes through) a symbolic link or not a plain file; a "
                                f"bundle holds plain files only") from None
        raise EdgefaceError(f"{self.path / rel} cannot be read ({e.strerror or type(e).__name__})") from None

    def walk(self) -> list[tuple[str, str]]:
        """Every entry under the folder as (relative name, kind), kind one of "file", "dir", "link", "other";
        links are reported, never followed."""
        out: list[tuple[str, str]] = []
        self._walk(self._fd, self.path, "", out, depth=0)
        return out

    def _walk(self, dfd, dpath: Path, prefix: str, out: list, depth: int) -> None:
        if depth > 32:
            raise EdgefaceError(f"{self.path} nests folders more than 32 deep; it is not a bundle")
        names = sorted(os.listdir(dfd if dfd is not None else dpath))
        for name in names:
            rel = prefix + name
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False) if dfd is not None else \
                    os.lstat(dpath / name)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "link"))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, "dir"))
                if dfd is None:
                    self._walk(None, dpath / name, rel + "/", out, depth + 1)
                    continue
                try:
                    sub = os.open(name, _DIR_FLAGS | getattr(os, "O_NOFOLLOW", 0), dir_fd=dfd)
                except OSError:
                    out.append((rel, "other"))
                    continue
                try:
                    self._walk(sub, dpath / name, rel + "/", out, depth + 1)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                out.append((rel, "file"))
            else:
                out.append((rel, "other"))


def read_file_once(path: str | Path, what: str = "file", limit: int = MAX_FILE_BYTES) -> bytes:
    """A loose file's bytes, read once (links followed: a user may link a model from elsewhere; outside a
    bundle there is nothing to verify); one EdgefaceError line when it is missing or not a regular file."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise EdgefaceError(f"{what} {p} does not exist") from None
    except OSError as e:
        raise EdgefaceError(f"{what} {p} cannot be read ({e.strerror or type(e).__name__})") from None
    return _read_regular(fd, f"{what} {p}", limit)


def _read_regular(fd: int, name: str, limit: int) -> bytes:
    """The bytes behind an open descriptor, which this closes: ``name`` (how errors call the file) must be a
    regular file of at most ``limit`` bytes, and may not grow past it while it is read."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EdgefaceError(f"{name} is not a regular file")
        if st.st_size > limit:
            raise EdgefaceError(f"{name} has {st.st_size} bytes, more than the {limit} expected")
        chunks, left = [], limit + 1   # one byte past the limit tells a file that grew while read
        while left > 0:
            block = os.read(fd, min(left, 1 << 24))
            if not block:
                break
            chunks.append(block)
            left -= len(block)
        data = b"".join(chunks)
        if len(data) > limit:
            raise EdgefaceError(f"{name} grew past {limit} bytes while it was read")
        return data
    finally:
        os.close(fd)
