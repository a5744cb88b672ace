"""``python -m trp_kernels compress`` and ``export --model`` end to end, on a small model of
your own imported by reference (tests/small_models.py), and their one-line errors."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import onnxruntime
import pytest
import torch

import trp_kernels as tk
from cli_runs import refused
from small_models import Classifier, PointwiseClassifier
from trp_kernels.cli import main
from trp_kernels.compression import load_model, lowrank_layers, save_model
from trp_kernels.schemes import LowRankLinear
from trp_kernels.schemes.costs import conv_costs

REFERENCE = ["--model", "small_models:Classifier", "--model-kwargs", '{"width": 12}',
             "--input-shape", "1,8,8", "--no-progress"]
FILES = {"model.pt", "model.onnx", "report.json", "report.md", "report.png"}


def compress(out, *args):
    return main(["compress", "--out", str(out), *args])


def read_report(out):
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def assert_onnx_file_computes(path, model, x):
    """The ONNX file at ``path`` gives ``model``'s outputs on ``x`` in ONNX Runtime."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_compress_a_model_of_your_own(tmp_path, capsys):
    out = tmp_path / "run"
    assert compress(out, *REFERENCE, "--target-speedup", "2", "--rank-multiple", "2") == 0
    assert set(os.listdir(out)) == FILES
    stdout = capsys.readouterr().out
    assert "conv FLOP speed-up" in stdout and "ONNX Runtime" in stdout
    r = read_report(out)
    assert r["flops_speedup"] >= 2 and r["method"] == "compress"
    assert r["onnxruntime_latency_ms"] > 0 and r["dense_onnxruntime_latency_ms"] > 0
    assert 0 <= r["top1_agreement"] <= 1 and r["output_error"] > 0
    assert r["fidelity_samples"] == 32 and r["skipped"] == ["body.0"]
    assert all(0 < l["energy_kept"] <= 1 for l in r["layers"])
    text = (out / "report.md").read_text()
    assert "latency in ONNX Runtime" in text and "energy kept" in text
    # model.pt names its architecture: it loads alone; the ONNX file computes the same
    model = load_model(str(out / "model.pt"))
    assert set(lowrank_layers(model)) == {"body.2", "body.4"}
    x = torch.randn(3, 1, 8, 8)
    assert_onnx_file_computes(out / "model.onnx", model, x)


def test_compress_measured_from_a_model_file_with_weights(tmp_path, capsys):
    """A saved model file (its architecture and input shape recorded), a state_dict loaded on
    top (one layer already low-rank: it stays so), the measured choice with its report."""
    torch.manual_seed(0)
    trained = Classifier(width=12)
    source = str(tmp_path / "dense.pt")
    save_model(trained, source, "small_models:Classifier", {"width": 12}, input_shape=(1, 8, 8))
    tk.decompose_model(trained, "spatial", rank=2, layers=["body.4"])
    weights = str(tmp_path / "weights.pt")
    torch.save(trained.state_dict(), weights)
    out = tmp_path / "measured"
    assert compress(out, "--model", source, "--weights", weights, "--scheme", "spatial",
                    "--energy", "0.9", "--measure", "torch", "--no-progress") == 0
    r = read_report(out)
    assert r["measure"] == "torch" and r["input_shape"] == [1, 8, 8]
    model = load_model(str(out / "model.pt"))
    assert model.body[4].rank == 2 and lowrank_layers(model)["body.4"] == "spatial"


def test_compress_with_pointwise_factorises_the_1x1_convs_and_linear_layers(tmp_path, capsys):
    """--pointwise: the 1x1 convs and the hidden linear layer in scheme pointwise beside the
    3x3 convs in channel, their MACs counted; the stem and the classifier left dense."""
    out = tmp_path / "pointwise"
    assert compress(out, "--model", "small_models:PointwiseClassifier", "--input-shape", "1,8,8",
                    "--no-progress", "--pointwise", "--target-speedup", "2") == 0
    r = read_report(out)
    assert r["flops_speedup"] >= 2 and r["config"]["pointwise"] is True
    assert r["skipped"] == ["body.0", "head"]
    assert {l["name"] for l in r["layers"]} == {"body.2", "body.4", "body.6", "body.10"}
    # the report's MACs count the linear layers too
    x = torch.randn(3, 1, 8, 8)
    convs, with_linear = (sum(c.macs for c in conv_costs(PointwiseClassifier(), x[:1], linear))
                          for linear in (False, True))
    assert r["dense_conv_macs"] == with_linear > convs
    model = load_model(str(out / "model.pt"))
    schemes = lowrank_layers(model)
    assert set(schemes.values()) <= {"channel", "pointwise"} and "pointwise" in schemes.values()
    assert all(schemes[n] == "pointwise" for n in ("body.2", "body.6", "body.10") if n in schemes)
    assert isinstance(model.body[10], LowRankLinear) == ("body.10" in schemes)
    assert_onnx_file_computes(out / "model.onnx", model, x)


