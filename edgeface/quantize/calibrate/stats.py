"""Activation statistics, collected once on the FP32 ONNX model and cached.

Every float tensor in the graph (the input and every node output) gets its min, max and a signed
histogram of ``2 * BINS`` bins over [-absmax, absmax]. All calibration methods and all backends read
ranges off these numbers, so one pass over the calibration images serves every artifact.

The cache is an ``.npz`` (no pickles) with a JSON header holding its keys: the model's sha256, the
ModelSpec (preprocessing) and the calibration set's fingerprint. A cache whose keys do not match the
request, or that cannot be read, is refused with one line naming the fix.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.errors import EdgefaceError
from ...core.io import atomic_path, check_output_file, npz_shapes, sha256_file
from ...core.preprocess import fed_to_network, to_input
from ...core.spec import ModelSpec

STATS_VERSION = 1
BINS = 2048  # per side of zero; entropy folds |x| into 2048 bins -> 128 quantized bins (TensorRT's choice)
MAX_STATS_TENSORS = 100_000  # activation tensors of one model: a few hundred for edgeface's
def default_cache_dir() -> Path:
    """$EDGEFACE_CACHE/calibration, read when used. An empty (or blank) $EDGEFACE_CACHE means unset, as XDG's
    variables do: ~/.cache/edgeface, never the current folder."""
    env = (os.environ.get("EDGEFACE_CACHE") or "").strip()
    return Path(env or Path.home() / ".cache" / "edgeface") / "calibration"


@dataclass
class ActivationStats:
    names: list[str]
    minimum: np.ndarray  # float64 (T,)
    maximum: np.ndarray  # float64 (T,)
    hist: np.ndarray     # int64 (T, 2*BINS): counts over [-absmax, absmax], absmax = max(|min|, |max|)
    header: dict = field(default_factory=dict)

    def __post_init__(self):
        self._index = {n: i for i, n in enumerate(self.names)}

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise EdgefaceError(f"tensor {name!r} has no statistics; the model does not match the statistics "
                                f"cache (re-run without --stats-cache)") from None

    def absmax(self, i: int) -> float:
        return float(max(abs(self.minimum[i]), abs(self.maximum[i])))

    def abs_hist(self, i: int) -> tuple[np.ndarray, float]:
        """Histogram of |x| (BINS bins over [0, absmax]) and its upper edge."""
        h = self.hist[i]
        return h[BINS:] + h[:BINS][::-1], self.absmax(i)

    def side_hist(self, i: int, positive: bool) -> tuple[np.ndarray, float]:
        """Histogram of one side's magnitudes over [0, absmax] and that side's extreme magnitude."""
        h = self.hist[i]
        if positive:
            return h[BINS:].copy(), float(max(self.maximum[i], 0.0))
        return h[:BINS][::-1].copy(), float(max(-self.minimum[i], 0.0))


# -- the model ------------------------------------------------------------------------------------
def float_tensors(model) -> list[str]:
    """The graph input(s) and every float node output, in topological order (initializers excluded)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    for node in model.graph.node:
        for o in node.output:
            if o and types.get(o) == onnx.TensorProto.FLOAT:
                names.append(o)
    return names


def _session_with_all_outputs(model, names: list[str], threads: int | None):
    import onnx

    from ...engines.onnxruntime.session import make_session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for n in names:
        if n not in present and n not in {i.name for i in m.graph.input}:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    # No graph optimisation: fused nodes would hide the very tensors we want to observe.
    return make_session(m.SerializeToString(), threads=threads, optimize=False)


def _model_input(sess, crops: np.ndarray, spec: ModelSpec) -> tuple[str, np.ndarray]:
    inp = sess.get_inputs()[0]
    if "uint8" in inp.type:  # preprocessing folded into the graph: it takes the crops themselves
        return inp.name, crops
    return inp.name, to_input(crops, spec)


def collect_statistics(model_path: str | Path, crops: np.ndarray, spec: ModelSpec, batch: int = 32,
                       threads: int | None = None, progress=None) -> ActivationStats:
    """Two passes over the crops in onnxruntime: min/max of every float tensor, then histograms."""
    import onnx

    model = onnx.load(str(model_path))
    names = float_tensors(model)
    sess = _session_with_all_outputs(model, names, threads)
    input_name = sess.get_inputs()[0].name
    fetch = [n for n in names if n != input_name]
    t = len(names)
    lo = np.full(t, np.inf)
    hi = np.full(t, -np.inf)
    hist = np.zeros((t, 2 * BINS), np.int64)
    n_batches = (len(crops) + batch - 1) // batch
    task = progress.add_task("calibration statistics", total=2 * n_batches) if progress is not None else None

    def run(chunk):
        name, x = _model_input(sess, chunk, spec)
        outs = sess.run(fetch, {name: x})
        vals = dict(zip(fetch, outs))
        vals[input_name] = x.astype(np.float32)
        return [np.asarray(vals[n], np.float32).ravel() for n in names]

    for start in range(0, len(crops), batch):  # pass 1: ranges
        for i, v in enumerate(run(crops[start:start + batch])):
            if v.size:
                lo[i] = min(lo[i], float(v.min()))
                hi[i] = max(hi[i], float(v.max()))
        if progress is not None:
            progress.advance(task)
    lo[~np.isfinite(lo)] = 0.0
    hi[~np.isfinite(hi)] = 0.0
    amax = np.maximum(np.abs(lo), np.abs(hi))
    for start in range(0, len(crops), batch):  # pass 2: histograms over the now known ranges
        for i, v in enumerate(run(crops[start:start + batch])):
            if not v.size:
                continue
            hist[i] += _histogram(v, amax[i])
        if progress is not None:
            progress.advance(task)
    return ActivationStats(names, lo, hi, hist)


