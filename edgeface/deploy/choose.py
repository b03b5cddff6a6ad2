"""Deploy's engine choice: measure the engines a target lists (``measure:``) on the machine the bundle will
run on, interleaved, at the target's batch size and thread count, and keep the faster.

    measure_engines(artifact, ["onnxruntime", "openvino", "openvino:throughput"], batch=64, threads=None,
                    options={"openvino": {"hint": "latency"}, "openvino:throughput": {"hint": "throughput"}})
        -> {"engines": {"onnxruntime": {"images_per_s": ..., "rounds_ips": [...]}, "openvino": {...}, ...}}
    choose(measurement, default="onnxruntime") -> (candidate, reason)

A candidate is an (engine, precision, hint) triple, named "engine", "engine:variant" for the same engine with
other options (an engine's target section names its variants: OpenVINO's other performance hint), and
"...@precision" where one deploy measures several precisions (``--precision fastest``), so the choice covers
how an engine runs as well as which one. Each candidate may run its own artifact (``artifacts``: the FP32 and
the INT8 ONNX) at its own precision (``precisions``: bf16 runs the FP32 ONNX).

A switch away from the default candidate must win by more than the measurement's own noise: the median of
the paired per-round ratios (both ran in the same round, seconds apart) must exceed 1 + margin, where the
margin is the interquartile spread of those ratios, and at least MIN_MARGIN. The result records both.

Each engine runs the bundle's artifact through ``Predictor`` exactly as the device will (uint8 crops in,
the target's options), so the figure includes what a user pays. The engines take turns in short slices
(A B, B A, A B, ...) for ``seconds`` in all, so a change in the machine's load or clock hits both alike; the
median of each engine's slices decides. An engine that is not installed (or fails to load) is recorded as
skipped with the reason, and the choice falls to the others. Runs on a device through ``--host``
(``deploy.remote.measure_remote``), so this module needs neither torch nor onnx beyond what the engines do.
"""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.timing import interleaved_rounds
from ..core.errors import EdgefaceError
from ..engines import registry
from ..runtime.predictor import Predictor

DEFAULT_SECONDS = 4.0   # the whole measurement, all engines together (after a warm-up)
SLICE_S = 0.25          # one engine's turn
MIN_ROUNDS = 5          # slices per candidate at least, however many candidates share the time: the switch
                        # margin is the spread of paired per-round ratios, which 3 rounds hardly estimate
MIN_MARGIN = 0.03       # the smallest margin a switch needs (relative), however steady the rounds were


def measure_engines(artifact: str | Path, engines: list[str], *, batch: int, threads: Optional[int],
                    options: Optional[dict] = None, seconds: float = DEFAULT_SECONDS, seed: int = 0,
                    artifacts: Optional[dict] = None, precisions: Optional[dict] = None) -> dict:
    """Images/s of each candidate (an engine, or "engine:variant") on ``artifact`` at ``batch`` and ``threads``;
    see the module docstring. ``options``: {candidate: runner options} (as the manifest will hold them);
    ``artifacts`` / ``precisions``: {candidate: its own artifact / the precision it runs at}."""
    options = options or {}
    artifacts = artifacts or {}
    precisions = precisions or {}
    out: dict = {"batch": batch, "threads": threads, "seconds": seconds, "slice_s": SLICE_S,
                 "machine": platform.node(), "cpu": platform.processor() or platform.machine(),
                 "method": "Predictor.predict on uint8 crops, engines interleaved in slices, median of slices",
                 "engines": {}}
    preds: dict[str, Predictor] = {}
    try:
        for name in engines:
            engine = engine_of(name)
            if not registry.is_installed(engine):
                out["engines"][name] = {"skipped": "not installed (pip install "
                                                   f"'edgeface[{registry.get(engine).extra}]')"}
                continue
            try:
                preds[name] = Predictor(str(artifacts.get(name, artifact)), backend=engine, threads=threads,
                                        precision=precisions.get(name), **options.get(name, {}))
            except EdgefaceError as e:
                out["engines"][name] = {"skipped": f"failed to load: {e}"}
        if not preds:
            return out
        spec = next(iter(preds.values())).spec
        crops = np.random.default_rng(seed).integers(0, 256, (batch, spec.input_size, spec.input_size, 3),
                                                     dtype=np.uint8)
        for p in preds.values():  # warm-up: first runs allocate, compile and pick kernels
            for _ in range(3):
                p.predict(crops)
        names = list(preds)

        def turn(n: str, _round: int) -> float:
            """One slice of ``n``: calls for SLICE_S, as images/s."""
            p, done, t0 = preds[n], 0, time.perf_counter()
            while True:
                p.predict(crops)
                done += 1
                dt = time.perf_counter() - t0
                if dt >= SLICE_S:
                    return done * batch / dt

        rounds = dict(zip(names, interleaved_rounds(names, turn, seconds=seconds, min_rounds=MIN_ROUNDS,
                                                    order="reverse")))
        for n in names:
            ips = statistics.median(rounds[n])
            out["engines"][n] = {"engine": engine_of(n), "precision": preds[n].precision, "options": options.get(n, {}),
                                 "images_per_s": round(ips, 1), "ms_per_batch": round(1000 * batch / ips, 4),
                                 "rounds_ips": [round(v, 1) for v in rounds[n]],
                                 "info": {k: v for k, v in preds[n].info().items()
                                          if k in ("version", "hint", "requests", "providers", "precision",
                                                   "inference_precision")}}
    finally:
        for p in preds.values():
            p.close()
    return out


