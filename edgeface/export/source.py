"""What an export starts from: a checkpoint (the shipped default when none is given) or a torch module."""
from __future__ import annotations

from ..core.errors import EdgefaceError
from ..core.spec import ModelSpec
from ..engines import registry


def require_torch():
    try:
        import torch
    except ImportError:
        raise EdgefaceError("exporting needs PyTorch: pip install 'edgeface[train]'") from None
    return torch


def resolve_model(model_or_checkpoint, spec: ModelSpec | None = None):
    """(torch model in eval mode, spec) from a module, a checkpoint path, or None (shipped default)."""
    torch = require_torch()
    if isinstance(model_or_checkpoint, torch.nn.Module):
        model = model_or_checkpoint
        if spec is None:
            spec = ModelSpec(width=getattr(model, "width", 0.25))
        return model.eval(), spec
    from ..engines.torch.checkpoint import load_model

    checkpoint_suffix = registry.get("torch").suffix
    if model_or_checkpoint is not None and not str(model_or_checkpoint).endswith(checkpoint_suffix):
        raise EdgefaceError(f"{model_or_checkpoint} is not a PyTorch checkpoint ({checkpoint_suffix}); export starts "
                            f"from a checkpoint")
    model, ck_spec, _ = load_model(model_or_checkpoint)
    return model, spec or ck_spec
