import os

# The conv's measured choices stay in each test process (trp_kernels.ops.backends,
# TRP_CONV_CHOICES): a file shared between runs would let one run's choices stand in for
# another's measurements. Set before trp_kernels is imported; the tests of the file set their own.
os.environ["TRP_CONV_CHOICES"] = "off"

import pytest
import torch

import emulated_cuda


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA device, skipped without one (bench/run_gpu.sh runs -m cuda)")
    config.addinivalue_line(
        "markers", "emulated_cuda: runs CUDA sources on the CPU emulation (tests/emulated_cuda.py)")


def _device(item):
    params = getattr(item, "callspec", None)
    return None if params is None else params.params.get("device")


def pytest_collection_modifyitems(config, items):
    """Marks every case run on the device "cuda" (testing.cpu_and_cuda / cuda_only, or a plain
    "cuda" device parameter) with ``cuda``, and skips those cases where there is no GPU; marks
    those on the emulated CUDA device with ``emulated_cuda``, skipped where the emulation
    cannot run."""
    skip = pytest.mark.skip(reason="needs a CUDA device")
    unsupported = emulated_cuda.unsupported_reason()
    for item in items:
        if _device(item) == "cuda":
            item.add_marker(pytest.mark.cuda)
        if _device(item) == emulated_cuda.DEVICE:
            item.add_marker(pytest.mark.emulated_cuda)
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(skip)
        if item.get_closest_marker("emulated_cuda") and unsupported:
            item.add_marker(pytest.mark.skip(reason=unsupported))


def pytest_collection_finish(session):
    """Registers the emulated device before the first test runs when any selected test uses it:
    autograd's engine sizes its per-device queues once, at the first backward pass on a device
    other than the CPU, so a device registered after that (by a later test) would have none."""
    if emulated_cuda.unsupported_reason() is None and any(
            _device(item) == emulated_cuda.DEVICE for item in session.items):
        emulated_cuda.load()


@pytest.fixture(autouse=True)
def _emulated_cuda_device(request):
    """Builds and loads the emulated device for the first case that runs on it, and gives each
    such case a fresh device with a schedule of its own (emulated_cuda.start_test)."""
    if _device(request.node) != emulated_cuda.DEVICE:
        yield
        return
    emulated_cuda.load()
    emulated_cuda.start_test(request.node.nodeid)
    yield
    fault = emulated_cuda.finish_test()
    assert not fault, f"an emulated kernel faulted: {fault}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _full_float32_on_cuda():
    """The float32 tolerances of the tests (1e-4) assume full float32 arithmetic; cuDNN and
    cuBLAS would otherwise use TF32 (about 1e-3). Restored after each test."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
