"""`edgeface deploy`: weights -> a verified bundle for one device, in one step.

    export (the engine's bundle format) -> quantize (INT8 only) -> write the bundle in a temporary folder
    (staging.py) -> verify it through the same loader a device uses, Predictor(bundle), against the FP32
    torch reference on held-out faces (verify.py) -> refuse when the target's budget is exceeded -> seal
    the manifest -> rename into place; with --host, copy it to the device and check, build and bench it
    there (remote.py).

Targets are data (``recipes/targets/*.yaml``, targets.py); what an engine's bundle holds (its format, the
companions of its artifact, the check its artifact must pass) comes from the engine registry.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

from ..core.artifact import read_onnx_input_kind
from ..core.errors import EdgefaceError
from ..core.limits import short
from ..core.spec import FLOAT_NCHW, UINT8_NHWC
from ..engines import registry
from ..export import exporter_of
from ..runtime.bundle import ANY_DEVICE, open_bundle, tool_versions, write_manifest
from ..runtime.predictor import open_model
from .staging import check_out, clean_stale_partials, make_staging_dir, move_into_place
from ..core.io import clean_stale_temp
from .steps import Steps
from .targets import MAX_TARGET_BATCH, backend_options, load_target
from .verify import bundle_runner, default_verify_data, load_verify_set, verify_bundle, verify_line


@dataclass
class DeployResult:
    bundle: Path
    target: str
    backend: str
    precision: str
    manifest: dict
    verify: Optional[dict]
    seconds: float
    steps: dict = field(default_factory=dict)
    remote: Optional[dict] = None

    def to_json(self) -> dict:
        return {"bundle": str(self.bundle), "target": self.target, "backend": self.backend,
                "precision": self.precision, "engine_choice": self.manifest.get("engine_choice"),
                "files": self.manifest["files"], "verify": self.verify,
                "calibration": self.manifest.get("calibration"), "seconds": round(self.seconds, 2),
                "steps_s": {k: round(v, 2) for k, v in self.steps.items()}, "remote": self.remote}


# -- the model to deploy -----------------------------------------------------------------------------------
@dataclass
class Source:
    """What the user asked to deploy: a checkpoint (FP32 or quantization-aware) and its FP32 reference."""

    checkpoint: Optional[Path]    # None = the shipped default weights
    qat: bool                     # a QAT checkpoint: INT8 without a calibration set
    meta: dict
    terms: str                    # the weights' terms, recorded in the manifest

    @property
    def label(self) -> str:
        return str(self.checkpoint) if self.checkpoint else "shipped default model"

    @cached_property
    def record(self) -> dict:
        """What the manifest says of the model: its file name and sha256 (a bundle copied to a device carries no
        path of the host that built it). Hashed once: every candidate's manifest and verification names it."""
        if not self.checkpoint:
            return {"model": "shipped default model"}
        from ..core.io import sha256_file

        return {"model": Path(self.checkpoint).name, "sha256": sha256_file(self.checkpoint)}


def resolve_source(model: Optional[str | Path]) -> Source:
    from ..engines.torch.checkpoint import DEFAULT_WEIGHTS, SUFFIX, read_checkpoint, weights_terms

    path = Path(model) if model is not None else None
    if path is None and not DEFAULT_WEIGHTS.is_file():
        raise EdgefaceError(f"the shipped default weights {DEFAULT_WEIGHTS} are missing; pass --model "
                            f"CHECKPOINT{SUFFIX}")
    if path is not None and path.suffix != SUFFIX:
        raise EdgefaceError(f"--model {path}: deploy starts from a training checkpoint ({SUFFIX}), not "
                            f"{path.suffix or 'a folder'}; `edgeface train` writes one")
    obj = read_checkpoint(path)
    meta = obj.get("meta") or {}
    shipped = path is None or path.resolve() == DEFAULT_WEIGHTS.resolve()
    return Source(checkpoint=path, qat=is_qat_meta(meta), meta=meta, terms=weights_terms(meta, shipped=shipped))


def is_qat_meta(meta: dict) -> bool:
    """A quantization-aware checkpoint says so in its meta (edgeface.quantize.qat writes ``qat``/``kind``)."""
    return bool(meta.get("qat")) or meta.get("kind") == "qat" or meta.get("quantization") == "qat"


