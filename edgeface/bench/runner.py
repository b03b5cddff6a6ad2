"""Orchestration: artifacts x batch sizes x thread counts, interleaved, each subject in its own process.

For every (batch, threads) the subjects (one worker process per artifact) are loaded one after the other,
warmed up, then timed in round-robin blocks (the order rotates every round), so drift in the machine's
clock, temperature or background load hits every artifact alike. Accuracy and the deviation from the FP32
reference are measured once per artifact on the same inputs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core import __version__
from ..core.device import device_info, is_throttled, pitfall_warnings
from ..core.errors import EdgefaceError
from ..core.limits import check_batch, check_threads, finite, short
from ..core.io import TEMP_PREFIX, atomic_path, clean_stale_temp
from ..core import timing
from ..core.spec import PRECISIONS, ModelSpec
from ..engines import registry
from ..runtime.predictor import artifact_engine
from . import stats

CONTRACT_KEYS = ("artifact", "backend", "precision", "batch", "threads", "latency_ms", "throughput_ips", "load_ms",
                 "first_inference_ms", "peak_rss_mb", "size_mb", "accuracy", "vs_reference", "device")
ACCURACY_KEYS = ("yaw_mae", "pitch_mae", "roll_mae", "mean_mae", "blur_mae", "blur_spearman", "n")
VS_REFERENCE_KEYS = ("pose_max_abs", "pose_mean_abs", "blur_max_abs")  # the contract's; faces.evaluate.vs_fp32 adds
VS_FP32_KEYS = ("n_faces", "pose_max_abs", "pose_mean_abs", "pose_p99_abs", "pose_max_rotation", "pose_mean_rotation",
                "blur_max_abs", "blur_mean_abs", "pose_mae", "fp32_pose_mae")
REFERENCE_INPUTS = 64  # synthetic crops for the vs-reference check when no labelled faces are found
# A typo (--duration 2000000, --iters 1e9) must not hold the machine for days: an hour per configuration at most.
MAX_DURATION_S = 3600.0
MAX_ITERS = 1_000_000


@dataclass
class BenchConfig:
    artifacts: list[str]
    batches: list[int] = field(default_factory=lambda: [1])
    threads: list[Optional[int]] = field(default_factory=lambda: [1])
    warmup: int = 10
    iters: Optional[int] = None
    duration: Optional[float] = 2.0
    rounds: int = 10
    backend: str = "auto"
    data: Optional[str] = None
    split: Optional[str] = "val"
    limit: Optional[int] = None
    reference: str = "auto"   # "auto" (first FP32 artifact), "none", or a path to an artifact / checkpoint
    precision: Optional[str] = None  # run every artifact at this precision (bf16: the FP32 ONNX on OpenVINO)

    def check(self) -> None:
        if not self.artifacts:
            raise EdgefaceError("no artifact given: edgeface bench model.onnx [model.ncnn.param ...]")
        for a in self.artifacts:
            if not Path(a).exists():
                raise EdgefaceError(f"artifact {a} does not exist")
        if any(b < 1 for b in self.batches):
            raise EdgefaceError(f"--batch values must be ≥ 1, got {self.batches}")
        if any(t is not None and t < 1 for t in self.threads):
            raise EdgefaceError(f"--threads values must be ≥ 1, got {self.threads}")
        for t in self.threads:
            check_threads(t, "--threads")
        for b in self.batches:
            check_batch(b, 112)  # the usual input size; checked again against the artifact's own spec below
        if self.iters is not None and not 1 <= self.iters <= MAX_ITERS:
            raise EdgefaceError(f"--iters must be from 1 to {MAX_ITERS}, got {self.iters}")
        if self.iters is None and not (finite(self.duration) and 0 < self.duration <= MAX_DURATION_S):
            raise EdgefaceError(f"--duration must be > 0 and at most {MAX_DURATION_S} seconds (or pass --iters N), "
                                f"got {short(self.duration)}")
        if self.warmup < 0:
            raise EdgefaceError(f"--warmup must be ≥ 0, got {self.warmup}")
        if self.rounds < 1:
            raise EdgefaceError(f"--rounds must be ≥ 1, got {self.rounds}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise EdgefaceError(f"--precision must be one of {', '.join(PRECISIONS)}, got {short(self.precision)}")


def artifact_files(path: str | Path) -> list[Path]:
    """Every file that makes up an artifact: a bundle folder's files, or the artifact and the companions its
    engine names (ncnn's .bin and spec file, an ONNX's external data, an engine's record)."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    try:
        return registry.engine_of_artifact(p).files_of(p)
    except EdgefaceError:
        return [p]


# -- worker processes -------------------------------------------------------------------------------------
class Worker:
    """One subject process. Requests are synchronous: only one worker computes at a time."""

    def __init__(self, label: str):
        self.label = label
        env = dict(os.environ)
        # Predictor(threads=N) sets the engine's pools; OpenMP/BLAS pools outside it must not add threads.
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeface.bench.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=env)

    def call(self, cmd: str, **kw):
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            last = [ln for ln in err.strip().splitlines() if ln.strip()]
            raise EdgefaceError(f"{self.label}: the benchmark process died during '{cmd}'"
                                + (f" ({last[-1].strip()})" if last else ""))
        reply = json.loads(line)
        if "error" in reply:
            raise EdgefaceError(f"{self.label}: {reply['error']}")
        return reply["ok"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("quit")
            except EdgefaceError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


# -- inputs ---------------------------------------------------------------------------------------------
def _synthetic_crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random images: deterministic stand-ins when no data is given (timing does not depend on content)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(s, (size, size), interpolation=cv2.INTER_CUBIC) for s in small])


