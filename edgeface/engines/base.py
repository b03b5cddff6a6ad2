"""The lifecycle every engine's runner follows (after Polygraphy's runners), owned by this base class.

    b = SomeBackend(artifact, spec, threads=2)   # cheap: options checked, nothing loaded yet (lazy)
    b.load()                                     # activate: create the session / net / engine
    out = b.run(x)                               # {"blur": (N, 1), "pose": (N, 3)} float32
    b.info()                                     # what runs: versions, providers, precision
    b.close()                                    # deactivate: free native resources

A runner fills in ``_load_impl``, ``_run_impl`` and, where it has something to add or free, ``_info_impl``
and ``_close_impl``. The base class does the rest once for all of them: ``load`` is idempotent and cleans
up after a failed load, ``run`` loads on first use and checks the batch against the artifact's input
kind, ``close`` is safe to call twice, and unknown options are refused when the runner is created (an
option nobody reads would otherwise be ignored without a word).

``x`` is what the artifact's input takes (``input_kind``): float32 NCHW normalised as the ModelSpec says,
or uint8 NHWC BGR when the preprocessing is folded into the graph or done by the engine.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np

from ..core.errors import EdgefaceError
from ..core.spec import FLOAT_NCHW, UINT8_NHWC, ModelSpec


class Backend(ABC):
    name: ClassVar[str] = ""
    # Keyword options this runner reads (documented in each runner's class docstring).
    OPTIONS: ClassVar[frozenset[str]] = frozenset()
    # The subset a bundle's manifest may set, with (type, check): never a path, so a manifest cannot make the
    # runtime write or read a file of its choosing. ``threads`` is always allowed (bounded by the cores).
    MANIFEST_OPTIONS: ClassVar[dict] = {}

    def __init__(self, artifact: str | Path, spec: ModelSpec, threads: int | None = None,
                 precision: str | None = None, *, verified_files: Mapping[str, bytes] | None = None,
                 signed: bool = False, **options):
        unknown = sorted(set(options) - self.OPTIONS)
        if unknown:
            known = ", ".join(sorted(self.OPTIONS)) or "none"
            raise EdgefaceError(f"the {self.name} backend has no option {', '.join(map(repr, unknown))}; "
                                f"its options are: {known}")
        self.artifact = Path(artifact)
        self.spec = spec
        self.threads = threads
        # What the caller (a bundle's manifest, Predictor(precision=...)) asked this engine to run at; None:
        # whatever the artifact holds. ``precision`` becomes what actually runs, once loaded.
        self.requested_precision = precision
        self.precision = precision or "fp32"
        self.options = options
        self.input_kind = FLOAT_NCHW
        self._loaded = False
        self._closed = False
        # A verified bundle's files (path -> the bytes its manifest's sha256 matched): the runner loads these
        # and nothing else; None: a loose artifact, read from disk once (``read_file``).
        self.verified_files = dict(verified_files) if verified_files is not None else None
        # The bundle's signature verified against a trusted key: the only proof that edgeface (its key
        # holder) built the artifact. Anything else is checked as a foreign model (``core.graphcheck``).
        self.signed = bool(signed) and verified_files is not None
        self.fixed_batch: int | None = None   # set by runners whose graph fixes the batch size

    # -- the lifecycle ----------------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Create the native session (once). A failed load frees what it had created and raises."""
        self._closed = False
        if self._loaded:
            return
        try:
            self._load_impl()
            self._check_precision()
        except BaseException:
            self._close_impl()
            raise
        self._loaded = True

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One batch in, the spec's named outputs out (float32, batch first: one row per input, checked)."""
        if self._closed:
            raise EdgefaceError(f"this {self.name} backend is closed; create a new one")
        self.load()
        x = self.check_input(x)
        try:
            outs = self._run_impl(x)
        except EdgefaceError:
            raise
        except Exception as e:  # noqa: BLE001 - native engines raise their own types; one line, not a traceback
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise EdgefaceError(f"{self.name} failed to run {self.artifact.name} ({type(e).__name__}: {first}); "
                                f"is it an edgeface model? re-export it with `edgeface export`") from None
        return self.check_outputs(outs, x.shape[0])

    def check_outputs(self, outs, n: int) -> dict[str, np.ndarray]:
        """Every output the spec names, as float32 with one row per input: blur (n,) or (n, 1), pose (n, 3).
        A foreign model answering other shapes is an error naming them, never a short or reshaped result."""
        if not isinstance(outs, dict):
            raise EdgefaceError(f"{self.artifact.name} returned no named outputs")
        checked = {}
        for o in self.spec.outputs:
            k = len(o.fields)
            a = outs.get(o.name)
            if a is None:
                raise EdgefaceError(f"{self.artifact.name} answered no '{o.name}' output; it is not an edgeface "
                                    f"model: re-export it with `edgeface export`")
            a = np.asarray(a)
            ok_shape = a.ndim >= 1 and a.shape[0] == n and (a.shape[1:] == (k,) or (k == 1 and a.shape[1:] == ()))
            if not ok_shape or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                want = f"({n},) or ({n}, 1)" if k == 1 else f"({n}, {k})"
                raise EdgefaceError(f"{self.artifact.name} answered '{o.name}' of shape {tuple(a.shape)} {a.dtype} for "
                                    f"a batch of {n}; an edgeface model answers {want}: it is not an edgeface model "
                                    f"(or a broken one); re-export it with `edgeface export`")
            checked[o.name] = a.astype(np.float32, copy=False)
        return checked

    def read_file(self, path: str | Path) -> bytes:
        """The bytes of one of the artifact's files, read once: from a verified bundle, the very bytes its
        manifest vouched for (a file it does not list is refused, never read from disk); else from disk."""
        from ..core.snapshot import read_file_once

        p = Path(path)
        if self.verified_files is not None:
            data = self.verified_files.get(str(p))
            if data is None:
                raise EdgefaceError(f"{p.name} is not listed in the bundle's manifest, and a bundle's runtime reads "
                                    f"only files the manifest vouches for; re-run edgeface deploy")
            return data
        return read_file_once(p, "model file")

    def info(self) -> dict:
        return {"backend": self.name, "artifact": str(self.artifact), "precision": self.precision,
                "threads": self.threads, "input_kind": self.input_kind, **self._info_impl()}

    def close(self) -> None:
        """Free native resources; afterwards ``run`` refuses instead of loading again (``load`` reopens)."""
        self._closed = True
        if self._loaded:
            try:
                self._close_impl()
            finally:
                self._loaded = False

    def __enter__(self):
        self.load()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- what a runner fills in -----------------------------------------------------------------------------
    @abstractmethod
    def _load_impl(self) -> None:
        """Create the native session; set ``input_kind`` and ``precision`` from what the artifact says.
        Raise EdgefaceError with a one-line reason on failure."""

    @abstractmethod
    def _run_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run a checked batch."""

    @classmethod
    def precision_problem(cls, stored: str, wanted: str) -> str | None:
        """None when this engine can run an artifact holding ``stored`` at ``wanted`` on this machine; else why
        not, in a few words (deploy asks before it measures a candidate). Most engines run what the artifact holds."""
        return None if wanted == stored else f"{cls.name} runs a {stored} artifact at {stored} only, not {wanted}"

    def _check_precision(self) -> None:
        """After loading: the precision asked for is the one that runs, or an EdgefaceError naming both. An
        engine whose precision follows a setting of its own (ncnn's fp16 policy, a TensorRT engine's record)
        overrides this; OpenVINO reads back what its compiled model runs (runner.py)."""
        asked = self.requested_precision
        if asked is not None and asked != self.precision:
            raise EdgefaceError(f"the {self.name} engine runs {self.artifact.name} in {self.precision}, not the "
                                f"{asked} "
                                f"asked for; ask for {self.precision} (or no precision), or use an engine that runs "
                                f"{asked}")

    def _info_impl(self) -> dict:
        """Engine-specific facts for ``info()`` (versions, providers, ...). Called loaded or not."""
        return {}

    def _close_impl(self) -> None:
        """Free native resources; also called after a failed load, so it must cope with partial state."""

    # -- helpers ----------------------------------------------------------------------------------------------
    def check_input(self, x: np.ndarray) -> np.ndarray:
        s = self.spec.input_size
        if self.input_kind == UINT8_NHWC:
            want, dtype = (s, s, 3), np.uint8
        else:
            want, dtype = (3, s, s), np.float32
        ok = isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[1:] == want
        if not ok or x.dtype != dtype:
            raise EdgefaceError(f"{self.name} input has shape {np.shape(x)} dtype {getattr(x, 'dtype', None)}; "
                                f"this artifact takes (N, {', '.join(map(str, want))}) {np.dtype(dtype).name}")
        if x.shape[0] == 0:
            raise EdgefaceError("empty batch: pass at least one crop")
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            raise EdgefaceError(f"{self.artifact.name} fixes its batch at {self.fixed_batch} and got {x.shape[0]} "
                                "crops; "
                                f"pass batches of {self.fixed_batch}, or re-export it with a dynamic batch "
                                f"(`edgeface export` does)")
        return x
