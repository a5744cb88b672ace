"""cuSOLVER's batched symmetric eigensolver, ``cusolverDnXsyevBatched`` (CUDA 12.6 update 2 and
later, any n), on torch CUDA tensors: a candidate to ``torch.linalg.eigh`` for the Gram
matrices of the composite SVD path, whose CUDA implementation batches only n <= 32 and runs one
syevd per matrix above that (backends.py, ``TRP_EIGH_IMPL``; docs/cuda_svd.md, "cuSOLVER's
batched eigensolver").

It is called through ctypes in the libcusolver that torch's CUDA build has loaded, declared from
the prototypes of the cuSOLVER documentation (cusolverDnXsyevBatched_bufferSize,
cusolverDnXsyevBatched, cusolverDnCreate, cusolverDnCreateParams, cusolverDnSetStream): no
header and no link step, so the package builds and imports where CUDA is absent, and a
cuSOLVER without the routine is reported by ``unavailable_reason`` instead of failing a build.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading

import torch

# Enumerators of the cuSOLVER/CUDA headers (library_types.h, cusolver_common.h, cublas_api.h).
_STATUS_SUCCESS = 0
_EIG_MODE_VECTOR = 1      # cusolverEigMode_t CUSOLVER_EIG_MODE_VECTOR
# cublasFillMode_t CUBLAS_FILL_MODE_UPPER: the upper triangle of the column-major matrix cuSOLVER
# sees is the lower triangle of the row-major tensor, the one torch.linalg.eigh reads
_FILL_MODE = 1
_DATA_TYPE = {torch.float32: 0, torch.float64: 1}   # cudaDataType CUDA_R_32F, CUDA_R_64F

_i64, _size_t, _ptr, _int = ctypes.c_int64, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int
_PROTOTYPES = {
    "cusolverDnCreate": (ctypes.POINTER(_ptr),),
    "cusolverDnCreateParams": (ctypes.POINTER(_ptr),),
    "cusolverDnSetStream": (_ptr, _ptr),
    # handle, params, jobz, uplo, n, dataTypeA, A, lda, dataTypeW, W, computeType,
    # workspace bytes on device (out), on host (out), batchSize
    "cusolverDnXsyevBatched_bufferSize": (_ptr, _ptr, _int, _int, _i64, _int, _ptr, _i64, _int,
                                          _ptr, _int, ctypes.POINTER(_size_t),
                                          ctypes.POINTER(_size_t), _i64),
    # handle, params, jobz, uplo, n, dataTypeA, A, lda, dataTypeW, W, computeType,
    # device buffer, its bytes, host buffer, its bytes, info (one int per matrix), batchSize
    "cusolverDnXsyevBatched": (_ptr, _ptr, _int, _int, _i64, _int, _ptr, _i64, _int, _ptr, _int,
                               _ptr, _size_t, _ptr, _size_t, _ptr, _i64),
}


def _loaded_library() -> str | None:
    """The path of the libcusolver this process has loaded (torch's CUDA build loads it with
    torch), else what the dynamic linker finds by name."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if "/libcusolver.so" in path:
                    return path
    except OSError:
        pass
    return ctypes.util.find_library("cusolver")


