"""ncnn (Tencent): the ARM CPU engine (Raspberry Pi), with optional Vulkan.

ncnn runs one image per extractor, so a batch loops over its items, reusing the loaded Net. By default
the uint8 BGR crops go in directly: ``Mat.from_pixels`` swaps channels and ``substract_mean_normalize``
normalises in ncnn's (NEON) code, so no float copy is made in Python (``input_kind`` = uint8 NHWC).
"""
from __future__ import annotations

import functools
import platform

import numpy as np

from ...core.artifact import ncnn_paths, read_ncnn_info
from ...core.device import parse_cpuinfo
from ...core.errors import EdgefaceError
from ...core.io import silence_native_stderr
from ...core.preprocess import input_affine
from ...core.spec import FLOAT_NCHW, UINT8_NHWC
from ..base import Backend


@functools.lru_cache(maxsize=1)
def cpu_has_fp16() -> bool:
    """True where the CPU has fp16 vector arithmetic: ARMv8.2-A and later (Pi 5's Cortex-A76, Jetson Orin),
    not the Pi 4's Cortex-A72 and not x86 (where ncnn's fp16 paths only add conversions)."""
    machine = platform.machine().lower()
    if machine not in ("aarch64", "arm64"):
        return False
    if platform.system() == "Darwin":  # every Apple Silicon core has FEAT_FP16
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            return fp16_in_cpuinfo(fh.read())
    except OSError:
        return False


def fp16_in_cpuinfo(text: str) -> bool:
    """Whether an ARM /proc/cpuinfo lists half-precision arithmetic (``fphp`` scalar / ``asimdhp`` vector)."""
    return bool({"fphp", "asimdhp"} & set(parse_cpuinfo(text)["isa_flags"]))


def _bytes_reader(ncnn, data: bytes):
    """An ncnn DataReader over bytes already in memory: ncnn copies the weights out of it as it loads them
    (the binding's ``load_model_mem`` would let ncnn keep pointers into a temporary copy)."""
    import ctypes

    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]

    class BytesReader(ncnn.DataReader):
        def __init__(self):
            super().__init__()
            self.view, self.pos = memoryview(data), 0

        def scan(self, format, p):  # noqa: A002 - ncnn's name; only text .param parsing scans
            return 0

        def read(self, buf, size):
            n = max(0, min(int(size), len(self.view) - self.pos))
            if n:
                ctypes.memmove(get_pointer(buf, None), self.view[self.pos:self.pos + n].tobytes(), n)
            self.pos += n
            return n

    return BytesReader()


