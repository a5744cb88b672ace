"""Compression judged on real data, end to end: a dense ResNet-20 trained on digits, compressed
to 3x with --data digits and fine-tuned for 2 epochs, keeps its held-out top-1 within 1 point;
and the committed runs of scripts/compress_digits.py (docs/results/compress_digits/), which the
README and docs/compression.md quote, say what those documents say."""

import json
import os
import statistics

import pytest
from cli_runs import report, train

from trp_kernels.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = os.path.join(ROOT, "docs", "results", "compress_digits")
SEEDS = range(5)


@pytest.mark.slow
def test_a_baseline_compressed_to_3x_and_fine_tuned_keeps_its_top1(tmp_path):
    # 8 epochs instead of the trainer's 15 keep this under half a minute on one thread.
    assert train(tmp_path / "dense", "--method", "baseline", "--epochs", "8") == 0
    out = tmp_path / "compressed"
    assert main(["compress", "--model", str(tmp_path / "dense" / "model.pt"), "--data",
                 "digits", "--target-speedup", "3", "--finetune-epochs", "2", "--threads", "1",
                 "--no-progress", "--out", str(out)]) == 0
    r = report(out)
    acc = r["accuracy"]
    assert r["flops_speedup"] >= 3
    assert acc["finetuned"] >= acc["dense"] - 0.01, acc
    assert acc["compressed"] > r["unadapted_accuracy"], acc   # the BatchNorm adaptation


def committed(select):
    runs = []
    for seed in SEEDS:
        with open(os.path.join(RUNS, f"{select}-seed{seed}", "report.json")) as f:
            runs.append(json.load(f))
    return runs


def test_the_committed_runs_are_the_scripts_commands():
    for select in ("energy", "accuracy"):
        for seed, r in zip(SEEDS, committed(select)):
            config = r["config"]
            assert (config["data"], config["target_speedup"], config["finetune_epochs"],
                    config["select"], config["seed"]) == ("digits", 3.0, 2, select, seed)


def test_fine_tuned_within_one_point_of_dense_and_accuracy_at_least_as_good_before_it():
    energy, accuracy = committed("energy"), committed("accuracy")
    for r in energy:
        assert r["accuracy"]["finetuned"] >= r["accuracy"]["dense"] - 0.01
    # the selection by accuracy: at no more FLOPs, at least as accurate before fine-tuning
    for e, a in zip(energy, accuracy):
        assert a["conv_macs"] <= e["conv_macs"]
        assert a["accuracy"]["compressed"] >= e["accuracy"]["compressed"]


def test_the_documents_quote_the_committed_runs():
    with open(os.path.join(RUNS, "energy-seed0", "output.txt")) as f:
        output = f.read().strip()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert output in readme
    with open(os.path.join(ROOT, "docs", "results", "compress_digits.md")) as f:
        table = f.read().split("\n", 2)[2]
    with open(os.path.join(ROOT, "docs", "compression.md")) as f:
        assert table in f.read()
    finetuned = [100 * r["accuracy"]["finetuned"] for r in committed("energy")]
    assert f"{statistics.mean(finetuned):.2f} ± {statistics.stdev(finetuned):.2f}%" in readme
