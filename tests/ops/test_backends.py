"""The automatic implementation choice of trp::lowrank_conv2d and what the package allows it:
the fused CUDA kernel joins the choice only once trp_kernels/validation.py records a GPU run
that validated it. The switch lives in C++ (trp::set_fused_conv_in_auto /
trp::fused_conv_in_auto) and is compiled in every build, so it is checked here on the CPU."""

from __future__ import annotations

import pytest
import torch

from trp_kernels.ops import backends
from trp_kernels.ops import ops


@pytest.fixture
def restore_switch():
    yield
    backends.apply_validation()  # back to what the committed record says


def test_import_set_the_switch_from_the_validation_record():
    # The package applied the record at import; nothing in the tests has changed it since.
    assert ops.fused_conv_in_auto() is (backends.FUSED_CONV_VALIDATED_BY is not None)


@pytest.mark.parametrize("record", [None, "bench/results/gpu_validation.json"])
def test_apply_validation_follows_the_record(monkeypatch, restore_switch, record):
    monkeypatch.setattr(backends, "FUSED_CONV_VALIDATED_BY", record)
    ops.set_fused_conv_in_auto(record is None)  # the opposite, so that the call must change it
    backends.apply_validation()
    assert ops.fused_conv_in_auto() is (record is not None)


def test_switch_round_trips_through_the_ops(restore_switch):
    for allowed in (True, False, True):
        ops.set_fused_conv_in_auto(allowed)
        assert ops.fused_conv_in_auto() is allowed


def test_switch_does_not_change_the_cpu_result(restore_switch):
    # The CPU runs two_convs whatever the switch says.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 7, generator=g, dtype=torch.float64)
    w1 = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)
    w2 = torch.randn(5, 3, 1, 1, generator=g, dtype=torch.float64)
    args = (x, w1, w2, None, [1, 1], [1, 1], [1, 1], "channel")
    ops.set_fused_conv_in_auto(False)
    off = ops.lowrank_conv2d(*args)
    ops.set_fused_conv_in_auto(True)
    on = ops.lowrank_conv2d(*args)
    reference = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, w1, padding=1), w2)
    torch.testing.assert_close(off, reference)
    torch.testing.assert_close(on, reference)
