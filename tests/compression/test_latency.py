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
    never_decomposed = ()     # every conv takes part, the first too

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 3, padding=1)
        self.c = nn.Conv2d(32, 32, 3, stride=2, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class FakeMeter(LatencyMeter):
    """Time = conv MACs (1 ns each), plus ``slow[tag]`` seconds for a factorised layer of that
    tag wherever it runs, plus ``alone[tag]`` seconds for it timed alone (an isolated timing
    that misleads), plus ``overhead`` per factorised layer inside a whole model; the median
    round is ``spread`` times the best."""

    def __init__(self, slow=(), alone=(), overhead=0.0, spread=1.0):
        super().__init__("torch")
        self.slow, self.alone, self.overhead, self.spread = dict(slow), dict(alone), overhead, \
            spread
        self.calls = 0

    def seconds(self, modules, x):
        self.calls += 1
        out = []
        for module in modules:
            layers = [m for m in module.modules() if isinstance(m, tk.LowRankConv2d)]
            t = 1e-9 * costs.conv_macs(module, x) + sum(self.slow.get(l.tag, 0.0) for l in layers)
            if isinstance(module, tk.LowRankConv2d):
                t += self.alone.get(module.tag, 0.0)
            else:
                t += self.overhead * len(layers)
            out.append(Timing(t, self.spread * t))
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
    assert report.measure == "torch" and report.plan == "measured"
    assert set(report.plan_latencies) == {"measured", "unmeasured", "dense"}
    assert report.latency_after == min(report.plan_latencies.values()) < report.latency_before
    assert report.plan_latencies["dense"] == report.latency_before
    assert report.latency_speedup == pytest.approx(report.latency_before / report.latency_after)
    assert report.to_dict()["plan"] == "measured" and "kept the measured plan" in str(report)


def test_layers_faster_alone_but_slower_together_give_back_the_dense_model(tagged):
    """Each factorised layer beats its conv alone, but the whole factorised model loses to the
    dense one (an overhead per layer inside it): the dense model is kept."""
    torch.manual_seed(0)
    model, x = tagged(), torch.randn(2, 16, 8, 8)
    original = copy.deepcopy(model)
    report = tk.decompose_model(model, "channel", rank=4, example_input=x,
                                measure=FakeMeter(overhead=1.0))
    assert report.plan == "dense" and all(l.kept_dense for l in report.layers)
    assert all(l.latency_factorised < l.latency_dense for l in report.layers)
    assert report.latency_after == report.latency_before
    torch.testing.assert_close(model(x), original(x))


def test_the_plan_without_measuring_wins_when_layers_timed_alone_mislead(tagged):
    """A layer that looks slow only when timed alone (an isolated timing, not its cost in the
    model) is left out of the measured plan; the whole-model comparison keeps it: the model
    returned is never slower than the unmeasured plan (a budget measured must not lose to the
    same budget unmeasured)."""
    torch.manual_seed(0)
    model, x = tagged(), torch.randn(2, 16, 8, 8)
    report = tk.decompose_model(model, "channel", rank=4, example_input=x,
                                measure=FakeMeter(alone={"b": 1.0}))
    assert report.layers[1].latency_factorised > report.layers[1].latency_dense
    assert report.plan == "unmeasured" and not any(l.kept_dense for l in report.layers)
    assert report.plan_latencies["unmeasured"] < report.plan_latencies["measured"]
    assert isinstance(model.b, tk.LowRankConv2d)


def test_contended_timings_warn(tagged):
    model, x = tagged(), torch.randn(2, 16, 8, 8)
    with pytest.warns(UserWarning, match="varied up to 3.0x between rounds"):
        tk.decompose_model(model, "channel", rank=4, example_input=x,
                           measure=FakeMeter(spread=3.0))


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
    assert all(l.kept_dense for l in report.layers) and report.plan == "dense"
    assert all(l.latency_factorised > 3e-3 > l.latency_dense for l in report.layers)
    assert report.plan_latencies["unmeasured"] > 3 * 3e-3 > report.latency_after


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
    assert report.latency_after == min(report.plan_latencies.values())
    expected = tk.decompose_model(original, "spatial", rank=3)   # same ranks, no measuring
    assert [l.rank for l in report.layers] == [l.rank for l in expected.layers]


def test_onnxruntime_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ValueError, match=r"needs onnxruntime, not installed: pip install "
                                         r"\"trp_kernels\[onnx\]\""):
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