class NcnnBackend(Backend):
    """Options: ``fp16`` (True/"on", False/"off", "auto" = ncnn's own per-CPU choice; default None: on only
    where the CPU has fp16 arithmetic), ``int8_arithmetic`` (bool: INT8 layers run ncnn's INT8 kernels;
    default ncnn's, on), ``vulkan`` (bool; run on the GPU through Vulkan, default off), ``pixel_input``
    (bool, default on: take uint8 BGR crops and normalise inside ncnn; off: take the float32 NCHW batch).
    ``int8`` is the name rpi bundles deployed by earlier versions gave ``int8_arithmetic``; it means the same.
    """

    name = "ncnn"
    OPTIONS = frozenset({"fp16", "int8_arithmetic", "vulkan", "pixel_input", "int8"})
    MANIFEST_OPTIONS = {"fp16": ((bool, type(None)), lambda v: True), "int8_arithmetic": (bool, lambda v: True),
                        "int8": (bool, lambda v: True), "vulkan": (bool, lambda v: True)}

    def _load_impl(self) -> None:
        import ncnn

        param, binf, spec_file = ncnn_paths(self.artifact)
        # Each file is read once (from a verified bundle: the bytes its manifest vouched for) and ncnn parses
        # those bytes from memory, never the paths: the model that runs is the model that was checked.
        if self.verified_files is None:
            for f in (param, binf):
                if not f.is_file():
                    raise EdgefaceError(f"ncnn artifact file {f} is missing; an ncnn model is a .ncnn.param + "
                                        f".ncnn.bin pair")
        param_bytes, bin_bytes = self.read_file(param), self.read_file(binf)
        art = read_ncnn_info(param, self.read_file(spec_file) if self.verified_files is not None else None)
        blobs = art.get("blobs", {})
        self._in_blob = blobs.get(self.spec.input_name, self.spec.input_name)
        self._out_blobs = [blobs.get(n, n) for n in self.spec.output_names]
        self._weights = art.get("precision", "fp32")
        if art.get("input_kind", FLOAT_NCHW) != FLOAT_NCHW:
            raise EdgefaceError(f"{param.name} declares input {art.get('input_kind')!r}; ncnn artifacts take float32 "
                                "NCHW")

        net = ncnn.Net()
        opt = net.opt
        opt.num_threads = int(self.threads) if self.threads else opt.num_threads
        fp16 = self.options.get("fp16")
        fp16 = {"on": True, "off": False}.get(fp16, fp16) if isinstance(fp16, str) else fp16
        if fp16 == "auto":  # ncnn's own per-CPU defaults, untouched
            self._fp16 = bool(opt.use_fp16_arithmetic)
        else:
            self._fp16 = cpu_has_fp16() if fp16 is None else bool(fp16)
            opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = self._fp16
            opt.use_bf16_storage = False  # bf16 would lose more than the fp16 bound allows
        int8_arithmetic = self.options.get("int8_arithmetic", self.options.get("int8"))
        if int8_arithmetic is not None:  # INT8 layers (from `edgeface quantize`) use ncnn's INT8 kernels
            opt.use_int8_inference = bool(int8_arithmetic)
        self._vulkan = bool(self.options.get("vulkan", False))
        if self._vulkan:
            if ncnn.get_gpu_count() == 0:
                raise EdgefaceError("ncnn found no Vulkan GPU; drop the vulkan option or install the GPU's Vulkan "
                                    "driver")
            opt.use_vulkan_compute = True
        else:
            opt.use_vulkan_compute = False
        try:
            param_text = param_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise EdgefaceError(f"ncnn cannot parse {param.name} (not a text .param); re-export it") from None
        if "\0" in param_text or silence_native_stderr(lambda: net.load_param_mem(param_text)) != 0:
            raise EdgefaceError(f"ncnn cannot parse {param.name} (corrupt or not an ncnn .param); re-export it")
        if silence_native_stderr(lambda: net.load_model(_bytes_reader(ncnn, bin_bytes))) != 0:
            raise EdgefaceError(f"ncnn cannot read the weights {binf.name} (truncated or not matching the .param); "
                                f"re-export it")
        have = set(net.input_names()) | set(net.output_names())
        want = {self._in_blob, *self._out_blobs}
        if want - have:
            raise EdgefaceError(f"{param.name} lacks the blobs {sorted(want - have)} its spec names; re-export it")
        self._ncnn, self._net = ncnn, net
        self._pixel_input = bool(self.options.get("pixel_input", True))
        self.input_kind = UINT8_NHWC if self._pixel_input else FLOAT_NCHW
        if self._pixel_input:
            scale, bias, idx = input_affine(self.spec)
            # ncnn computes (v - mean) * norm per channel, in the network's channel order.
            self._norm = [float(v) for v in scale]
            self._mean = [float(-b / s) for b, s in zip(bias, scale)]
            swap = idx == [2, 1, 0]
            self._pixel_type = ncnn.Mat.PixelType.PIXEL_BGR2RGB if swap else ncnn.Mat.PixelType.PIXEL_BGR
        if self._weights == "int8":  # our INT8 emitter records it; fp16 arithmetic does not change that
            self.precision = "int8"
        else:
            self.precision = "fp16" if (self._fp16 or self._weights == "fp16") else "fp32"

    def _run_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        ncnn, net = self._ncnn, self._net
        n = x.shape[0]
        outs = [None] * len(self._out_blobs)
        s = self.spec.input_size
        for i in range(n):
            if self._pixel_input:
                m = ncnn.Mat.from_pixels(x[i], self._pixel_type, s, s)
                m.substract_mean_normalize(self._mean, self._norm)
            else:
                m = ncnn.Mat(x[i])
            with net.create_extractor() as ex:
                ex.input(self._in_blob, m)
                for k, blob in enumerate(self._out_blobs):
                    ret, out = ex.extract(blob)
                    if ret != 0:
                        raise EdgefaceError(f"ncnn failed to compute {blob!r} (code {ret})")
                    a = np.asarray(out).reshape(-1)
                    if outs[k] is None:
                        outs[k] = np.empty((n, a.size), dtype=np.float32)
                    outs[k][i] = a
        return dict(zip(self.spec.output_names, outs))

    def _check_precision(self) -> None:
        """fp32 and fp16 follow the ``fp16`` policy (a Pi 5 may run an fp32 bundle's layers in fp16 when its
        target says "auto"): only a precision ncnn has no path for here (bf16, int8 on an FP32 model) is refused."""
        if self.requested_precision not in (None, "fp32", "fp16"):
            super()._check_precision()

    def _info_impl(self) -> dict:
        d = {}
        try:
            import ncnn

            d["version"] = ncnn.__version__
        except ImportError:
            pass
        net = getattr(self, "_net", None)
        d.update(weights=getattr(self, "_weights", None), fp16_arithmetic=getattr(self, "_fp16", None),
                 int8_arithmetic=bool(net.opt.use_int8_inference) if net is not None else None,
                 vulkan=getattr(self, "_vulkan", None), cpu_has_fp16=cpu_has_fp16())
        return d

    def _close_impl(self) -> None:
        net = getattr(self, "_net", None)
        if net is not None:
            net.clear()
        self._net = None
