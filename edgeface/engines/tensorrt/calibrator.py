"""TensorRT's calibration cache (text format) and the calibrator that feeds it to TensorRT's implicit-INT8
builder path (TensorRT 8.5 to 10.x; deprecated in 10.1, removed in 11, where the Q/DQ ONNX is the way).

The cache is plain text, one header line and one line per tensor:

    TRT-8601-EntropyCalibration2          TRT-<version number>-<algorithm>
    input: 3c010204                       <tensor name>: <IEEE-754 float32 bits of the scale, hex>

The scale is the tensor's dequantisation step, ``amax / 127`` (symmetric INT8). The version number is
``major*1000 + minor*100 + patch`` up to TensorRT 9 and ``major*10000 + minor*100 + patch`` from 10 on
(8.6.1 -> 8601, 10.3.0 -> 100300). A cache written on a machine without TensorRT cannot know the device's
version, so the calibrator re-stamps the header with the running TensorRT's when it hands the cache over
(the scales are ours, computed from edgeface's own statistics, not TensorRT's).

This module is the ONE reader/writer of the format: the quantize step writes ``calib.cache`` with
``write_calibration_cache(path, scales_from_amax(amax))``.
"""
from __future__ import annotations

import math
import re
import struct
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from ...core.errors import EdgefaceError
from ...core.io import atomic_write_bytes, read_text_file
from ...core.spec import FLOAT_NCHW, UINT8_NHWC

DEFAULT_HEADER = "TRT-8601-EntropyCalibration2"   # TensorRT 8.6.1; re-stamped on the device (see above)
ALGORITHMS = {"entropy2": "EntropyCalibration2", "minmax": "MinMaxCalibration"}
_HEADER_RE = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")


