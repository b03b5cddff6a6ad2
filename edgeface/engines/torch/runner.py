"""PyTorch eager: the reference every other engine is compared with. Runs ``.pt`` checkpoints."""
from __future__ import annotations

import numpy as np

from ...core.errors import EdgefaceError
from ..base import Backend


class TorchBackend(Backend):
    name = "torch"

    def _load_impl(self) -> None:
        import torch

        from .checkpoint import load_model

        if self.precision != "fp32":
            raise EdgefaceError(f"the torch backend runs fp32 checkpoints only, not {self.precision!r}; "
                                f"export with `edgeface export` for other precisions")
        if self.threads:
            # Process-wide in PyTorch: the last backend created decides.
            torch.set_num_threads(int(self.threads))
        self._torch = torch
        model, _, _ = load_model(self.artifact)
        # channels_last is markedly faster for eager inference of this depthwise network on CPU.
        self._model = model.to(memory_format=torch.channels_last)

    def _run_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            outs = self._model(t)
        return {name: o.numpy().astype(np.float32, copy=False) for name, o in zip(self.spec.output_names, outs)}

    def _info_impl(self) -> dict:
        try:
            import torch
        except ImportError:
            return {}
        return {"version": torch.__version__, "torch_threads": torch.get_num_threads()}

    def _close_impl(self) -> None:
        self._model = None
