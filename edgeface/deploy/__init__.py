"""`edgeface deploy`: weights -> a verified bundle for one device.

    pipeline.py  the steps: export, quantize (INT8), verify, seal, rename into place
    targets.py   targets as data (recipes/targets/*.yaml), validated before any work
    verify.py    the bundle through the loader a device uses, against the FP32 reference, within budget
    staging.py   the temporary folder beside --out, the atomic swap, leftovers of killed deploys
    steps.py     the progress lines
    remote.py    --host: copy the bundle to the device, check, build and bench it there (SSH)
"""
from __future__ import annotations

from .pipeline import DeployOptions, DeployResult, deploy

__all__ = ["DeployOptions", "DeployResult", "deploy"]