def check_labelled(data: str, split: Optional[str]) -> None:
    """--data before any work: a set or a folder of sets (as `eval` takes); one without labels, or without any pose
    label, is refused in one line."""
    from ..faces.data import find_sets, load_samples

    for folder in find_sets(data):
        samples = load_samples(folder, split=split or None, require_labels=True)
        if np.isnan(np.array([s.pose for s in samples], np.float32)).all():
            raise EdgefaceError(f"{folder} has no yaw/pitch/roll labels (labels.csv needs yaw,pitch,roll columns) "
                                "so pose accuracy cannot be measured; drop --data to benchmark speed only")


def _spec_from_dict(d):
    return ModelSpec.from_dict(d) if d else ModelSpec()


# -- the run ----------------------------------------------------------------------------------------------
def artifact_label(artifact: str) -> str:
    """How a row names its artifact: the file with its folder ("x86/model.onnx")."""
    p = Path(artifact)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def vs_reference(out: dict, ref: dict, truth=None) -> dict:
    """A row's ``vs_reference``: the deviation of an artifact's outputs from the reference's (the contract's keys),
    and beside them what quantize and deploy print (``faces.evaluate.vs_fp32``: face count, p99, both MAEs)."""
    from ..faces.evaluate import vs_fp32

    return vs_fp32(out["blur"], out["pose"], ref["blur"], ref["pose"], truth)


@dataclass
class _Run:
    """One `bench` run's shared state: what is measured, where the inputs are, and what the first configuration
    measured once for all (accuracy, outputs for the deviation from the reference, each artifact's load info)."""

    cfg: BenchConfig
    labels: list[str]
    sizes: list[float]
    device: dict
    work: Path
    progress: object = None
    task: object = None
    accuracy: dict = field(default_factory=dict)   # artifact index -> accuracy on the labelled faces
    outputs: dict = field(default_factory=dict)    # artifact index (-1: an outside reference) -> outputs
    info: dict = field(default_factory=dict)       # artifact index -> its first load's answer
    ref_index: Optional[int] = None
    ref_label: Optional[str] = None

    @property
    def inputs(self) -> Path:
        return self.work / "inputs.npz"


