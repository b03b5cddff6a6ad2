"""The device side of the edgeface fleet playbooks, sent inside each SSH command and run by the device's own
Python (the one that has edgeface installed: `edgeface_python`). Only the device's edgeface is used to judge
a bundle (its digest, every file's sha256 and, when the device trusts keys, the signature).

    trust   ROOT KEY      install KEY (base64 of a public key file) as ROOT/trusted.pub, atomically
    probe   ROOT DIGEST   what the device is, which bundle `current` and `previous` hold, whether DIGEST is there
    verify  PATH          open the bundle with the device's edgeface (EDGEFACE_TRUSTED_KEYS from ROOT/trusted.pub)
    receive ROOT DIGEST   unpack ROOT/bundles/.incoming-DIGEST.tar (the pushed bundle: plain files, no path outside
                          the folder) into ROOT/bundles/.incoming-DIGEST, remove the archive, then verify it; a
                          refused copy is removed
    swap    ROOT DIGEST   ROOT/bundles/.incoming-DIGEST -> ROOT/bundles/DIGEST, `current` -> it, the old
                          `current` becomes `previous`; each link is replaced by rename(2), so a reader sees the
                          old or the new bundle, never none; versions other than current and previous are removed
    install ROOT DIGEST   receive the pushed archive (or, when the device keeps DIGEST already, verify that copy),
                          then swap it in: one Python start for the two steps. A refused copy is removed and never
                          becomes `current`
    rollback ROOT         `current` <-> `previous` (the previous bundle is verified first)

Prints one JSON object on stdout; a failure prints `error: ...` on stderr and exits 2.

The playbooks send this file inside the command (a here-document Python reads), through Jinja: it must never
hold Jinja's markers (two braces, brace-percent, brace-hash); tests/test_fleet.py checks.
"""
import json
import os
import shutil
import sys

TRUSTED = "trusted.pub"     # the key `edgeface_trust` installs; present = only bundles it signed are accepted
BUNDLES = "bundles"
INCOMING = ".incoming-"


def fail(message):
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def trust(root):
    """Point EDGEFACE_TRUSTED_KEYS at the installed key (kept with any the device's environment names)."""
    key = os.path.join(root, TRUSTED)
    if os.path.isfile(key):
        old = os.environ.get("EDGEFACE_TRUSTED_KEYS", "").strip()
        os.environ["EDGEFACE_TRUSTED_KEYS"] = os.pathsep.join(p for p in (key, old) if p)


MAX_KEY_BYTES = 16 << 10   # a public key file is a few hundred bytes


def install_key(root, key_b64):
    """ROOT/trusted.pub from the key's base64 (the controller's file, sent in the command): written to a
    temporary sibling and renamed, so the device never trusts half a key."""
    import base64
    import binascii

    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        fail("the trusted key did not arrive intact (not base64)")
    if not key or len(key) > MAX_KEY_BYTES:
        fail(f"the trusted key is {len(key)} bytes: not a public key file")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, TRUSTED)
    changed = not os.path.isfile(path) or open(path, "rb").read() != key
    if changed:
        tmp = path + ".new"
        with open(tmp, "wb") as f:
            f.write(key)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return {"trusted_key": path, "changed": changed}


def open_any(path):
    try:
        from edgeface.runtime.bundle import open_bundle
    except ImportError:  # an edgeface from before the layered packages
        from edgeface.bundle import open_bundle
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a portable bundle made for another device kind runs here: not an error
        return open_bundle(path)


def describe(path):
    """The verified bundle's digest, engine and precision; raises the device's EdgefaceError when it is not."""
    info = open_any(path)
    m = info.manifest
    return {"digest": m.get("bundle_sha256"), "backend": info.backend, "precision": info.precision,
            "target": info.target, "signed": os.path.isfile(os.path.join(path, "manifest.sig"))}


def link_target(root, name):
    p = os.path.join(root, name)
    return os.readlink(p) if os.path.islink(p) else None


def replace_link(root, name, target):
    tmp = os.path.join(root, f".{name}.new")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, os.path.join(root, name))  # rename(2): atomic


def device():
    import platform

    try:
        from edgeface.core.device import device_info

        d = device_info(include_power=False)
    except ImportError:
        d = {"machine": platform.machine(), "os": platform.platform()}
    try:
        import edgeface

        version = edgeface.__version__
    except Exception:  # noqa: BLE001 (a broken install is reported by verify)
        version = None
    return {"model": d.get("board_model") or d.get("cpu_model") or d.get("machine"), "os": d.get("os"),
            "machine": d.get("machine"), "kind": d.get("kind"), "edgeface": version}


def probe(root, digest):
    trust(root)
    out = {"root": root, "device": device(), "current": None, "previous_digest": None, "have": False,
           "trusted_key": os.path.isfile(os.path.join(root, TRUSTED))}
    cur = os.path.join(root, "current")
    if os.path.lexists(cur):
        try:
            out["current"] = describe(cur)
        except Exception as e:  # noqa: BLE001 (a damaged current bundle is replaced, not fatal)
            out["current"] = {"digest": None, "error": str(e)[:300]}
    prev = link_target(root, "previous")
    if prev:
        out["previous_digest"] = os.path.basename(prev)
    out["have"] = bool(digest) and os.path.isfile(os.path.join(root, BUNDLES, digest, "manifest.json"))
    return out


