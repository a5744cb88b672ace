"""FLOP budgets (target_speedup), aligned ranks (rank_multiple) and the dense fallback."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import trp_kernels as tk
from single_thread import one_cpu_thread  # noqa: F401  (autouse: one CPU thread per test)
from trp_kernels.compression import budget
from trp_kernels.schemes import costs
from trp_kernels.compression import decomposable_layers
from trp_kernels.schemes.factorization import full_rank, weight_to_matrix


class TinyNet(nn.Module):
    """Three decomposable convs with small full ranks, a 1x1 conv that always stays dense."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.b = nn.Conv2d(5, 6, 3, stride=2, padding=1)
        self.c = nn.Conv2d(6, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.c(torch.relu(self.b(torch.relu(self.a(x))))))


def reference_options(model, x, scheme, multiple):
    """Per layer: [(rank or None, MACs, kept energy)], from the flops counter and float64 SVDs,
    without the budget module: every rank that is a multiple (or the full rank), and dense."""
    hw = {c.name: c.input_hw for c in costs.conv_costs(model, x)}
    out = {}
    for name, conv in decomposable_layers(model, skip=()):
        s = torch.linalg.svdvals(weight_to_matrix(conv.weight.detach().double(), scheme))
        kept = torch.cumsum(s * s, 0) / (s * s).sum()
        dense = costs.conv2d_macs(conv, hw[name])[0]
        k = full_rank(conv.weight.shape, scheme)
        options = [(None, dense, 1.0)]
        for r in range(1, k + 1):
            if r % multiple and r != k:
                continue
            layer = tk.LowRankConv2d(conv.in_channels, conv.out_channels, 3, r,
                                     stride=conv.stride, padding=conv.padding, scheme=scheme)
            macs = costs.lowrank_macs(layer, hw[name])[0]
            if macs < dense:
                options.append((r, macs, float(kept[r - 1])))
        out[name] = options
    return out


def head_macs(model, x):
    return next(c.macs for c in costs.conv_costs(model, x) if c.name == "head")


@pytest.mark.parametrize("scheme, multiple", [("channel", 1), ("spatial", 1), ("channel", 2),
                                              ("spatial", 4)])
@pytest.mark.parametrize("target", [1.3, 1.7, 2.0])
def test_budget_is_the_leximin_optimum_by_brute_force(scheme, multiple, target):
    torch.manual_seed(1)
    model, x = TinyNet().eval(), torch.randn(1, 3, 8, 8)
    options = reference_options(model, x, scheme, multiple)
    fixed = head_macs(model, x)
    dense_total = fixed + sum(o[0][1] for o in options.values())
    feasible = []
    for combo in itertools.product(*options.values()):
        total = fixed + sum(macs for _, macs, _ in combo)
        if dense_total / total >= target:
            feasible.append((sorted(e for _, _, e in combo), combo))
    if not feasible:      # brute force agrees that the target is out of reach
        with pytest.raises(ValueError, match="cannot be reached"):
            tk.decompose_model(copy.deepcopy(model), scheme, example_input=x,
                               target_speedup=target, rank_multiple=multiple)
        return
    best = max(feasible)[0]

    report = tk.decompose_model(copy.deepcopy(model), scheme, example_input=x,
                                target_speedup=target, rank_multiple=multiple)
    assert report.flops_speedup >= target
    chosen = {l.name: (None if l.kept_dense else l.rank) for l in report.layers}
    energy = {n: next(e for r, _, e in options[n] if r == chosen[n]) for n in options}
    assert sorted(energy.values()) == pytest.approx(best, abs=1e-9)
    # as close as the steps allow: no layer's next richer option still fits the budget
    total = report.conv_macs_after
    for name, opts in options.items():
        current = next(o for o in opts if o[0] == chosen[name])
        for r, macs, e in opts:
            if e > current[2] and macs > current[1]:
                assert dense_total / (total - current[1] + macs) < target, (name, r)


