"""What deploy may ship for a target: candidates, (engine, precision, hint) triples, and why one that is not
tried was left out.

    plan_precisions(target, "fastest", calib=..., qat=...)   -> ["fp32", "bf16", "int8"]  (what this CPU allows)
    plan_candidates(target, ["fp32", "bf16"], backend=None)  -> {name: Candidate}, {name: why not}

A precision is run by an engine that exports it or that says it runs it (``Backend.precision_problem``: OpenVINO
runs the FP32 ONNX at bf16 on CPUs with avx512_bf16 / amx_bf16; onnxruntime has no bf16 CPU kernels worth it,
it would convert to fp32 around every node). Deploy measures the candidates, then verifies them fastest first
and keeps the first within its precision's budget (pipeline.py); every candidate is recorded in the manifest's
``engine_choice``, the failed ones with their figures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..core.errors import EdgefaceError
from ..engines import registry
from .targets import backend_options

FASTEST = "fastest"       # --precision fastest: every precision the target lists, within each one's budget
ORDER = ("fp32", "bf16", "fp16", "int8")


@dataclass
class Candidate:
    name: str                 # "onnxruntime", "openvino:throughput", "openvino@bf16" (fastest: always "@precision")
    engine: str
    precision: str            # what it runs at
    hint: Optional[str]       # the engine's variant (OpenVINO's other performance hint); None: the target's settings
    options: dict = field(default_factory=dict)  # runner options for the manifest (threads apart)

    @property
    def artifact_kind(self) -> str:
        """Which artifact it runs: the INT8 one, or the float export (fp32, and bf16 at run time)."""
        return "int8" if self.precision == "int8" else "float"

    def to_json(self) -> dict:
        return {"engine": self.engine, "precision": self.precision, "hint": self.hint or self.options.get("hint"),
                "options": self.options}


def plan_precisions(target: dict, precision: str, *, calib: bool, qat: bool) -> tuple[list[str], dict]:
    """(precisions to try, {precision: why it is left out}) for ``--precision`` on ``target``. ``fastest`` is
    every precision the target lists; INT8 needs calibration images (or a quantization-aware checkpoint),
    bf16 an engine that runs it here."""
    listed = target["precisions"]
    if precision != FASTEST:
        if precision not in listed:
            more = [FASTEST] if target["measure"] else []
            raise EdgefaceError(f"target {target['name']} supports --precision {'|'.join(listed + more)}, "
                                f"not {precision}")
        return [precision], {}
    if not target["measure"]:
        raise EdgefaceError(f"--precision {FASTEST} measures the candidates where the bundle runs, and target "
                            f"{target['name']} measures no engines (no 'measure:'); "
                            f"pick --precision {'|'.join(listed)}")
    chosen, left_out = [], {}
    for p in sorted(listed, key=lambda q: ORDER.index(q) if q in ORDER else len(ORDER)):
        if p == "int8" and not (calib or qat):
            left_out[p] = "no --calib images (INT8 is measured only with them)"
        else:
            chosen.append(p)
    return chosen, left_out


def engines_for(target: dict, backend: Optional[str]) -> list[str]:
    """The engines deploy may put in the bundle: the forced one, the ones it measures, or the target's own."""
    if backend is not None:
        return [backend]
    return list(target["measure"]) or [target["backend"]]


def plan_candidates(target: dict, precisions: list[str], *, backend: Optional[str], measuring: bool,
                    many: bool) -> tuple[dict[str, Candidate], dict[str, str]]:
    """({name: Candidate} in the order they are listed, {name: why it cannot run here}). ``measuring``: add each
    engine's variants worth measuring (OpenVINO's other hint); ``many``: names carry their precision."""
    batch, threads = int(target["batch"]), target["threads"] or None
    out: dict[str, Candidate] = {}
    problems: dict[str, str] = {}
    for p in precisions:
        for engine in engines_for(target, backend):
            suffix = f"@{p}" if many else ""
            problem = registry.precision_problem(engine, p)
            if problem:
                problems[f"{engine}{suffix or '@' + p}"] = problem
                continue
            out[engine + suffix] = Candidate(engine + suffix, engine, p, None, _options(target, p, engine))
            if measuring and registry.get(engine).target is not None:
                for variant, settings in registry.get(engine).measure_variants(target[engine], threads, batch):
                    name = f"{engine}:{variant}{suffix}"
                    out[name] = Candidate(name, engine, p, variant, _options({**target, engine: settings}, p, engine))
    return out, problems


def _options(target: dict, precision: str, engine: str) -> dict:
    """The manifest's runner options for ``engine`` (threads are measured and written apart)."""
    return {k: v for k, v in backend_options(target, precision, engine).items() if k != "threads"}


def verify_summary(res: dict) -> dict:
    """A verification result as the manifest's engine_choice records it per candidate."""
    keys = ("passed", "exceeded", "pose_max_abs", "pose_max_rotation", "pose_p99_abs", "pose_mean_abs", "blur_max_abs",
            "pose_mae_increase")
    return {k: res.get(k) for k in keys}


def all_failed(target: str, failed: dict[str, tuple[Candidate, dict]]) -> EdgefaceError:
    """The error when no candidate passed verification, naming the real cause per precision: INT8 is a
    calibration matter; a float precision over its budget is the engine's arithmetic on this CPU, which more
    calibration images cannot change."""
    parts, fixes = [], []
    for name, (cand, res) in failed.items():
        parts.append(f"{name} {cand.precision} ({'; '.join(res['exceeded'])}; verify.{cand.precision})")
    precisions = {cand.precision for cand, _ in failed.values()}
    if "int8" in precisions:
        fixes.append("INT8: use more --calib images or --max-drop in `edgeface quantize`")
    if "bf16" in precisions:
        fixes.append("bf16: its 8-bit mantissa strays too far on this model; use --precision fp32 or int8")
    if precisions & {"fp32", "fp16"}:
        fixes.append("a float precision limit, not a calibration matter: the engine's arithmetic on this CPU "
                     "differs from the torch reference by more than the budget allows; try another --backend or "
                     "--precision")
    if len(failed) == 1:
        (name, (cand, res)), = failed.items()
        return EdgefaceError(f"the {target} {cand.precision} bundle exceeds the accuracy budget "
                             f"({'; '.join(res['exceeded'])}; "
                             f"recipes/targets/{target}.yaml verify.{cand.precision}) on {name}; {'; '.join(fixes)}; "
                             f"or --no-verify to write it anyway")
    return EdgefaceError(f"the {target} bundle exceeds the accuracy budget for every candidate: {', '.join(parts)} "
                         f"(recipes/targets/{target}.yaml); {'; '.join(fixes)}; or --no-verify to write it anyway")