def test_a_model_file_without_its_architecture_needs_the_callable(tmp_path, capsys):
    model = Classifier(width=6)
    tk.decompose_model(model, "channel", rank=2, layers=["body.4"])
    bare = str(tmp_path / "bare.pt")
    save_model(model, bare)
    assert compress(tmp_path / "a", "--model", bare, "--energy", "0.5") == 2
    assert (f"--model {bare} names no architecture: give --model package.module:callable (and "
            f"--model-kwargs) and --weights {bare}") in capsys.readouterr().err
    assert compress(tmp_path / "b", "--model", "small_models:Classifier", "--model-kwargs",
                    '{"width": 6}', "--weights", bare, "--input-shape", "1,8,8", "--energy",
                    "0.5", "--no-progress") == 0
    assert load_model(str(tmp_path / "b" / "model.pt")).body[4].rank == 2


def test_compress_without_the_onnx_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    out = tmp_path / "run"
    assert compress(out, *REFERENCE, "--target-speedup", "2") == 2
    err = capsys.readouterr().err
    assert err == ("trp_kernels compress: error: compress (it writes model.onnx and times it "
                   "in ONNX Runtime) needs onnxscript, not installed: "
                   "pip install \"trp_kernels[onnx]\"\n")
    assert not out.exists()


def test_export_without_the_onnx_extra_is_one_line(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "model.pt")
    save_model(Classifier(width=6), path, "small_models:Classifier", {"width": 6}, (1, 8, 8))
    monkeypatch.setitem(sys.modules, "onnx", None)
    onnx = tmp_path / "model.onnx"
    assert main(["export", path, "--onnx", str(onnx)]) == 2
    assert capsys.readouterr().err == ("trp_kernels export: error: --onnx needs onnx, not "
                                       "installed: pip install \"trp_kernels[onnx]\"\n")
    assert not onnx.exists()


BAD = [
    ([*REFERENCE], "give --target-speedup, --energy or --rank"),
    ([*REFERENCE, "--target-speedup", "1"], "--target-speedup must be a finite number > 1"),
    ([*REFERENCE, "--target-speedup", "2", "--energy", "0.5"],
     "--target-speedup chooses the ranks itself; give it without --energy and --rank"),
    ([*REFERENCE, "--energy", "2"], "--energy must be in (0, 1], got 2.0"),
    ([*REFERENCE, "--rank", "0"], "--rank must be >= 1, got 0"),
    ([*REFERENCE, "--rank-multiple", "0", "--rank", "2"], "--rank-multiple must be an int >= 1"),
    ([*REFERENCE, "--target-speedup", "500"], "--target-speedup 500 cannot be reached"),
    ([*REFERENCE, "--scheme", "tucker2", "--pointwise", "--rank", "2,3"],
     "--rank as a pair R_IN,R_OUT is tucker2's; with --pointwise give one value"),
    ([*REFERENCE, "--input-shape", "3,8", "--energy", "0.5"], "--input-shape: must be C,H,W"),
    ([*REFERENCE, "--input-shape", "3,8,8", "--energy", "0.5"],
     "--model cannot run an input of shape [1, 3, 8, 8] (--input-shape)"),
    (["--model", "small_models:Classifier", "--energy", "0.5"], "--input-shape C,H,W is required"),
    (["--model", "no/such/file.pt", "--energy", "0.5"],
     "--model no/such/file.pt does not exist and is not package.module:callable"),
    (["--model", "no_such_package:net", "--input-shape", "1,8,8", "--energy", "0.5"],
     "--model: architecture 'no_such_package:net' cannot be imported"),
    (["--model", "small_models:Classifier", "--model-kwargs", '{"depth": 3}', "--input-shape",
      "1,8,8", "--energy", "0.5"], "--model-kwargs do not fit small_models:Classifier"),
    ([*REFERENCE, "--energy", "0.5", "--calibration", "none.pt"],
     "--calibration none.pt does not exist"),
    ([*REFERENCE, "--energy", "0.5", "--weights", "none.pt"],
     "--weights: weights file none.pt does not exist"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[6:]) or "none" for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    err = refused(capsys, "compress", tmp_path / "out", *args)
    assert message in err, err


def test_an_occupied_out_directory_is_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"mine")
    assert compress(out, *REFERENCE, "--energy", "0.5") == 2
    assert "already holds model.onnx; choose another directory" in capsys.readouterr().err
    assert (out / "model.onnx").read_bytes() == b"mine"