# -- the text format (pure Python) ---------------------------------------------------------------------------
def trt_version_number(version: str) -> int:
    """TensorRT's integer version as written in cache headers: 8.6.1 -> 8601, 10.3.0 -> 100300."""
    parts = [int(re.match(r"\d+", p).group()) for p in str(version).split(".")[:3] if re.match(r"\d+", p)]
    major, minor, patch = (parts + [0, 0, 0])[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def calibration_header(trt_version: str = "8.6.1", algorithm: str = "entropy2") -> str:
    if algorithm not in ALGORITHMS:
        raise EdgefaceError(f"unknown TensorRT calibration algorithm {algorithm!r}; use {', '.join(ALGORITHMS)}")
    return f"TRT-{trt_version_number(trt_version)}-{ALGORITHMS[algorithm]}"


def scale_to_hex(scale: float) -> str:
    """The float32 bit pattern of ``scale`` as 8 hex digits (big-endian, as TensorRT writes it)."""
    return struct.pack(">f", float(scale)).hex()


def hex_to_scale(text: str) -> float:
    """Inverse of scale_to_hex; TensorRT omits leading zeros (a zero scale is written ``0``)."""
    bits = int(text, 16)
    if not 0 <= bits <= 0xFFFFFFFF:
        raise ValueError(f"{text!r} is not a 32-bit value")
    return struct.unpack(">f", bits.to_bytes(4, "big"))[0]


def scales_from_amax(amax: Mapping[str, float]) -> dict[str, float]:
    """Symmetric INT8 scales (amax / 127) from per-tensor absolute maxima, as float32 values."""
    return {name: float(np.float32(float(a) / 127.0)) for name, a in amax.items()}


def parse_calibration_cache(text: str, where: str = "calibration cache") -> tuple[str, dict[str, float]]:
    """(header, {tensor name: scale}) from the cache's text; EdgefaceError naming the bad line."""
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or not _HEADER_RE.match(lines[0].strip()):
        first = lines[0][:60] if lines else ""
        raise EdgefaceError(f"{where} is not a TensorRT calibration cache (first line {first!r}, expected "
                            f"'TRT-<version>-<algorithm>'); regenerate it with `edgeface quantize --backend tensorrt`")
    scales: dict[str, float] = {}
    for no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")   # tensor names may themselves contain ':'
        name, value = name.strip(), value.strip()
        try:
            if not sep or not name:
                raise ValueError("no 'name: hex' pair")
            scale = hex_to_scale(value)
        except ValueError:
            raise EdgefaceError(f"{where} line {no} is not '<tensor>: <hex scale>' ({line[:60]!r}); the file is "
                                f"corrupt — regenerate it with `edgeface quantize --backend tensorrt`") from None
        if not math.isfinite(scale) or scale < 0:
            raise EdgefaceError(f"{where} line {no}: scale of {name!r} is {scale}; scales are finite and >= 0")
        if name in scales:
            raise EdgefaceError(f"{where} line {no}: tensor {name!r} appears twice")
        scales[name] = scale
    if not scales:
        raise EdgefaceError(f"{where} holds no tensor scales; regenerate it with `edgeface quantize --backend "
                            "tensorrt`")
    return lines[0].strip(), scales


def format_calibration_cache(scales: Mapping[str, float], header: str = DEFAULT_HEADER) -> str:
    if not _HEADER_RE.match(header):
        raise EdgefaceError(f"calibration cache header {header!r} is not 'TRT-<version>-<algorithm>'")
    out = [header]
    for name, scale in scales.items():
        name = str(name)
        if not name or "\n" in name or name != name.strip():
            raise EdgefaceError(f"tensor name {name!r} cannot be written to a TensorRT calibration cache")
        s = float(scale)
        if not math.isfinite(s) or s < 0:
            raise EdgefaceError(f"scale of {name!r} is {s}; scales must be finite and >= 0")
        out.append(f"{name}: {scale_to_hex(s)}")
    return "\n".join(out) + "\n"


def write_calibration_cache(path: str | Path, scales: Mapping[str, float], header: str = DEFAULT_HEADER) -> Path:
    """Write TensorRT's calibration-cache text file atomically (no half-written cache on failure)."""
    return atomic_write_bytes(path, format_calibration_cache(scales, header).encode("ascii"))


def read_calibration_cache(path: str | Path) -> dict[str, float]:
    """{tensor name: scale} from a TensorRT calibration cache; EdgefaceError when missing or corrupt."""
    return read_calibration_cache_with_header(path)[1]


def read_calibration_cache_with_header(path: str | Path) -> tuple[str, dict[str, float]]:
    text = read_text_file(path, "calibration cache", "regenerate it with `edgeface quantize --backend tensorrt`",
                          encoding="ascii")
    return parse_calibration_cache(text, where=f"calibration cache {Path(path).name}")


def restamp(text: str, trt_version: str) -> str:
    """The cache text with its header's version set to ``trt_version`` (algorithm kept)."""
    header, _ = parse_calibration_cache(text)
    algo = _HEADER_RE.match(header).group(2)
    rest = text.split("\n", 1)[1] if "\n" in text else ""
    return f"TRT-{trt_version_number(trt_version)}-{algo}\n{rest}"


# -- the TensorRT calibrator (needs TensorRT + CUDA on the device) --------------------------------------------
def make_calibrator(cache_path: str | Path | None, images: Optional[np.ndarray] = None, *, spec=None,
                    input_kind: str = FLOAT_NCHW, batch_size: int = 32, algorithm: str = "entropy2",
                    log: Callable[[str], None] = print):
    """A TensorRT calibrator (subclass of trt.IInt8EntropyCalibrator2, or IInt8MinMaxCalibrator).

    ``cache_path``: an existing calib.cache is handed to TensorRT (re-stamped to this TensorRT's version) and
    no images are needed; after calibrating on ``images`` TensorRT's own cache is written there.
    ``images``: uint8 (N, S, S, 3) BGR crops made by edgeface.core.preprocess; fed through ``to_input`` (or
    as-is to a folded-preprocessing model, ``input_kind="uint8_nhwc_bgr"``), ``batch_size`` at a time.
    """
    from .library import import_tensorrt

    trt = import_tensorrt()
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise EdgefaceError(f"TensorRT {trt.__version__} has no implicit INT8 calibration (removed in 11); build the "
                            f"Q/DQ ONNX from `edgeface quantize --backend tensorrt` instead")
    if algorithm not in ALGORITHMS:
        raise EdgefaceError(f"unknown TensorRT calibration algorithm {algorithm!r}; use {', '.join(ALGORITHMS)}")
    base = trt.IInt8EntropyCalibrator2 if algorithm == "entropy2" else trt.IInt8MinMaxCalibrator
    cache_path = Path(cache_path) if cache_path is not None else None
    if images is None and (cache_path is None or not cache_path.is_file()):
        raise EdgefaceError("the TensorRT calibrator needs calibration images or an existing calib.cache")
    batches = _prepare_batches(images, spec, input_kind, batch_size) if images is not None else []

    # The base is TensorRT's class, known only now; the methods TensorRT calls live in _Calibration.
    class EdgefaceCalibrator(_Calibration, base):
        def __init__(self):
            base.__init__(self)  # pybind11 trampolines need the base initialiser called explicitly
            _Calibration.__init__(self, batches, batch_size, cache_path, str(trt.__version__), log)

    return EdgefaceCalibrator()


class _Calibration:
    """What an edgeface calibrator does for TensorRT: hand it the batches (copied to the GPU), read the cache
    (re-stamped for this TensorRT) and write the one it computed. Mixed in before TensorRT's calibrator base."""

    def __init__(self, batches: list, batch_size: int, cache_path: Optional[Path], trt_version: str,
                 log: Callable[[str], None]):
        self.batch_size = int(batch_size)
        self._batches = batches
        self._next = 0
        self._cuda = None
        self._device = None
        self._cache_text: Optional[bytes] = None
        self._cache_path = cache_path
        self._trt_version = trt_version
        self._log = log

    def get_batch_size(self):
        return self.batch_size

    def get_batch(self, names, *args):
        if self._next >= len(self._batches):
            return None
        batch = self._batches[self._next]
        self._next += 1
        if self._cuda is None:
            from .cuda_memory import open_cuda

            self._cuda = open_cuda()
            self._host = self._cuda.pinned_empty(batch.shape, batch.dtype)
            self._device = self._cuda.malloc(batch.nbytes)
        np.copyto(self._host, batch)
        self._cuda.htod_async(self._device, self._host, batch.nbytes)
        self._cuda.synchronize()
        return [int(self._device)] * len(names)

    def read_calibration_cache(self, *args):
        cache_path = self._cache_path
        if cache_path is None or not cache_path.is_file():
            return None
        text = cache_path.read_text(encoding="ascii")
        header, scales = parse_calibration_cache(text, where=f"calibration cache {cache_path.name}")
        stamped = restamp(text, self._trt_version)
        if stamped.split("\n", 1)[0] != header:
            self._log(f"note: {cache_path.name} header {header} re-stamped for TensorRT {self._trt_version} "
                      f"({len(scales)} tensor scales)")
        self._cache_text = stamped.encode("ascii")
        return self._cache_text

    def write_calibration_cache(self, cache, *args):
        if self._cache_path is None:
            return
        data = bytes(memoryview(cache))
        parse_calibration_cache(data.decode("ascii"), where="TensorRT's calibration cache")
        atomic_write_bytes(self._cache_path, data)

    def free(self):
        if self._cuda is not None:
            self._cuda.free(self._device)
            self._cuda.free_pinned(self._host)
            self._cuda.close()
            self._cuda = None

    def __del__(self):
        try:
            self.free()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _prepare_batches(images: np.ndarray, spec, input_kind: str, batch_size: int) -> list[np.ndarray]:
    """Fixed-size batches (the last one padded by repeating images, so every batch has the profile's shape)."""
    from ...core.preprocess import check_crops, fed_to_network, to_input
    from ...core.spec import ModelSpec

    spec = spec or ModelSpec()
    crops = check_crops(images, spec)
    if len(crops) == 0:
        raise EdgefaceError("no calibration images")
    crops = fed_to_network(crops, spec)  # with their mirror images when the spec averages them, as quantize does
    batches = []
    for start in range(0, len(crops), batch_size):
        chunk = crops[start:start + batch_size]
        if len(chunk) < batch_size:  # repeat images cyclically: TensorRT takes whole batches only
            chunk = np.resize(chunk, (batch_size, *chunk.shape[1:]))
        batches.append(np.ascontiguousarray(chunk) if input_kind == UINT8_NHWC
                       else np.ascontiguousarray(to_input(chunk, spec)))
    return batches
