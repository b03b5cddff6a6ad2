"""One benchmark subject in its own process, driven over stdin/stdout (one JSON object per line).

A fresh process per (artifact, batch, threads) makes load time, first inference and peak RSS belong to
that artifact alone, and lets the parent interleave several artifacts in round-robin blocks while only
one of them runs at any moment.

Requests: load, first, warmup, time, rss, outputs, accuracy, quit. Replies: {"ok": ...} or {"error": msg}.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback

import numpy as np

from ..core.errors import EdgefaceError
from ..engines import registry
from ..runtime.predictor import Predictor, artifact_engine
from . import stats


def engine_package(artifact: str, backend: str):
    """Import the Python package of the engine that will run ``artifact``; its name, or None if unknown."""
    try:
        engine = registry.get(backend) if backend != "auto" else artifact_engine(artifact)
    except (OSError, ValueError, EdgefaceError):
        return None
    try:
        importlib.import_module(engine.package)
    except Exception:  # noqa: BLE001 - the Predictor reports a broken engine properly
        return None
    return engine.package


class Subject:
    def __init__(self):
        self.predictor = None
        self.inputs = None

    def load(self, artifact, backend, threads, inputs, precision=None):
        self.inputs = dict(np.load(inputs)) if inputs else None
        # Importing the engine's Python package is timed apart from creating the session: it is paid once
        # per process, however many models it loads.
        t0 = time.perf_counter_ns()
        package = engine_package(artifact, backend)
        import_ms = (time.perf_counter_ns() - t0) / 1e6 if package else None
        rss_before = stats.rss_mb()
        t0 = time.perf_counter_ns()
        self.predictor = Predictor(artifact, backend=backend, threads=threads, precision=precision)  # loads it
        load_ms = (time.perf_counter_ns() - t0) / 1e6
        return {"load_ms": load_ms, "import_ms": import_ms, "engine_package": package,
                "backend": self.predictor.backend, "precision": self.predictor.precision,
                "inference_precision": self.predictor.info().get("inference_precision"),
                "passes_per_face": 2 if self.predictor.mirror else 1,
                "spec": self.predictor.spec.to_dict(), "rss_before_load_mb": rss_before}

    def _batch(self, batch):
        crops = self.inputs["timing"]
        if len(crops) < batch:
            crops = np.concatenate([crops] * (batch // len(crops) + 1))
        return np.ascontiguousarray(crops[:batch])

    def first(self, batch):
        x = self._batch(batch)
        t0 = time.perf_counter_ns()
        self.predictor.predict(x)
        return {"first_inference_ms": (time.perf_counter_ns() - t0) / 1e6}

    def warmup(self, batch, n):
        x = self._batch(batch)
        for _ in range(n):
            self.predictor.predict(x)
        return {}

    def time(self, batch, iters=None, seconds=None):
        return {"ns": stats.time_calls(self.predictor.predict, self._batch(batch), iters=iters, seconds=seconds)}

    def rss(self):
        return {"peak_rss_mb": stats.peak_rss_mb(), "rss_mb": stats.rss_mb()}

    def outputs(self, out):
        """Raw outputs on the reference inputs, saved for the parent's vs-reference comparison."""
        from ..faces.evaluate import run_batched

        blur, pose = run_batched(self.predictor.blur_and_pose, self.inputs["reference"])
        np.savez(out, blur=blur, pose=pose)
        return {}

    def accuracy(self):
        from ..faces.evaluate import evaluate_crops

        return {"accuracy": evaluate_crops(self.predictor.blur_and_pose, self.inputs["eval"],
                                           self.inputs["eval_pose"])}

    def close(self):
        if self.predictor is not None:
            self.predictor.close()
        return {}


def main() -> None:
    # The protocol owns the real stdout; whatever a native library prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    subject = Subject()
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req.pop("cmd")
        try:
            if cmd == "quit":
                subject.close()
                proto.write(json.dumps({"ok": {}}) + "\n")
                break
            reply = {"ok": getattr(subject, cmd)(**req)}
        except EdgefaceError as e:
            reply = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
        except Exception as e:  # noqa: BLE001 - reported to the parent as one line plus the traceback
            reply = {"error": f"{type(e).__name__}: {e}".splitlines()[0], "traceback": traceback.format_exc()}
        proto.write(json.dumps(stats.clean(reply)) + "\n")


if __name__ == "__main__":
    main()