def stats_from_arrays(arrays: dict) -> ActivationStats:
    """Statistics of given arrays (one per tensor name): the same binning as ``collect_statistics``."""
    names = list(arrays)
    lo = np.array([float(np.min(arrays[n])) for n in names])
    hi = np.array([float(np.max(arrays[n])) for n in names])
    hist = np.zeros((len(names), 2 * BINS), np.int64)
    for i, n in enumerate(names):
        hist[i] = _histogram(np.asarray(arrays[n], np.float64).ravel(), max(abs(lo[i]), abs(hi[i])))
    return ActivationStats(names, lo, hi, hist)


def _histogram(v: np.ndarray, amax: float) -> np.ndarray:
    if amax == 0:
        h = np.zeros(2 * BINS, np.int64)
        h[BINS] = v.size  # an all-zero tensor: everything in the first positive bin
        return h
    idx = np.floor((v.astype(np.float64) + amax) * (BINS / amax)).astype(np.int64)
    np.clip(idx, 0, 2 * BINS - 1, out=idx)
    return np.bincount(idx, minlength=2 * BINS)


# -- the cache ------------------------------------------------------------------------------------
def cache_keys(model_sha256: str, spec: ModelSpec, calib_fingerprint: str) -> dict:
    return {"stats_version": STATS_VERSION, "bins": BINS, "model_sha256": model_sha256,
            "preprocess_sha256": hashlib.sha256(spec.to_json().encode()).hexdigest(),
            "calib_fingerprint": calib_fingerprint}


def cache_path_for(keys: dict, cache_dir: str | Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir or default_cache_dir()) / f"stats-{digest}.npz"


def save_stats(stats: ActivationStats, path: str | Path, keys: dict) -> None:
    header = dict(keys, tensors=len(stats.names))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, header=np.array(json.dumps(header, sort_keys=True)),
                            names=np.array(stats.names, dtype=str), minimum=stats.minimum,
                            maximum=stats.maximum, hist=stats.hist)


def load_stats(path: str | Path, keys: dict | None = None) -> ActivationStats:
    """Read a statistics cache; EdgefaceError when it is corrupt or was made for something else."""
    path = Path(path)
    fix = f"delete {path} (it is recomputed) or pass another --stats-cache"
    shapes = npz_shapes(path) if path.is_file() else None
    if shapes is not None:  # from the headers, before decompressing: a small file can declare gigabytes of zeros
        t = (shapes.get("names") or (0,))[0]
        want = {"names": (t,), "minimum": (t,), "maximum": (t,), "hist": (t, 2 * BINS)}
        if t > MAX_STATS_TENSORS or any(shapes.get(k, v) != v for k, v in want.items()) \
                or math.prod(shapes.get("header", ())) > 1:
            raise EdgefaceError(f"statistics cache {path} is corrupt (array shapes do not agree); {fix}")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            names = [str(n) for n in z["names"]]
            lo, hi, hist = (np.asarray(z[k]) for k in ("minimum", "maximum", "hist"))
    except FileNotFoundError:
        raise EdgefaceError(f"statistics cache {path} does not exist") from None
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, json.JSONDecodeError) as e:
        # Not "delete it": a path that is not a cache at all may be the user's own file (a typo for the model).
        raise EdgefaceError(f"{path} is corrupt or not an edgeface statistics cache ({type(e).__name__}); pass "
                            f"--stats-cache a new file name (it is created) or a cache an earlier run wrote") from None
    t = len(names)
    if not isinstance(header, dict) or lo.shape != (t,) or hi.shape != (t,) or hist.shape != (t, 2 * BINS):
        raise EdgefaceError(f"statistics cache {path} is corrupt (array shapes do not agree); {fix}")
    if keys is not None:
        for k, want in keys.items():
            if header.get(k) != want:
                what = {"model_sha256": "a different model", "preprocess_sha256": "different preprocessing",
                        "calib_fingerprint": "a different calibration set"}.get(k, f"another {k}")
                raise EdgefaceError(f"statistics cache {path} was collected for {what} ({k} "
                                    f"{str(header.get(k))[:12]} != {str(want)[:12]}); {fix}")
    return ActivationStats(names, lo.astype(np.float64), hi.astype(np.float64), hist.astype(np.int64), header)


def load_or_collect(model_path: str | Path, calib, spec: ModelSpec, cache_path: str | Path | None = None,
                    cache_dir: str | Path | None = None, progress=None) -> tuple[ActivationStats, Path, bool]:
    """(statistics, cache file, reused). An explicit ``cache_path`` must match; the default cache dir is
    keyed by content, so a different model, spec or calibration set simply gets its own file."""
    keys = cache_keys(sha256_file(model_path), spec, calib.fingerprint)
    path = Path(cache_path) if cache_path else cache_path_for(keys, cache_dir)
    if path.exists():
        return load_stats(path, keys), path, True
    # Before the minutes of collection, not after: a cache folder that cannot be made (EDGEFACE_CACHE naming a file).
    check_output_file(path, "--stats-cache" if cache_path else
                      "statistics cache (in "
                      f"{'$EDGEFACE_CACHE' if os.environ.get('EDGEFACE_CACHE') else 'the cache folder'})")
    stats = collect_statistics(model_path, fed_to_network(calib.crops, spec), spec, progress=progress)
    stats.header = dict(keys, tensors=len(stats.names))
    save_stats(stats, path, keys)
    return stats, path, False
