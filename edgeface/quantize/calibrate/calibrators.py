"""Calibration methods: each turns a tensor's statistics into a clipping range.

One base class owns the plumbing (symmetric vs asymmetric, degenerate tensors); a method only says how
to pick a clipping threshold from a histogram of magnitudes:

    minmax      the largest magnitude seen (never clips)
    percentile  the magnitude below which ``percentile`` % of the values lie
    entropy     the threshold minimising KL(P || Q) between the clipped histogram and its quantized
                copy (2048 bins -> 128 levels, as TensorRT's entropy calibrator; ORT's default of 128 bins
                silently reduces to minmax)
    mse         the threshold minimising the expected squared error of clip + round
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ...core.errors import EdgefaceError
from .stats import ActivationStats

# A range narrower than this is treated as a constant tensor: its scale would underflow.
MIN_AMAX = 1e-6


class Calibrator(ABC):
    name = ""

    def threshold(self, counts: np.ndarray, edge: float, levels: int) -> float:
        """Clipping magnitude in [0, edge] for a histogram of magnitudes over [0, edge]."""
        total = counts.sum()
        if edge <= MIN_AMAX or total == 0:
            return max(edge, MIN_AMAX)
        nz = np.flatnonzero(counts)
        if len(nz) <= 1:  # (near-)constant: every value in one bin, nothing to choose between
            return edge
        # Trim the histogram to the side's real extent (the bins cover the larger side's magnitude).
        t = self._threshold(counts.astype(np.float64), edge, levels)
        return float(min(max(t, MIN_AMAX), edge))

    @abstractmethod
    def _threshold(self, counts: np.ndarray, edge: float, levels: int) -> float:
        ...

    # -- ranges ---------------------------------------------------------------------------------
    def tensor_range(self, stats: ActivationStats, name: str, symmetric: bool) -> tuple[float, float]:
        i = stats.index(name)
        if symmetric:  # int8 with zero point 0: one threshold on |x|, 127 levels a side
            counts, edge = stats.abs_hist(i)
            a = self.threshold(counts, edge, 128)
            return -a, a
        lo, hi = float(stats.minimum[i]), float(stats.maximum[i])
        absmax = stats.absmax(i)
        if lo >= 0:  # post-ReLU tensors: the whole uint8 range on [0, hi]
            counts, _ = stats.side_hist(i, True)
            return 0.0, self._side(counts, absmax, hi, 256)
        if hi <= 0:
            counts, _ = stats.side_hist(i, False)
            return -self._side(counts, absmax, -lo, 256), 0.0
        pos, _ = stats.side_hist(i, True)
        neg, _ = stats.side_hist(i, False)
        return -self._side(neg, absmax, -lo, 128), self._side(pos, absmax, hi, 128)

    def _side(self, counts: np.ndarray, absmax: float, extent: float, levels: int) -> float:
        # The side's histogram spans [0, absmax]; cut it at the side's own extent before choosing.
        if absmax <= 0:
            return MIN_AMAX
        n = max(1, int(np.ceil(len(counts) * extent / absmax)))
        return self.threshold(counts[:n], extent, levels)

    def ranges(self, stats: ActivationStats, names, symmetric: bool) -> dict[str, tuple[float, float]]:
        return {n: self.tensor_range(stats, n, symmetric) for n in names}


class MinMaxCalibrator(Calibrator):
    name = "minmax"

    def _threshold(self, counts, edge, levels):
        return edge


class PercentileCalibrator(Calibrator):
    name = "percentile"

    def __init__(self, percentile: float = 99.99):
        if not 50.0 < percentile <= 100.0:
            raise EdgefaceError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def _threshold(self, counts, edge, levels):
        cdf = np.cumsum(counts) / counts.sum()
        k = int(np.searchsorted(cdf, self.percentile / 100.0))
        return edge * min(k + 1, len(counts)) / len(counts)


class EntropyCalibrator(Calibrator):
    name = "entropy"

    def __init__(self, coarse_stride: int = 16):
        self.coarse_stride = coarse_stride

    def _kl(self, counts: np.ndarray, i: int, levels: int) -> float:
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()  # clipped outliers land in the last kept bin
        # Quantize the i kept bins into `levels` groups; each group's mass spreads evenly over its
        # non-empty bins.
        group = (np.arange(i) * levels) // i
        nonzero = p > 0
        mass = np.bincount(group, weights=p, minlength=levels)
        support = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, mass[group] / np.maximum(support[group], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            return np.inf
        p, q = p / ps, q / qs
        m = p > 0
        return float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))

    def _threshold(self, counts, edge, levels):
        n = len(counts)
        if n <= levels:
            return edge
        last = int(np.flatnonzero(counts)[-1]) + 1
        candidates = list(range(levels, n + 1, self.coarse_stride))
        if candidates[-1] != n:
            candidates.append(n)
        best = min(candidates, key=lambda i: self._kl(counts, i, levels))
        fine = range(max(levels, best - self.coarse_stride + 1), min(n, best + self.coarse_stride - 1) + 1)
        best = min(fine, key=lambda i: self._kl(counts, i, levels))
        # Past the last non-empty bin the KL is flat; never widen the range beyond the data.
        return edge * min(best, last) / n


class MSECalibrator(Calibrator):
    name = "mse"

    def __init__(self, candidates: int = 200):
        self.candidates = candidates

    def _threshold(self, counts, edge, levels):
        n = len(counts)
        centres = (np.arange(n) + 0.5) * (edge / n)
        ts = np.linspace(edge / self.candidates, edge, self.candidates)
        steps = ts / (levels - 1)
        # Expected squared error of clip-then-round for each candidate threshold, over the histogram.
        x = centres[None, :]
        clipped = np.minimum(x, ts[:, None])
        q = np.round(clipped / steps[:, None]) * steps[:, None]
        err = ((x - q) ** 2 * counts[None, :]).sum(1)
        return float(ts[int(np.argmin(err))])


CALIBRATORS = {c.name: c for c in (MinMaxCalibrator, PercentileCalibrator, EntropyCalibrator, MSECalibrator)}


def get_calibrator(method: str) -> Calibrator:
    try:
        return CALIBRATORS[method]()
    except KeyError:
        raise EdgefaceError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATORS)}") from None