def test_export_a_file_saved_without_its_architecture(tmp_path, capsys):
    model = Classifier(width=6)
    tk.decompose_model(model, "channel", rank=2)
    path = str(tmp_path / "bare.pt")
    save_model(model, path)                     # no architecture, no input shape
    onnx = str(tmp_path / "bare.onnx")
    assert main(["export", path, "--onnx", onnx]) == 2
    assert "names no architecture; give --model package.module:callable" in \
        capsys.readouterr().err
    assert main(["export", path, "--onnx", onnx, "--model", "small_models:Classifier",
                 "--model-kwargs", '{"width": 6}']) == 2
    assert "does not record its input shape; give --input-shape C,H,W" in \
        capsys.readouterr().err
    assert main(["export", path, "--onnx", onnx, "--model", "small_models:Classifier",
                 "--model-kwargs", '{"width": 6}', "--input-shape", "1,8,8"]) == 0
    assert os.path.getsize(onnx) > 0
    assert main(["export", path, "--onnx", str(tmp_path / "x.onnx"), "--model",
                 "small_models:Classifier", "--model-kwargs", '{"size": 6}']) == 2
    assert "--model-kwargs do not fit small_models:Classifier" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.pt"), "--onnx", str(tmp_path / "y.onnx")]) == 2
    assert "none.pt does not exist" in capsys.readouterr().err


# -- on labelled data ---------------------------------------------------------------------------
DIGITS = ["--model", "small_models:Classifier", "--data", "digits", "--no-progress", "--threads",
          "1"]
TIMING_KEYS = ("latency", "spread", "rounds", "time_s")


