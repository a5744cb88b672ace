import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA device, skipped without one (bench/run_gpu.sh runs -m cuda)")


def pytest_collection_modifyitems(config, items):
    """Marks every case run on the device "cuda" (testing.cpu_and_cuda / cuda_only, or a plain
    "cuda" device parameter) with ``cuda``, and skips those cases where there is no GPU."""
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        params = getattr(item, "callspec", None)
        if params is not None and params.params.get("device") == "cuda":
            item.add_marker(pytest.mark.cuda)
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(skip)


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
