"""Checkpoints, the torch engine's artifact: the state_dict plus the ModelSpec (and training state in
resumable ones). Training writes them; the torch engine, export and quantize read them.

Loaded with ``weights_only=True``: a checkpoint is untrusted input and must not run code.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ...core.artifact import shipped_artifact
from ...core.errors import EdgefaceError
from ...core.io import atomic_path, to_jsonable
from ...core.spec import ModelSpec

FORMAT = "edgeface-checkpoint"
SUFFIX = ".pt"
DEFAULT_WEIGHTS = shipped_artifact(SUFFIX)  # the shipped default model
# The shipped weights' terms, stated where a program reads them (bundle manifests): they were trained on
# non-commercial research sets, so they inherit those terms; the code is Apache-2.0.
SHIPPED_WEIGHTS_TERMS = ("research use only: trained on non-commercial research data (Pointing'04, QMUL "
                         "multi-view, UTKFace, CelebA); not for commercial use")
UNSTATED_TERMS = "not stated: ask the weights' owner (set model.terms in the training recipe)"


def weights_terms(meta: dict | None, shipped: bool = False) -> str:
    """The terms a checkpoint's weights come under: the shipped ones', else what its training recipe stated."""
    if shipped:
        return SHIPPED_WEIGHTS_TERMS
    meta = meta or {}
    return meta.get("terms") or ((meta.get("recipe") or {}).get("model") or {}).get("terms") or UNSTATED_TERMS


def _torch():
    try:
        import torch
    except ImportError:
        raise EdgefaceError("this needs PyTorch: pip install 'edgeface[train]' (or use an exported artifact)") from None
    return torch


def save_checkpoint(path: str | Path, model, spec: ModelSpec, meta: dict | None = None,
                    train_state: dict | None = None) -> None:
    torch = _torch()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "spec": spec.to_dict(), "state_dict": state, "meta": _plain(meta or {})}
    if train_state is not None:
        obj["train_state"] = train_state
    # Written to a temporary sibling and renamed: an interrupted save never leaves a truncated checkpoint.
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _plain(obj):
    """Meta as plain JSON types: numpy scalars would make the file unloadable with weights_only=True.
    Anything else JSON cannot hold is kept as its text."""
    def default(o):
        try:
            return to_jsonable(o)
        except TypeError:
            return str(o)

    return json.loads(json.dumps(obj, default=default))


def read_checkpoint(path: str | Path | None = None) -> dict[str, Any]:
    torch = _torch()
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise EdgefaceError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns (several lines) about a foreign pickle before refusing it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or unsafe file
        raise EdgefaceError(f"{path} is not a readable edgeface checkpoint ({type(e).__name__}); "
                            f"re-train or re-download it") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or "state_dict" not in obj or "spec" not in obj:
        raise EdgefaceError(f"{path} is a PyTorch file but not an edgeface checkpoint (no ModelSpec inside); "
                            f"save it with `edgeface train`")
    return obj


def read_spec(path: str | Path | None) -> ModelSpec:
    """The ModelSpec a checkpoint carries (the torch engine's spec reader); None: the shipped default."""
    return ModelSpec.from_dict(read_checkpoint(path)["spec"])


def load_model(path: str | Path | None = None):
    """(model in eval mode, spec, meta) from a checkpoint; ``None`` = the shipped default weights."""
    from .network import build_model

    obj = read_checkpoint(path)
    spec = ModelSpec.from_dict(obj["spec"])
    model = build_model(spec)
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "shape mismatch"
        raise EdgefaceError(f"checkpoint {path} does not fit its ModelSpec ({first[:160]})") from None
    model.eval()
    return model, spec, obj.get("meta", {})
