"""Labelled faces and what the model's outputs mean: plain numpy (and OpenCV), no torch, no engine.

    data.py      readers for labelled face sets (labels.csv, AFLW2000-3D, image folders) -> Sample
    blur.py      synthetic blur and the blur score's definition
    pose.py      head-pose rotation algebra
    evaluate.py  accuracy on labelled sets through any runner (torch, or any engine via the Predictor), and
                 any artifact against FP32 on the same faces (what quantize, deploy and bench print)

Below runtime and torch-free, so `edgeface bench --data` measures accuracy on a device; training, export,
quantization, bench and deploy all read labels and measure accuracy through it.
"""