def run_bench(cfg: BenchConfig, device: Optional[dict] = None, progress=None,
              faces_out: Optional[dict] = None) -> tuple[list[dict], list[str]]:
    """Benchmark every artifact x batch x threads. Returns (rows in the contract's shape, warnings).
    ``faces_out``: filled with {"crops", "reference_pose", "poses": {label: pose}} for the report's pictures."""
    cfg.check()
    labels = [artifact_label(a) for a in cfg.artifacts]
    if len(set(labels)) < len(labels):  # same file name in different folders: fall back to full paths
        labels = [str(a) for a in cfg.artifacts]
    clean_stale_temp()
    work = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}bench-{os.getpid()}-"))  # PID: a killed run is cleaned next time
    run = _Run(cfg, labels, [stats.file_size_mb(artifact_files(a)) for a in cfg.artifacts],
               device if device is not None else device_info(), work, progress)
    try:
        spec = _first_artifact_spec(run)  # the crop geometry travels with the (first) artifact
        check_batch(max(cfg.batches), spec.input_size)
        faces_name, labelled = _write_inputs(run.inputs, cfg, spec, batch_max=max(cfg.batches))
        truth = dict(np.load(run.inputs)).get("eval_pose") if labelled else None
        configs = [(t, b) for t in cfg.threads for b in cfg.batches]
        run.task = progress.add_task("benchmark", total=len(configs) * len(cfg.artifacts) * cfg.rounds) \
            if progress else None
        rows: list[dict] = []
        for ci, (threads, batch) in enumerate(configs):
            rows += _bench_configuration(run, threads, batch, first=ci == 0, labelled=labelled)
        _fill_accuracy(run, rows, truth, faces_name)
        if faces_out is not None and run.ref_index is not None and run.ref_index in run.outputs:
            faces_out.update(crops=np.load(run.inputs)["reference"], reference_pose=run.outputs[run.ref_index]["pose"],
                             poses={labels[i]: run.outputs[i]["pose"] for i in run.outputs
                                    if i >= 0 and i != run.ref_index and run.info[i].get("precision") == "int8"})
        warnings = _run_warnings(run, rows)
        return [stats.clean(r) for r in rows], warnings
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _first_artifact_spec(run: _Run) -> ModelSpec:
    probe = Worker(run.labels[0])
    try:
        return _spec_from_dict(probe.call("load", artifact=str(run.cfg.artifacts[0]), backend=run.cfg.backend,
                                          threads=1, inputs=None, precision=run.cfg.precision)["spec"])
    finally:
        probe.close()


def _bench_configuration(run: _Run, threads: int, batch: int, first: bool, labelled: bool) -> list[dict]:
    """Every artifact at one (threads, batch), in worker processes of their own, timed in interleaved rounds; on
    the first configuration also their accuracy and outputs (and the reference's)."""
    cfg = run.cfg
    workers = [Worker(lb) for lb in run.labels]
    try:
        loaded = [w.call("load", artifact=str(a), backend=cfg.backend, threads=threads, inputs=str(run.inputs),
                         precision=cfg.precision) for a, w in zip(cfg.artifacts, workers)]
        for i, d in enumerate(loaded):
            run.info.setdefault(i, d)
        firsts = [w.call("first", batch=batch)["first_inference_ms"] for w in workers]
        for w in workers:
            if cfg.warmup:
                w.call("warmup", batch=batch, n=cfg.warmup)
        timings = _interleaved_rounds(run, workers, batch)
        rss = [w.call("rss") for w in workers]
        if first:
            _choose_reference_and_measure(labelled, workers, run.work, run.outputs, run.accuracy)
            if cfg.reference not in ("auto", "none"):
                run.ref_index, run.ref_label = -1, str(cfg.reference)
                run.outputs[-1] = reference_outputs(cfg.reference, cfg.backend, run.inputs, run.work)
            elif cfg.reference == "auto":
                run.ref_index = _auto_reference(run.info)
                run.ref_label = run.labels[run.ref_index] if run.ref_index is not None else None
        return [_row(run, i, loaded[i], firsts[i], timings[i], rss[i], batch, threads) for i in range(len(workers))]
    finally:
        for w in workers:
            w.close()


def _interleaved_rounds(run: _Run, workers: list, batch: int) -> list[list[int]]:
    """Each worker's call times (ns) over ``cfg.rounds`` rounds (``core.timing.interleaved_rounds``); who goes first
    rotates, so no one always follows another."""
    cfg = run.cfg

    def turn(worker, r: int) -> list[int]:
        if cfg.iters is not None:
            n = cfg.iters // cfg.rounds + (1 if r < cfg.iters % cfg.rounds else 0)
            ns = worker.call("time", batch=batch, iters=n)["ns"] if n else []
        else:
            ns = worker.call("time", batch=batch, seconds=cfg.duration / cfg.rounds)["ns"]
        if run.progress:
            run.progress.advance(run.task)
        return ns

    turns = timing.interleaved_rounds(workers, turn, rounds=cfg.rounds, order="rotate")
    return [[ns for t in ts for ns in t] for ts in turns]


