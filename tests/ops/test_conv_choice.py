"""The automatic choice of the conv's implementation on CUDA (csrc/aten/trp/measured_choice.h,
conv_choice_store.h; docs/cuda_conv.md, "Choosing an implementation"): it measures in 15
rounds behind device holds, once per problem; keeps the choice in a file for later processes,
read back instead of measuring, forgotten on request; an eager and a compiled call are one
problem with one choice and one result; fused joins the candidates once validated. The store
itself (its ops, its file format) also on the CPU. On a GPU and on the emulated device."""

from __future__ import annotations

import pytest
import torch

import trp_kernels as tk
from conv_inputs import conv_inputs, relative_error
from testing import cuda_only, fused_conv_launches
from trp_kernels.ops import backends, ops

ROUNDS = 15


@pytest.fixture
def choice_file(tmp_path):
    """A file of choices of the test's own, and a store with nothing in memory; both put back
    as the test session has them (memory only) afterwards."""
    path = tmp_path / "choices" / "conv-choices.tsv"
    backends.clear_conv_choices()
    backends.set_conv_choice_file(path)
    yield path
    backends.set_conv_choice_file(None)
    backends.clear_conv_choices()


@pytest.fixture
def no_file():
    backends.set_conv_choice_file(None)
    backends.clear_conv_choices()
    yield
    backends.clear_conv_choices()


_salt = iter(range(1000))


def problem(device, scheme="channel", dtype=torch.float32, channels_last=False,
            requires_grad=False):
    """Inputs of a shape no earlier call used (the in-memory choices of the launcher outlive a
    clear only by generation, so a fresh shape is a fresh problem either way)."""
    return conv_inputs(device, scheme, C=4 + next(_salt), N=6, rank=3, size=(7, 6), dtype=dtype,
                       channels_last=channels_last, requires_grad=requires_grad)


def holds(device, fn):
    """(fn(), how many device holds it launched): ROUNDS for a call that measured, 0 else."""
    return fused_conv_launches(device, fn, backends.HOLD_KERNEL)


def forced(impl, fn):
    with backends.forced(conv=impl):
        return fn()


# -- the store, on the CPU -----------------------------------------------------------------------

def test_store_keeps_reads_and_forgets(choice_file):
    assert ops.conv_choice_file() == str(choice_file)
    assert ops._stored_conv_choice("k") is None
    ops._store_conv_choice("k", "dense", "rounds=15")
    assert ops._stored_conv_choice("k") == "dense"
    assert choice_file.read_text() == "trp-conv-choice-v1\tk\tdense\trounds=15\n"
    ops._store_conv_choice("k", "two_convs", "again")       # a later line wins
    generation = ops._conv_choice_generation()
    backends.clear_conv_choices()                            # memory only: the file is read again
    assert ops._conv_choice_generation() == generation + 1
    assert ops._stored_conv_choice("k") == "two_convs"
    assert backends.conv_choices() == [backends.ConvChoice("file", "k", "two_convs", "again")]
    backends.clear_conv_choices(remove_file=True)
    assert not choice_file.exists() and ops._stored_conv_choice("k") is None


def test_store_skips_lines_it_cannot_read(choice_file):
    choice_file.parent.mkdir(parents=True)
    choice_file.write_text("trp-conv-choice-v0\told\tdense\tx\n"     # another format
                           "not a choice\n"
                           "trp-conv-choice-v1\t\tdense\tno key\n"
                           "trp-conv-choice-v1\tk\tfused\tcut off")  # no newline: still a line
    assert [c.key for c in backends.conv_choices()] == ["k"]
    assert ops._stored_conv_choice("old") is None


def test_store_refuses_fields_that_would_break_a_line(no_file):
    with pytest.raises(ValueError, match="tabs or newlines"):
        ops._store_conv_choice("a\tb", "dense", "")


def test_file_setting(monkeypatch, tmp_path):
    monkeypatch.setenv(backends.CONV_CHOICES_ENV, "off")
    assert backends.conv_choice_file_setting() is None
    monkeypatch.setenv(backends.CONV_CHOICES_ENV, str(tmp_path / "c.tsv"))
    assert backends.conv_choice_file_setting() == str(tmp_path / "c.tsv")
    monkeypatch.delenv(backends.CONV_CHOICES_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    default = backends.conv_choice_file_setting()
    assert default.startswith(str(tmp_path / "trp_kernels" / "conv-choices-"))
    assert default.endswith(".tsv") and default == backends.default_conv_choice_file()
    try:
        backends.apply_conv_choice_file()
        assert ops.conv_choice_file() == default
    finally:
        backends.set_conv_choice_file(None)


# -- the choice, on CUDA -------------------------------------------------------------------------

@pytest.mark.parametrize("device", cuda_only())
def test_measures_once_in_rounds_behind_holds(device, no_file):
    x, w1, w2, b = problem(device)
    run = lambda: tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "channel")  # noqa: E731
    with backends.forced(conv="auto"):
        y, first = holds(device, run)
        _, second = holds(device, run)
    assert first == ROUNDS and second == 0
    (choice,) = backends.conv_choices()
    assert choice.origin == "measured" and choice.impl in ("two_convs", "dense")
    assert not choice.backward
    assert choice.key.startswith(torch.cuda.get_device_name() if device == "cuda"
                                 else "Emulated NVIDIA H200")
    assert f"rounds={ROUNDS} short_holds=" in choice.details
    for impl in ("two_convs", "dense"):   # fused is no candidate until validated
        assert f"; {impl} device_ms=" in choice.details
    assert "fused" not in choice.details
    assert torch.equal(y, forced(choice.impl, run))


