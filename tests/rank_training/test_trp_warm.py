"""TRPRegularizer's warm start (``warm_start=True``, the default; docs/design.md, "Public API";
docs/svd_paths.md, "Warm start"): in every scheme the same ranks as cold starts and the same
weights to float32 tolerance over real training steps, the bases in ``state_dict()`` so that a
resumed run is bit-identical to the uninterrupted one, and a layer whose weight changes shape,
dtype or device losing its basis."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from scheme_cases import every_scheme
from small_models import small_resnet
from trp_kernels.rank_training.projections import layer_bases
from trp_kernels.rank_training.trp import TRPRegularizer


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)


def train(model, trp, optimizer, steps, seed=0):
    x, y = batch(seed)
    for _ in range(steps):
        trp.before_forward()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        trp.after_backward()
        optimizer.step()


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


@every_scheme
def test_warm_start_is_the_default_and_keeps_the_cold_ranks_and_weights(case):
    """Each step both regularizers project the same weights (the cold run's), with nuclear
    sub-gradients; the warm one starts every SVD from its previous bases."""
    torch.manual_seed(0)
    model = case.adapt(small_resnet("cpu"))
    twin = copy.deepcopy(model)
    cold = TRPRegularizer(model, case.name, energy=0.8, warm_start=False)
    warm = TRPRegularizer(twin, case.name, energy=0.8)
    assert warm.warm_start and not cold.warm_start
    optimizer = sgd(model)
    x, y = batch()
    for step in range(6):
        with torch.no_grad():
            for p, q in zip(model.parameters(), twin.parameters()):
                q.copy_(p)
        cold.before_forward()
        warm.before_forward()
        assert warm.ranks() == cold.ranks(), step
        for (name, a), (_, b) in zip(cold.layers, warm.layers):
            scale = a.weight.double().norm()
            assert (a.weight.double() - b.weight.double()).norm() <= 1e-5 * scale, (step, name)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        cold.after_backward()
        warm.after_backward()
        for (name, a), (_, b) in zip(cold.layers, warm.layers):
            scale = a.weight.grad.double().norm()
            assert (a.weight.grad.double() - b.weight.grad.double()).norm() <= 1e-5 * scale, name
        optimizer.step()
    bases = warm.state_dict()["bases"]
    views = 2 if case.name == "tucker2" else 1
    assert len(bases) == views * len(warm.layers)
    assert all(b.dtype == torch.float64 for b in bases.values())
    assert "bases" not in cold.state_dict()


def save_and_load(*objects):
    buffer = io.BytesIO()
    torch.save([o.state_dict() for o in objects], buffer)
    buffer.seek(0)
    return torch.load(buffer)


@every_scheme
def test_a_resumed_run_is_bit_identical(case):
    """Six steps in one go, and three steps, a checkpoint of model, optimizer and regularizer,
    three more steps from it in fresh objects: the same bits."""
    torch.manual_seed(0)
    start = case.adapt(small_resnet("cpu"))
    straight = copy.deepcopy(start)
    trp = TRPRegularizer(straight, case.name, energy=0.8)
    train(straight, trp, sgd(straight), 6)

    first = copy.deepcopy(start)
    trp_first, opt_first = TRPRegularizer(first, case.name, energy=0.8), sgd(first)
    train(first, trp_first, opt_first, 3)
    model_state, opt_state, trp_state = save_and_load(first, opt_first, trp_first)
    resumed = case.adapt(small_resnet("cpu"))
    resumed.load_state_dict(model_state)
    trp_resumed, opt_resumed = TRPRegularizer(resumed, case.name, energy=0.8), sgd(resumed)
    opt_resumed.load_state_dict(opt_state)
    trp_resumed.load_state_dict(trp_state)
    restored = layer_bases(trp_resumed._projection)
    saved = layer_bases(trp_first._projection)
    assert restored.keys() == saved.keys() and restored
    assert all(torch.equal(restored[key], saved[key]) for key in saved)
    train(resumed, trp_resumed, opt_resumed, 3)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name


def test_a_layer_that_changes_loses_its_basis():
    model = small_resnet("cpu")
    trp = TRPRegularizer(model, "channel")
    trp.project()
    before = layer_bases(trp._projection)
    assert len(before) == len(trp.layers)
    # One layer gets a weight of another shape: that layer's basis goes, the others' stay.
    name, conv = trp.layers[3]
    conv.weight = torch.nn.Parameter(torch.randn(conv.weight.shape[0] // 2,
                                                 *conv.weight.shape[1:]))
    trp._current_projection()
    after = layer_bases(trp._projection)
    assert set(after) == set(before) - {(3, "")}
    assert all(torch.equal(after[key], before[key]) for key in after)
    # A new dtype: every basis goes, and the next projection brings new ones.
    model.double()
    conv.weight = torch.nn.Parameter(conv.weight.double())
    trp._current_projection()
    assert layer_bases(trp._projection) == {}
    trp.project()
    assert len(layer_bases(trp._projection)) == len(trp.layers)


def test_bases_that_do_not_fit_are_left_out_on_load():
    """A state from an older version (no bases), or with a basis of another shape, loads: those
    layers start cold."""
    model = small_resnet("cpu")
    trp = TRPRegularizer(model, "channel")
    trp.project()
    state = trp.state_dict()
    other = TRPRegularizer(model, "channel")
    other.load_state_dict({"step": 4})
    assert other.step == 4 and layer_bases(other._projection) == {}
    first = trp.layers[0][0]
    state["bases"][first] = torch.eye(3, dtype=torch.float64)
    other.load_state_dict(state)
    assert len(layer_bases(other._projection)) == len(trp.layers) - 1
    with pytest.raises(TypeError, match="bases"):
        other.load_state_dict({"step": 1, "bases": [1, 2]})


def test_warm_start_must_be_a_bool():
    with pytest.raises(TypeError, match="warm_start"):
        TRPRegularizer(small_resnet("cpu"), warm_start=1)