def verify(path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    trust(root)
    return describe(path)


MAX_MEMBERS = 1000          # a bundle is a handful of files; an archive with more is not one of ours
MAX_BYTES = 4 << 30         # nor one that unpacks to more than 4 GiB


def unpack(archive, dest):
    """The pushed archive's plain files (and folders) under ``dest``; anything else (links, devices, absolute
    paths, '..') is refused before a byte is written, and sizes are bounded."""
    import tarfile

    with tarfile.open(archive, "r:") as tar:
        members = []
        for m in tar:
            members.append(m)
            if len(members) > MAX_MEMBERS:
                fail(f"{archive} holds more than {MAX_MEMBERS} entries: not an edgeface bundle")
        names = [os.path.normpath(m.name) for m in members]
        for m, name in zip(members, names):
            if os.path.isabs(name) or name == ".." or name.startswith("../") or not (m.isfile() or m.isdir()):
                fail(f"{archive} holds {m.name!r}, which is not a plain file inside the bundle: refused")
        if sum(m.size for m in members if m.isfile()) > MAX_BYTES:
            fail(f"{archive} unpacks to more than {MAX_BYTES >> 30} GiB: not an edgeface bundle")
        os.makedirs(dest)
        for m, name in zip(members, names):
            target = os.path.join(dest, name)
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def receive(root, digest):
    bundles = os.path.join(root, BUNDLES)
    staged = os.path.join(bundles, INCOMING + digest)
    archive = staged + ".tar"
    if not os.path.isfile(archive):
        fail(f"{archive} is missing: the bundle was not copied")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        unpack(archive, staged)
        return verify(staged)
    except BaseException:  # fail() exits: a refused copy never stays behind
        shutil.rmtree(staged, ignore_errors=True)
        raise
    finally:
        os.remove(archive)


def clear_incoming(root):
    """Copies an earlier run left half done (interrupted, or refused without cleanup) take no disk."""
    bundles = os.path.join(root, BUNDLES)
    for name in os.listdir(bundles):
        if name.startswith(INCOMING):
            path = os.path.join(bundles, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def swap(root, digest):
    bundles = os.path.join(root, BUNDLES)
    staged, final = os.path.join(bundles, INCOMING + digest), os.path.join(bundles, digest)
    if os.path.isdir(staged):
        if os.path.lexists(final):  # an older copy of the same digest: the verified new copy replaces it
            old = os.path.join(bundles, f".old-{digest}")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(staged, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staged, final)
    elif not os.path.isdir(final):
        fail(f"{staged} is missing: the bundle was not copied")
    new = f"{BUNDLES}/{digest}"
    old = link_target(root, "current")
    if old != new:
        if old:
            replace_link(root, "previous", old)
        replace_link(root, "current", new)
    keep = {os.path.basename(t) for t in (link_target(root, "current"), link_target(root, "previous")) if t}
    for name in os.listdir(bundles):  # bounded disk: the current and the previous bundle only
        if name not in keep:
            shutil.rmtree(os.path.join(bundles, name), ignore_errors=True)
    return {"current": link_target(root, "current"), "previous": link_target(root, "previous"),
            "changed": old != new}


def install(root, digest):
    bundles = os.path.join(root, BUNDLES)
    if os.path.isfile(os.path.join(bundles, INCOMING + digest + ".tar")):
        described = receive(root, digest)
    else:  # not copied: the device keeps this version already (e.g. as `previous`)
        described = verify(os.path.join(bundles, digest))
    return dict(described, **swap(root, digest))


def rollback(root):
    trust(root)
    prev, cur = link_target(root, "previous"), link_target(root, "current")
    if not prev:
        fail(f"no previous bundle in {root}: this device has had one bundle only, nothing to roll back to")
    described = describe(os.path.join(root, prev))
    replace_link(root, "current", prev)
    if cur:
        replace_link(root, "previous", cur)
    return dict(described, current=prev, previous=cur)


def main(argv):
    if len(argv) < 2:
        fail("usage: edgeface_device.py trust|probe|verify|receive|swap|install|rollback ARGS")
    verb, args = argv[1], argv[2:]
    try:
        if verb == "trust":
            out = install_key(os.path.abspath(os.path.expanduser(args[0])), args[1])
        elif verb == "probe":
            root = os.path.abspath(os.path.expanduser(args[0]))
            os.makedirs(os.path.join(root, BUNDLES), exist_ok=True)
            clear_incoming(root)
            out = probe(root, args[1] if len(args) > 1 else "")
        elif verb == "verify":
            out = verify(os.path.expanduser(args[0]))
        elif verb == "receive":
            out = receive(os.path.abspath(os.path.expanduser(args[0])), args[1])
        elif verb == "swap":
            out = swap(os.path.abspath(os.path.expanduser(args[0])), args[1])
        elif verb == "install":
            out = install(os.path.abspath(os.path.expanduser(args[0])), args[1])
        elif verb == "rollback":
            out = rollback(os.path.abspath(os.path.expanduser(args[0])))
        else:
            fail(f"unknown verb {verb!r}")
    except ImportError as e:
        fail(f"edgeface is not installed for {sys.executable} on this device ({e}): pip install edgeface there, "
             f"or set edgeface_python to the Python that has it")
    except OSError as e:
        fail(f"{e.strerror or e}: {e.filename}")
    except Exception as e:  # noqa: BLE001 (the device's EdgefaceError: one line, the reason the host failed)
        fail(" ".join(str(e).split()) or type(e).__name__)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main(sys.argv)
