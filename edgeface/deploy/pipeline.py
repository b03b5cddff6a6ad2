"""`edgeface deploy`: weights -> a verified bundle for one device, in one step.

    export (ONNX / ncnn) -> quantize (INT8 only) -> write the bundle in a temporary folder ->
    verify it through the same loader a device uses (Predictor(bundle)) against the FP32 torch reference
    on held-out faces -> refuse when the target's budget is exceeded -> rename into place.

The temporary folder lives beside ``--out`` (``.NAME.partial-PID-XXXX``) so the final rename is atomic: an
interrupted deploy leaves no folder at ``--out`` that looks like a bundle, and an existing bundle is swapped
out only once the new one is complete (``--force``). Leftover partial folders of dead deploys are removed
by the next deploy into the same place.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .bundle import ANY_DEVICE, is_bundle, open_bundle, tool_versions, write_manifest
from .errors import EdgefaceError
from .targets import backend_options, load_target

VERIFY_PER_SET = 64          # held-out faces per labelled set used for verification (deterministic choice)
PARTIAL_TAG = ".partial-"
OLD_TAG = ".old-"


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
                "precision": self.precision, "files": self.manifest["files"], "verify": self.verify,
                "calibration": self.manifest.get("calibration"), "seconds": round(self.seconds, 2),
                "steps_s": {k: round(v, 2) for k, v in self.steps.items()}, "remote": self.remote}


# -- the model to deploy -----------------------------------------------------------------------------------
@dataclass
class Source:
    """What the user asked to deploy: a checkpoint (FP32 or quantization-aware) and its FP32 reference."""

    checkpoint: Optional[Path]    # None = the shipped default weights
    qat: bool                     # a QAT checkpoint: INT8 without a calibration set
    meta: dict

    @property
    def label(self) -> str:
        return str(self.checkpoint) if self.checkpoint else "shipped default model"


def resolve_source(model: Optional[str | Path]) -> Source:
    from .checkpoint import DEFAULT_WEIGHTS, read_checkpoint

    path = Path(model) if model is not None else None
    if path is None and not DEFAULT_WEIGHTS.is_file():
        raise EdgefaceError(f"the shipped default weights {DEFAULT_WEIGHTS} are missing; pass --model CHECKPOINT.pt")
    if path is not None and path.suffix != ".pt":
        raise EdgefaceError(f"--model {path}: deploy starts from a training checkpoint (.pt), not {path.suffix or 'a folder'}; "
                            f"`edgeface train` writes one")
    obj = read_checkpoint(path)
    meta = obj.get("meta") or {}
    return Source(checkpoint=path, qat=is_qat_meta(meta), meta=meta)


def is_qat_meta(meta: dict) -> bool:
    """A quantization-aware checkpoint says so in its meta (edgeface.qat writes ``qat``/``kind``)."""
    return bool(meta.get("qat")) or meta.get("kind") == "qat" or meta.get("quantization") == "qat"


# -- verification data ---------------------------------------------------------------------------------------
def default_verify_data() -> Optional[Path]:
    """$EDGEFACE_SHARED_DATA, ./../shared/data, or the repository's ../shared/data, whichever exists."""
    cands = []
    if os.environ.get("EDGEFACE_SHARED_DATA"):
        cands.append(Path(os.environ["EDGEFACE_SHARED_DATA"]))
    cands += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[2] / "shared" / "data"]
    for c in cands:
        if c.is_dir() and any((p / "labels.csv").is_file() for p in c.iterdir() if p.is_dir()):
            return c
    return None


def load_verify_set(data: Optional[Path], spec, per_set: int = VERIFY_PER_SET, seed: int = 0):
    """(crops uint8 BGR, poses (N, 3) with NaN where unknown, description). Held-out = the val split."""
    from .data import find_sets, load_samples
    from .evaluate import load_crops

    if data is None:
        return _synthetic_faces(spec), np.full((48, 3), np.nan, np.float32), \
            "synthetic images (no held-out faces found; pass --verify-data DIR)"
    samples, used = [], []
    for folder in find_sets(data):
        try:
            rows = load_samples(folder, split="val")
        except EdgefaceError:
            rows = load_samples(folder)  # a plain folder (no split column): all of it
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(rows), size=min(per_set, len(rows)), replace=False).tolist())
        samples += [rows[i] for i in pick]
        used.append(f"{folder.name}:{len(pick)}")
    crops = load_crops(samples, spec)
    poses = np.array([s.pose for s in samples], np.float32)
    return crops, poses, f"{data} val split ({', '.join(used)})"


