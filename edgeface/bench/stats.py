"""Timing and memory primitives: the numbers `edgeface bench` reports, computed in one place.

Latency is wall-clock time around each ``predict`` call (``time.perf_counter_ns``), so it includes the
Predictor's preprocessing of uint8 crops: what an application pays per call.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time
from typing import Callable, Optional

import numpy as np

PERCENTILES = (50, 90, 99)


def time_calls(fn: Callable, x, *, iters: Optional[int] = None, seconds: Optional[float] = None) -> list[int]:
    """Per-call durations in ns: exactly ``iters`` calls, or calls until ``seconds`` of them were timed."""
    if (iters is None) == (seconds is None):
        raise ValueError("pass exactly one of iters and seconds")
    perf = time.perf_counter_ns
    durations: list[int] = []
    if iters is not None:
        for _ in range(iters):
            t0 = perf()
            fn(x)
            durations.append(perf() - t0)
        return durations
    budget, spent = int(seconds * 1e9), 0
    while spent < budget or not durations:
        t0 = perf()
        fn(x)
        d = perf() - t0
        durations.append(d)
        spent += d
    return durations


def latency_stats(durations_ns) -> dict:
    """p50/p90/p99 (linear interpolation between order statistics), mean, min, max, in milliseconds."""
    a = np.asarray(durations_ns, np.float64) / 1e6
    if a.size == 0:
        return {k: None for k in ("p50", "p90", "p99", "mean", "min", "max")}
    p = np.percentile(a, PERCENTILES)
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max())}


def throughput(durations_ns, batch: int) -> Optional[float]:
    """Images per second over the timed calls (sum of call times, not wall time between them)."""
    total = float(np.sum(np.asarray(durations_ns, np.float64)))
    return batch * len(durations_ns) / (total / 1e9) if total > 0 else None


def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> Optional[float]:
    """This process's peak resident set, in MB (1e6 bytes): VmHWM on Linux, else getrusage's ru_maxrss."""
    kb = _status_kb("VmHWM")
    if kb is None:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = maxrss / 1024 if sys.platform == "darwin" else maxrss  # macOS reports bytes, Linux kB
    return kb * 1024 / 1e6 if kb else None


def rss_mb() -> Optional[float]:
    kb = _status_kb("VmRSS")
    return kb * 1024 / 1e6 if kb is not None else None


def file_size_mb(paths) -> Optional[float]:
    try:
        return sum(os.path.getsize(p) for p in paths) / 1e6
    except OSError:
        return None


def clean(obj):
    """NaN/inf -> None and numpy scalars -> Python, so the JSON is valid and null means 'not measured'."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
