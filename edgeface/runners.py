"""Turn a MODEL argument (nothing, a checkpoint, or an exported artifact) into a runner for evaluation."""
from __future__ import annotations

from pathlib import Path

from .errors import EdgefaceError


def make_runner(model: str | None, backend: str = "auto"):
    """(runner, spec, label). Checkpoints run in torch; artifacts go through the Predictor."""
    if model is None or str(model).endswith(".pt"):
        from .checkpoint import load_model
        from .preprocess import to_input
        import torch

        net, spec, _ = load_model(model)
        net = net.to(memory_format=torch.channels_last)

        def runner(batch):
            with torch.no_grad():
                b, p = net(torch.from_numpy(to_input(batch, spec)).contiguous(memory_format=torch.channels_last))
            return b.numpy()[:, 0], p.numpy()

        return runner, spec, str(model or "default model (torch)")
    if not Path(model).exists():
        raise EdgefaceError(f"model {model} does not exist")
    from .predictor import Predictor

    pred = Predictor(model, backend=backend)

    def runner(batch):
        r = pred.predict(batch)
        import numpy as np
        return r.blur, np.stack([r.yaw, r.pitch, r.roll], axis=1)

    return runner, pred.spec, f"{model} ({pred.backend} {pred.precision})"
