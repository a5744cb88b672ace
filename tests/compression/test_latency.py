"""measure=: the per-layer dense-or-factorised choice and the whole-model check. The mechanism
is tested with fake clocks and with a layer made slower, not with the machine's speed."""

from __future__ import annotations

import copy
import sys
import time

import pytest
import torch
from torch import nn

import trp_kernels as tk
from single_thread import one_cpu_thread  # noqa: F401  (autouse: one CPU thread per test)
from trp_kernels.compression import latency
from trp_kernels.schemes import costs
from trp_kernels.compression.latency import LatencyMeter, Timing


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.c = nn.Conv2d(32, 32, 3, stride=2, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class FakeMeter(LatencyMeter):
    """Time = conv MACs (1 ns each), plus ``slow[name]`` seconds for a factorised layer named
    ``name`` (alone), plus ``overhead`` per factorised layer inside a whole model."""

    def __init__(self, slow=(), overhead=0.0):
        super().__init__("torch")
        self.slow, self.overhead, self.calls = dict(slow), overhead, 0

    def seconds(self, modules, x):
        self.calls += 1
        out = []
        for module in modules:
            t = 1e-9 * costs.conv_macs(module, x)
            if isinstance(module, tk.LowRankConv2d):
                t += self.slow.get(module.tag, 0.0)
            else:
                t += self.overhead * sum(isinstance(m, tk.LowRankConv2d) for m in module.modules())
            out.append(Timing(t, 0.0))
        return out


@pytest.fixture
def tagged(monkeypatch):
    """LowRankConv2d.from_conv / from_convs remember which conv a layer came from, so the fake meter can tell
    layers apart."""
    names = {}
    original = tk.LowRankConv2d.from_conv.__func__

    def from_conv(cls, conv, *args, **kwargs):
        layer = original(cls, conv, *args, **kwargs)
        layer.tag = names.get(id(conv))
        return layer

    monkeypatch.setattr(tk.LowRankConv2d, "from_conv", classmethod(from_conv))
    batched = tk.LowRankConv2d.from_convs.__func__

    def from_convs(cls, convs, *args, **kwargs):
        layers = batched(cls, convs, *args, **kwargs)
        for conv, layer in zip(convs, layers):
            layer.tag = names.get(id(conv))
        return layers

    monkeypatch.setattr(tk.LowRankConv2d, "from_convs", classmethod(from_convs))

    def model():
        net = Net().eval()
        for name, m in net.named_children():
            names[id(m)] = name
        return net
    return model


def test_a_layer_measured_slower_stays_dense(tagged):
    torch.manual_seed(0)
    model, x = tagged(), torch.randn(2, 16, 8, 8)
    report = tk.decompose_model(model, "channel", rank=4, example_input=x,
                                measure=FakeMeter(slow={"b": 1.0}))
    assert [l.kept_dense for l in report.layers] == [False, True, False]
    assert type(model.b) is nn.Conv2d and isinstance(model.a, tk.LowRankConv2d)
    for l in report.layers:
        assert l.latency_dense > 0 and l.latency_factorised > 0
    assert report.layers[1].latency_factorised > report.layers[1].latency_dense
    assert report.measure == "torch"
    assert report.latency_after < report.latency_before
    assert report.latency_speedup == pytest.approx(report.latency_before / report.latency_after)
    assert report.to_dict()["latency_before"] == report.latency_before


def test_a_model_slower_as_a_whole_reverts_the_smallest_gains(tagged):
    torch.manual_seed(0)
    model, x = tagged(), torch.randn(2, 16, 8, 8)
    dense = copy.deepcopy(model)
    meter = FakeMeter(overhead=3e-4)
    gains = {}
    for name, conv in model.named_children():   # what each layer alone gains, by the fake clock
        layer = tk.LowRankConv2d.from_conv(conv, "channel", rank=4)
        inputs = latency.layer_inputs(model, [name], x)
        d, f = meter.seconds([conv, layer], inputs[name])
        gains[name] = d.median - f.median
    assert min(gains.values()) < 3e-4 < max(gains.values())   # the overhead beats some gains
    report = tk.decompose_model(model, "channel", rank=4, example_input=x, measure=meter)
    kept = {l.name for l in report.layers if not l.kept_dense}
    assert kept and kept != set(gains)
    assert all(gains[n] > gains[m] for n in kept for m in set(gains) - kept)
    assert report.latency_after <= report.latency_before
    # the comparison is against the dense model itself
    assert report.latency_before == pytest.approx(meter.seconds([dense], x)[0].median)


def test_every_layer_reverted_gives_back_the_dense_model(tagged):
    torch.manual_seed(0)
    model, x = tagged(), torch.randn(2, 16, 8, 8)
    original = copy.deepcopy(model)
    report = tk.decompose_model(model, "channel", rank=4, example_input=x,
                                measure=FakeMeter(overhead=1.0))
    assert all(l.kept_dense for l in report.layers)
    assert report.latency_after == report.latency_before
    torch.testing.assert_close(model(x), original(x))


def test_real_torch_timer_keeps_a_slowed_layer_dense(monkeypatch):
    """No fake clock: every factorised layer sleeps 3 ms, far more than these convs take."""
    forward = tk.LowRankConv2d.forward

    def slow(self, x):
        time.sleep(3e-3)
        return forward(self, x)

    monkeypatch.setattr(tk.LowRankConv2d, "forward", slow)
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 16, 8, 8)
    report = tk.decompose_model(model, "channel", rank=2, example_input=x,
                                measure=LatencyMeter("torch", rounds=3, warmup=1, min_round_s=0))
    assert all(l.kept_dense for l in report.layers)
    assert all(l.latency_factorised > 3e-3 > l.latency_dense for l in report.layers)
    assert not latency.slower_beyond_noise(Timing(report.latency_after, 0.0),
                                           Timing(report.latency_before * 1.5, 0.0))