def _row(run: _Run, i: int, loaded: dict, first_ms: float, timings: list[int], rss: dict, batch: int,
         threads: int) -> dict:
    """One artifact at one configuration, in the contract's shape (accuracy filled in later)."""
    measured_s = sum(timings) / 1e9
    return {
        "artifact": run.labels[i], "backend": loaded["backend"], "precision": loaded["precision"],
        # the network runs this many times a face (2: the spec's mirror average); a device's older edgeface says 1
        "passes_per_face": loaded.get("passes_per_face", 1),
        "batch": batch, "threads": threads, "latency_ms": stats.latency_stats(timings),
        "throughput_ips": stats.throughput(timings, batch),
        "load_ms": loaded["load_ms"], "first_inference_ms": first_ms,
        "peak_rss_mb": rss["peak_rss_mb"], "size_mb": run.sizes[i],
        "accuracy": None, "vs_reference": None, "device": run.device,
        # beyond the contract: how the numbers were taken
        "path": str(run.cfg.artifacts[i]), "iterations": len(timings), "measured_s": measured_s,
        "warmup": run.cfg.warmup, "rounds": run.cfg.rounds,
        "rss_before_load_mb": loaded["rss_before_load_mb"], "import_ms": loaded.get("import_ms"),
        "reference": None,
        "warnings": pitfall_warnings({}, iters=len(timings), measured_s=measured_s, warmup=run.cfg.warmup),
        "edgeface": __version__, "latencies_ms": [round(d / 1e6, 5) for d in timings],
    }


def _fill_accuracy(run: _Run, rows: list[dict], truth, faces_name: str) -> None:
    """Accuracy and the deviation from the reference per artifact (measured once, on the first configuration)."""
    for row in rows:
        i = run.labels.index(row["artifact"])
        acc = run.accuracy.get(i)
        row["accuracy"] = {k: acc.get(k) for k in ACCURACY_KEYS} if acc else None
        if run.ref_index is not None and i in run.outputs and run.ref_index in run.outputs:
            row["vs_reference"] = vs_reference(run.outputs[i], run.outputs[run.ref_index], truth)
            row["reference"] = run.ref_label
        row["faces"] = faces_name


def _run_warnings(run: _Run, rows: list[dict]) -> list[str]:
    """The run's warnings (the device's at the start and the end, sampling, a missing reference); each row gets
    the device's too, and the temperature / throttling state at the end."""
    end = device_info()
    warnings: list[str] = []
    if is_throttled(end) and not is_throttled(run.device):
        warnings.append(f"throttling began during the run: {is_throttled(end)}")
    warnings[:0] = pitfall_warnings(run.device)
    device_warnings = list(warnings)
    warnings += sampling_warnings(rows, run.cfg.warmup)
    if run.cfg.reference == "auto" and run.ref_index is None:
        warnings.append("no FP32 artifact among those benchmarked: vs_reference is null "
                        "(pass --reference model.onnx or a checkpoint .pt)")
    for row in rows:
        row["device_after"] = {"temperature_c": end.get("temperature_c"), "throttled": end.get("throttled")}
        row["warnings"] = list(dict.fromkeys(device_warnings + row["warnings"]))
    return warnings


def sampling_warnings(rows: list[dict], warmup: Optional[int]) -> list[str]:
    """Too few calls / too short / no warm-up, once for the whole run, naming the weakest configuration."""
    if not rows:
        return []
    weakest = min(rows, key=lambda r: (r["iterations"], r["measured_s"]))
    out = []
    for w in pitfall_warnings({}, iters=min(r["iterations"] for r in rows),
                              measured_s=min(r["measured_s"] for r in rows), warmup=warmup):
        out.append(w if w.startswith("no warm-up") else f"{w} (weakest: {weakest['artifact']} batch "
                                                        f"{weakest['batch']})")
    return out


