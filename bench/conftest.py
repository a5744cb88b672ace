"""Benchmark conventions (docs/design.md, "Benchmarks"): every benchmark takes `case` and `impl`,
sets benchmark.group = case (with the device appended), synchronises CUDA work, and records the
machine in the JSON."""

from __future__ import annotations

import os
import platform

import pytest
import torch

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
    each table compares the implementations of one case on one device."""

    def run(case, fn, device, rounds=None):
        benchmark.group = f"{case}@{torch.device(device).type}"
        fn = synchronized(fn, device)
        if rounds is None:
            rounds = 3 if QUICK else 20
        return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)

    return run
