"""What the GPU scripts record about the machine they ran on, and their common exit where there
is no CUDA device. Used by bench/run_gpu.sh (the header of summary.txt), bench/gpu_smoke.py and
bench/gpu_timings.py (the first record of the timing JSON).

    python bench/gpu_env.py             # the machine record as one JSON line
    python bench/gpu_env.py --runtime   # the kind of virtual machine, one word"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_CUDA_EXIT = 2  # the scripts' exit status where torch sees no CUDA device


def _run(*cmd: str) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def driver_version() -> str | None:
    """The NVIDIA driver release (e.g. 580.159.04), from nvidia-smi; None where it is absent."""
    out = _run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    return out.splitlines()[0].strip() if out else None


def clocks() -> dict | None:
    """SM clock now and at most, memory clock now (MHz), from nvidia-smi: the timings depend on
    them, and an idle card reads low until work starts."""
    out = _run("nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,clocks.mem",
               "--format=csv,noheader,nounits")
    if not out:
        return None
    values = [v.strip() for v in out.splitlines()[0].split(",")]
    return dict(zip(("sm_mhz", "max_sm_mhz", "mem_mhz"), values))


def runtime_kind() -> str:
    """The sandbox the machine runs in, read off its kernel: gVisor reports kernel 4.4.0, and
    the Firecracker kernels name themselves "-fc-". The sanitizers and profilers work on one and
    not the other, so a result file says which it came from."""
    release = platform.release()
    if release.startswith("4.4.0"):
        return "gvisor"
    if "-fc-" in release:
        return "firecracker"
    return "other"


def commit() -> str | None:
    """The commit the tree was taken from: TRP_COMMIT when set (a tree copied to the GPU machine
    travels without its history, or with a stale .git beside it), else git's."""
    return os.environ.get("TRP_COMMIT") or _run("git", "rev-parse", "--short", "HEAD") or None


def machine_info() -> dict:
    """Device, driver and library versions, the settings the numbers depend on, and the commit."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "driver": driver_version(),
        "commit": commit(),
        "kernel": platform.release(),
        "runtime": runtime_kind(),
        "clocks": clocks(),
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith("TRP_") or k in ("CUDA_VISIBLE_DEVICES",
                                                 "PYTORCH_NO_CUDA_MEMORY_CACHING")},
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        info["device"] = None
    return info


def device_slug(info: dict) -> str:
    """The device name as a file-name part: 'NVIDIA H200' -> 'NVIDIA-H200'."""
    name = info.get("device") or "no-device"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name)


def require_cuda(script: str) -> None:
    """Exits with NO_CUDA_EXIT and a message naming ``script`` when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        print(f"{script}: no CUDA device (torch {torch.__version__}, "
              f"torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        sys.exit(NO_CUDA_EXIT)


if __name__ == "__main__":
    print(runtime_kind() if "--runtime" in sys.argv[1:] else json.dumps(machine_info()))