def test_a_timing_is_the_best_round_and_the_median_one():
    times = [1.0, 1.1, 0.9, 3.0, 0.95, 1.0, 4.0, 1.02]
    timing = latency._timing(times)
    assert timing.best == 0.9 and timing.median == pytest.approx(1.01)
    assert timing.spread == pytest.approx(1.01 / 0.9)


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
    assert figures["plan"] == "measured" and set(figures["plan_latency_ms"]) == \
        {"dense", "measured", "unmeasured"}
    assert "Measured choice in torch: kept the measured plan (whole models" in text
    # every timing carries its spread: the median round's excess over the best (+0% here)
    assert f"| {rows['a']['flops_speedup']:.2f}x | {rows['a']['latency_speedup']:.2f}x (torch) " \
           f"(+0%) |" in text
    assert rows["a"]["latency_spread"] == 1.0
    assert "Latencies are the best of interleaved rounds" in text


class ScriptedClock:
    """time.perf_counter for the meter: each call to a run advances it by the next duration of
    its script (the run's last duration repeats)."""

    def __init__(self):
        self.now, self.pending = 0.0, 0.0

    def __call__(self):
        self.now += self.pending
        self.pending = 0.0
        return self.now

    def run(self, durations):
        durations = iter(durations)
        last = [None]

        def call():
            last[0] = next(durations, last[0])
            self.pending += last[0]
        return call


@pytest.mark.parametrize("noisy_rounds, rounds_run, steady", [
    (0, 3, True),       # steady at once: no repeat
    (3, 6, True),       # three noisy rounds, then steady ones: one repeat
    (100, 9, False),    # never steady: stops at max_rounds and says so
])
def test_the_meter_repeats_rounds_until_steady(monkeypatch, noisy_rounds, rounds_run, steady):
    clock = ScriptedClock()
    monkeypatch.setattr(latency.time, "perf_counter", clock)
    meter = LatencyMeter("torch", rounds=3, warmup=1, min_round_s=0, max_rounds=9)
    # per run: warm-up, the call that sizes a round, then the rounds; two noisy rounds in three
    # take twice the best
    noisy = [1.0 if i % 3 == 2 else 2.0 for i in range(noisy_rounds)]
    runs = [clock.run([1.0, 1.0] + noisy + [1.0] * 20),
            clock.run([0.5, 0.5] + [0.5 * t for t in noisy] + [0.5] * 20)]
    dense, other = meter.time_runs(runs, torch.zeros(1))
    assert dense.rounds == other.rounds == rounds_run
    assert dense.steady == other.steady == steady
    assert dense.best == 1.0 and other.best == 0.5
    assert latency.timing_warning(dense.spread) is None if steady else \
        "the timings were not steady" in latency.timing_warning(dense.spread)


def test_a_measured_choice_says_whether_its_timings_got_steady(tagged):
    model, x = tagged(), torch.randn(2, 16, 8, 8)
    report = tk.decompose_model(model, "channel", rank=4, example_input=x,
                                measure=FakeMeter(spread=1.5))
    assert report.timing_spread == pytest.approx(1.5) and report.timing_steady is False
    assert "the timings were not steady: the median round was up to 50% slower" in \
        report.timing_warning and report.to_dict()["timing_warning"] == report.timing_warning
    assert f"warning: {report.timing_warning}" in str(report)
    steady = tk.decompose_model(tagged(), "channel", rank=4, example_input=x,
                                measure=FakeMeter())
    assert steady.timing_steady and steady.timing_warning is None