@pytest.mark.parametrize("device", cuda_only())
def test_choices_outlive_the_process_in_their_file(device, choice_file):
    x, w1, w2, b = problem(device)
    run = lambda: tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "channel")  # noqa: E731
    with backends.forced(conv="auto"):
        _, measured = holds(device, run)
        (choice,) = backends.conv_choices()
        lines = choice_file.read_text().splitlines()
        assert measured == ROUNDS and len(lines) == 1
        assert lines[0].split("\t")[1:3] == [choice.key, choice.impl]
        # a process that starts now: its memory empty, the file read instead of measuring
        backends.clear_conv_choices()
        _, again = holds(device, run)
        assert again == 0 and backends.conv_choices()[0].origin == "file"
        # the file is obeyed: the other implementation, written in as if measured
        other = "dense" if choice.impl == "two_convs" else "two_convs"
        choice_file.write_text(lines[0].replace(f"\t{choice.impl}\t", f"\t{other}\t") + "\n")
        backends.clear_conv_choices()
        assert torch.equal(run(), forced(other, run))
        # ... unless it names what may not run here: fused, not validated, is measured away
        choice_file.write_text(lines[0].replace(f"\t{choice.impl}\t", "\tfused\t") + "\n")
        backends.clear_conv_choices()
        _, fused = fused_conv_launches(device, run)
        assert fused == 0 and backends.conv_choices()[0].origin == "measured"
        # cleared with the file: measured anew
        backends.clear_conv_choices(remove_file=True)
        _, anew = holds(device, run)
    assert anew == ROUNDS and len(choice_file.read_text().splitlines()) == 1
    assert not ops.fused_conv_in_auto()


@pytest.mark.parametrize("device", cuda_only())
def test_the_backward_is_one_problem_whatever_grad_outs_layout(device, no_file):
    # torch.compile may hand the backward a contiguous grad_out where eager hands it the
    # channels_last one: the same choice and the same gradients either way
    x, w1, w2, _ = problem(device, channels_last=True)
    grad = torch.randn(x.shape[0], 6, 7, 6, device=device)
    args = ([1, 1], [1, 1], [1, 1], "channel", [True, True, True, False])
    with backends.forced(conv="auto"):
        contiguous = ops.lowrank_conv2d_backward(grad, x, w1, w2, *args)
        channels_last = ops.lowrank_conv2d_backward(
            grad.contiguous(memory_format=torch.channels_last), x, w1, w2, *args)
    (choice,) = backends.conv_choices()
    assert choice.backward
    for a, c in zip(contiguous, channels_last):
        assert torch.equal(a, c)


@pytest.mark.parametrize("device", cuda_only())
def test_eager_and_compiled_calls_make_one_choice(device, no_file):
    x, w1, w2, b = problem(device, channels_last=True, requires_grad=True)
    inputs = (x, w1, w2, b)

    def f(*a):
        return tk.lowrank_conv2d(*a, 1, 1, 1, "channel")

    with backends.forced(conv="auto"):
        y = f(*inputs)
        grad_y = torch.randn_like(y)
        eager = torch.autograd.grad(y, inputs, grad_y)
        made = backends.conv_choices()
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        yc = compiled(*inputs)
        grads = torch.autograd.grad(yc, inputs, grad_y)
    assert len(made) == 2 and backends.conv_choices() == made   # forward, backward: no more
    assert torch.equal(yc, y)
    for a, c in zip(grads, eager):
        assert torch.equal(a, c)


@pytest.mark.parametrize("device", cuda_only())
def test_fused_is_a_candidate_once_validated(device, no_file):
    x, w1, w2, b = problem(device, dtype=torch.bfloat16)
    run = lambda: tk.lowrank_conv2d(x, w1, w2, b, 1, 1, 1, "channel")  # noqa: E731
    before = ops.fused_conv_in_auto()
    ops.set_fused_conv_in_auto(True)
    try:
        with backends.forced(conv="auto"):
            y, fused = fused_conv_launches(device, run)
    finally:
        ops.set_fused_conv_in_auto(before)
    (choice,) = backends.conv_choices()
    assert "; fused device_ms=" in choice.details and "launches=2" in choice.details
    assert fused == ROUNDS + 1 + (choice.impl == "fused")   # warm-up, rounds, the call itself
    assert relative_error(y, forced("two_convs", run)) < 1e-2
