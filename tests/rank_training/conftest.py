"""Every test under tests/rank_training runs with one torch CPU thread (the autouse fixture of
tests/single_thread.py), and may count the batched SVD calls of a step (``project_calls``)."""

import pytest

import trp_kernels.ops.svd as svd_module
from single_thread import one_cpu_thread  # noqa: F401  (registers the autouse fixture here)


@pytest.fixture
def project_calls(monkeypatch):
    """The group shapes of every batched ``lowrank_project_groups`` call: one list of shapes
    per op call."""
    calls = []
    real = svd_module.lowrank_project_groups

    def counting(groups, *args, **kwargs):
        groups = list(groups)
        calls.append([tuple(g.shape) for g in groups])
        return real(groups, *args, **kwargs)

    monkeypatch.setattr(svd_module, "lowrank_project_groups", counting)
    return calls