def summarize_warnings(rows: list[dict]) -> list[str]:
    """The run's warnings from its JSON rows (used for results fetched from a device)."""
    if not rows:
        return []
    sampling = [w for r in rows for w in pitfall_warnings_of_row(r)]
    general = [w for r in rows for w in r.get("warnings") or [] if w not in sampling]
    return list(dict.fromkeys(general + sampling_warnings(rows, rows[0].get("warmup"))))


def pitfall_warnings_of_row(row: dict) -> list[str]:
    return pitfall_warnings({}, iters=row.get("iterations"), measured_s=row.get("measured_s"), warmup=row.get("warmup"))


def bench_faces(cfg: BenchConfig, spec) -> tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """(crops, poses, name) of the faces accuracy and the deviation from FP32 are measured on: --data (a set or a
    folder of sets, as `eval` takes; --limit faces of each), else the default comparison faces (the val splits
    of the shared data pack, as deploy verifies and quantize compares on), else (none here) (None, None, why)."""
    from ..faces.data import default_verify_data
    from ..faces.evaluate import COMPARISON_FACES_PER_SET, comparison_faces

    if cfg.data:
        return comparison_faces(cfg.data, spec, per_set=cfg.limit, split=cfg.split)
    data = default_verify_data()
    if data is None:
        return None, None, "synthetic images (no labelled faces found: pass --data DIR)"
    return comparison_faces(data, spec, per_set=cfg.limit or COMPARISON_FACES_PER_SET)


def _write_inputs(path: Path, cfg: BenchConfig, spec, batch_max: int) -> tuple[str, bool]:
    """inputs.npz: crops for timing, the labelled eval set, and the inputs the vs-reference check uses.
    Returns (the faces' name, whether they carry pose labels)."""
    size = spec.input_size
    arrays = {}
    crops, poses, name = bench_faces(cfg, spec)
    labelled = poses is not None and not np.isnan(poses).all()
    if crops is not None:
        arrays.update(reference=crops, timing=crops[:max(batch_max, 1)])
        if labelled:
            arrays.update(eval=crops, eval_pose=poses)
        if len(crops) < batch_max:  # timing needs a full batch: repeat the faces
            arrays["timing"] = np.resize(crops, (batch_max, *crops.shape[1:]))
    else:
        synth = _synthetic_crops(max(REFERENCE_INPUTS, batch_max), size)
        arrays.update(reference=synth[:REFERENCE_INPUTS], timing=synth[:batch_max])
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz"
        np.savez(fh, **arrays)
    return name, labelled


def _auto_reference(info: dict[int, dict]) -> Optional[int]:
    """The first FP32 artifact, ONNX Runtime preferred (the most literal translation of the checkpoint)."""
    fp32 = [i for i, d in sorted(info.items()) if str(d.get("precision", "")).lower() == "fp32"]
    ort = [i for i in fp32 if info[i].get("backend") == "onnxruntime"]
    return (ort or fp32 or [None])[0]


def _choose_reference_and_measure(labelled: bool, workers, work, outputs, accuracy) -> None:
    for i, w in enumerate(workers):
        out = work / f"outputs{i}.npz"
        w.call("outputs", out=str(out))
        outputs[i] = dict(np.load(out))
        if labelled:
            accuracy[i] = w.call("accuracy")["accuracy"]


def reference_outputs(reference: str, backend: str, inputs_path: Path, work: Path) -> dict:
    """The reference's outputs on the reference inputs, in its own worker process.

    It runs on the benchmarked ``backend`` when that engine runs the reference's format (so the
    deviation measures the artifacts, not two engines), else on the engine that fits it (a .pt reference
    runs in torch whatever --backend says).
    """
    runs_it = [e.name for e in registry.engines_running(artifact_engine(reference).format)]
    w = Worker(f"reference {reference}")
    try:
        w.call("load", artifact=str(reference), backend=backend if backend in runs_it else "auto", threads=None,
               inputs=str(inputs_path))
        out = work / "outputs_reference.npz"
        w.call("outputs", out=str(out))
        return dict(np.load(out))
    finally:
        w.close()
