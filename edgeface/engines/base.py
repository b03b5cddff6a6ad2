"""The backend lifecycle every engine follows (after Polygraphy's runners).

    b = SomeBackend(artifact, spec, threads=2)   # cheap: nothing is loaded yet (lazy)
    b.load()                                     # activate: create the session / net / engine
    out = b.run(x)                               # {"blur": (N, 1), "pose": (N, 3)} float32
    b.info()                                     # what runs: versions, providers, precision
    b.close()                                    # deactivate: free native resources

``x`` is what the artifact's input expects (``input_kind``): float32 NCHW normalised as the ModelSpec
says, or uint8 NHWC BGR when preprocessing is folded into the graph.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import EdgefaceError
from ..spec import ModelSpec

FLOAT_NCHW = "float32_nchw"
UINT8_NHWC = "uint8_nhwc_bgr"


class Backend(ABC):
    name: ClassVar[str] = ""

    def __init__(self, artifact: str | Path, spec: ModelSpec, threads: int | None = None,
                 precision: str | None = None, **options):
        self.artifact = Path(artifact)
        self.spec = spec
        self.threads = threads
        self.precision = precision or "fp32"
        self.options = options
        self.input_kind = FLOAT_NCHW
        self._loaded = False

    # -- lifecycle --------------------------------------------------------------------------------
    @abstractmethod
    def load(self) -> None:
        """Create the native session. Raise EdgefaceError with a one-line reason on failure."""

    @abstractmethod
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One batch in, the spec's named outputs out (float32, batch first)."""

    def info(self) -> dict:
        return {"backend": self.name, "artifact": str(self.artifact), "precision": self.precision,
                "threads": self.threads, "input_kind": self.input_kind}

    def close(self) -> None:
        self._loaded = False

    # -- helpers ----------------------------------------------------------------------------------
    def __enter__(self):
        if not self._loaded:
            self.load()
            self._loaded = True
        return self

    def __exit__(self, *exc):
        self.close()

    def check_input(self, x: np.ndarray) -> np.ndarray:
        s = self.spec.input_size
        if self.input_kind == UINT8_NHWC:
            want, dtype = (s, s, 3), np.uint8
            ok = x.ndim == 4 and x.shape[1:] == want
        else:
            want, dtype = (3, s, s), np.float32
            ok = x.ndim == 4 and x.shape[1:] == want
        if not ok or x.dtype != dtype:
            raise EdgefaceError(f"{self.name} input has shape {x.shape} dtype {x.dtype}; this artifact takes "
                                f"(N, {', '.join(map(str, want))}) {np.dtype(dtype).name}")
        if x.shape[0] == 0:
            raise EdgefaceError("empty batch: pass at least one crop")
        return x