@functools.lru_cache(maxsize=None)
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """(the library with its prototypes set, None) or (None, why not)."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return None, "needs a CUDA build of torch and a CUDA device"
    torch.cuda.init()
    path = _loaded_library()
    if path is None:
        return None, "libcusolver was not found in this process or by the dynamic linker"
    try:
        lib = ctypes.CDLL(path)
    except OSError as error:
        return None, f"libcusolver ({path}) could not be loaded: {error}"
    for name, argtypes in _PROTOTYPES.items():
        function = getattr(lib, name, None)
        if function is None:
            return None, (f"{path} has no {name} (cusolverDnXsyevBatched needs CUDA 12.6 "
                          f"update 2 or later)")
        function.argtypes, function.restype = argtypes, _int
    return lib, None


def unavailable_reason(device) -> str | None:
    """Why ``syev_batched`` cannot run on ``device``, or None where it can."""
    if torch.device(device).type != "cuda":
        return f"cuSOLVER runs on CUDA devices, not {torch.device(device)}"
    return _library()[1]


def _check(status: int, call: str) -> None:
    if status != _STATUS_SUCCESS:
        raise RuntimeError(f"{call} failed with cusolverStatus_t {status}")


class _Handles(threading.local):
    """Per thread (a cuSOLVER handle is not to be shared between host threads) and per device:
    a handle, its parameters object and a host workspace that grows as needed."""

    def __init__(self):
        self.by_device: dict[int, list] = {}

    def get(self, lib, device_index: int) -> list:
        if device_index not in self.by_device:
            handle, params = _ptr(), _ptr()
            with torch.cuda.device(device_index):   # a handle belongs to the current device
                _check(lib.cusolverDnCreate(ctypes.byref(handle)), "cusolverDnCreate")
                _check(lib.cusolverDnCreateParams(ctypes.byref(params)),
                       "cusolverDnCreateParams")
            self.by_device[device_index] = [handle, params, ctypes.create_string_buffer(1)]
        return self.by_device[device_index]


_handles = _Handles()


def syev_batched(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh(G)`` by one cusolverDnXsyevBatched call: G [..., n, n] symmetric
    (its lower triangle is read), float32 or float64, on a CUDA device. Returns the eigenvalues
    [..., n] in ascending order and the eigenvectors [..., n, n] as columns. Like
    ``torch.linalg.eigh`` on CUDA it synchronises once, to read the per-matrix convergence
    flags, and raises ``torch.linalg.LinAlgError`` naming the first matrix that failed."""
    if not isinstance(G, torch.Tensor):
        raise TypeError(f"G must be a torch.Tensor, got {type(G).__name__}")
    if G.dtype not in _DATA_TYPE:
        raise TypeError(f"G must be float32 or float64, got {G.dtype}")
    if G.dim() < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"G must be a batch of square matrices [..., n, n], got shape "
                         f"{tuple(G.shape)}")
    reason = unavailable_reason(G.device)
    if reason is not None:
        raise ValueError(f"G: cusolverDnXsyevBatched is not available: {reason}")
    lib = _library()[0]
    n = G.shape[-1]
    batch_shape = G.shape[:-2]
    batch = G.numel() // max(n * n, 1)
    if batch == 0 or n == 0:
        return G.new_empty(*batch_shape, n), G.new_empty(*batch_shape, n, n)
    # G symmetric: its row-major storage read column-major is G itself. cuSOLVER overwrites it
    # with the eigenvectors as columns (column-major), i.e. as rows in row-major storage.
    A = G.reshape(batch, n, n).clone(memory_format=torch.contiguous_format)
    W = torch.empty(batch, n, dtype=G.dtype, device=G.device)
    info = torch.zeros(batch, dtype=torch.int32, device=G.device)
    dtype = _DATA_TYPE[G.dtype]
    handle, params, host = _handles.get(lib, G.device.index)
    _check(lib.cusolverDnSetStream(handle, torch.cuda.current_stream(G.device).cuda_stream),
           "cusolverDnSetStream")
    device_bytes, host_bytes = _size_t(), _size_t()
    _check(lib.cusolverDnXsyevBatched_bufferSize(
        handle, params, _EIG_MODE_VECTOR, _FILL_MODE, n, dtype, A.data_ptr(), n, dtype,
        W.data_ptr(), dtype, ctypes.byref(device_bytes), ctypes.byref(host_bytes), batch),
        "cusolverDnXsyevBatched_bufferSize")
    work = torch.empty(max(device_bytes.value, 1), dtype=torch.uint8, device=G.device)
    if ctypes.sizeof(host) < host_bytes.value:
        host = ctypes.create_string_buffer(host_bytes.value)
        _handles.by_device[G.device.index][2] = host
    _check(lib.cusolverDnXsyevBatched(
        handle, params, _EIG_MODE_VECTOR, _FILL_MODE, n, dtype, A.data_ptr(), n, dtype,
        W.data_ptr(), dtype, work.data_ptr(), device_bytes.value,
        ctypes.cast(host, _ptr) if host_bytes.value else None, host_bytes.value,
        info.data_ptr(), batch), "cusolverDnXsyevBatched")
    failed = torch.nonzero(info).flatten()
    if failed.numel():   # the one synchronisation
        first = int(failed[0])
        raise torch.linalg.LinAlgError(
            f"cusolverDnXsyevBatched failed on matrix {first} of the batch: info "
            f"{int(info[first])} (positive: no convergence; negative: that argument was invalid)")
    return W.reshape(*batch_shape, n), A.mT.reshape(*batch_shape, n, n)