def without_timings(value):
    """A report with every timing (and where it was written) left out."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items()
                if not any(t in k for t in TIMING_KEYS) and k != "out"}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """compress --data digits --target-speedup 2 --finetune-epochs 2, straight through."""
    out = tmp_path_factory.mktemp("digits") / "run"
    assert compress(out, *DIGITS, "--target-speedup", "2", "--finetune-epochs", "2") == 0
    return out


def test_compress_on_digits_reports_dense_compressed_and_finetuned_top1(finetuned, capsys):
    r = read_report(finetuned)
    acc = r["accuracy"]
    assert set(acc) == {"dense", "compressed", "finetuned"}
    assert all(0 <= v <= 1 for v in acc.values()) and r["test_accuracy"] == acc["finetuned"]
    assert r["eval_samples"] == 360 and r["data"] == {"source": "digits", "held_out": 360,
                                                      "fit": 1437, "classes": 10}
    assert r["fidelity_samples"] == 512 and r["finetune_epochs"] == 2
    assert set(os.listdir(finetuned)) == FILES | {"compressed.pt", "checkpoint.pt"}
    text = (finetuned / "report.md").read_text()
    assert "| top-1 on 360 held-out images |" in text
    assert "| top-1 after fine-tuning (2 epochs) |" in text
    # the held-out top-1 of the files themselves
    model = load_model(str(finetuned / "model.pt"))
    compressed = load_model(str(finetuned / "compressed.pt"))
    from trp_kernels.compression import accuracy
    from trp_kernels.training import load_dataset
    data = load_dataset("digits")
    held_out = (data.batch_inputs(data.test_x, "cpu"), data.test_y)
    assert accuracy.measure(model, [held_out]).top1 == acc["finetuned"]
    assert accuracy.measure(compressed, [held_out]).top1 == acc["compressed"]
    assert lowrank_layers(model) == lowrank_layers(compressed)
    tuned, before = model.state_dict(), compressed.state_dict()
    assert not all(torch.equal(tuned[k], before[k]) for k in before)     # it was fine-tuned


def test_a_finetuning_interrupted_resumes_exactly(finetuned, tmp_path, monkeypatch, capsys):
    import trp_kernels.training.loop as training_loop
    real = training_loop.train_batches

    def batches(data, batch_size, epoch, *args, **kwargs):
        for i, b in enumerate(real(data, batch_size, epoch, *args, **kwargs)):
            if (epoch, i) == (1, 3):
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(training_loop, "train_batches", batches)
    out = tmp_path / "run"
    args = [*DIGITS, "--target-speedup", "2", "--finetune-epochs", "2"]
    assert compress(out, *args) == 130
    assert "continue with the same command and --resume" in capsys.readouterr().err
    assert set(os.listdir(out)) == {"compressed.pt", "checkpoint.pt"}
    assert compress(out, *args) == 2
    assert "already holds compressed.pt, checkpoint.pt; continue it with --resume" in \
        capsys.readouterr().err
    assert compress(out, *args, "--lr", "0.1", "--resume") == 2
    assert "the interrupted run was made with other options: --lr" in capsys.readouterr().err
    monkeypatch.undo()
    assert compress(out, *args, "--resume") == 0
    assert without_timings(read_report(out))["accuracy"] == \
        without_timings(read_report(finetuned))["accuracy"]
    resumed = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    straight = torch.load(finetuned / "model.pt", weights_only=True)["state_dict"]
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_two_identical_commands_give_identical_reports_but_for_timings(finetuned, tmp_path):
    again = tmp_path / "again"
    assert compress(again, *DIGITS, "--target-speedup", "2", "--finetune-epochs", "2") == 0
    assert without_timings(read_report(again)) == without_timings(read_report(finetuned))
    first = torch.load(finetuned / "model.pt", weights_only=True)["state_dict"]
    second = torch.load(again / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_seed_draws_the_models_initial_weights(tmp_path):
    weights = []
    for seed in ("0", "0", "1"):
        out = tmp_path / f"seed{seed}-{len(weights)}"
        assert compress(out, *REFERENCE, "--rank", "2", "--seed", seed) == 0
        weights.append(torch.load(out / "model.pt", weights_only=True)["state_dict"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_ranks_by_accuracy_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRP_KERNELS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "accuracy"
    assert compress(out, *DIGITS, "--target-speedup", "2", "--select", "accuracy",
                    "--calibration-samples", "200") == 0
    r = read_report(out)
    assert r["select"] == "accuracy" and r["selection"]["samples"] == 200
    assert r["fidelity_samples"] == 200
    assert r["selection"]["loss"][r["selection"]["kept"]] <= r["selection"]["loss"]["energy"]
    assert all(layer["sensitivity"] for layer in r["layers"])
    assert r["flops_speedup"] >= 2 and r["accuracy"]["finetuned"] is None
    text = (out / "report.md").read_text()
    assert "Ranks chosen by accuracy on 200 calibration images: kept the" in text
    assert "| body.2 | 1: " in text and "| body.4 | 1: " in text


def test_timings_carry_their_spread_and_a_missed_target_is_the_last_line(
        tmp_path, capsys, monkeypatch):
    """Every factorised layer made 3 ms slower: the measured choice keeps the model dense, so
    the 2x target is missed, which report.md and the command's last line say."""
    forward = tk.LowRankConv2d.forward

    def slow(self, x):
        time.sleep(3e-3)
        return forward(self, x)

    monkeypatch.setattr(tk.LowRankConv2d, "forward", slow)
    out = tmp_path / "missed"
    assert compress(out, *REFERENCE, "--target-speedup", "2", "--measure", "torch") == 0
    r = read_report(out)
    assert r["flops_speedup"] < 2 and r["plan"] == "dense"
    assert r["missed_target"].startswith("conv FLOP speed-up 1.00x misses target_speedup 2")
    for key in ("latency", "dense_latency", "onnxruntime_latency", "dense_onnxruntime_latency"):
        assert r[f"{key}_spread"] >= 1
    assert r["plan_rounds"] >= 9 and isinstance(r["plan_steady"], bool)
    text = (out / "report.md").read_text()
    assert f"**Target missed**: {r['missed_target']}." in text
    assert "(target 2x)" in text and text.count("% |") >= 2      # latency rows' spreads
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"trp_kernels compress: warning: {r['missed_target']}"


def test_the_title_names_every_scheme_and_the_skip_list_layer_names(tmp_path):
    out = tmp_path / "pointwise"
    assert compress(out, "--model", "small_models:PointwiseClassifier", "--input-shape",
                    "1,8,8", "--no-progress", "--pointwise", "--target-speedup", "2") == 0
    text = (out / "report.md").read_text()
    assert text.startswith("# compress / channel + pointwise: small_models:PointwiseClassifier")
    assert "Layers left dense by skip (by name): `body.0`, `head`." in text