def export_artifact(target: dict, source: Source, precision: str, work: Path) -> tuple[str, str, Optional[str]]:
    """Write the FP32/FP16 artifact a bundle for the target carries into ``work``: (artifact name, input
    kind, calibration cache name or None)."""
    engine = registry.get(target["backend"])
    fmt = registry.by_format(engine.bundle_format)
    fold = target["input_layout"] == UINT8_NHWC and fmt.fold_preprocess
    options = {"opset": int(target["onnx"]["opset"])} if fmt.format == "onnx" else {}
    # An fp16 bundle whose format stores fp16 weights gets them; otherwise (an ONNX for TensorRT) the device
    # decides the arithmetic from the bundle's precision.
    path = exporter_of(fmt.format)(source.checkpoint, work / fmt.artifact,
                                 precision=precision if precision in fmt.precisions else "fp32",
                                 fold_preprocess=fold, **options)
    check_bundle_artifact(engine, path, int(target["onnx"]["opset"]))
    return path.name, (UINT8_NHWC if fold else FLOAT_NCHW), None


def check_bundle_artifact(engine, path: Path, opset: int) -> None:
    """The engine's own check of a bundle artifact it will build from on the device (TensorRT's parser)."""
    problems = engine.bundle_problems(path, opset)
    if problems:
        raise EdgefaceError(f"{path.name} would not parse in {engine.title}: {problems[0]}"
                            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))


def quantize_artifact(target: dict, source: Source, calib: Optional[Path], work: Path,
                      note: Callable[[str], None]) -> tuple[str, Optional[str], dict]:
    """INT8 artifact for the target in ``work``: (artifact name, calib cache name or None, calibration summary).

    Calibration goes through `edgeface quantize`'s per-backend path (with its own accuracy guard); a
    quantization-aware checkpoint is converted by edgeface.quantize.qat and needs no calibration set.
    """
    opset = int(target["onnx"]["opset"])
    if source.qat and calib is None:
        from ..quantize.qat.convert import export_for_deploy

        result = export_for_deploy(backend=target["backend"], checkpoint=source.checkpoint, out_dir=work,
                                   opset=opset, log=note)
    else:
        from ..quantize import quantize_for_deploy

        result = quantize_for_deploy(backend=target["backend"], checkpoint=source.checkpoint, calib=calib,
                                     out_dir=work, opset=opset, log=note)
    return result["artifact"], result.get("calib_cache"), result.get("summary") or {}


def _input_kind(path: Path) -> str:
    """What the artifact itself declares (an INT8 ONNX takes float NCHW even where the target folds)."""
    if path.name.endswith(registry.by_format("onnx").suffix):
        return read_onnx_input_kind(path)
    return FLOAT_NCHW


def check_forced_backend(target: dict, backend: str) -> None:
    """--backend names the target's engine or one it measures (they run the same bundle)."""
    allowed = [target["backend"]] + [c for c in target["measure"] if c != target["backend"]]
    if backend not in allowed:
        raise EdgefaceError(f"--backend {backend}: target {target['name']} bundles run on {' or '.join(allowed)}")


def chosen_options(target: dict, precision: str, engine: str, choice: Optional[dict]) -> dict:
    """The runner options a bundle's manifest holds: the target's for ``engine``, with the settings of the
    candidate the measurement chose (e.g. OpenVINO's throughput hint) in their place."""
    options = backend_options(target, precision, engine)
    if choice is not None and not choice.get("forced") and choice.get("chosen") == engine:
        options.update(choice.get("options") or {})
    return options


def measure_candidates(target: dict, candidates: dict, artifacts: dict, *, default: str, host: Optional[str],
                       ssh_options: dict, seconds: float) -> dict:
    """Measure ``candidates`` ({name: Candidate}) on the machine the bundle runs on (``host``, or here), each on
    its artifact (``artifacts``: {kind: path}) at its precision; the choice, its reason and the ranking."""
    batch, threads = int(target["batch"]), target["threads"] or None
    names = list(candidates)
    kwargs = dict(engines=names, default=default, batch=batch, threads=threads, seconds=seconds,
                  options={n: c.options for n, c in candidates.items()},
                  precisions={n: c.precision for n, c in candidates.items()})
    paths = {n: artifacts[c.artifact_kind] for n, c in candidates.items()}
    if host:
        from .remote import measure_remote

        if len(set(paths.values())) > 1:
            raise EdgefaceError("--host measures one artifact on the device: --precision fastest with INT8 runs "
                                "here only; pick --precision fp32, bf16 or int8 for --host")
        artifact = next(iter(paths.values()))
        files = registry.engine_of_artifact(artifact).files_of(artifact)
        ssh = {k: v for k, v in ssh_options.items() if v is not None}
        return measure_remote(files, host, remote_python=ssh.pop("remote_python", "python3"), **ssh, **kwargs)
    from .choose import measure_and_choose

    result = measure_and_choose(next(iter(paths.values())), artifacts=paths, **kwargs)
    result["host"] = None
    return result