def test_energy_level_alone_meets_the_budget():
    torch.manual_seed(2)
    model, x = TinyNet().eval(), torch.randn(1, 3, 8, 8)
    layers = decomposable_layers(model, skip=())
    level = budget.energy_for_budget(model, layers, "channel", x, 1.5, rank_multiple=2)
    assert 0 < level <= 1
    report = tk.decompose_model(copy.deepcopy(model), "channel", energy=level, rank_multiple=2,
                                example_input=x)
    assert report.flops_speedup >= 1.5


def test_unreachable_target_names_the_largest_speedup():
    torch.manual_seed(0)
    model, x = TinyNet().eval(), torch.randn(1, 3, 8, 8)
    options = reference_options(model, x, "channel", 1)
    fixed = head_macs(model, x)
    dense_total = fixed + sum(o[0][1] for o in options.values())
    cheapest = fixed + sum(min(m for _, m, _ in o) for o in options.values())
    with pytest.raises(ValueError, match="largest reachable conv FLOP speed-up is "
                       f"{dense_total / cheapest:.4g}x"):
        tk.decompose_model(model, "channel", example_input=x, target_speedup=50)
    assert type(model.a) is nn.Conv2d          # nothing was replaced


def test_rank_multiple_rounds_up_and_caps_at_full_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 24, 3, padding=1))
    plain = tk.decompose_model(copy.deepcopy(model), energy=0.6)
    rounded = tk.decompose_model(copy.deepcopy(model), energy=0.6, rank_multiple=8)
    for p, r in zip(plain.layers, rounded.layers):
        assert r.rank == min(-(-p.rank // 8) * 8, r.full_rank) and r.rank % 8 == 0
    capped = tk.decompose_model(copy.deepcopy(model), energy=0.6, rank_multiple=1000)
    assert [l.rank for l in capped.layers] == [l.full_rank for l in capped.layers]
    assert all(l.kept_dense for l in capped.layers)   # full rank is never cheaper here


def test_layers_not_cheaper_stay_plain_convs():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(2, 3, 8, 8)
    original = copy.deepcopy(model)
    report = tk.decompose_model(model, "spatial", example_input=x)     # full rank everywhere
    assert all(l.kept_dense and l.macs_after == l.macs_before for l in report.layers)
    assert all(type(m) is nn.Conv2d for m in (model.a, model.b, model.c))
    torch.testing.assert_close(model(x), original(x))
    assert report.flops_speedup == 1 and report.to_dict()["layers"][0]["kept_dense"]
    # the same rank is cheaper for one layer and not for another: judged per layer
    hw = {c.name: c.input_hw for c in costs.conv_costs(original, x)}
    report = tk.decompose_model(copy.deepcopy(original), "channel", rank=4, example_input=x)
    assert sorted(l.kept_dense for l in report.layers) == [False, False, True]
    for l in report.layers:
        conv = original.get_submodule(l.name)
        assert l.kept_dense == (l.macs_before <= costs.factorised_macs(conv, "channel", 4,
                                                                        hw[l.name]))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"target_speedup": 1.0}, ValueError, "target_speedup must be a finite number > 1"),
    ({"target_speedup": float("nan")}, ValueError, "target_speedup"),
    ({"target_speedup": "2"}, ValueError, "target_speedup"),
    ({"target_speedup": 2, "energy": 0.9}, ValueError, "without energy, threshold and rank"),
    ({"target_speedup": 2, "rank": 3}, ValueError, "without energy, threshold and rank"),
    ({"rank_multiple": 0}, ValueError, "rank_multiple must be an int >= 1"),
    ({"rank_multiple": 2.0}, ValueError, "rank_multiple"),
    ({"rank_multiple": True}, ValueError, "rank_multiple"),
])
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        tk.decompose_model(TinyNet(), example_input=torch.randn(1, 3, 8, 8), **kwargs)


