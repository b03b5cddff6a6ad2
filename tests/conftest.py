"""Shared fixtures. Tests that need ../shared/data skip with a reason when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EDGEFACE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Render banks and other caches go to a temporary folder (inherited by CLI subprocesses), never ~/.cache."""
    old = os.environ.get("EDGEFACE_CACHE")
    os.environ["EDGEFACE_CACHE"] = str(tmp_path_factory.mktemp("edgeface-cache"))
    yield
    if old is None:
        os.environ.pop("EDGEFACE_CACHE", None)
    else:
        os.environ["EDGEFACE_CACHE"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "pointing04" / "labels.csv").is_file():
        pytest.skip(f"real face data not found at {SHARED_DATA} (set EDGEFACE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """The shipped default weights when present, else a random-weights checkpoint (parity work needs no
    training)."""
    from edgeface.engines.torch.checkpoint import DEFAULT_WEIGHTS

    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "random.pt")


def random_checkpoint(path: Path, width: float = 0.25, seed: int = 0) -> Path:
    torch = pytest.importorskip("torch")

    from edgeface.engines.torch.checkpoint import save_checkpoint
    from edgeface.engines.torch.network import build_model
    from edgeface.core.spec import ModelSpec

    torch.manual_seed(seed)
    spec = ModelSpec(width=width)
    model = build_model(spec)
    # Non-trivial BN statistics, so parity tests exercise the folded scales.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(path, model, spec, {"note": "random weights for tests"})
    return path


@pytest.fixture(scope="session")
def ckpt(checkpoint) -> str:
    """The checkpoint parity tests compare against (see export_cache.parity_checkpoint)."""
    from export_cache import parity_checkpoint

    return parity_checkpoint(str(checkpoint))


@pytest.fixture(scope="session")
def arts(ckpt) -> dict:
    """Artifacts exported once per session from ``ckpt`` (ONNX, folded ONNX, ncnn fp32/fp16)."""
    pytest.importorskip("torch")
    from export_cache import exported

    return exported(ckpt)


@pytest.fixture(scope="session")
def face_crops(shared_data) -> np.ndarray:
    """32 real 112x112 BGR face crops from the val splits (cropped by the shared crop rule)."""
    from edgeface.faces.data import load_samples
    from edgeface.faces.evaluate import load_crops
    from edgeface.core.spec import ModelSpec

    samples = []
    for name in ("pointing04", "qmul", "utkface", "celeba"):
        samples += load_samples(shared_data / name, split="val")[:8]
    return load_crops(samples, ModelSpec())


@pytest.fixture(scope="session")
def synthetic_crops() -> np.ndarray:
    """Generated images: smooth gradients, noise and shapes (no data needed)."""
    rng = np.random.default_rng(0)
    out = []
    yy, xx = np.mgrid[0:112, 0:112]
    for i in range(16):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + i * 7) % 256, ((xx + yy) * 3) % 256], -1)
        noise = rng.integers(0, 40, (112, 112, 3))
        out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return np.stack(out)


# -- the CLI as a user runs it (a subprocess), and the one-line error every bad input must give ----------------
def edgeface_cli(*args, timeout=300, cwd=None, env=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "edgeface", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def one_line_error(r, match: str = ""):
    """Exit 2, no traceback, the last line starts with 'error:' and names ``match`` (case-insensitive)."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), r.stderr[-2000:]
    assert match.lower() in r.stderr.lower(), r.stderr[-2000:]


# -- signing keys ----------------------------------------------------------------------------------------------
def ed25519_keypair(folder: Path, name: str):
    """A fresh Ed25519 pair as files: (NAME.key PEM PKCS8, NAME.pub PEM, the public PEM bytes, the OpenSSH line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    k = ed25519.Ed25519PrivateKey.generate()
    (folder / f"{name}.key").write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    pem = k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ssh = k.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (folder / f"{name}.pub").write_bytes(pem)
    return folder / f"{name}.key", folder / f"{name}.pub", pem, ssh
