"""The report files of a run: a tucker2 decomposition's rank pairs in the text report, the
markdown table and the plot; the decomposition's fidelity in them."""

import copy
import warnings

import torch
from torch import nn

import trp_kernels as tk
from trp_kernels.compression.fidelity import FidelityWarning
from trp_kernels.training.report import markdown, model_figures, plot


def test_decompose_model_report_and_plot(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                          nn.ReLU(), nn.Conv2d(8, 8, 3))
    x = torch.randn(2, 3, 12, 12)
    reference = model(x)
    report = tk.decompose_model(model, "tucker2", example_input=x, skip=())
    torch.testing.assert_close(model(x), reference, rtol=1e-4, atol=1e-5)
    assert [l.rank for l in report.layers] == [(3, 8), (8, 8), (8, 8)]
    assert "3,8/3,8" in str(report) and report.flops_speedup is not None
    rows = [{"name": l.name, "weight_shape": list(l.weight_shape), "rank": list(l.rank),
             "full_rank": list(l.full_rank), "macs": l.macs_after, "dense_macs": l.macs_before,
             "params": l.params_after, "dense_params": l.params_before} for l in report.layers]
    summary = {"method": "decomp", "scheme": "tucker2", "test_accuracy": 0.5,
               "dense_test_accuracy": 0.6, "conv_macs": report.conv_macs_after,
               "dense_conv_macs": report.conv_macs_before, "params": 1, "dense_params": 2,
               "latency_batch": 2, "device": "cpu", "latency_ms": 1.0, "dense_latency_ms": 1.0,
               "flops_speedup": report.flops_speedup, "layers": rows}
    assert "| 3,8 / 3,8 |" in markdown(summary)
    plot(summary, str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 0


def test_fidelity_and_energy_in_the_report_files(tmp_path):
    """The decomposition's energy kept per layer, its output error and top-1 agreement against
    the dense model, and its warning reach report.md and report.png."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    dense = copy.deepcopy(model)
    x = torch.randn(32, 3, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FidelityWarning)
        decomposition = tk.decompose_model(model, "channel", rank=1, skip=(),
                                           calibration_input=x)
    figures = model_figures(model, dense, {"0", "2"}, "channel", x[:1], x[:2],
                            decomposition=decomposition)
    assert figures["top1_agreement"] == decomposition.top1_agreement < 0.9
    assert figures["fidelity_samples"] == 32 and figures["output_error"] > 0
    assert [row["energy_kept"] for row in figures["layers"]] == \
        [l.energy_kept for l in decomposition.layers]
    summary = {"method": "compress", "scheme": "channel", "title": "compress / channel: mine",
               "test_accuracy": None, "dense_test_accuracy": None, "device": "cpu", **figures}
    text = markdown(summary)
    assert text.startswith("# compress / channel: mine\n") and "test accuracy" not in text
    assert f"top-1 agreement {100 * decomposition.top1_agreement:.2f}%" in text
    assert "**Warning**: the compressed model picks" in text
    energy = decomposition.layers[1].energy_kept
    assert f"| 1 / 16 | {100 * energy:.2f}% |" in text
    plot(summary, str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 0
