"""The fake engine's runner: the model's ONNX graph in an onnxruntime session, nothing else of edgeface's."""
from __future__ import annotations

import numpy as np

from edgeface.engines.base import Backend


class FakeBackend(Backend):
    """Options: ``tag`` (a string the target's ``fake:`` section sets; ``info()`` reports it)."""

    name = "fake"
    OPTIONS = frozenset({"tag"})
    MANIFEST_OPTIONS = {"tag": (str, lambda v: len(v) < 64)}

    def _load_impl(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        self._session = ort.InferenceSession(self.read_file(self.artifact), opts,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def _run_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self._session.get_outputs()]
        return dict(zip(names, self._session.run(names, {self._input: x})))

    def _info_impl(self) -> dict:
        return {"tag": self.options.get("tag")}

    def _close_impl(self) -> None:
        self._session = None
