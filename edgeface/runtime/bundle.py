"""Deployment bundles: a folder with the artifact(s) for one device and a ``manifest.json`` that vouches for them.

    bundle/
      manifest.json      what this is (target, backend, precision, ModelSpec), every file with its sha256,
                         calibration and accuracy summaries, the tool versions that made it
      model.onnx | model.ncnn.param + model.ncnn.bin + model.spec.json
      calib.cache        optional: TensorRT's calibration cache (INT8 Jetson bundles)
      engines/           left by older `edgeface build` runs (not hashed); the runtime never reads it, a device
                         with trusted keys refuses it in a signed bundle, TensorRT engines live in the device's cache

``open_bundle`` is what every runtime calls before loading a bundle. It reads the folder as one snapshot
(``core.snapshot``: listed once, every file read once through the folder's descriptor, no link followed),
the manifest as JSON only (never code), checks each listed file against its sha256 and returns those very
bytes for the engine to load (``BundleInfo.files``), refuses model files the manifest does not list (any
unlisted entry at all in a bundle signed by a trusted key),
checks the bundle format against this edgeface, and checks the bundle's target against this machine.
Every failure is one line naming the file or field and the fix. This module needs neither torch nor
onnx, so it runs on a Raspberry Pi's torch-free install.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..core import __version__
from ..core.device import JETSON, RPI, X86, detect_device
from ..core.errors import EdgefaceError
from ..core.io import atomic_write_json, sha256_file
from ..core.limits import available_memory
from ..core.snapshot import MAX_FILE_BYTES, FolderSnapshot
from ..core.spec import FLOAT_NCHW, INPUT_KINDS, PRECISIONS, ModelSpec
from ..engines import registry

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "edgeface-bundle"
BUNDLE_VERSION = 2                 # bump when the manifest's meaning changes; readers refuse newer ones
                                   # (2: the manifest carries bundle_sha256, its own digest)
DIGEST_KEY = "bundle_sha256"       # sha256 of the canonical manifest without this key: covers every file's hash
SIGNATURE_NAME = "manifest.sig"    # optional Ed25519 signature of manifest.json's bytes (runtime/signing.py)
DEVICE_BUILT_DIR = "engines"       # device-built engine cache inside a bundle: not hashed, never shipped
MAX_MANIFEST_BYTES = 4 << 20       # a manifest is a few KB; refuse a huge file instead of parsing it
# Files with these endings are model data: one the manifest does not list is refused, not ignored, so
# nobody can slip a different model into a verified bundle. The engines' own files (registry), and model
# formats no edgeface engine makes but some runtime might pick up (``model_suffixes()``: both).
FOREIGN_MODEL_SUFFIXES = (".plan", ".trt", ".pth", ".tflite")
ANY_DEVICE = "*"                   # open_bundle(device=ANY_DEVICE): inspect a bundle without the device check


@dataclass(frozen=True)
class BundleInfo:
    """A verified bundle: what to load and how."""

    artifact: Path                 # the file the backend loads (model.onnx, model.ncnn.param, ...)
    backend: str                   # the engine that runs it (a name in the engine registry)
    precision: str                 # "fp32" | "fp16" | "int8"
    spec: ModelSpec
    target: str                    # the device the bundle was deployed for ("x86", "rpi", "jetson", ...)
    manifest: dict
    root: Path = Path(".")         # the bundle folder
    options: dict = field(default_factory=dict)  # backend options from the target (threads, fp16, ...)
    calib_cache: Path | None = None  # TensorRT calibration cache, when the bundle carries one
    input_kind: str = FLOAT_NCHW
    # The verified bytes of every listed file, by name relative to the bundle: read once, hashed, and
    # handed to the engine as they are (empty when the caller skipped verification: verify=False).
    files: dict = field(default_factory=dict, repr=False)
    signed: bool = False           # its signature verified against a trusted key (runtime/signing)

    @property
    def threads(self) -> int | None:
        return self.options.get("threads")


# -- hashing and writing ----------------------------------------------------------------------------
def _bundle_files(root: Path) -> list[str]:
    """Every regular file under ``root`` (relative, '/'-separated), minus the manifest and device-built cache."""
    names = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() and not p.is_symlink():
            continue
        rel = p.relative_to(root).as_posix()
        if rel in (MANIFEST_NAME, SIGNATURE_NAME) or rel.split("/", 1)[0] == DEVICE_BUILT_DIR:
            continue
        names.append(rel)
    return names


def model_suffixes() -> tuple[str, ...]:
    """Endings of files that hold model data: every registered engine's, and FOREIGN_MODEL_SUFFIXES."""
    return registry.model_file_suffixes() + FOREIGN_MODEL_SUFFIXES


