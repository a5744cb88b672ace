"""The report files of a run: a tucker2 decomposition's rank pairs in the text report, the
markdown table and the plot."""

import torch
from torch import nn

import trp_kernels as tk
from trp_kernels.training.report import markdown, plot


def test_decompose_model_report_and_plot(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                          nn.ReLU(), nn.Conv2d(8, 8, 3))
    x = torch.randn(2, 3, 12, 12)
    reference = model(x)
    report = tk.decompose_model(model, "tucker2", example_input=x)
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