def test_onnxruntime_measurement():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 16, 8, 8)
    original = copy.deepcopy(model)
    report = tk.decompose_model(model, "spatial", rank=3, example_input=x,
                                measure=LatencyMeter("onnxruntime", rounds=3, min_round_s=0))
    assert report.measure == "onnxruntime"
    assert report.latency_before > 0 and report.latency_after > 0
    for l in report.layers:
        assert l.latency_dense > 0 and l.latency_factorised > 0
        assert isinstance(model.get_submodule(l.name), tk.LowRankConv2d) == (not l.kept_dense)
        if not l.kept_dense:
            assert l.latency_factorised < l.latency_dense
    expected = tk.decompose_model(original, "spatial", rank=3)   # same ranks, no measuring
    assert [l.rank for l in report.layers] == [l.rank for l in expected.layers]


def test_onnxruntime_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ValueError, match="needs the onnxruntime package"):
        tk.decompose_model(Net(), rank=2, example_input=torch.randn(1, 16, 8, 8),
                           measure="onnxruntime")


@pytest.mark.parametrize("measure, error, match", [
    ("tvm", ValueError, "measure must be one of"),
    (3, TypeError, "measure must be None"),
])
def test_bad_measure(measure, error, match):
    with pytest.raises(error, match=match):
        tk.decompose_model(Net(), rank=2, example_input=torch.randn(1, 16, 8, 8),
                           measure=measure)


def test_measure_needs_an_example_input():
    with pytest.raises(ValueError, match="example_input is required"):
        tk.decompose_model(Net(), rank=2, measure="torch")


def test_noise_rule():
    assert latency.slower_beyond_noise(Timing(1.1, 0.01), Timing(1.0, 0.01))
    assert not latency.slower_beyond_noise(Timing(1.02, 0.01), Timing(1.0, 0.01))
    assert not latency.slower_beyond_noise(Timing(0.9, 0.0), Timing(1.0, 0.0))
    times = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.0, 1.02]
    timing = latency._timing(times)
    assert timing.median == pytest.approx(1.0) and 0 < timing.stderr < 0.1


def test_reports_show_flop_and_latency_speedups_and_dense_layers(tagged):
    from trp_kernels.training import report as reports
    torch.manual_seed(0)
    model, x = tagged(), torch.randn(2, 16, 8, 8)
    dense = copy.deepcopy(model)
    decomposition = tk.decompose_model(model, "channel", rank=4, example_input=x,
                                       measure=FakeMeter(slow={"b": 1.0}))
    figures = reports.model_figures(model, dense, {"a", "b", "c"}, "channel", x[:1], x,
                                    decomposition=decomposition)
    rows = {row["name"]: row for row in figures["layers"]}
    assert [rows[n]["kept_dense"] for n in "abc"] == [False, True, False]
    assert rows["b"]["flops_speedup"] == 1 and rows["a"]["flops_speedup"] > 1
    a = decomposition.layers[0]
    assert rows["a"]["latency_speedup"] == pytest.approx(a.latency_dense / a.latency_factorised)
    assert rows["b"]["latency_speedup"] == 1 and rows["a"]["latency_runtime"] == "torch"
    assert figures["latency_speedup"] == pytest.approx(
        figures["dense_latency_ms"] / figures["latency_ms"])
    text = reports.markdown({"method": "decomp", "scheme": "channel", "test_accuracy": 0.5,
                             "device": "cpu",
                             "dense_test_accuracy": 0.5, **figures})
    assert "| b | 32x32x3x3 | dense |" in text
    assert f"| {rows['a']['flops_speedup']:.2f}x | {rows['a']['latency_speedup']:.2f}x (torch) |" \
        in text
