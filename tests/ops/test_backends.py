"""Which implementation runs (trp_kernels/ops/backends.py): the switches TRP_SVD_IMPL and
TRP_CONV_IMPL, read on every call and forced for a block; the SVD path's default per device; and
what the package allows the automatic conv choice: the fused CUDA kernel joins it only once the
hardware-validation record names a GPU run that validated it. That conv switch lives in C++
(trp::set_fused_conv_in_auto / trp::fused_conv_in_auto) and is compiled in every build, so it is
checked here on the CPU."""

from __future__ import annotations

import os
import re

import pytest
import torch

import trp_kernels as tk
from conv_inputs import conv_inputs, relative_error
from testing import cpu_and_cuda
from trp_kernels.ops import backends, ops
from trp_kernels.ops.conv import reference_lowrank_conv2d
from trp_kernels.ops.svd import lowrank_project_groups, project_matrices


# -- TRP_SVD_IMPL: the path of the SVD ops ---------------------------------------------------

def test_unknown_impl_raises(monkeypatch):
    monkeypatch.setenv("TRP_SVD_IMPL", "lapack")
    W = torch.randn(4, 6)
    for call in (lambda: tk.truncated_svd(W), lambda: tk.lowrank_project(W),
                 lambda: lowrank_project_groups([W]), lambda: project_matrices([W])):
        with pytest.raises(ValueError, match="TRP_SVD_IMPL"):
            call()
    with pytest.raises(ValueError, match="svd"):
        with backends.forced(svd="lapack"):
            pass


def test_env_read_on_every_call(monkeypatch):
    W = torch.randn(2, 4, 6)
    W[1, 0, 0] = float("nan")
    monkeypatch.setenv("TRP_SVD_IMPL", "eigh")
    assert tk.truncated_svd(W, check_finite=False).rank[1] == -1
    monkeypatch.setenv("TRP_SVD_IMPL", "jacobi")
    with pytest.raises(ValueError, match="non-finite"):
        tk.truncated_svd(W, check_finite=False)
    for value in ("", "auto"):
        monkeypatch.setenv("TRP_SVD_IMPL", value)
        assert backends.svd_impl(torch.device("cpu"), 16) == "jacobi"


def test_defaults_per_device(monkeypatch):
    monkeypatch.delenv("TRP_SVD_IMPL", raising=False)
    cpu, cuda, meta = torch.device("cpu"), torch.device("cuda", 0), torch.device("meta")
    small, large = backends.FUSED_SVD_MAX_K, backends.FUSED_SVD_MAX_K + 1
    monkeypatch.setattr(backends, "CUDA_SVD_VALIDATED_BY", None)
    assert backends.svd_impl(cpu, small) == "jacobi" and backends.svd_impl(cpu, large) == "jacobi"
    assert backends.svd_impl(cuda, small) == "eigh"   # unvalidated kernels stay off by default
    assert backends.svd_impl(meta, small) == "eigh"   # no compiled kernel there
    monkeypatch.setattr(backends, "CUDA_SVD_VALIDATED_BY", "bench/results/gpu_run.txt")
    assert backends.svd_impl(cuda, small) == "jacobi"
    # the blocked Jacobi (k > 64) measured slower than the composite path: not the default
    assert backends.svd_impl(cuda, large) == "eigh"
    assert backends.svd_impl(cpu, large) == "jacobi"
    with backends.forced(svd="eigh"):
        assert backends.svd_impl(cpu, small) == "eigh" and backends.svd_impl(cuda, small) == "eigh"
    with backends.forced(svd="jacobi"):
        assert backends.svd_impl(meta, small) == "jacobi" and backends.svd_impl(cuda, large) == "jacobi"


def test_groups_of_both_paths_in_one_call(monkeypatch):
    # On CUDA the default path depends on k; here on the CPU, where both paths run, the same
    # split is forced: each group must get its path's result, in input order.
    from trp_kernels.ops import svd

    monkeypatch.setattr(svd, "svd_impl", lambda device, k: backends.SvdImpl.JACOBI
                        if k <= backends.FUSED_SVD_MAX_K else backends.SvdImpl.EIGH)
    g = torch.Generator().manual_seed(0)
    groups = [torch.randn(3, 70, 90, generator=g, dtype=torch.float64),
              torch.randn(2, 16, 144, generator=g, dtype=torch.float64),
              torch.randn(2, 80, 66, generator=g, dtype=torch.float64)]
    lows, subs, ranks = svd.lowrank_project_groups(groups, energy=0.9)
    for group, low, sub, rank in zip(groups, lows, subs, ranks):
        ref = svd.reference_lowrank_project(group, energy=0.9)
        assert torch.equal(rank, ref.rank)
        torch.testing.assert_close(low, ref.W_low)
        torch.testing.assert_close(sub, ref.subgrad)


def test_svd_forced_restores_the_environment(monkeypatch):
    monkeypatch.setenv("TRP_SVD_IMPL", "jacobi")
    with backends.forced(svd="eigh"):
        with backends.forced(svd="auto"):
            assert backends.svd_setting() is backends.SvdImpl.AUTO
        with backends.forced(svd=None):   # None leaves the setting as it is
            assert backends.svd_setting() is backends.SvdImpl.EIGH
        assert backends.svd_setting() == "eigh"
    assert backends.svd_setting() == "jacobi"


# -- TRP_CONV_IMPL: the implementation of lowrank_conv2d ---------------------------------------

@pytest.mark.parametrize("device", cpu_and_cuda())
def test_unknown_impl_is_a_value_error(device, monkeypatch):
    x, w1, w2, bias = conv_inputs(device, "channel")
    monkeypatch.setenv(backends.CONV_ENV, "fastest")
    with pytest.raises(ValueError, match="TRP_CONV_IMPL"):
        tk.lowrank_conv2d(x, w1, w2, bias, 1, 1, 1, "channel")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("impl", ["auto", "fused", "two_convs", "dense"])
def test_every_impl_name_runs(device, impl):
    # On the CPU, `fused` and `auto` run two_convs; on CUDA see the CUDA-only tests below.
    x, w1, w2, bias = conv_inputs(device, "spatial")
    with backends.forced(conv=impl):
        y = tk.lowrank_conv2d(x, w1, w2, bias, 1, 1, 1, "spatial")
    ref = reference_lowrank_conv2d(x, w1, w2, bias, 1, 1, 1, "spatial")
    assert relative_error(y, ref) < 1e-12


def test_conv_forced_restores_the_environment(monkeypatch):
    monkeypatch.delenv(backends.CONV_ENV, raising=False)
    with backends.forced(conv="dense"):
        assert backends.conv_setting() == "dense"
        with backends.forced(conv="auto"):
            assert backends.conv_setting() is backends.ConvImpl.AUTO
        with backends.forced(conv=None):   # None leaves the setting as it is
            assert backends.conv_setting() is backends.ConvImpl.DENSE
        assert os.environ[backends.CONV_ENV] == "dense"
    assert backends.CONV_ENV not in os.environ
    with pytest.raises(ValueError, match="conv"):
        with backends.forced(conv="fastest"):
            pass


# -- the automatic conv choice and the validation record --------------------------------------


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


def test_the_validation_record_names_committed_runs():
    # a constant names the committed result file of the run that validated its kernel family
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for record in (backends.CUDA_SVD_VALIDATED_BY, backends.FUSED_CONV_VALIDATED_BY):
        if record is not None:
            with open(os.path.join(root, record)) as f:
                summary = f.read()
            assert summary.startswith("build          PASSED")
            assert re.search(r"^memcheck +PASSED .*ERROR SUMMARY: 0 errors$", summary, re.M)
