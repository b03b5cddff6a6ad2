"""The inference engines: one package per engine, each exporting one descriptor, collected in ``registry``.

    base.py        the lifecycle every runner follows (load / run / info / close), owned by the base class
    descriptor.py  what an engine is, as data (artifact, companions, extra, runner, exporter, INT8, target)
    registry.py    THE table of engines, which everything else reads
    onnxruntime/  ncnn/  tensorrt/  torch/

Torch-free: importing this package, the registry or any engine package imports no engine library.
"""