def choose_engine(target: dict, artifact: Path, precision: str, *, backend: Optional[str], host: Optional[str],
                  ssh_options: dict, seconds: float) -> tuple[str, Optional[dict]]:
    """(engine, how it was chosen) for a bundle of one artifact at ``precision``: ``backend`` when given
    (--backend), else the faster of the target's ``measure`` candidates on the machine the bundle runs on
    (``host``, or here), else its backend."""
    from .candidates import plan_candidates

    if backend is not None:
        check_forced_backend(target, backend)
        return backend, ({"forced": True, "reason": f"--backend {backend}"} if target["measure"] or
                         backend != target["backend"] else None)
    if not target["measure"]:
        return target["backend"], None
    candidates, _ = plan_candidates(target, [precision], backend=None, measuring=True, many=False)
    kind = "int8" if precision == "int8" else "float"
    result = measure_candidates(target, candidates, {kind: artifact}, default=_default_candidate(target, candidates),
                                host=host, ssh_options=ssh_options, seconds=seconds)
    return result["chosen"], result


def _default_candidate(target: dict, candidates: dict) -> str:
    """The candidate a switch must beat by more than the noise: the target's own engine at the first precision
    tried, else the first candidate (bf16 runs on OpenVINO only)."""
    own = [n for n, c in candidates.items() if c.engine == target["backend"] and c.hint is None]
    return own[0] if own else next(iter(candidates))


@dataclass
class DeployOptions:
    """What `edgeface deploy` takes besides the target and the model (the command line's flags).

    ``backend`` forces the engine (one the target can run its bundle on); otherwise a target that lists
    ``measure`` engines measures every candidate, an (engine, precision, hint) triple, on the machine the
    bundle runs on (``host``, or this one) at its ``batch`` (``batch`` overrides it) and thread count, then
    verifies them fastest first and keeps the first within its precision's budget. ``precision="fastest"``:
    the candidates of every precision the target lists (INT8 with ``calib``, bf16 where the CPU computes it).
    ``sign``: an Ed25519 private key that signs the manifest (docs/security.md). ``device_bench``: with ``host``,
    how to bench the bundle on the device after it is checked there (``bench(bundle, ssh, remote_python, console)
    -> (rows, warnings)``; the CLI passes ``edgeface.bench.remote.bench_bundle_on_device``); None: no bench."""

    precision: Optional[str] = None
    calib: Optional[str | Path] = None
    out: Optional[str | Path] = None
    force: bool = False
    verify: bool = True
    verify_data: Optional[str | Path] = None
    host: Optional[str] = None
    ssh_options: Optional[dict] = None
    backend: Optional[str] = None
    batch: Optional[int] = None
    measure_seconds: Optional[float] = None
    sign: Optional[str | Path] = None
    device_bench: Optional[Callable] = None


@dataclass
class DeployPlan:
    """Everything decided before any work: the target, the model, the candidates, the data and the folder."""

    target: dict
    source: Optional[Source]
    precision: str                 # as asked ("fastest" included)
    precisions: list
    candidates: dict               # name -> Candidate
    not_run_here: dict             # candidate or precision -> why it cannot run here
    measuring: bool
    calib: Optional[Path]
    verify_data: Optional[Path]
    out: Path
    force: bool
    inputs: list                   # the user's files, never inside the folder --force replaces


