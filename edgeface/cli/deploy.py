"""`edgeface deploy`: one command from weights to a verified bundle for a device."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..engines import registry
from .output import check_output_dir, check_output_file, console, out_console, write_json

NAME = "deploy"


def _targets_help() -> str:
    from ..deploy.targets import list_targets

    return "|".join(list_targets())


def command(target: str = typer.Option(..., "--target", "-t",
                                      help=f"Device: {_targets_help()} (a file in recipes/targets/), or a target YAML path."),
           model: Optional[Path] = typer.Option(None, "--model", "-m",
                                                help="Checkpoint (.pt, FP32 or QAT); default: the shipped model."),
           precision: Optional[str] = typer.Option(None, "--precision", "-p",
                                                   help="fp32|fp16|bf16|int8 (those the target lists), or fastest: the "
                                                        "fastest of them within each one's verify budget (int8 with "
                                                        "--calib); default: the target's default_precision."),
           calib: Optional[Path] = typer.Option(None, "--calib",
                                                help="Calibration images for int8 (face crops, or images + labels.csv)."),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="Bundle folder (default: bundles/TARGET-PRECISION)."),
           force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out."),
           no_verify: bool = typer.Option(False, "--no-verify",
                                          help="Skip the check against the FP32 reference (the manifest says so)."),
           verify_data: Optional[Path] = typer.Option(None, "--verify-data",
                                                      help="Held-out labelled faces (default: the val split of ../shared/data)."),
           host: Optional[str] = typer.Option(None, "--host",
                                              help="USER@HOST: copy the bundle there over SSH, build (Jetson) and bench there."),
           port: Optional[int] = typer.Option(None, "--port", help="SSH port of --host."),
           identity: Optional[Path] = typer.Option(None, "--identity", help="SSH private key for --host."),
           known_hosts: Optional[Path] = typer.Option(None, "--known-hosts",
                                                      help="known_hosts file holding --host's key (host keys are checked)."),
           remote_python: str = typer.Option("python3", "--remote-python", help="Python with edgeface on --host."),
           backend: Optional[str] = typer.Option(None, "--backend",
                                                 help="Force the engine (x86: onnxruntime|openvino) instead of "
                                                      "measuring which is faster on the device."),
           batch: Optional[int] = typer.Option(None, "--batch",
                                               help="The batch size the device runs (default: the target's); "
                                                    "x86 measures its engines at it."),
           sign: Optional[Path] = typer.Option(None, "--sign", help="Ed25519 private key (PEM): write manifest.sig; "
                                               "devices given the public key trust only signed bundles (docs/security.md)."),
           json_out: Optional[Path] = typer.Option(None, "--json", help="Write the deploy report as JSON.")):
    """Weights -> verified bundle for a device: export, quantize (int8), verify against FP32, write atomically.

    The bundle (manifest.json + artifacts) runs with `Predictor("BUNDLE")` on the device; Jetson bundles carry
    ONNX and build their TensorRT engine there (`edgeface build BUNDLE`).
    """
    check_output_file(json_out, "--json", inputs=[model, calib, verify_data, sign, identity, known_hosts, target])
    check_output_dir(out, "--out")
    from rich.markup import escape

    from ..deploy import deploy as run_deploy

    result = run_deploy(target, model, precision=precision, calib=calib, out=out, force=force, sign=sign,
                        verify=not no_verify, verify_data=verify_data, host=host, console=console,
                        backend=backend, batch=batch,
                        ssh_options={"port": port, "identity": identity, "known_hosts": known_hosts,
                                     "remote_python": remote_python})
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
    write_json(json_out, result.to_json())
