"""`edgeface deploy`: one command from weights to a verified bundle for a device."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import EdgefaceError
from ..engines import registry
from .output import check_output_dir, check_output_file, console, out_console, write_json

NAME = "deploy"


def _targets_help() -> str:
    from ..deploy.targets import list_targets

    return "|".join(list_targets())


def command(target: Optional[str] = typer.Option(None, "--target", "-t",
                                                help=f"Device: {_targets_help()} (a file in recipes/targets/), or a "
                                                     f"target YAML path."),
           model: Optional[Path] = typer.Option(None, "--model", "-m",
                                                help="Checkpoint (.pt, FP32 or QAT); default: the shipped model."),
           precision: Optional[str] = typer.Option(None, "--precision", "-p",
                                                   help="fp32|fp16|bf16|int8 (those the target lists), or fastest: the "
                                                        "fastest of them within each one's verify budget (int8 with "
                                                        "--calib); default: the target's default_precision."),
           calib: Optional[Path] = typer.Option(None, "--calib",
                                                help="Calibration images for int8 (face crops, or images "
                                                     "+ labels.csv)."),
           out: Optional[Path] = typer.Option(None, "--out", "-o",
                                              help="Bundle folder (default: bundles/TARGET-PRECISION)."),
           force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out."),
           no_verify: bool = typer.Option(False, "--no-verify",
                                          help="Skip the check against the FP32 reference (the manifest says so)."),
           verify_data: Optional[Path] = typer.Option(None, "--verify-data",
                                                      help="Held-out labelled faces (default: the val split "
                                                           "of ../shared/data)."),
           host: Optional[str] = typer.Option(None, "--host",
                                              help="USER@HOST: copy the bundle there over SSH, build (Jetson) and "
                                                   "bench there."),
           port: Optional[int] = typer.Option(None, "--port", help="SSH port of --host."),
           identity: Optional[Path] = typer.Option(None, "--identity", help="SSH private key for --host."),
           known_hosts: Optional[Path] = typer.Option(None, "--known-hosts",
                                                      help="known_hosts file holding --host's key (host keys "
                                                           "are checked)."),
           remote_python: str = typer.Option("python3", "--remote-python", help="Python with edgeface on --host."),
           backend: Optional[str] = typer.Option(None, "--backend",
                                                 help="Force the engine (x86: onnxruntime|openvino) instead of "
                                                      "measuring which is faster on the device."),
           batch: Optional[int] = typer.Option(None, "--batch",
                                               help="The batch size the device runs (default: the target's); "
                                                    "x86 measures its engines at it."),
           sign: Optional[Path] = typer.Option(None, "--sign", help="Ed25519 private key (PEM): write manifest.sig; "
                                               "devices given the public key trust only signed bundles "
                                               "(docs/security.md)."),
           json_out: Optional[Path] = typer.Option(None, "--json", help="Write the deploy report as JSON."),
           inventory: Optional[Path] = typer.Option(None, "--inventory", "-i",
                                                    help="Ansible inventory (INI or YAML): deploy to every host in it "
                                                         "through Ansible (pip install 'edgeface\\[fleet]'; "
                                                         "docs/fleet.md)."),
           limit: Optional[str] = typer.Option(None, "--limit", help="With --inventory: only this group or host "
                                               "(an Ansible host pattern)."),
           forks: int = typer.Option(50, "--forks", help="With --inventory: at most this many hosts at once."),
           serial: Optional[int] = typer.Option(None, "--serial",
                                                help="With --inventory: roll out in batches of N hosts."),
           max_fail: Optional[int] = typer.Option(None, "--max-fail", help="With --inventory: N failed hosts in one "
                                                  "batch stop the rollout (later batches are not attempted)."),
           rollback: bool = typer.Option(False, "--rollback", help="With --inventory: every device goes back to the "
                                         "previous bundle it kept."),
           bundle: Optional[Path] = typer.Option(None, "--bundle", help="With --inventory: ship this sealed bundle as "
                                                 "it is instead of building one (hosts running it: unchanged)."),
           report: Optional[Path] = typer.Option(None, "--report", help="With --inventory: folder for the fleet "
                                                 "report (fleet.json, README.md).")):
    """Weights -> verified bundle for a device: export, quantize (int8), verify against FP32, write atomically.

    The bundle (manifest.json + artifacts) runs with `Predictor("BUNDLE")` on the device; Jetson bundles carry
    ONNX and build their TensorRT engine there (`edgeface build BUNDLE`).
    """
    check_output_file(json_out, "--json", inputs=[model, calib, verify_data, sign, identity, known_hosts, target,
                                                  inventory])
    check_output_dir(out, "--out")
    build_options = dict(model=model, precision=precision, calib=calib, out=out, force=force, verify=not no_verify,
                         verify_data=verify_data, backend=backend, batch=batch, sign=sign)
    if inventory is not None:
        return _fleet(inventory, target=target, bundle=bundle, rollback=rollback, limit=limit, forks=forks,
                      serial=serial, max_fail=max_fail, json_out=json_out, report=report, host=host,
                      build_options=build_options)
    _check_one_device(target, rollback=rollback, bundle=bundle, limit=limit, serial=serial, max_fail=max_fail,
                      report=report)
    ssh_options = {"port": port, "identity": identity, "known_hosts": known_hosts, "remote_python": remote_python}
    result = _deploy_one(target, host, build_options, ssh_options)
    _print_result(result, host)
    write_json(json_out, result.to_json())


def _deploy_one(target: str, host: Optional[str], build_options: dict, ssh_options: dict):
    """One bundle, here or over SSH; with --host the device benches it (the bench is handed to deploy, which
    sits beside bench and does not import it)."""
    from ..bench.remote import bench_bundle_on_device
    from ..deploy import deploy as run_deploy

    return run_deploy(target, host=host, console=console, **build_options, ssh_options=ssh_options,
                      device_bench=bench_bundle_on_device if host else None)


def _check_one_device(target: Optional[str], **fleet_flags) -> None:
    """One device: the flags that only mean something with --inventory are refused (the first one given), and
    --target is needed."""
    given = [f"--{name.replace('_', '-')}" for name, v in fleet_flags.items() if v]
    if given:
        raise EdgefaceError(f"{given[0]} works with --inventory hosts.yml (a fleet of devices)")
    if target is None:
        raise EdgefaceError(f"pass --target {_targets_help()} (the device the bundle is for)")


def _print_result(result, host: Optional[str]) -> None:
    """The bundle, the engine choice, what is left to do on the device and the device's own bench, on stdout."""
    from rich.markup import escape

    files = ", ".join(f"{k} ({v['bytes'] / 1e6:.2f} MB)" for k, v in result.manifest["files"].items())
    out_console.print(f"[green]bundle[/green] {result.bundle}  target={result.target} backend={result.backend} "
                      f"precision={result.precision}  ({escape(files)})  {result.seconds:.1f} s", highlight=False)
    choice = result.manifest.get("engine_choice")
    if choice and not choice.get("forced"):
        out_console.print(f"engine {result.backend} {result.precision}: {escape(choice['reason'])}", highlight=False)
    if result.verify is None:
        out_console.print("[yellow]not verified (--no-verify)[/yellow]")
    if registry.get(result.backend).builds_on_device:
        out_console.print(f"on the {result.target} device: `edgeface build {result.bundle.name}` builds the "
                          f"{registry.get(result.backend).title} engine (or the first Predictor() call does)",
                          highlight=False)
    if result.remote:
        for row in result.remote.get("bench") or []:
            lat = row.get("latency_ms") or {}
            out_console.print(f"{host}: {row.get('backend')} {row.get('precision')} batch {row.get('batch')} "
                              f"p50 {lat.get('p50')} ms, {row.get('throughput_ips')} img/s", highlight=False)