def deploy(target_name: str, model: Optional[str | Path] = None, options: Optional[DeployOptions] = None,
           console=None, **fields) -> DeployResult:
    """Export, quantize, verify and write a bundle for ``target_name``; see the module docstring.

    ``options`` (DeployOptions), or its fields as keywords. The manifest's ``engine_choice`` records every
    candidate with its figures."""
    opts = replace(options or DeployOptions(), **fields)
    t_start = time.perf_counter()
    plan = plan_deploy(target_name, model, opts)
    staged, work = make_staging_dir(plan.out), make_staging_dir(plan.out)  # work: one folder per artifact kind
    bundle = _StagedBundle(plan, staged, work)
    try:
        with Steps(console) as steps:
            bundle.made = build_artifacts(plan, work, steps)
            order = choose_order(plan, bundle, opts, steps)
            winner, verified = verify_fastest_first(plan, bundle, order, opts.verify, steps)
            manifest = seal_bundle(plan, bundle, winner, verified, opts.sign, steps)
    finally:
        bundle.close()
        for folder in (staged, work):
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
    result = DeployResult(bundle=plan.out, target=plan.target["name"], backend=winner.engine,
                          precision=winner.precision, manifest=manifest, verify=verified,
                          seconds=time.perf_counter() - t_start, steps=dict(steps.times))
    if opts.host:
        from .remote import deploy_remote

        ssh_options = dict(opts.ssh_options or {})
        result.remote = deploy_remote(plan.out, opts.host, dict(plan.target, backend=winner.engine), console,
                                      remote_python=ssh_options.pop("remote_python", None) or "python3",
                                      bench=opts.device_bench, **ssh_options)
    return result


def plan_deploy(target_name: str, model: Optional[str | Path], opts: DeployOptions) -> DeployPlan:
    """Every check that needs no work, in the order a user would fix them; then the output folder is prepared."""
    from .candidates import FASTEST, plan_candidates, plan_precisions

    if opts.sign is not None:
        from ..runtime.signing import load_private_key

        load_private_key(opts.sign)  # a bad key fails before minutes of export
    batch = opts.batch
    if batch is not None:  # before any work: 1e8 failed after the export, allocating terabytes in numpy
        if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= MAX_TARGET_BATCH:
            raise EdgefaceError(f"--batch must be an integer from 1 to {MAX_TARGET_BATCH}, got {short(batch)}")
    target = load_target(target_name)
    if batch is not None:
        target["batch"] = batch
    if opts.backend is not None:
        check_forced_backend(target, opts.backend)
    precision = opts.precision or target["default_precision"]
    source = resolve_source(model) if precision in target["precisions"] or precision == FASTEST else None
    calib = Path(opts.calib) if opts.calib is not None else None
    precisions, left_out = plan_precisions(target, precision, calib=calib is not None, qat=bool(source and source.qat))
    if precision == "int8" and calib is None and not source.qat:
        raise EdgefaceError("--precision int8 needs calibration images: pass --calib DIR (face crops, or images "
                            "with labels.csv), or deploy a quantization-aware checkpoint (edgeface train --recipe "
                            "recipes/qat/...)")
    if calib is not None and not calib.is_dir():
        raise EdgefaceError(f"--calib {calib} is not a folder of calibration images")
    measuring = bool(target["measure"]) and opts.backend is None
    candidates, problems = plan_candidates(target, precisions, backend=opts.backend,
                                           measuring=measuring or precision == FASTEST, many=precision == FASTEST)
    if not candidates:  # before any work: e.g. bf16 on a CPU without it names the missing flag
        raise EdgefaceError(f"--precision {precision} cannot run here: "
                            + "; ".join(f"{n}: {w}" for n, w in problems.items()))
    vdata = Path(opts.verify_data) if opts.verify_data is not None else default_verify_data()
    if vdata is not None and not vdata.is_dir():
        raise EdgefaceError(f"--verify-data {vdata} is not a folder")
    out = Path(opts.out) if opts.out is not None else Path("bundles") / f"{target['name']}-{precision}"
    plan = DeployPlan(target, source, precision, precisions, candidates, {**problems, **left_out}, measuring, calib,
                      vdata, out.absolute(), opts.force, [model, calib, opts.verify_data, opts.sign, target_name])
    check_out(plan.out, opts.force, plan.inputs)
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(plan.out)
    clean_stale_temp()
    return plan


def build_artifacts(plan: DeployPlan, work: Path, steps: Steps) -> dict[str, tuple]:
    """The float and/or INT8 artifact the candidates run, each in a folder of its own under ``work``:
    {kind: (artifact name, input kind, calibration cache or None, calibration summary or None)}."""
    target, source, made = plan.target, plan.source, {}
    kinds = {c.artifact_kind for c in plan.candidates.values()}
    if "float" in kinds:
        float_precision = next(p for p in plan.precisions if p != "int8")
        (work / "float").mkdir()
        shown = float_precision if float_precision != "bf16" else "fp32, run at bf16"
        artifact, input_kind, calib_cache = steps.run(
            f"export {target['backend']} ({shown}) from {source.label}", export_artifact, target, source,
            float_precision, work / "float")
        made["float"] = (artifact, input_kind, calib_cache, None)
    if "int8" in kinds:
        (work / "int8").mkdir()
        how = (" (quantization-aware checkpoint)" if source.qat and plan.calib is None else f" from {plan.calib}")
        artifact, calib_cache, calibration = steps.run(
            f"export + quantize int8 for {target['backend']}{how}", quantize_artifact, target, source, plan.calib,
            work / "int8", steps.note)
        check_bundle_artifact(registry.get(target["backend"]), work / "int8" / artifact, int(target["onnx"]["opset"]))
        _drop_unused(work / "int8", keep={artifact, calib_cache, *_companions(work / "int8" / artifact)})
        made["int8"] = (artifact, _input_kind(work / "int8" / artifact), calib_cache, calibration)
    return made


