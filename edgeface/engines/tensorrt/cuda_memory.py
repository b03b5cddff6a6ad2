"""Device buffers, pinned host buffers and one stream, through pycuda (what Jetson users usually have) or
cuda-python where pycuda is absent (``cuda.bindings.runtime`` from cuda-python 12.6 on, ``cuda.cudart``
before). Only what the TensorRT backend and calibrator need; nothing here is imported without a GPU stack.

    cuda = open_cuda()                      # picks the binding, makes device 0's primary context usable
    host = cuda.pinned_empty((64, 3, 112, 112), np.float32)
    dev = cuda.malloc(host.nbytes)
    cuda.htod_async(dev, host, host.nbytes); cuda.synchronize()
    cuda.free(dev); cuda.free_pinned(host); cuda.close()
"""
from __future__ import annotations

import ctypes
from typing import Optional

import numpy as np

from ...core.errors import EdgefaceError, MissingBackendError

NO_CUDA = ("no CUDA Python binding found; install cuda-python (pip install 'edgeface[tensorrt]') or pycuda "
           "(JetPack: pip install pycuda)")


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python < 12.6 (removed in 13)
        return cudart
    except ImportError:
        return None


class _RuntimeCuda:
    """cuda-python's runtime API: every call returns (cudaError_t, *values)."""
    binding = "cuda-python"

    def __init__(self, cudart):
        self.rt = cudart
        self._pinned: dict[int, int] = {}   # id(array) -> host pointer
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")[0]

    def _check(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.rt.cudaGetErrorString(err)[1]
            raise EdgefaceError(f"CUDA {what} failed: {name.decode() if isinstance(name, bytes) else name}")
        return values

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc")[0])

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(self._check(self.rt.cudaMallocHost(max(nbytes, 1)), "cudaMallocHost")[0])
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
        arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        self._pinned[id(arr)] = ptr
        return arr

    def free_pinned(self, arr: np.ndarray) -> None:
        ptr = self._pinned.pop(id(arr), None)
        if ptr is not None:
            self._check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def htod_async(self, dst: int, host: np.ndarray, nbytes: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, host.ctypes.data, nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "memcpy H2D")

    def dtoh_async(self, host: np.ndarray, src: int, nbytes: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, src, nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "memcpy D2H")

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def activate(self) -> None:  # the runtime API binds the primary context per thread by itself
        pass

    def deactivate(self) -> None:
        pass

    def close(self) -> None:
        if self.stream is not None:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None


class _PyCuda:
    """pycuda on device 0's primary context (the one TensorRT's runtime API uses), pushed per call so that
    any thread may run the engine."""
    binding = "pycuda"

    def __init__(self, driver):
        self.drv = driver
        driver.init()
        self.ctx = driver.Device(0).retain_primary_context()
        self.ctx.push()
        try:
            self.stream = driver.Stream()
        finally:
            self.ctx.pop()
        self._allocs: dict[int, object] = {}

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def activate(self) -> None:
        self.ctx.push()

    def deactivate(self) -> None:
        self.drv.Context.pop()

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(max(int(nbytes), 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(int(ptr), None)
        if alloc is not None:
            alloc.free()

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def free_pinned(self, arr: np.ndarray) -> None:
        base = getattr(arr, "base", None)
        if base is not None and hasattr(base, "free"):
            base.free()

    def htod_async(self, dst: int, host: np.ndarray, nbytes: int) -> None:
        self.drv.memcpy_htod_async(dst, host.reshape(-1).view(np.uint8)[:nbytes], self.stream)

    def dtoh_async(self, host: np.ndarray, src: int, nbytes: int) -> None:
        self.drv.memcpy_dtoh_async(host.reshape(-1).view(np.uint8)[:nbytes], src, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.stream = None
        self.ctx.detach()


def open_cuda(prefer: Optional[str] = None):
    """A CUDA helper: pycuda when importable (unless ``prefer="cuda-python"``), else cuda-python."""
    if prefer not in (None, "pycuda", "cuda-python"):
        raise EdgefaceError(f"unknown CUDA binding {prefer!r}; use pycuda or cuda-python")
    if prefer != "cuda-python":
        try:
            import pycuda.driver as driver
        except ImportError:
            driver = None
        if driver is not None:
            return _PyCuda(driver)
        if prefer == "pycuda":
            raise MissingBackendError("pycuda is not installed (JetPack: pip install pycuda)")
    cudart = _import_cudart()
    if cudart is None:
        raise MissingBackendError(NO_CUDA)
    return _RuntimeCuda(cudart)


def device_properties() -> tuple[str, str]:
    """(GPU name, "major.minor") of device 0."""
    cudart = _import_cudart()
    if cudart is not None:
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            raise EdgefaceError("no CUDA device visible (cudaGetDeviceProperties failed); is this the GPU machine?")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.rstrip("\x00").strip(), f"{prop.major}.{prop.minor}"
    try:
        import pycuda.driver as driver
    except ImportError:
        raise MissingBackendError(NO_CUDA) from None
    driver.init()
    dev = driver.Device(0)
    major, minor = dev.compute_capability()
    return dev.name().strip(), f"{major}.{minor}"
