"""`edgeface build BUNDLE`: build (and cache) the TensorRT engine of a Jetson bundle on the device itself.

TensorRT engines are tied to one GPU and TensorRT version, so a Jetson bundle carries the ONNX (FP32, or the
INT8 Q/DQ form plus calib.cache) and the engine is built where it runs, into this device's own engine cache
(``$EDGEFACE_ENGINE_CACHE``, else ~/.cache/edgeface/engines), the one the runtime reads, never into the bundle:
a signature cannot cover what the device builds, and a signed bundle holding more than it lists is refused.
Running a bundle builds it on first use too; this command does it up front.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import EdgefaceError
from ..engines import registry
from .output import check_output_file, console, out_console, write_json

NAME = "build"


def command(bundle: Path = typer.Argument(..., help="Jetson bundle folder (from `edgeface deploy --target jetson`), "
                                                  "or an edgeface .onnx."),
          precision: Optional[str] = typer.Option(None, "--precision",
                                                  help="fp32|fp16|int8 (default: the bundle's precision; fp16 for "
                                                       "a bare ONNX)."),
          cache_dir: Optional[Path] = typer.Option(None, "--cache-dir",
                                                   help="Engine cache (default: $EDGEFACE_ENGINE_CACHE, "
                                                        "else ~/.cache/edgeface/engines: the one the runtime reads)."),
          calib_cache: Optional[Path] = typer.Option(None, "--calib-cache",
                                                     help="TensorRT calibration cache for INT8 from an FP32 ONNX "
                                                          "(default: the bundle's calib.cache)."),
          min_batch: int = typer.Option(1, "--min-batch", help="Smallest batch the engine accepts."),
          opt_batch: int = typer.Option(8, "--opt-batch", help="Batch TensorRT tunes for."),
          max_batch: int = typer.Option(64, "--max-batch", help="Largest batch the engine accepts."),
          workspace_mb: Optional[int] = typer.Option(None, "--workspace-mb",
                                                     help="Builder workspace (default: the target's, else 1024)."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Write what was built as JSON.")):
    """Build and cache the TensorRT engine for this device (needs TensorRT: run it on the Jetson)."""
    check_output_file(json_out, "--json", inputs=[bundle, calib_cache])
    from ..core.artifact import read_engine_record
    from ..engines.tensorrt.build import find_or_build_engine
    from ..engines.tensorrt.library import import_tensorrt, require_version_in_range

    if not bundle.exists():
        raise EdgefaceError(f"{bundle} does not exist; pass a bundle folder from `edgeface deploy --target jetson`")
    from ..engines.tensorrt.build import check_build_numbers

    check_build_numbers(workspace_mb or 1024, min_batch, opt_batch, max_batch)
    trt = import_tensorrt()   # the one-line "TensorRT is not installed here" before any other work
    if bundle.is_dir():
        from ..runtime.bundle import open_bundle

        info = open_bundle(bundle)  # verified (under trusted keys: signed) before TensorRT reads a byte
        if not registry.get(info.backend).builds_on_device:
            raise EdgefaceError(f"bundle {bundle} is for the {info.backend} backend (target '{info.target}'); "
                                f"`edgeface build` builds TensorRT engines for Jetson bundles")
        require_version_in_range(str(trt.__version__), info.options.get("tensorrt_min_version"),
                                 info.options.get("tensorrt_max_version"), target=f"target '{info.target}'")
        onnx_path = info.artifact
        onnx_bytes = info.files.get(info.manifest["artifact"])  # the verified bytes, not a second read
        precision = precision or info.precision
        cache = cache_dir  # None: this device's engine cache, the one the runtime reads (never the bundle)
        calib = calib_cache or info.calib_cache
        workspace = workspace_mb or int(info.options.get("workspace_mb") or 1024)
    else:
        if bundle.suffix != ".onnx":
            raise EdgefaceError(f"{bundle.name} is neither a bundle folder nor an .onnx; pass one of those")
        onnx_path, precision, onnx_bytes = bundle, precision or "fp16", None
        cache, calib, workspace = cache_dir, calib_cache, workspace_mb or 1024
    with console.status(f"building the TensorRT {precision} engine (a few minutes on a Jetson)"):
        engine = find_or_build_engine(onnx_path, precision, cache, calib_cache=calib, min_batch=min_batch,
                                      opt_batch=opt_batch, max_batch=max_batch, workspace_mb=workspace,
                                      log=lambda m: console.print(m, highlight=False),
                                      onnx_bytes=onnx_bytes)
    record = read_engine_record(engine)
    out_console.print(f"engine {engine} (TensorRT {record['trt_version']}, {record['gpu_name']} "
                      f"sm{record['compute_capability']}, {record['precision']})", highlight=False)
    write_json(json_out, {"engine": str(engine), **{k: record.get(k) for k in (
        "trt_version", "gpu_name", "compute_capability", "precision", "onnx_sha256", "engine_sha256",
        "build_seconds", "extra")}})