def choose_order(plan: DeployPlan, bundle: "_StagedBundle", opts: DeployOptions, steps: Steps) -> list[str]:
    """The candidates in the order they are verified: measured fastest first when the target measures (or there
    are several), else the one engine. Sets ``bundle.choice`` (the manifest's engine_choice, or None)."""
    from .choose import DEFAULT_SECONDS

    target, candidates = plan.target, plan.candidates
    if plan.measuring or len(candidates) > 1:
        artifacts = {kind: bundle.work / kind / entry[0] for kind, entry in bundle.made.items()}
        choice = steps.run(
            f"measure {', '.join(candidates)} on {opts.host or 'this machine'} (batch {target['batch']}, "
            f"threads {target['threads'] or 'all'})", measure_candidates, target, candidates, artifacts,
            default=_default_candidate(target, candidates), host=opts.host, ssh_options=dict(opts.ssh_options or {}),
            seconds=opts.measure_seconds or DEFAULT_SECONDS)
        order = [choice["candidate"]] + [n for n in choice.get("ranked", []) if n != choice["candidate"]]
        order = [n for n in order if n in candidates]
        steps.note(f"measured: {choice['reason']}")
    else:  # the target's engine, or the one --backend forces
        order = list(candidates)
        forced = opts.backend is not None and (target["measure"] or opts.backend != target["backend"])
        choice = {"forced": True, "reason": f"--backend {opts.backend}"} if forced else None
    if choice is not None:
        choice["precision_requested"] = plan.precision
        choice["candidates"] = {n: c.to_json() for n, c in candidates.items()}
        if plan.not_run_here:
            choice["not_run_here"] = dict(plan.not_run_here)
    bundle.choice = choice
    return order


def verify_fastest_first(plan: DeployPlan, bundle: "_StagedBundle", order: list[str], verify: bool,
                         steps: Steps) -> tuple:
    """(winner, its verification or None). Every measured candidate is verified, fastest first (the manifest
    records each one's figures), and the first within its precision's budget is the bundle."""
    from .candidates import all_failed, verify_summary

    if not verify:
        return plan.candidates[order[0]], None
    choice, results, winner = bundle.choice, {}, None
    for name in order:
        cand = plan.candidates[name]
        res = steps.run(f"verify {name} ({cand.precision}) against the FP32 reference" if len(order) > 1
                        else "verify against the FP32 reference", bundle.check, cand)
        results[name] = res
        steps.note((f"{name}: " if len(order) > 1 else "") + verify_line(res))
        if choice is not None:
            choice.setdefault("verification", {})[name] = verify_summary(res)
        if res["passed"] and winner is None:
            winner = cand
            if choice is None:
                break
    if winner is None:
        raise all_failed(plan.target["name"], {n: (plan.candidates[n], r) for n, r in results.items()})
    failed = [n for n in order[:order.index(winner.name)] if not results[n]["passed"]]
    if choice is not None and not choice.get("forced") and failed:
        why_not = ", ".join(f"{n} failed verification ({'; '.join(results[n]['exceeded'])})" for n in failed)
        choice["reason"] = (f"{winner.name} ({winner.precision}) is the fastest within its budget: {why_not}; "
                            f"measured: {choice['reason']}")
    return winner, results[winner.name]