def engine_of(candidate: str) -> str:
    """The engine a measured candidate runs on ("openvino:throughput@bf16" -> "openvino")."""
    return candidate.partition("@")[0].partition(":")[0]


def switch_margin(rounds: list[float], default_rounds: list[float]) -> dict:
    """How ``rounds`` compare with ``default_rounds`` slice by slice (same round, seconds apart): the median of
    the paired ratios, their interquartile spread, and the margin a switch needs (that spread, at least
    MIN_MARGIN)."""
    ratios = sorted(a / b for a, b in zip(rounds, default_rounds) if b > 0)
    if not ratios:
        return {"paired_ratio": None, "spread_iqr": None, "margin": MIN_MARGIN, "rounds": 0}
    if len(ratios) >= 2:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    else:
        q1 = q3 = ratios[0]
    spread = q3 - q1
    return {"paired_ratio": round(statistics.median(ratios), 4), "spread_iqr": round(spread, 4),
            "margin": round(max(MIN_MARGIN, spread), 4), "rounds": len(ratios)}


def ranked(measurement: dict) -> list[str]:
    """The measured candidates, fastest first (skipped ones left out)."""
    measured = {n: r["images_per_s"] for n, r in measurement["engines"].items() if "images_per_s" in r}
    return sorted(measured, key=lambda n: -measured[n])


def choose(measurement: dict, default: str) -> tuple[str, str]:
    """(candidate, why): the fastest measured candidate; ``default`` when the fastest beats it by no more than
    the switch margin (``switch_margin``, recorded in ``measurement["switch"]``) or nothing else was measured."""
    measured = {n: r["images_per_s"] for n, r in measurement["engines"].items() if "images_per_s" in r}
    skipped = {n: r["skipped"] for n, r in measurement["engines"].items() if "skipped" in r}
    where = f"batch {measurement['batch']}, threads {measurement['threads'] or 'all'}"
    if not measured:
        return default, f"nothing could be measured ({'; '.join(f'{n}: {w}' for n, w in skipped.items())}); " \
                        f"the target's backend {default}"
    best = max(measured, key=measured.get)
    note = "".join(f"; {n} {w}" for n, w in skipped.items())
    if len(measured) == 1:
        return best, f"only {best} could be measured ({measured[best]:.0f} img/s at {where}){note}"
    ranked = sorted(measured.items(), key=lambda kv: -kv[1])
    figures = ", ".join(f"{n} {v:.0f}" for n, v in ranked)
    if default in measured and best != default:
        switch = switch_margin(measurement["engines"][best].get("rounds_ips") or [],
                               measurement["engines"][default].get("rounds_ips") or [])
        switch.update({"from": default, "to": best})
        measurement["switch"] = switch
        ratio = switch["paired_ratio"] if switch["paired_ratio"] is not None else measured[best] / measured[default]
        if ratio <= 1 + switch["margin"]:
            return default, (f"{best} was {ratio:.3f}x {default} (median of paired rounds), within the margin of "
                             f"{switch['margin']:.1%} (the rounds' interquartile spread "
                             f"{switch['spread_iqr'] or 0:.1%}, "
                             f"at least {MIN_MARGIN:.0%}), so the default stays ({figures} img/s at {where}){note}")
        return best, (f"{best} measured {ratio:.2f}x {default} here (median of paired rounds; margin "
                      f"{switch['margin']:.1%}) ({figures} img/s at {where}){note}")
    second = ranked[1]
    return best, (f"{best} measured {measured[best] / second[1]:.2f}x {second[0]} here "
                  f"({figures} img/s at {where}){note}")


def measure_and_choose(artifact: str | Path, engines: list[str], default: str, **kwargs) -> dict:
    """``measure_engines`` plus the choice and its reason, as the manifest records them: ``chosen`` is the
    engine, ``candidate`` the measured candidate and ``options`` the runner options it was measured with."""
    m = measure_engines(artifact, engines, **kwargs)
    candidate, reason = choose(m, default)
    return {**m, "chosen": engine_of(candidate), "candidate": candidate,
            "options": (kwargs.get("options") or {}).get(candidate, {}), "reason": reason, "ranked": ranked(m)}