def test_target_speedup_needs_an_example_input():
    with pytest.raises(ValueError, match="example_input is required"):
        tk.decompose_model(TinyNet(), target_speedup=2)


# -- the budget for training from scratch (make_lowrank) and TRP's decomposition -------------

def common_fraction_speedup(model, x, scheme, fraction, multiple):
    """Conv FLOP speed-up of ``model`` decomposed at one rank fraction (decompose_model's own
    rank= path, the dense fallback included)."""
    return tk.decompose_model(copy.deepcopy(model), scheme, rank=fraction, example_input=x,
                              rank_multiple=multiple, skip=()).flops_speedup


@pytest.mark.parametrize("scheme, multiple, target", [("channel", 1, 1.5), ("channel", 2, 2.0),
                                                       ("spatial", 1, 2.5)])
def test_make_lowrank_budget_is_the_largest_common_fraction(scheme, multiple, target):
    torch.manual_seed(0)
    model, x = TinyNet(), torch.randn(1, 3, 8, 8)
    fresh = copy.deepcopy(model)
    report = tk.make_lowrank(model, scheme, rank=None, skip=(), example_input=x,
                             target_speedup=target, rank_multiple=multiple)
    assert report.flops_speedup >= target
    # brute force: every fraction r/k at which a layer's rank changes; the speed-up of the
    # largest one that meets the target is the one chosen, and any larger fraction misses it
    fulls = [full_rank(conv.weight.shape, scheme) for _, conv in decomposable_layers(fresh, ())]
    fractions = sorted({r / k for k in fulls for r in range(1, k + 1)})
    speedups = [common_fraction_speedup(fresh, x, scheme, f, multiple) for f in fractions]
    best = max(i for i, s in enumerate(speedups) if s >= target)
    assert report.flops_speedup == speedups[best]
    assert all(s < target for s in speedups[best + 1:])
    for entry in report.layers:
        assert entry.kept_dense or entry.rank % multiple == 0 or entry.rank == entry.full_rank


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 0.5, "target_speedup": 2}, "target_speedup chooses the ranks itself"),
    ({"rank": None, "target_speedup": 2, "example_input": None}, "example_input is required"),
    ({"rank": None, "target_speedup": 1.0}, "target_speedup must be"),
    ({"rank": None, "target_speedup": 2, "rank_multiple": 0}, "rank_multiple must be"),
    ({"rank": None, "target_speedup": 500}, "largest reachable conv FLOP speed-up"),
    ({"rank": None}, "rank is required"),
])
def test_make_lowrank_bad_budget_options(kwargs, match):
    kwargs = {"example_input": torch.randn(1, 3, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=match):
        tk.make_lowrank(TinyNet(), "channel", skip=(), **kwargs)


def test_make_lowrank_budget_is_for_channel_and_spatial():
    with pytest.raises(ValueError, match="not supported for scheme 'tucker2'"):
        tk.make_lowrank(TinyNet(), "tucker2", rank=None, skip=(), target_speedup=2,
                        example_input=torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("options", [{"target_speedup": 2.0, "rank_multiple": 2},
                                     {"energy": 0.8, "rank_multiple": 3}])
def test_trp_decompose_passes_the_budget_options_through(options):
    torch.manual_seed(1)
    model, x = TinyNet(), torch.randn(1, 3, 8, 8)
    reference = copy.deepcopy(model)
    trp = tk.TRPRegularizer(model, "channel", skip=())
    got = trp.decompose(example_input=x, **options)
    want = tk.decompose_model(reference, "channel", example_input=x, skip=(), **options)
    assert got.to_dict() == want.to_dict()
    if "target_speedup" in options:
        assert got.flops_speedup >= options["target_speedup"]
    torch.testing.assert_close(model(x), reference(x))
    with pytest.raises(ValueError, match="target_speedup must be"):
        tk.TRPRegularizer(TinyNet(), "channel", skip=()).decompose(target_speedup=0.5,
                                                                    example_input=x)
