"""Optional Ed25519 signatures on bundles (``deploy --sign KEY``; ``Predictor(bundle, trusted_keys=[...])``).

A bundle's ``manifest.json`` holds the sha256 of every file and its own ``bundle_sha256``; that stops
corruption and careless edits, not someone who can rewrite the manifest and recompute the hashes. The
signature does: ``manifest.sig`` signs the exact bytes of ``manifest.json`` with a private key only the
deployer holds, and a device told which public keys to trust refuses any bundle (or loose artifact) that
no trusted key signed. See docs/security.md.

Keys are ordinary Ed25519 files: a PEM (PKCS#8) private key, a PEM public key or an OpenSSH
``ssh-ed25519 AAAA...`` line. Make a pair with ``openssl genpkey -algorithm ed25519 -out deploy.key`` and
``openssl pkey -in deploy.key -pubout -out deploy.pub``. Needs ``cryptography`` (pip install 'edgeface[sign]').
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence, Union

from ..core.errors import EdgefaceError
from ..core.io import atomic_write_json

SIGNATURE_NAME = "manifest.sig"
TRUSTED_KEYS_ENV = "EDGEFACE_TRUSTED_KEYS"   # os.pathsep-separated public key files: the device's default
MAX_KEY_BYTES = 64 << 10
KeyLike = Union[str, Path, bytes]


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EdgefaceError("bundle signatures need the cryptography package: pip install 'edgeface[sign]'") from None
    return serialization, ed25519


def _key_bytes(key: KeyLike, what: str) -> bytes:
    if isinstance(key, bytes):
        return key
    text = str(key)
    if text.lstrip().startswith(("-----BEGIN", "ssh-ed25519 ")):
        return text.encode()
    p = Path(text)
    if not p.is_file():
        raise EdgefaceError(f"{what} {p} does not exist (a PEM Ed25519 key file or an ssh-ed25519 line)")
    if p.stat().st_size > MAX_KEY_BYTES:
        raise EdgefaceError(f"{what} {p} is too large to be a key")
    return p.read_bytes()


def load_private_key(key: KeyLike):
    serialization, ed25519 = _crypto()
    data = _key_bytes(key, "signing key")
    try:
        k = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        try:
            k = serialization.load_ssh_private_key(data, password=None)
        except (ValueError, TypeError):
            raise EdgefaceError(f"signing key is not an unencrypted PEM or OpenSSH private key ({str(e)[:60]}); "
                                f"make one with: openssl genpkey -algorithm ed25519 -out deploy.key") from None
    if not isinstance(k, ed25519.Ed25519PrivateKey):
        raise EdgefaceError(f"signing key is a {type(k).__name__}, not Ed25519; make one with: "
                            f"openssl genpkey -algorithm ed25519 -out deploy.key")
    return k


def load_public_key(key: KeyLike):
    serialization, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    data = _key_bytes(key, "trusted key")
    try:
        if data.lstrip().startswith(b"ssh-"):
            k = serialization.load_ssh_public_key(data.strip().split(b"\n")[0])
        elif len(data) == 32 and not data.startswith(b"-----"):
            k = ed25519.Ed25519PublicKey.from_public_bytes(data)
        else:
            k = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, IndexError) as e:
        raise EdgefaceError(f"trusted key is not a PEM, OpenSSH or raw Ed25519 public key ({str(e)[:60]})") from None
    if not isinstance(k, ed25519.Ed25519PublicKey):
        raise EdgefaceError(f"trusted key is a {type(k).__name__}, not Ed25519")
    return k


def key_id(public_key) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_manifest(bundle_dir: str | Path, key: KeyLike) -> dict:
    """Write ``manifest.sig`` beside ``manifest.json`` (call after the manifest is final)."""
    root = Path(bundle_dir)
    private = load_private_key(key)
    data = (root / "manifest.json").read_bytes()
    sig = {"alg": "ed25519", "key_id": key_id(private.public_key()),
           "signature": base64.b64encode(private.sign(data)).decode("ascii")}
    atomic_write_json(root / SIGNATURE_NAME, sig)
    return sig


def trusted_keys_from_env() -> list[str]:
    value = os.environ.get(TRUSTED_KEYS_ENV, "").strip()
    keys = [p.strip() for p in value.split(os.pathsep) if p.strip()] if value else []
    if value and not keys:  # fail closed: a device set up to trust signed bundles only must not run unsigned ones
        raise EdgefaceError(f"${TRUSTED_KEYS_ENV} is set to {value[:40]!r}, which names no key file; list the public "
                            f"keys separated by '{os.pathsep}', or unset it")
    return keys


def resolve_trusted_keys(trusted_keys: Sequence[KeyLike] | KeyLike | None) -> list:
    """Public keys from the argument, else from $EDGEFACE_TRUSTED_KEYS; [] means signatures are not required."""
    if trusted_keys is None:
        trusted_keys = trusted_keys_from_env()
    elif isinstance(trusted_keys, (str, Path, bytes)) or not isinstance(trusted_keys, (list, tuple)):
        trusted_keys = [trusted_keys]
    return [load_public_key(k) for k in trusted_keys]


def verify_signature(root: Path, manifest_bytes: bytes, keys: Iterable) -> str:
    """The key id that signed these manifest bytes; EdgefaceError when none of ``keys`` did."""
    from cryptography.exceptions import InvalidSignature

    spath = root / SIGNATURE_NAME
    if spath.is_symlink() or not spath.is_file():
        raise EdgefaceError(f"bundle {root} is not signed ({SIGNATURE_NAME} missing) and this device trusts only "
                            f"signed bundles; deploy it with --sign KEY")
    try:
        if spath.stat().st_size > MAX_KEY_BYTES:
            raise ValueError("too large")
        sig = json.loads(spath.read_text(encoding="utf-8"))
        signature = base64.b64decode(sig["signature"], validate=True)
        if sig.get("alg") != "ed25519" or len(signature) != 64:
            raise ValueError("not an ed25519 signature")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise EdgefaceError(f"{spath} is not a valid edgeface signature; re-deploy with --sign KEY") from None
    for k in keys:
        try:
            k.verify(signature, manifest_bytes)
            return key_id(k)
        except InvalidSignature:
            continue
    raise EdgefaceError(f"bundle {root} is not signed by a trusted key (signed by key {str(sig.get('key_id'))[:16]}, "
                        f"or modified after signing); re-deploy it with a trusted --sign KEY")