def _fleet(inventory: Path, *, target, bundle, rollback, limit, forks, serial, max_fail, json_out, report, host,
           build_options) -> None:
    """deploy --inventory: build (or take --bundle) and roll out through Ansible; --rollback."""
    from ..fleet.rollout import deploy_fleet, rollback_fleet
    from .fleet import finish

    if host:
        raise EdgefaceError("pass --host USER@HOST (one device) or --inventory FILE (a fleet), not both")
    check_output_dir(report, "--report")
    common = dict(limit=limit, forks=forks, serial=serial, max_fail=max_fail, report=report, console=console)
    if rollback:
        given = [flag for flag, v in (("--target", target), ("--bundle", bundle), ("--sign", build_options["sign"]),
                                      ("--model", build_options["model"])) if v]
        if given:
            raise EdgefaceError(f"--rollback restores the bundle each device kept; {given[0]} does not apply")
        return finish(rollback_fleet(inventory, **common), "edgeface fleet rollback", json_out, report)
    if bundle is not None:
        given = [flag for flag, v in (("--sign", build_options["sign"]), ("--model", build_options["model"]),
                                      ("--precision", build_options["precision"])) if v]
        if given:
            raise EdgefaceError(f"--bundle ships a sealed bundle as it is; {given[0]} applies when deploy builds one "
                                f"(use --target instead of --bundle)")
    finish(deploy_fleet(inventory, target=target, bundle=bundle, build_options=build_options, **common),
           "edgeface fleet deploy", json_out, report)