def tool_versions() -> dict[str, str | None]:
    """Versions of what made (or runs) a bundle: the engines' packages (from the registry) and the tools
    around them. Only looks packages up; imports nothing heavy."""
    from importlib import metadata

    out: dict[str, str | None] = {"edgeface": __version__, "python": platform.python_version(),
                                  "machine": platform.machine()}
    engines = [e.package for e in registry.ENGINES]
    for dist in dict.fromkeys(["numpy", *engines, "onnx", "onnxslim", "pnnx", "opencv-python-headless", "torchao"]):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def write_manifest(bundle_dir: str | Path, *, target: str, backend: str, precision: str, artifact: str,
                   spec: ModelSpec, target_recipe: dict | None = None, options: dict | None = None,
                   input_kind: str = FLOAT_NCHW, calibration: dict | None = None,
                   accuracy: dict | None = None, calib_cache: str | None = None,
                   source: dict | None = None, tools: dict | None = None, weights_terms: str | None = None,
                   engine_choice: dict | None = None) -> dict:
    """Hash every file in ``bundle_dir`` and write ``manifest.json`` atomically; return the manifest.

    Call it last, when the artifacts are final: the manifest lists exactly the files present.
    ``artifact`` and ``calib_cache`` are names relative to the bundle. ``engine_choice``: how deploy chose
    ``backend`` (what it measured on which machine, the choice and why, or that --backend forced it).
    """
    root = Path(bundle_dir)
    if precision not in PRECISIONS:
        raise EdgefaceError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    files = {}
    for rel in _bundle_files(root):
        p = root / rel
        if p.is_symlink():  # a link could point anywhere after copying; bundles hold real files only
            raise EdgefaceError(f"{p} is a symbolic link; a bundle holds plain files only")
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    for name in [artifact] + ([calib_cache] if calib_cache else []):
        if name not in files:
            raise EdgefaceError(f"{name} is not in the bundle folder {root}; the export step did not write it")
    manifest = {
        "format": BUNDLE_FORMAT,
        "bundle_version": BUNDLE_VERSION,
        "edgeface_version": __version__,
        "created_utc": _utc_now(),
        "target": target,
        "backend": backend,
        "engine_choice": engine_choice,
        "precision": precision,
        "artifact": artifact,
        "input_kind": input_kind,
        "calib_cache": calib_cache,
        "options": options or {},
        "spec": spec.to_dict(),
        "files": files,
        "calibration": calibration,
        "accuracy": accuracy,
        "source": source or {},
        "weights_terms": weights_terms or "not stated",  # what a program checks before shipping the bundle
        "target_recipe": target_recipe or {},
        "tools": tools or tool_versions(),
    }
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    atomic_write_json(root / MANIFEST_NAME, manifest)
    return manifest


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces) without its own digest field. It holds
    every file's sha256, so it covers the whole bundle; checked before any field is used."""
    import hashlib

    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                      default=_jsonable)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _jsonable(o):
    from ..core.io import to_jsonable

    return to_jsonable(o)


def _utc_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


# -- reading and verifying ----------------------------------------------------------------------------
def is_bundle(path: str | Path) -> bool:
    """A folder with a manifest.json entry of any kind (file, folder, link, dangling link) is a bundle: it
    is verified or refused, never read as a plain folder of artifacts."""
    p = Path(path)
    return p.is_dir() and os.path.lexists(p / MANIFEST_NAME)


_REQUIRED = {"format": str, "bundle_version": int, "edgeface_version": str, "target": str, "backend": str,
             "precision": str, "artifact": str, "spec": dict, "files": dict}