def seal_bundle(plan: DeployPlan, bundle: "_StagedBundle", winner, verified: Optional[dict],
                sign: Optional[str | Path], steps: Steps) -> dict:
    """The winner's files and manifest, sealed (and signed), checked as a device will, then moved into place."""
    manifest_args = bundle.place(winner)
    choice = bundle.choice
    if choice is not None and not choice.get("forced"):
        steps.note(f"engine: {winner.engine} {winner.precision} ({choice['reason']})")
    manifest = steps.run("seal bundle", write_manifest, bundle.staged, spec=bundle.spec,
                         accuracy=verified or {"verified": False, "reason": "--no-verify"}, tools=tool_versions(),
                         **manifest_args)
    own_key = None
    if sign is not None:
        from ..runtime.signing import load_private_key, sign_manifest

        steps.run("sign manifest", sign_manifest, bundle.staged, sign)
        own_key = [load_private_key(sign).public_key()]
    open_bundle(bundle.staged, device=ANY_DEVICE, trusted_keys=own_key)  # the files, manifest, signature
    move_into_place(bundle.staged, plan.out, plan.force, plan.inputs)
    return manifest


class _StagedBundle:
    """The bundle being written: the candidates' artifacts (``made``, one folder per kind under ``work``), the one
    placed in ``staged`` with a manifest naming it, and the FP32 reference every candidate is verified against."""

    def __init__(self, plan: DeployPlan, staged: Path, work: Path):
        self.plan, self.staged, self.work = plan, staged, work
        self.made: dict[str, tuple] = {}
        self.choice: Optional[dict] = None  # the manifest's engine_choice
        self.spec = None
        self._placed: Optional[str] = None
        self._reference: Optional[_Remembered] = None
        self._verify_set = None

    def place(self, cand) -> dict:
        """The candidate's artifact in the bundle folder, and a manifest naming it (for Predictor(bundle)); returns
        the manifest's arguments."""
        plan, choice, source = self.plan, self.choice, self.plan.source
        artifact, input_kind, calib_cache, calibration = self.made[cand.artifact_kind]
        if self._placed != cand.artifact_kind:
            _place(self.work / cand.artifact_kind, self.staged)
            self._placed = cand.artifact_kind
        if choice is not None and not choice.get("forced"):
            choice.update(chosen=cand.engine, candidate=cand.name, options=cand.options, precision=cand.precision)
        args = dict(target=plan.target["name"], backend=cand.engine, precision=cand.precision, artifact=artifact,
                    engine_choice=choice, target_recipe=plan.target,
                    options=chosen_options(plan.target, cand.precision, cand.engine, choice),
                    input_kind=input_kind, calibration=calibration, calib_cache=calib_cache,
                    source={**source.record, "qat": source.qat, "model_version": source.meta.get("version")},
                    weights_terms=source.terms)
        self.spec = _artifact_spec(self.staged / artifact)
        write_manifest(self.staged, spec=self.spec, **args)
        return args

    def check(self, cand) -> dict:
        """The candidate verified through the loader a device uses, against the FP32 torch reference."""
        self.place(cand)
        plan = self.plan
        if self._reference is None:  # the torch model runs the verification faces once for all candidates
            self._reference = _Remembered(open_model(plan.source.checkpoint)[0])
            self._verify_set = load_verify_set(plan.verify_data, self.spec)
        crops, poses, desc = self._verify_set
        runner, pred, how = bundle_runner(self.staged, dict(plan.target, backend=cand.engine))
        try:
            res = verify_bundle(runner, self._reference, crops, poses, plan.target["verify"][cand.precision])
        finally:
            pred.close()
        res.update(data=desc, runtime=how, reference_model=f"{plan.source.record['model']} (FP32 torch)")
        return res

    def close(self) -> None:
        if self._reference is not None:
            self._reference.close()


class _Remembered:
    """The FP32 reference as a runner that computes each batch once: every candidate is verified on the same
    faces, so the torch model runs them once for all."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.seen: dict = {}

    def __call__(self, crops):
        key = (crops.shape, hash(crops.tobytes()))
        if key not in self.seen:
            self.seen[key] = self.predictor.blur_and_pose(crops)
        return self.seen[key]

    def close(self) -> None:
        self.predictor.close()


def _place(source: Path, staged: Path) -> None:
    """The bundle folder holds exactly the files of ``source`` (the artifact of the candidate being tried)."""
    for p in list(staged.iterdir()):
        if p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p)
    for p in source.iterdir():
        if p.is_file():
            shutil.copy2(p, staged / p.name)


def _companions(artifact: Path) -> set[str]:
    return {c.name for c in registry.engine_of_artifact(artifact).companions_of(artifact)}


def _drop_unused(folder: Path, keep: set) -> None:
    """After quantization only the INT8 artifact (and its companions) belongs in the bundle."""
    for p in list(folder.iterdir()):
        if p.is_file() and p.name not in keep:
            p.unlink()


def _artifact_spec(path: Path):
    return registry.engine_of_artifact(path).spec_of(path)
