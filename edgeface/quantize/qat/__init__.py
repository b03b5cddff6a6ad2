"""Quantization-aware training (torch + torchao PT2E): a recipe with ``kind: qat``.

    recipe.py     the recipe's schema and the INT8 scheme it states
    quantizer.py  our PT2E quantizer: the deployed INT8 scheme annotated on the exported graph
    graph.py      the fake-quantized graph: prepare, freeze observers, read the float weights back
    export.py     the converted graph as a symmetric Q/DQ ONNX (TensorRT's explicit-quantization form)
    convert.py    that Q/DQ ONNX in every engine's INT8 form, with the trained scales
    train.py      the training run: FP32 checkpoint -> QAT checkpoint + every INT8 artifact, checked

Why torchao PT2E: torch.ao.quantization (eager/FX) is deprecated, cannot export (-127, 127) weight ranges
through the legacy exporter and leaves BatchNorm unfolded; NVIDIA ModelOpt pulls GPU packages and its
dynamo export fails here; torchao's XNNPACKQuantizer sits in its testing package, deprecated. PT2E with a
quantizer of our own states exactly the deployed scheme and exports clean Q/DQ.
"""