def read_manifest(path: str | Path, trusted_keys: list | None = None, snapshot=None) -> dict:
    """The parsed manifest of a bundle folder: signature (when ``trusted_keys``, public keys from
    runtime/signing), then its own digest, then its structure, checked before any field is used (files'
    hashes come later, in ``verify_files``). ``snapshot``: the open folder (core.snapshot) to read it from."""
    root = Path(path)
    if snapshot is None:
        if not root.is_dir():
            raise EdgefaceError(f"bundle {root} is not a folder; pass the folder `edgeface deploy` wrote")
        with FolderSnapshot(root) as snap:
            return read_manifest(root, trusted_keys, snap)
    raw = _manifest_bytes(root, snapshot)
    if trusted_keys:
        from .signing import verify_signature

        verify_signature(root, raw, trusted_keys, snapshot=snapshot)
    return parse_manifest(root, raw)


def _manifest_bytes(root: Path, snap: FolderSnapshot) -> bytes:
    """manifest.json's bytes, read once through the folder snapshot. Missing from the snapshot: not a complete
    bundle; listed but gone when read: the bundle changed under us, which is an error, never a plain folder."""
    mpath = root / MANIFEST_NAME
    if MANIFEST_NAME not in snap.names:
        raise EdgefaceError(f"{root} has no {MANIFEST_NAME}, so it is not a complete bundle "
                            f"(an interrupted deploy?); re-run edgeface deploy")
    try:
        return snap.read(MANIFEST_NAME, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise EdgefaceError(f"{mpath} disappeared while the bundle was read (is something changing {root}?); "
                            "it is refused, not run as a plain folder: try again when the bundle is "
                            "complete") from None
    except EdgefaceError as e:
        text = str(e)
        if "symbolic link" in text:
            raise EdgefaceError(f"{mpath} is a symbolic link; a bundle holds plain files only: re-run edgeface "
                                f"deploy") from None
        if "more than" in text:
            raise EdgefaceError(f"{mpath} is larger than {MAX_MANIFEST_BYTES >> 20} MB, not a manifest; re-run "
                                f"edgeface deploy") from None
        raise EdgefaceError(f"{mpath} is not a file, so {root} is a damaged bundle; re-run edgeface deploy") from None


def parse_manifest(root: Path, raw: bytes) -> dict:
    """The manifest from its bytes: JSON, its digest, its required fields and their types."""
    from ..core.limits import short

    mpath = root / MANIFEST_NAME
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise EdgefaceError(f"{mpath} is nested too deeply to be a manifest; re-run edgeface deploy") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EdgefaceError(f"{mpath} is not valid JSON ({type(e).__name__}); re-run edgeface deploy") from None
    if not isinstance(manifest, dict):
        raise EdgefaceError(f"{mpath} is not a JSON object; re-run edgeface deploy")
    version = manifest.get("bundle_version")
    if manifest.get("format") == BUNDLE_FORMAT and isinstance(version, int) and version > BUNDLE_VERSION:
        raise EdgefaceError(f"bundle {root} has format version {short(version)} (written by edgeface "
                            f"{str(manifest.get('edgeface_version'))[:20]}); this edgeface {__version__} reads up to "
                            f"version {BUNDLE_VERSION}: upgrade edgeface on this device")
    digest = manifest.get(DIGEST_KEY)
    if not isinstance(digest, str):
        raise EdgefaceError(f"{mpath} has no {DIGEST_KEY} (an older edgeface wrote it, or it was edited); "
                            f"re-run edgeface deploy")
    try:
        ok = manifest_digest(manifest) == digest
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise EdgefaceError(f"{mpath} does not match its {DIGEST_KEY} (modified or corrupt); re-run edgeface deploy")
    for key, typ in _REQUIRED.items():
        if key not in manifest:
            raise EdgefaceError(f"{mpath} lacks the field '{key}'; re-run edgeface deploy")
        if not isinstance(manifest[key], typ) or isinstance(manifest[key], bool):
            raise EdgefaceError(f"{mpath} field '{key}' must be {typ.__name__}, got "
                                f"{type(manifest[key]).__name__}; re-run edgeface deploy")
    if manifest["format"] != BUNDLE_FORMAT:
        raise EdgefaceError(f"{mpath} is not an edgeface bundle manifest (format {manifest['format']!r})")
    if manifest["bundle_version"] > BUNDLE_VERSION:
        raise EdgefaceError(f"bundle {root} has format version {manifest['bundle_version']} (written by edgeface "
                            f"{manifest['edgeface_version']}); this edgeface {__version__} reads up to version "
                            f"{BUNDLE_VERSION}: upgrade edgeface on this device")
    if manifest["precision"] not in PRECISIONS:
        raise EdgefaceError(f"{mpath} precision {manifest['precision']!r} is not one of {', '.join(PRECISIONS)}")
    return manifest


def _safe_member(root: Path, rel: str, mpath: Path) -> Path:
    """A manifest path that stays inside the bundle (no absolute paths, no '..')."""
    if not isinstance(rel, str):
        raise EdgefaceError(f"{mpath} lists a file name that is not a string; re-run edgeface deploy")
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or "\x00" in rel:
        raise EdgefaceError(f"{mpath} lists {rel[:80]!r}, which is outside the bundle; re-run edgeface deploy")
    # No link anywhere on the way: a link could point outside the bundle (sub -> /etc, model.onnx -> ~/x).
    q = root
    for part in p.parts:
        q = q / part
        if q.is_symlink():
            raise EdgefaceError(f"bundle {root} holds {q.relative_to(root).as_posix()}, a symbolic link; a bundle "
                                f"holds plain files only: re-run edgeface deploy")
    return root / p


def verify_files(root: Path, manifest: dict, snapshot: FolderSnapshot | None = None, *,
                 signed: bool = False) -> dict[str, bytes]:
    """Every listed file exists with its sha256 and size; no unlisted model file is present. Returns the
    verified bytes by name: each file is read once, and those bytes are what the engine gets.

    ``signed`` (a signature verified against a trusted key): the signature must cover everything the
    runtime could read, so *any* entry the manifest does not list is refused, a device-built ``engines/``
    folder included (a device that trusts keys builds TensorRT engines into its own cache instead)."""
    if snapshot is None:
        with FolderSnapshot(root) as snap:
            return verify_files(root, manifest, snap, signed=signed)
    mpath = root / MANIFEST_NAME
    files = manifest["files"]
    entries = snapshot.walk()
    for rel, kind in entries:
        if kind == "link":
            raise EdgefaceError(f"bundle {root} holds {rel}, a symbolic link; a bundle holds plain files only: "
                                f"re-run edgeface deploy")
    out: dict[str, bytes] = {}
    for rel, entry in files.items():
        _safe_member(root, rel, mpath)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise EdgefaceError(f"{mpath} entry for {rel} has no sha256; re-run edgeface deploy")
        size = entry.get("bytes")
        declared = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
        # Held in memory to hand on to the engine: bounded by what the manifest declares (a bigger file is
        # refused before it is read) and by the memory this machine has free.
        limit = min(declared if declared is not None else MAX_FILE_BYTES, max(available_memory() // 2, 1 << 26))
        if declared is not None and declared > limit:
            raise EdgefaceError(f"bundle file {rel} is {declared} bytes, more than half the memory free here; it is "
                                f"not an edgeface model file: re-run edgeface deploy")
        try:
            data = snapshot.read(rel, limit)
        except FileNotFoundError:
            raise EdgefaceError(f"bundle file {rel} is missing from {root}; re-run edgeface deploy") from None
        except EdgefaceError as e:
            if "more than" in str(e) and declared is not None:
                raise EdgefaceError(f"bundle file {rel} is larger than the {size} bytes the manifest says (modified "
                                    f"or replaced); re-run edgeface deploy") from None
            raise EdgefaceError(f"{e}; re-run edgeface deploy") from None
        if declared is not None and len(data) != declared:
            raise EdgefaceError(f"bundle file {rel} has {len(data)} bytes, the manifest says {size} "
                                f"(modified or truncated); re-run edgeface deploy")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise EdgefaceError(f"bundle file {rel} does not match its sha256 in the manifest (modified or "
                                f"corrupt); re-run edgeface deploy")
        out[rel] = data
    listed_dirs = {"/".join(rel.split("/")[:i]) for rel in files for i in range(1, rel.count("/") + 1)}
    for rel, kind in entries:
        if rel in (MANIFEST_NAME, SIGNATURE_NAME) or rel in files or (kind == "dir" and rel in listed_dirs):
            continue
        if signed:
            raise EdgefaceError(f"signed bundle {root} holds {rel}, which its signed manifest does not list; the "
                                f"signature must cover everything the runtime may read: remove it (TensorRT "
                                f"engines are built into this device's own cache) or re-run edgeface deploy --sign")
        if kind == "file" and rel.split("/", 1)[0] != DEVICE_BUILT_DIR and rel.lower().endswith(model_suffixes()):
            raise EdgefaceError(f"bundle {root} holds {rel}, which its manifest does not list; remove it "
                                f"or re-run edgeface deploy")
    for key in ("artifact", "calib_cache"):
        rel = manifest.get(key)
        if rel is not None and not isinstance(rel, str):
            raise EdgefaceError(f"{mpath} field '{key}' must be a file name, got {type(rel).__name__}; re-run "
                                f"edgeface deploy")
        if rel and rel not in files:
            raise EdgefaceError(f"{mpath} names {key} {rel!r} but does not list it under files; re-run edgeface deploy")
    return out


# -- this device vs the bundle's target ---------------------------------------------------------------
def _backend_installed(backend: str) -> bool:
    return backend in registry.REGISTRY and registry.is_installed(backend)


def check_target(root: Path, manifest: dict, device: str, allow_foreign_target: bool) -> str | None:
    """None when the bundle fits this device; a warning text when it runs here but was made for another
    device; EdgefaceError when it cannot or must not run here."""
    from ..core.limits import short

    target = manifest["target"]
    backend = manifest["backend"]
    recipe = manifest.get("target_recipe") or {}
    mpath = root / MANIFEST_NAME
    if not isinstance(recipe, dict):
        raise EdgefaceError(f"{mpath} field 'target_recipe' must be an object, got {type(recipe).__name__}; "
                            f"re-run edgeface deploy")
    if backend not in registry.REGISTRY:  # not "pip install edgeface[<whatever the manifest says>]"
        raise EdgefaceError(f"{mpath} names backend {short(backend)}, which this edgeface does not know; re-run "
                            f"edgeface deploy")
    if len(target) > 64:
        raise EdgefaceError(f"{mpath} names target {short(target)}, not a device name; re-run edgeface deploy")
    if target == device:
        if not _backend_installed(backend):
            raise EdgefaceError(f"bundle {root} needs the {backend} backend, which is not installed here: "
                                f"pip install 'edgeface[{_extra(backend)}]'")
        return None
    if not _backend_installed(backend):
        raise EdgefaceError(f"bundle {root} was deployed for target '{target}' ({backend}) and this machine is "
                            f"'{device}' without {backend}: run it on the {target} device, or deploy for this "
                            f"machine with `edgeface deploy --target {_suggest_target(device)}`")
    # The backend is here, so the bundle can run. Portable targets (ncnn, onnxruntime: same numbers on any
    # CPU, as the emulated-ARM check shows) run with a warning; device-bound ones (TensorRT engines are
    # specific to one GPU and TensorRT version) need allow_foreign_target.
    if not recipe.get("portable", False) and not allow_foreign_target:
        raise EdgefaceError(f"bundle {root} was deployed for target '{target}' and this machine is '{device}': "
                            f"deploy with `edgeface deploy --target {_suggest_target(device)}`, or pass "
                            f"allow_foreign_target=True to run it anyway")
    return (f"bundle {root.name} was deployed for '{target}' and runs here on '{device}': outputs match, "
            f"speed figures are this machine's, not the {target}'s")


def _extra(backend: str) -> str:
    engine = registry.REGISTRY.get(backend)
    return engine.extra if engine is not None else backend


def _suggest_target(device: str) -> str:
    return device if device in (X86, RPI, JETSON) else "x86|rpi|jetson"


def open_bundle(path: str | Path, *, allow_foreign_target: bool = False, device: str | None = None,
                verify: bool = True, trusted_keys=None, snapshot: FolderSnapshot | None = None) -> BundleInfo:
    """Read and verify a bundle folder; return what to load. EdgefaceError (one line) when anything is off.

    The folder is read as one snapshot (``core.snapshot``): its manifest, signature and every listed file are
    each read once, and the returned ``files`` are the very bytes that were hashed, for the engine to load.
    ``device`` overrides the detected device kind (``ANY_DEVICE`` skips the device check: for tools that only
    inspect a bundle, like deploy's own final check); ``verify=False`` skips the sha256 pass (for a caller
    that verified it moments ago, e.g. deploy's own check; never with trusted keys).
    """
    root = Path(path)
    from .signing import trust_configured

    keys = trust_configured(trusted_keys)
    if snapshot is None:
        if not root.is_dir():
            raise EdgefaceError(f"bundle {root} is not a folder; pass the folder `edgeface deploy` wrote")
        with FolderSnapshot(root) as snap:
            return open_bundle(root, allow_foreign_target=allow_foreign_target, device=device, verify=verify,
                               trusted_keys=keys if keys is not None else None, snapshot=snap)
    manifest = read_manifest(root, keys, snapshot)
    mpath = root / MANIFEST_NAME
    files: dict[str, bytes] = {}
    if verify or keys:
        files = verify_files(root, manifest, snapshot, signed=bool(keys))
    spec = ModelSpec.from_dict(manifest["spec"])
    note = None
    if device != ANY_DEVICE:
        note = check_target(root, manifest, device or detect_device(), allow_foreign_target)
    if note:
        warnings.warn(note, stacklevel=2)
    artifact = _safe_member(root, manifest["artifact"], mpath)
    cache = manifest.get("calib_cache")
    options = manifest.get("options") or {}
    if not isinstance(options, dict):
        raise EdgefaceError(f"{mpath} field 'options' must be an object; re-run edgeface deploy")
    options = check_manifest_options(options, manifest["backend"], mpath)
    calib_path = _safe_member(root, cache, mpath) if cache else None
    if calib_path is not None:
        options.setdefault("calib_cache", str(calib_path))  # TensorRT's implicit-calibration builds read it
    return BundleInfo(artifact=artifact, backend=manifest["backend"], precision=manifest["precision"], spec=spec,
                      target=manifest["target"], manifest=manifest, root=root, options=options,
                      calib_cache=calib_path, input_kind=_input_kind(manifest, mpath), files=files,
                      signed=bool(keys))


def verified_paths(info: BundleInfo) -> dict[str, bytes] | None:
    """The verified bytes keyed by each file's path as the engines name it (``str(root / name)``), or None
    when the bundle was opened without verification (the engine then reads the files itself)."""
    if not info.files:
        return None
    return {str(info.root / rel): data for rel, data in info.files.items()}


def _input_kind(manifest: dict, mpath: Path) -> str:
    kind = manifest.get("input_kind") or FLOAT_NCHW
    if not isinstance(kind, str) or kind not in INPUT_KINDS:
        from ..core.limits import short

        raise EdgefaceError(f"{mpath} input_kind {short(kind)} is not one of {', '.join(INPUT_KINDS)}; re-run "
                            f"edgeface deploy")
    return kind


def check_manifest_options(options: dict, backend: str, mpath: Path) -> dict:
    """The backend options a manifest may set: ``threads`` (bounded by this machine's cores) and the keys the
    engine's runner lists in ``MANIFEST_OPTIONS`` with their types. No paths: a manifest must not make the
    runtime write or read a file of its choosing (onnxruntime's optimized_model_path, TensorRT's cache_dir)."""
    from ..core.limits import check_threads, short

    if backend not in registry.REGISTRY:
        raise EdgefaceError(f"{mpath} names backend {short(backend)}, which this edgeface does not know")
    try:  # the runner module only (it imports its engine's package when it loads): works where it is absent
        allowed = dict(getattr(registry.get(backend).runner_class(), "MANIFEST_OPTIONS", {}))
    except (ImportError, OSError):
        allowed = {}
    out = {}
    for key, value in options.items():
        if key == "threads":
            out[key] = check_threads(value, f"{mpath} options.threads")
            continue
        if key not in allowed:
            raise EdgefaceError(f"{mpath} sets option {short(key)}, which a bundle may not set for {backend} "
                                f"(allowed: {', '.join(['threads', *sorted(allowed)])}); re-run edgeface deploy")
        typ, check = allowed[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if not isinstance(value, typ) or (isinstance(value, bool) and bool not in types) or not check(value):
            raise EdgefaceError(f"{mpath} option {key} is {short(value)}, not an allowed value; re-run edgeface deploy")
        out[key] = value
    return out
