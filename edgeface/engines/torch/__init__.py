"""PyTorch: the FP32 reference engine. Its artifact is the training checkpoint (.pt); it owns the network
definition and the checkpoint format, which training, export and quantization build on.

    runner.py       TorchBackend: runs a checkpoint in eager PyTorch (channels_last)
    network.py      EdgeFaceNet: the MobileNetV2 trunk and the blur and pose heads
    checkpoint.py   reading, writing and loading checkpoints (weights_only: a checkpoint runs no code)
"""
from __future__ import annotations

from ..descriptor import Engine

ENGINE = Engine(
    name="torch",
    title="PyTorch",
    description="PyTorch checkpoint (the reference; needs torch)",
    package="torch",
    extra="train",
    format="torch",
    suffix=".pt",
    artifact="model.pt",
    runner="edgeface.engines.torch.runner:TorchBackend",
    read_spec="edgeface.engines.torch.checkpoint:read_spec",
    precisions=("fp32",),  # no exporter: the source every other artifact is exported from
)
