"""Whether compute-sanitizer can instrument this device, in about a second: one allocation, one
memset and one free through the CUDA driver API (ctypes, no torch import). bench/run_gpu.sh runs
it under memcheck before the real sanitizer phases; on machines where the sanitizer refuses the
device ("Device not supported", then an error at the first allocation) those phases are skipped
with the message instead of failing after minutes. Prints "probe ok" and exits 0 on success."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def main() -> int:
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        cuda = ctypes.CDLL(name)
    except OSError as e:
        print(f"probe failed: cannot load the CUDA driver library {name}: {e}")
        return 1
    device, context, pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
    steps = [
        ("cuInit", lambda: cuda.cuInit(0)),
        ("cuDeviceGet", lambda: cuda.cuDeviceGet(ctypes.byref(device), 0)),
        ("cuDevicePrimaryCtxRetain",
         lambda: cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device)),
        ("cuCtxSetCurrent", lambda: cuda.cuCtxSetCurrent(context)),
        ("cuMemAlloc", lambda: cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(256))),
        ("cuMemsetD8", lambda: cuda.cuMemsetD8_v2(pointer, ctypes.c_ubyte(0), ctypes.c_size_t(256))),
        ("cuCtxSynchronize", lambda: cuda.cuCtxSynchronize()),
        ("cuMemFree", lambda: cuda.cuMemFree_v2(pointer)),
    ]
    for step, call in steps:
        status = call()
        if status != 0:
            print(f"probe failed: {step} returned CUDA error {status}")
            return 1
    cuda.cuDevicePrimaryCtxRelease(device)
    print("probe ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
