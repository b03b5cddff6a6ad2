"""`edgeface deploy --host`: copy a bundle to a device over SSH, check it there with the device's own edgeface
(sha256, version, target), build the TensorRT engine there (Jetson), and bench it there with the bench the caller
passes (the CLI passes ``edgeface.bench.remote.bench_bundle_on_device``: deploy sits beside bench, not above it)."""
from __future__ import annotations

import io
import json
import shlex
import tarfile
from pathlib import Path
from typing import Any, Callable, Optional

from ..engines import registry
from ..remote.ssh import SshTarget, unpack_command
from .steps import Steps

REMOTE_DIR = "edgeface-bundles"   # under the SSH user's home on the device


def _open_bundle_code(remote: str) -> str:
    """Python run by the device's own edgeface: open (verify) the bundle, print what it is. Devices may run an
    edgeface from before the layered packages, where the bundle module was ``edgeface.bundle``."""
    return ("import json\n"
            "try:\n    from edgeface.runtime.bundle import open_bundle\n"
            "except ImportError:\n    from edgeface.bundle import open_bundle\n"
            f"i = open_bundle({remote!r})\n"
            "print(json.dumps({'target': i.target, 'backend': i.backend}))")


def _measure_code(remote_artifact: str, kwargs: dict) -> str:
    """Python run by the device's own edgeface: deploy's engine measurement, printed as JSON."""
    return ("import json\n"
            "from edgeface.deploy.choose import measure_and_choose\n"
            f"print(json.dumps(measure_and_choose({remote_artifact!r}, **json.loads({json.dumps(kwargs)!r}))))")


def measure_remote(files: list[Path], host: str, *, engines: list[str], default: str, batch: int,
                   threads: Optional[int], options: dict, seconds: float, precisions: Optional[dict] = None,
                   remote_python: str = "python3",
                   port: Optional[int] = None, identity: Optional[Path] = None,
                   known_hosts: Optional[Path] = None) -> dict:
    """Deploy's engine choice measured on ``host``: copy the artifact (``files[0]`` and its companions) to a
    scratch folder there, run ``edgeface.deploy.choose`` with the device's edgeface, remove the folder."""
    ssh = SshTarget(host, port=port, identity=identity, known_hosts=known_hosts)
    name = f".measure-{files[0].parent.name.lstrip('.')}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in files:
            tar.add(f, arcname=f.name)
    ssh.check(ssh.run(unpack_command(REMOTE_DIR, name), stdin=buf.getvalue(), timeout=600),
              "copying the artifact to measure")
    scratch = f"{REMOTE_DIR}/{name}"
    kwargs = {"engines": engines, "default": default, "batch": batch, "threads": threads, "options": options,
              "seconds": seconds, **({"precisions": precisions} if precisions else {})}
    try:
        out = ssh.check(ssh.run(f"{shlex.quote(remote_python)} -c "
                                f"{shlex.quote(_measure_code(f'{scratch}/{files[0].name}', kwargs))}",
                                timeout=600), "measuring the engines")
    finally:
        ssh.run(f"rm -rf -- {shlex.quote(scratch)}", timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    result["host"] = host
    return result


def deploy_remote(bundle: Path, host: str, target: dict, console=None, remote_python: str = "python3",
                  port: Optional[int] = None, identity: Optional[Path] = None,
                  known_hosts: Optional[Path] = None, bench: Optional[Callable] = None) -> dict:
    """Copy the bundle to ``host`` (~/edgeface-bundles/NAME) over SSH, check it there with the device's own
    edgeface (sha256, version, target), build the TensorRT engine there (Jetson), and, with ``bench``
    (``bench(bundle, ssh, remote_python, console) -> (rows, warnings)``), bench it there."""
    ssh = SshTarget(host, port=port, identity=identity, known_hosts=known_hosts)
    remote = f"{REMOTE_DIR}/{bundle.name}"
    report: dict[str, Any] = {"host": host, "path": f"~/{remote}"}
    py = shlex.quote(remote_python)

    def upload():
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in sorted(bundle.iterdir()):
                tar.add(f, arcname=f.name, recursive=True)
        ssh.check(ssh.run(unpack_command(REMOTE_DIR, bundle.name), stdin=buf.getvalue(), timeout=600),
                  "copying the bundle")

    def verify_there():
        return json.loads(ssh.check(ssh.run(f"{py} -c {shlex.quote(_open_bundle_code(remote))}", timeout=120),
                                    "checking the bundle").strip().splitlines()[-1])

    with Steps(console) as steps:
        steps.run(f"copy bundle to {host}:~/{remote}", upload)
        report["check"] = steps.run(f"check the bundle with {host}'s edgeface", verify_there)
        if registry.get(target["backend"]).builds_on_device:
            out = steps.run(f"build the {registry.get(target['backend']).title} engine on {host}", lambda: ssh.check(
                ssh.run(f"{py} -m edgeface build {shlex.quote(remote)}", timeout=3600), "edgeface build"))
            report["build"] = out.strip().splitlines()[-1:] if out.strip() else []
        if bench is not None:
            report["bench"], report["warnings"] = steps.run(f"bench on {host}", bench, bundle, ssh, remote_python,
                                                            console)
    return report
