"""Calibration: one pass of statistics over the FP32 model, turned into per-tensor ranges.

    dataset.py      the calibration set: face crops made by the inference crop path, fingerprinted
    stats.py        min/max and histograms of every float tensor (onnxruntime), cached by content
    calibrators.py  minmax / percentile / entropy / mse: a histogram -> a clipping range
    policy.py       which tensors get which range and which layers stay float: the QuantPlan
"""