def _synthetic_faces(spec, n: int = 48) -> np.ndarray:
    """Deterministic structured images (gradients, blobs, noise): enough to compare two engines' outputs."""
    s = spec.input_size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    out = np.empty((n, s, s, 3), np.uint8)
    for i in range(n):
        cx, cy, r = rng.uniform(0.3 * s, 0.7 * s, 2).tolist() + [rng.uniform(0.2 * s, 0.45 * s)]
        face = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        img = np.stack([face * rng.uniform(80, 255) + xx * rng.uniform(0, 1), face * rng.uniform(60, 220),
                        face * rng.uniform(40, 200) + yy * rng.uniform(0, 1)], -1)
        out[i] = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    return out


def verify_bundle(runner, reference, crops: np.ndarray, poses: np.ndarray, budget: dict) -> dict:
    """Compare a bundle's outputs with the FP32 reference on faces and on synthetic blur; check the budget."""
    from .evaluate import pose_metrics, run_batched, spearman, synthetic_blur_set

    ref_b, ref_p = run_batched(reference, crops)
    art_b, art_p = run_batched(runner, crops)
    blur_imgs, blur_labels = synthetic_blur_set(crops)
    if len(blur_imgs):
        ref_bb, ref_bp = run_batched(reference, blur_imgs)
        art_bb, art_bp = run_batched(runner, blur_imgs)
    else:
        ref_bb = art_bb = np.empty(0)
        ref_bp = art_bp = np.empty((0, 3))
    # Pose is budgeted on the faces as they are; on the synthetically blurred copies (some blurred until the
    # face is gone) pose is reported but not budgeted. Blur is budgeted on both.
    dp = np.abs(art_p - ref_p)
    dp_blurred = np.abs(art_bp - ref_bp)
    db = np.abs(np.concatenate([art_b, art_bb]) - np.concatenate([ref_b, ref_bb]))
    ref_acc, art_acc = pose_metrics(ref_p, poses), pose_metrics(art_p, poses)
    increase = None
    if ref_acc.get("mean_mae") is not None and art_acc.get("mean_mae") is not None:
        increase = art_acc["mean_mae"] - ref_acc["mean_mae"]
    result = {
        "n_faces": int(len(crops)), "n_blurred": int(len(blur_imgs)),
        "pose_max_abs": float(dp.max()), "pose_p99_abs": float(np.percentile(dp, 99)), "pose_mean_abs": float(dp.mean()),
        "pose_max_abs_blurred": float(dp_blurred.max()) if dp_blurred.size else None,
        "blur_max_abs": float(db.max()), "blur_mean_abs": float(db.mean()),
        "reference": {"pose_mean_mae": ref_acc.get("mean_mae"), "yaw_mae": ref_acc.get("yaw_mae"),
                      "pitch_mae": ref_acc.get("pitch_mae"), "roll_mae": ref_acc.get("roll_mae"),
                      "blur_spearman": spearman(ref_bb, blur_labels) if len(blur_imgs) > 1 else None},
        "bundle": {"pose_mean_mae": art_acc.get("mean_mae"), "yaw_mae": art_acc.get("yaw_mae"),
                   "pitch_mae": art_acc.get("pitch_mae"), "roll_mae": art_acc.get("roll_mae"),
                   "blur_spearman": spearman(art_bb, blur_labels) if len(blur_imgs) > 1 else None},
        "pose_mae_increase": increase,
        "budget": dict(budget),
    }
    over = []
    for key in ("pose_max_abs", "pose_p99_abs", "pose_mean_abs", "blur_max_abs", "pose_mae_increase"):
        value = result[key]
        if value is not None and value > budget[key]:
            over.append(f"{key} {value:.4g} > {budget[key]:.4g}")
    result["passed"] = not over
    result["exceeded"] = over
    return result


