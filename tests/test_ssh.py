"""edgeface bench --host against a real OpenSSH server on 127.0.0.1 (this machine plays the device).

The server is Debian's openssh-server (.ci/install_ssh.sh), started by the test with its own host key,
authorized_keys and config; host keys are checked as in real use.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.ssh


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not os.path.exists(SSHD) or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("OpenSSH server not installed (run .ci/install_ssh.sh: apt-get install openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {d / 'sshd.pid'}
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd started as root needs its privilege-separation dir
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {(d / 'sshd.log').read_text().strip()[-300:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (d / "empty_known_hosts").write_text("")
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    yield {"dir": d, "port": port, "host": f"{user}@127.0.0.1"}
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


@pytest.fixture(scope="module")
def onnx_model(checkpoint, tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from edgeface.export import export_onnx

    return Path(export_onnx(checkpoint, tmp_path_factory.mktemp("ssh_art") / "model.onnx"))


def remote_temps():
    return set(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "edgeface-bench.*")))


def bench(sshd, *args, identity="client_key", known_hosts="known_hosts", python=sys.executable, port=None):
    cmd = [sys.executable, "-m", "edgeface", "bench", *map(str, args), "--host", sshd["host"],
           "--port", str(port or sshd["port"]), "--identity", str(sshd["dir"] / identity),
           "--known-hosts", str(sshd["dir"] / known_hosts), "--remote-python", str(python)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_bench_over_ssh_end_to_end(sshd, onnx_model, tmp_path):
    before = remote_temps()
    r = bench(sshd, onnx_model, "--batch", "1,2", "--iters", "30", "--warmup", "2", "--rounds", "3",
              "--json", tmp_path / "remote.json", "--report", tmp_path / "report")
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "remote.json").read_text())
    assert [row["batch"] for row in rows] == [1, 2]
    for row in rows:
        assert row["device"]["host"] == sshd["host"] and row["device"]["ssh_port"] == sshd["port"]
        assert row["device"]["edgeface_remote"]  # the device's own edgeface measured it
        assert row["artifact"] == f"{onnx_model.parent.name}/model.onnx" and row["path"] == str(onnx_model)
        assert row["iterations"] == 30 and row["latency_ms"]["p50"] <= row["latency_ms"]["p99"]
    for name in ("latency.png", "throughput.png", "accuracy_latency.png", "README.md"):
        assert (tmp_path / "report" / name).is_file()
    assert sshd["host"] in r.stdout  # the table says where it ran
    assert remote_temps() == before  # the device's temporary folder is gone


def test_unknown_host_key_is_refused(sshd, onnx_model):
    line = one_error_line(bench(sshd, onnx_model, "--iters", "5", known_hosts="empty_known_hosts"))
    assert "unknown host key" in line and "--known-hosts" in line


def test_refused_key(sshd, onnx_model):
    line = one_error_line(bench(sshd, onnx_model, "--iters", "5", identity="stranger_key"))
    assert "refused the key" in line and "authorized_keys" in line


def test_unreachable_host(sshd, onnx_model):
    line = one_error_line(bench(sshd, onnx_model, "--iters", "5", port=free_port()))
    assert "cannot reach" in line and "Connection refused" in line


def test_missing_edgeface_on_device(sshd, onnx_model, tmp_path):
    # A bare virtual environment: Python without edgeface, as on a freshly flashed board.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    line = one_error_line(bench(sshd, onnx_model, "--iters", "5", python=tmp_path / "venv" / "bin" / "python"))
    assert "edgeface is not installed" in line and "pip install 'edgeface[ort]'" in line


def test_artifact_the_device_cannot_run(sshd, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine for this device")
    before = remote_temps()
    line = one_error_line(bench(sshd, engine, "--iters", "5"))
    assert line.startswith(f"error: on {sshd['host']}:") and "tensorrt" in line
    assert remote_temps() == before  # cleaned up after the failure too


def test_dropped_upload_leaves_nothing_that_looks_whole(sshd, onnx_model):
    """The upload is unpacked under in.partial and renamed only when complete: cut the stream halfway."""
    import io
    import tarfile

    from edgeface.remote.ssh import SshTarget, unpack_command

    target = SshTarget(sshd["host"], port=sshd["port"], identity=sshd["dir"] / "client_key",
                       known_hosts=sshd["dir"] / "known_hosts")
    workdir = target.run("mktemp -d /tmp/edgeface-bench.XXXXXX").stdout.decode().strip()
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(onnx_model), arcname="a0/model.onnx")
        cut = buf.getvalue()[: len(buf.getvalue()) // 2]  # the connection drops mid-transfer
        r = target.run(unpack_command(workdir, "in"), stdin=cut)
        assert r.returncode != 0
        listing = target.run(f"ls -A {workdir}").stdout.decode().split()
        assert listing == ["in.partial"]  # nothing under the final name
    finally:
        target.run(f"rm -rf {workdir}")
