"""An autouse fixture: one torch CPU thread per test. The conftest.py of tests/training and
tests/rank_training applies it to every test there; a module elsewhere imports it.

On the shared 2-core machines these tests run on, torch's spinning OpenMP workers made the
trainer's tests about four times slower with two threads than with one (30 s against 127 s for
four test modules under a load average of 4). The thread count is restored after every test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_cpu_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
