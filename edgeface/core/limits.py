"""Sane bounds on the numbers a user (or a file) hands edgeface, each with a one-line error.

A typo must not take the machine down: ``--threads 100000`` would make an engine spawn that many threads,
``--batch 100000000`` would allocate tens of GB, a box of 1e9 pixels would make a crop pad a square of
1e18 bytes. These checks run where the number enters (CLI options, recipes, manifests, boxes).
"""
from __future__ import annotations

import math
import os

from .errors import EdgefaceError

THREADS_PER_CORE = 4            # threads beyond 4x the cores only add contention
MAX_BOX_COORD = float(1 << 20)  # |x|, |y|, w, h of a face box, in pixels: no camera makes 1M-pixel sides
# An image file's width x height, read from its header before decoding: a 2.6 MB PNG can declare 30000 x 30000
# pixels and take 5 GB to decode. 2^27 (134 MP, 400 MB as BGR) is beyond any camera's frame.
MAX_IMAGE_PIXELS = 1 << 27
# Camera indices: an index plus OpenCV's API-preference offsets (CAP_V4L2 = 200, ...) stays far below this;
# OpenCV takes a C int, and 2**31 was a TypeError traceback.
MAX_CAMERA_INDEX = 99_999


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    return THREADS_PER_CORE * cpu_count()


def check_threads(value, where: str = "--threads", *, allow_none: bool = True) -> int | None:
    """A positive int no larger than 4x this machine's cores (``None`` = the engine's default)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EdgefaceError(f"{where} must be a whole number of threads, got a {type(value).__name__}")
    if value < 1:
        raise EdgefaceError(f"{where} must be >= 1, got {value}")
    if value > max_threads():
        raise EdgefaceError(f"{where} is {value}, more than {THREADS_PER_CORE}x this machine's {cpu_count()} cores "
                            f"({max_threads()}); pass at most {max_threads()}")
    return value


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux; a conservative guess elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def check_batch(batch: int, input_size: int, where: str = "--batch", copies: int = 8) -> int:
    """A batch whose inputs (uint8 crops, float32 tensors and the engine's own copies: ``copies`` float32
    tensors in all) fit in half the memory available now."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise EdgefaceError(f"{where} must be a whole number >= 1, got {batch!r}")
    per_item = 3 * input_size * input_size * 4 * copies
    budget = available_memory() // 2
    if batch * per_item > budget:
        most = max(1, budget // per_item)
        raise EdgefaceError(f"{where} {batch} needs about {batch * per_item / 2**30:.1f} GiB for its inputs alone, "
                            f"more than half the memory available ({budget * 2 / 2**30:.1f} GiB); use at most {most}")
    return batch


def short(value, limit: int = 40) -> str:
    """A value for an error message: scalars shortened, containers named by type only (a YAML bomb's repr
    would take minutes and gigabytes)."""
    if value is None or isinstance(value, (bool, int, float)):
        text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge number"
    elif isinstance(value, str):
        text = repr(value[:limit] + ("..." if len(value) > limit else ""))
    else:
        n = len(value) if hasattr(value, "__len__") else None
        return f"a {type(value).__name__}" + (f" of {n} items" if n is not None else "")
    return text if len(text) <= limit + 5 else text[:limit] + "..."


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
