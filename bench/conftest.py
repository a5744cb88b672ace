"""Benchmark conventions (docs/design.md, "Benchmarks"): every benchmark takes `case` and `impl`,
sets benchmark.group = case (with the device appended), times CUDA work on the device
(bench/cuda_timing.py), and records the machine in the JSON."""

from __future__ import annotations

import os
import platform

import pytest
import torch

from cuda_timing import pedantic_device_time

QUICK = os.environ.get("TRP_BENCH_QUICK", "0") == "1"
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_benchmark_update_machine_info(config, machine_info):
    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_sms=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version(), driver_cuda=torch.version.cuda)
    machine_info["trp"] = info


def synchronized(fn, device):
    """fn followed by a device synchronisation, so the timer sees the finished work."""
    if torch.device(device).type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


@pytest.fixture
def bench(benchmark):
    """benchmark.pedantic with warm-up: bench(case, fn, device). The group is "case@device", so
    each table compares the implementations of one case on one device.

    On CUDA the stats are device time per call (bench/cuda_timing.py): rounds of 50
    back-to-back calls between CUDA events, the queue held full, the host's time per call in
    extra_info["host_ms"]; ``synchronizes=True`` for calls that synchronise by themselves,
    which are timed one per round with a synchronisation, as before."""

    def run(case, fn, device, rounds=None, synchronizes=False):
        benchmark.group = f"{case}@{torch.device(device).type}"
        if rounds is None:
            rounds = 3 if QUICK else 20
        if torch.device(device).type == "cuda" and not synchronizes:
            return pedantic_device_time(benchmark, fn, rounds=rounds)
        return benchmark.pedantic(synchronized(fn, device), rounds=rounds, iterations=1,
                                  warmup_rounds=1)

    return run
