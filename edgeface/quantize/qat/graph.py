"""The fake-quantized graph: torch.export + prepare_qat_pt2e with our quantizer, and what training does to it
(freezing observers, pausing them for evaluation, reading the float weights back)."""
from __future__ import annotations

from contextlib import contextmanager

from ...core.errors import EdgefaceError


def prepare_qat_model(model, spec, scheme, batch: int = 8):
    """torch.export + prepare_qat_pt2e with our quantizer; batch dimension dynamic."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from .quantizer import EdgefaceInt8Quantizer

    x = torch.randn(batch, 3, spec.input_size, spec.input_size)
    dims = ({0: torch.export.Dim("batch", min=1, max=65536)},)
    model.train()
    graph = torch.export.export(model, (x,), dynamic_shapes=dims).module()
    return prepare_qat_pt2e(graph, EdgefaceInt8Quantizer(scheme))


def freeze_activation_observers(prepared) -> int:
    """Stop activation range updates (weights keep their per-step per-channel max-abs: no weight ever
    clips, and the deployed converters, which take each channel's max-abs, reproduce the trained grid)."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    n = 0
    for m in prepared.modules():
        if isinstance(m, FakeQuantizeBase) and not getattr(m, "is_per_channel", False):
            m.disable_observer()
            n += 1
    return n


@contextmanager
def observers_paused(prepared):
    """Observers off for the duration (evaluation), restored after."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    fqs = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    saved = [m.observer_enabled.clone() for m in fqs]
    for m in fqs:
        m.disable_observer()
    try:
        yield
    finally:
        for m, v in zip(fqs, saved):
            m.observer_enabled.copy_(v)


def float_state_dict(prepared, model) -> dict:
    """The trained float weights under EdgeFaceNet's names (a checkpoint load_model can read)."""
    sd = prepared.state_dict()
    want = model.state_dict()
    missing = [k for k in want if k not in sd or sd[k].shape != want[k].shape]
    if missing:
        raise EdgefaceError(f"QAT graph lost parameter {missing[0]} of the model; torch.export changed names "
                            f"(torch {__import__('torch').__version__})")
    return {k: sd[k].detach().clone() for k in want}