# -- folders: partial, swap, stale cleanup -------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(out: Path) -> list[Path]:
    """Remove ``.NAME.partial-PID-*`` / ``.NAME.old-PID-*`` folders left by deploys that were killed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.*-*"):
        for tag in (PARTIAL_TAG, OLD_TAG):
            prefix = f".{out.name}{tag}"
            if p.name.startswith(prefix) and p.is_dir():
                try:
                    pid = int(p.name[len(prefix):].split("-", 1)[0])
                except ValueError:
                    continue
                if pid != os.getpid() and not _pid_alive(pid):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
    return removed


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise EdgefaceError(f"--out {out} is a file; pass a folder path for the bundle")
    if out.is_dir() and any(out.iterdir()):
        if not is_bundle(out):
            raise EdgefaceError(f"--out {out} is a non-empty folder that is not a bundle; choose another --out "
                                f"(deploy never replaces a folder it did not write)")
        if not force:
            raise EdgefaceError(f"bundle {out} already exists; pass --force to replace it")


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def move_into_place(staged: Path, out: Path, force: bool) -> None:
    """Rename the finished bundle onto ``out``. With an existing bundle, swap atomically where the kernel can
    (no moment without a complete bundle at ``out``), else move it aside first and delete it after."""
    if not out.exists():
        os.rename(staged, out)
        return
    check_out(out, force)  # the folder may have appeared while we worked
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
        os.rename(staged, out)
        return
    if _exchange(staged, out):
        shutil.rmtree(staged)  # now holds the old bundle
        return
    aside = out.parent / f".{out.name}{OLD_TAG}{os.getpid()}-{int(time.time())}"
    os.rename(out, aside)
    os.rename(staged, out)
    shutil.rmtree(aside, ignore_errors=True)


# -- the steps -------------------------------------------------------------------------------------------------
class Steps:
    """Rich progress: one line per step with its time (a no-op without a console)."""

    def __init__(self, console=None):
        self.console = console
        self.times: dict[str, float] = {}
        self._progress = None

    def __enter__(self):
        if self.console is not None:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                      console=self.console, transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def run(self, name: str, fn: Callable, *args, **kwargs):
        task = self._progress.add_task(name, total=1) if self._progress else None
        t0 = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            if task is not None:
                self._progress.update(task, description=f"[red]{name} (failed)[/red]")
            raise
        self.times[name] = time.perf_counter() - t0
        if task is not None:
            self._progress.update(task, completed=1, description=f"[green]{name}[/green]")
        return result

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"  {text}", highlight=False)


def export_artifact(target: dict, source: Source, precision: str, work: Path) -> tuple[str, str, Optional[str]]:
    """Write the FP32/FP16 artifact for the target into ``work``: (artifact name, input kind, calib cache)."""
    backend = target["backend"]
    opset = int(target["onnx"]["opset"])
    ckpt = source.checkpoint
    if backend == "ncnn":
        from .export import export_ncnn

        weights = "fp16" if precision == "fp16" else "fp32"
        path = export_ncnn(ckpt, work / "model.ncnn.param", precision=weights)
        return path.name, "float32_nchw", None
    from .export import export_onnx

    fold = target["input_layout"] == "uint8_nhwc_bgr"
    path = export_onnx(ckpt, work / "model.onnx", opset=opset, fold_preprocess=fold)
    if backend == "tensorrt":
        check_tensorrt_onnx(path, opset)
    return path.name, ("uint8_nhwc_bgr" if fold else "float32_nchw"), None


def check_tensorrt_onnx(path: Path, opset: int) -> None:
    from .tensorrt_build import check_onnx_for_tensorrt

    problems = check_onnx_for_tensorrt(path, max_opset=opset)
    if problems:
        raise EdgefaceError(f"{path.name} would not parse in TensorRT: {problems[0]}"
                            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))


def quantize_artifact(target: dict, source: Source, calib: Optional[Path], work: Path,
                      note: Callable[[str], None]) -> tuple[str, Optional[str], dict]:
    """INT8 artifact for the target in ``work``: (artifact name, calib cache name or None, calibration summary).

    Calibration goes through `edgeface quantize`'s per-backend path (with its own accuracy guard); a
    quantization-aware checkpoint is exported by edgeface.qat and needs no calibration set.
    """
    if source.qat and calib is None:
        from . import qat

        result = qat.export_for_deploy(backend=target["backend"], checkpoint=source.checkpoint, out_dir=work,
                                       opset=int(target["onnx"]["opset"]), log=note)
    else:
        from .quantize import quantize_for_deploy

        result = quantize_for_deploy(backend=target["backend"], checkpoint=source.checkpoint, calib=calib,
                                     out_dir=work, qat=source.qat, opset=int(target["onnx"]["opset"]),
                                     fold_preprocess=target["input_layout"] == "uint8_nhwc_bgr", log=note)
    return result["artifact"], result.get("calib_cache"), result.get("summary") or {}


def _artifact_input_kind(path: Path) -> str:
    """What the artifact itself declares (an INT8 ONNX may take float NCHW even where the target folds)."""
    if path.name.endswith(".onnx"):
        from .export import read_onnx_input_kind

        return read_onnx_input_kind(path)
    return "float32_nchw"


def make_reference(source: Source):
    from .runners import make_runner

    runner, spec, _ = make_runner(str(source.checkpoint) if source.checkpoint else None)
    return runner, spec


def bundle_runner(bundle: Path, target: dict):
    """A runner through the same loader the device uses. TensorRT bundles (no TensorRT here) run their ONNX
    in onnxruntime: the graph and its Q/DQ scales are checked; the engine's own numbers are checked by
    ``edgeface build`` on the device."""
    from .predictor import Predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "deployed for rpi, runs here on x86" is expected while verifying
        if target["backend"] == "tensorrt":
            info = open_bundle(bundle, device=ANY_DEVICE, verify=False)
            pred = Predictor(str(info.artifact), backend="onnxruntime")
            how = "onnxruntime on the bundle's ONNX (TensorRT engine numbers are checked on the device)"
        else:
            pred = Predictor(str(bundle))
            how = f"{pred.backend} through Predictor(bundle)"

    def runner(batch):
        r = pred.predict(batch)
        return r.blur, np.stack([r.yaw, r.pitch, r.roll], axis=1)

    return runner, pred, how


def deploy(target_name: str, model: Optional[str | Path] = None, *, precision: Optional[str] = None,
           calib: Optional[str | Path] = None, out: Optional[str | Path] = None, force: bool = False,
           verify: bool = True, verify_data: Optional[str | Path] = None, host: Optional[str] = None,
           ssh_options: Optional[dict] = None, console=None) -> DeployResult:
    """Export, quantize, verify and write a bundle for ``target_name``; see the module docstring."""
    t_start = time.perf_counter()
    target = load_target(target_name)
    name = target["name"]
    precision = precision or target["default_precision"]
    if precision not in target["precisions"]:
        raise EdgefaceError(f"target {name} supports --precision {'|'.join(target['precisions'])}, not {precision}")
    source = resolve_source(model)
    calib_path = Path(calib) if calib is not None else None
    if precision == "int8" and calib_path is None and not source.qat:
        raise EdgefaceError("--precision int8 needs calibration images: pass --calib DIR (face crops, or images "
                            "with labels.csv), or deploy a quantization-aware checkpoint (edgeface train --recipe "
                            "recipes/qat/...)")
    if calib_path is not None and not calib_path.is_dir():
        raise EdgefaceError(f"--calib {calib_path} is not a folder of calibration images")
    vdata = Path(verify_data) if verify_data is not None else default_verify_data()
    if vdata is not None and not vdata.is_dir():
        raise EdgefaceError(f"--verify-data {vdata} is not a folder")
    out = Path(out) if out is not None else Path("bundles") / f"{name}-{precision}"
    out = out.absolute()
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out)

    staged = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{PARTIAL_TAG}{os.getpid()}-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staged, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle is an ordinary folder
    verify_result = None
    try:
        with Steps(console) as steps:
            calibration = None
            if precision != "int8":
                artifact, input_kind, calib_cache = steps.run(
                    f"export {target['backend']} ({precision}) from {source.label}",
                    export_artifact, target, source, precision, staged)
            else:
                artifact, calib_cache, calibration = steps.run(
                    f"export + quantize int8 for {target['backend']}"
                    + (" (quantization-aware checkpoint)" if source.qat and calib_path is None else f" from {calib_path}"),
                    quantize_artifact, target, source, calib_path, staged, steps.note)
                if target["backend"] == "tensorrt":
                    check_tensorrt_onnx(staged / artifact, int(target["onnx"]["opset"]))
                _drop_unused(staged, keep={artifact, calib_cache, *_companions(artifact)})
                input_kind = _artifact_input_kind(staged / artifact)
            manifest_args = dict(
                target=name, backend=target["backend"], precision=precision, artifact=artifact,
                target_recipe=target, options=backend_options(target, precision), input_kind=input_kind,
                calibration=calibration, calib_cache=calib_cache,
                source={"model": source.label, "qat": source.qat, "model_version": source.meta.get("version")})
            spec = _artifact_spec(staged / artifact)
            steps.run("write manifest", write_manifest, staged, spec=spec, **manifest_args)
            if verify:
                def _verify():
                    reference, _ = make_reference(source)
                    crops, poses, desc = load_verify_set(vdata, spec)
                    runner, pred, how = bundle_runner(staged, target)
                    try:
                        res = verify_bundle(runner, reference, crops, poses, target["verify"][precision])
                    finally:
                        pred.close()
                    res.update(data=desc, runtime=how, reference_model=f"{source.label} (FP32 torch)")
                    return res

                verify_result = steps.run("verify against the FP32 reference", _verify)
                steps.note(_verify_line(verify_result))
                if not verify_result["passed"]:
                    raise EdgefaceError(
                        f"the {name} {precision} bundle exceeds the accuracy budget ({'; '.join(verify_result['exceeded'])}; "
                        f"recipes/targets/{name}.yaml verify.{precision}); use more --calib images, another --precision, "
                        f"or --no-verify to write it anyway")
            manifest = steps.run("seal bundle", write_manifest, staged, spec=spec,
                                 accuracy=verify_result or {"verified": False, "reason": "--no-verify"},
                                 tools=tool_versions(), **manifest_args)
            open_bundle(staged, device=ANY_DEVICE)  # the files and manifest a device will check
            move_into_place(staged, out, force)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)

    result = DeployResult(bundle=out, target=name, backend=target["backend"], precision=precision, manifest=manifest,
                          verify=verify_result, seconds=time.perf_counter() - t_start, steps=dict(steps.times))
    if host:
        ssh_options = dict(ssh_options or {})
        result.remote = deploy_remote(out, host, target, console,
                                      remote_python=ssh_options.pop("remote_python", None) or "python3", **ssh_options)
    return result


def _companions(artifact: str) -> set[str]:
    if artifact.endswith(".ncnn.param"):
        stem = artifact[: -len(".ncnn.param")]
        return {f"{stem}.ncnn.bin", f"{stem}.spec.json"}
    return set()


def _drop_unused(folder: Path, keep: set) -> None:
    """After quantization only the INT8 artifact (and its companions) belongs in the bundle."""
    for p in list(folder.iterdir()):
        if p.is_file() and p.name not in keep:
            p.unlink()


def _artifact_spec(path: Path):
    if path.name.endswith(".onnx"):
        from .export import read_onnx_spec

        return read_onnx_spec(path)
    from .export import read_ncnn_spec

    return read_ncnn_spec(path)[0]


def _verify_line(v: dict) -> str:
    acc = ""
    if v.get("pose_mae_increase") is not None:
        acc = (f", pose MAE {v['reference']['pose_mean_mae']:.3f} -> {v['bundle']['pose_mean_mae']:.3f}° "
               f"({v['pose_mae_increase']:+.3f})")
    verdict = "[green]within budget[/green]" if v["passed"] else "[red]over budget[/red]"
    return (f"vs FP32 on {v['n_faces']} faces + {v['n_blurred']} blurred: pose max |Δ| {v['pose_max_abs']:.4g}°, "
            f"p99 {v['pose_p99_abs']:.4g}°, "
            f"mean {v['pose_mean_abs']:.4g}°, blur max |Δ| {v['blur_max_abs']:.4g}{acc}: {verdict}")


# -- --host: copy to a device, build there, bench there ------------------------------------------------------------
REMOTE_DIR = "edgeface-bundles"   # under the SSH user's home on the device


def remote_install_command(name: str) -> str:
    """Unpack a tar stream as ~/edgeface-bundles/NAME: under .partial first, swapped in only when complete,
    so a dropped connection never leaves a bundle that looks whole (and the old one stays until then)."""
    import shlex

    n = shlex.quote(name)
    return (f"mkdir -p {REMOTE_DIR} && cd {REMOTE_DIR} && rm -rf {n}.partial && mkdir {n}.partial && "
            f"tar -xf - -C {n}.partial && rm -rf {n}.old && {{ [ ! -e {n} ] || mv {n} {n}.old; }} && "
            f"mv {n}.partial {n} && rm -rf {n}.old")


def deploy_remote(bundle: Path, host: str, target: dict, console=None, remote_python: str = "python3",
                  port: Optional[int] = None, identity: Optional[Path] = None,
                  known_hosts: Optional[Path] = None, bench_options: Optional[dict] = None) -> dict:
    """Copy the bundle to ``host`` (~/edgeface-bundles/NAME) over SSH, check it there with the device's own
    edgeface (sha256, version, target), build the TensorRT engine there (Jetson), and run the device's bench."""
    import io
    import shlex
    import tarfile

    from .bench.remote import SshTarget, bench_remote
    from .bench.runner import BenchConfig

    ssh = SshTarget(host, port=port, identity=identity, known_hosts=known_hosts)
    remote = f"{REMOTE_DIR}/{bundle.name}"
    report: dict[str, Any] = {"host": host, "path": f"~/{remote}"}
    py = shlex.quote(remote_python)

    def _check(r, what):
        if r.returncode != 0:
            err = r.stderr.decode("utf-8", "replace").strip().splitlines()
            msg = next((ln.split("error:", 1)[1].strip() for ln in reversed(err) if "error:" in ln), err[-1] if err else "")
            raise EdgefaceError(f"{what} on {ssh.where} failed: {msg or f'exit status {r.returncode}'}")
        return r.stdout.decode("utf-8", "replace")

    def upload():
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in sorted(bundle.iterdir()):
                tar.add(f, arcname=f.name, recursive=True)
        _check(ssh.run(remote_install_command(bundle.name), stdin=buf.getvalue(), timeout=600), "copying the bundle")

    def verify_there():
        code = ("import json, sys; from edgeface.bundle import open_bundle; "
                f"i = open_bundle({remote!r}); print(json.dumps({{'target': i.target, 'backend': i.backend}}))")
        return json.loads(_check(ssh.run(f"{py} -c {shlex.quote(code)}", timeout=120), "checking the bundle")
                          .strip().splitlines()[-1])

    with Steps(console) as steps:
        steps.run(f"copy bundle to {host}:~/{remote}", upload)
        report["check"] = steps.run(f"check the bundle with {host}'s edgeface", verify_there)
        if target["backend"] == "tensorrt":
            out = steps.run(f"build the TensorRT engine on {host}", lambda: _check(
                ssh.run(f"{py} -m edgeface build {shlex.quote(remote)}", timeout=3600), "edgeface build"))
            report["build"] = out.strip().splitlines()[-1:] if out.strip() else []
        rows, warns, fetched = steps.run(f"bench on {host}", bench_remote,
                                         BenchConfig(artifacts=[str(bundle)], **(bench_options or {})), ssh,
                                         remote_python=remote_python, console=console)
        if fetched is not None:
            shutil.rmtree(fetched, ignore_errors=True)
        report["bench"], report["warnings"] = rows, warns
    return report
