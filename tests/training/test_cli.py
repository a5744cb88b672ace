"""The command line end to end, on digits with few, large batches so every run takes seconds."""

import os
import subprocess
import sys

import pytest
import torch
from torch.utils._pytree import tree_flatten
from cli_runs import refused, report, train
from test_data import write_fake_cifar

import trp_kernels.training.loop as training_loop
from trp_kernels.cli import main
from trp_kernels.compression.export import load_model, lowrank_layers
from trp_kernels.training.report import REQUIRED_KEYS



def snapshot(directory):
    """Name -> bytes of every file under ``directory`` (None if it does not exist)."""
    if not os.path.exists(directory):
        return None
    return {name: open(os.path.join(directory, name), "rb").read()
            for name in sorted(os.listdir(directory))}


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """A short run of the main job (TRP+Nu, channel), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("main") / "run"
    assert train(out, "--epochs", "2") == 0
    return out


def test_main_job_writes_model_and_report(main_run):
    out = main_run
    r = report(out)
    assert set(REQUIRED_KEYS) <= set(r)
    assert (r["method"], r["scheme"], r["dataset"], r["model"]) == ("trp", "channel", "digits",
                                                                    "resnet20")
    assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["dense_test_accuracy"] <= 1
    assert r["flops_speedup"] == r["dense_conv_macs"] / r["conv_macs"] > 1
    assert r["params"] < r["dense_params"] == 269_434            # 1 input channel, 10 classes
    assert r["latency_ms"] > 0 and r["dense_latency_ms"] > 0
    assert len(r["layers"]) == 18 and all(l["rank"] < l["full_rank"] for l in r["layers"])
    assert [h["epoch"] for h in r["history"]] == [1, 2]
    for name in ("report.md", "report.png", "checkpoint.pt", "model.pt"):
        assert os.path.getsize(out / name) > 0
    model = load_model(str(out / "model.pt"))
    assert len(lowrank_layers(model)) == 18
    assert {m.rank for m in model.modules() if hasattr(m, "weight1")} == \
        {l["rank"] for l in r["layers"]}


@pytest.mark.parametrize("method, scheme, extra", [
    ("baseline", "channel", ["--epochs", "1"]),
    ("trp", "spatial", ["--epochs", "1", "--nuclear-weight", "0", "--period", "2"]),
    ("decomp", "spatial", ["--epochs", "1", "--finetune-epochs", "1", "--energy", "0.8"]),
    ("lowrank", "channel", ["--epochs", "1", "--rank", "0.25"]),
    ("trp", "tucker2", ["--epochs", "1"]),
    ("trp", "decoupled", ["--epochs", "1", "--final-energy", "0.6"]),
    ("lowrank", "decoupled", ["--epochs", "1", "--rank", "0.25", "--penalty-kind", "dso"]),
    ("trp", "pointwise", ["--epochs", "1", "--model", "mobilenetv2"]),
    ("lowrank", "channel", ["--epochs", "1", "--rank", "0.25", "--model", "mobilenetv2",
                            "--pointwise"]),
])
def test_methods(tmp_path, method, scheme, extra):
    out = tmp_path / method
    assert train(out, "--method", method, "--scheme", scheme, *extra) == 0
    r = report(out)
    assert (r["method"], r["scheme"]) == (method, scheme)
    if method == "baseline":
        assert r["flops_speedup"] == 1 and r["test_accuracy"] == r["dense_test_accuracy"]
    else:
        assert r["flops_speedup"] > 1 and r["params"] < r["dense_params"]
    if method == "lowrank":
        assert r["dense_test_accuracy"] is None
        factorised = [l for l in r["layers"] if not l["kept_dense"]]
        assert [l["rank"] for l in factorised] == [-(-l["full_rank"] // 4) for l in factorised]
        # decoupled's C -> r*N 1x1 conv runs at the input resolution: on the stride-2 conv of the
        # digits ResNet-20 (stage strides 1, 1, 2) it costs more than the conv, which therefore
        # stays dense (decompose_model's fallback)
        dense = {"layer3.0.conv1"} if scheme == "decoupled" else set()
        assert {l["name"] for l in r["layers"] if l["kept_dense"]} == dense
    if method == "decomp":
        assert [h["epoch"] for h in r["history"]] == [1, 2]


def test_lowrank_tucker2_with_a_rank_pair_and_a_penalty(tmp_path):
    out = tmp_path / "tucker2"
    assert train(out, "--method", "lowrank", "--scheme", "tucker2", "--epochs", "1",
                 "--rank", "0.25,0.5", "--penalty-kind", "so", "--orth-weight", "1e-2") == 0
    r = report(out)
    assert (r["method"], r["scheme"]) == ("lowrank", "tucker2")
    assert r["config"]["penalty_kind"] == "so" and r["config"]["orth_weight"] == 1e-2
    assert r["flops_speedup"] > 1
    for layer in r["layers"]:
        (r_in, r_out), (full_in, full_out) = layer["rank"], layer["full_rank"]
        assert (r_in, r_out) == (-(-full_in // 4), -(-full_out // 2))
    model = load_model(str(out / "model.pt"))
    assert len(lowrank_layers(model)) == 18


def test_cifar10_from_a_directory_in_the_python_format(tmp_path):
    data_dir = write_fake_cifar(str(tmp_path), per_batch=4)       # 20 training images
    out = tmp_path / "cifar"
    assert main(["train", "--out", str(out), "--dataset", "cifar10", "--data-dir", data_dir,
                 "--epochs", "1", "--batch-size", "10", "--threads", "1", "--no-progress"]) == 0
    r = report(out)
    assert r["dataset"] == "cifar10" and r["config"]["data_dir"] == data_dir
    assert r["dense_conv_macs"] == 40_550_400 and r["flops_speedup"] > 1   # 32x32, 3 channels


def test_decomp_of_a_trained_baseline(tmp_path):
    assert train(tmp_path / "base", "--method", "baseline", "--epochs", "1") == 0
    base = report(tmp_path / "base")
    assert train(tmp_path / "decomp", "--method", "decomp", "--rank", "4", "--finetune-epochs",
                 "0", "--init", str(tmp_path / "base" / "model.pt")) == 0
    r = report(tmp_path / "decomp")
    assert r["dense_test_accuracy"] == base["test_accuracy"]
    assert all(l["rank"] == 4 for l in r["layers"]) and r["history"] == []


def interrupt_in_epoch(monkeypatch, epoch, batch):
    """Makes the run raise KeyboardInterrupt (as Ctrl-C does) in the middle of an epoch."""
    real = training_loop.train_batches

    def batches(data, batch_size, e, *args, **kwargs):
        for i, b in enumerate(real(data, batch_size, e, *args, **kwargs)):
            if (e, i) == (epoch, batch):
                raise KeyboardInterrupt
            yield b

    monkeypatch.setattr(training_loop, "train_batches", batches)


@pytest.mark.parametrize("method, args", [
    # 5 steps an epoch: with period 2 the projection phase crosses the epoch boundary.
    ("trp", ["--epochs", "2", "--period", "2"]),
    # Interrupted in the first fine-tuning epoch: the resumed run must redo the decomposition.
    ("decomp", ["--epochs", "1", "--finetune-epochs", "1", "--energy", "0.7"]),
    # The energy chosen for the budget at epoch 1's end is part of the checkpoint.
    ("trp", ["--epochs", "2", "--target-speedup", "4"]),
    # A model of pointwise layers (1x1 convs, a LowRankLinear) resumes from its state_dict.
    ("decomp", ["--epochs", "1", "--finetune-epochs", "1", "--energy", "0.7", "--pointwise",
                "--model", "small_models:PointwiseClassifier"]),
])
def test_resume_continues_exactly(tmp_path, monkeypatch, capsys, method, args):
    args = ["--method", method, "--scheme", "spatial", *args]
    assert train(tmp_path / "straight", *args) == 0

    interrupted = tmp_path / "interrupted"
    interrupt_in_epoch(monkeypatch, epoch=1, batch=2)
    assert train(interrupted, *args) == 130
    assert "--resume" in capsys.readouterr().err
    assert torch.load(interrupted / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (interrupted / "report.json").exists()
    monkeypatch.undo()
    assert main(["train", "--out", str(interrupted), "--resume", "--no-progress"]) == 0

    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "trp", "epoch"):
        # same structure, and every value (tensors bit for bit; str() would elide the middle of
        # a large momentum buffer)
        got, got_spec = tree_flatten(resumed[key])
        want, want_spec = tree_flatten(straight[key])
        assert got_spec == want_spec, key
        for g, w in zip(got, want):
            assert (torch.equal(g, w) if isinstance(w, torch.Tensor) else g == w), key
    a, b = report(tmp_path / "straight"), report(interrupted)
    assert a["test_accuracy"] == b["test_accuracy"] and a["layers"] == b["layers"]
    if "--pointwise" in args:
        assert {"body.2.weight1", "body.10.weight1"} <= set(resumed["model"])


def test_resume_refuses_a_changed_configuration(main_run, capsys):
    out = main_run
    before = snapshot(out)
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.5"]) == 2
    assert "lr" in capsys.readouterr().err
    assert snapshot(out) == before


BAD = [
    (["--model", "resnet99"], "--model: must be one of resnet20, resnet32, resnet56, "
                              "mobilenetv2 or package.module:callable, got 'resnet99'"),
    (["--model", "no_such_package.nets:net"], "--model: architecture 'no_such_package.nets:net' "
                                              "cannot be imported"),
    (["--model", "torch.nn:Linear"], "--model-kwargs do not fit torch.nn:Linear"),
    (["--model", "torch.nn:Identity"], "--model torch.nn:Identity gives [2, 1, 8, 8] for a batch "
                                       "of 2 digits images; training needs [2, 10] class scores "
                                       "(set its classes with --model-kwargs)"),
    (["--model-kwargs", "[1]"], "--model-kwargs: must be a JSON object"),
    (["--model-kwargs", "{num_classes: 3}"], "--model-kwargs: must be a JSON object such as"),
    (["--dataset", "mnist"], "--dataset mnist is not a folder, nor package.module:callable"),
    (["--scheme", "diagonal"], "--scheme: invalid choice"),
    (["--method", "magic"], "--method: invalid choice"),
    (["--energy", "1.5"], "--energy must be in (0, 1]"),
    (["--energy", "0"], "--energy must be in (0, 1]"),
    (["--final-energy", "-0.1"], "--final-energy must be in (0, 1]"),
    (["--energy", "high"], "--energy: invalid float value"),
    (["--method", "lowrank"], "--method lowrank needs --rank (an int, or a fraction of each "
                              "layer's full rank in (0, 1]) or --target-speedup, not both"),
    (["--method", "lowrank", "--rank", "0"], "--rank must be >= 1"),
    (["--method", "lowrank", "--rank", "1.5"],
     "--rank as a fraction of the full rank must be in (0, 1]"),
    (["--method", "lowrank", "--rank", "65"], "--rank 65 exceeds the largest full rank (64)"),
    (["--method", "trp", "--rank", "4"],
     "--rank does not apply to --method trp: TRP's ranks follow from --energy (its projections), "
     "--final-threshold or --final-energy (its final decomposition), or --target-speedup; "
     "methods decomp and lowrank take it"),
    (["--method", "baseline", "--rank", "4"], "--rank does not apply to --method baseline"),
    (["--rank", "x"], "--rank: must be an int"),
    (["--rank", "1,2,3"], "--rank: must be one value or a pair"),
    (["--method", "lowrank", "--rank", "0.25,0.5"], "a pair is for tucker2 only"),
    (["--method", "lowrank", "--scheme", "tucker2", "--rank", "0.5,1.5"],
     "fraction of the full rank must be in (0, 1]"),
    (["--method", "lowrank", "--scheme", "tucker2", "--rank", "8,65"],
     "--rank 65 exceeds the largest full rank (64)"),
    (["--scheme", "tucker3"], "--scheme: invalid choice"),
    (["--model", "mobilenetv2"], "has no layer that scheme channel acts on (its 1x1 convs"),
    (["--scheme", "pointwise"], "resnet20 has no layer that scheme pointwise acts on"),
    (["--pointwise", "--scheme", "tucker2", "--method", "lowrank", "--rank", "2,3"],
     "--rank as a pair R_IN,R_OUT is tucker2's; with --pointwise give one value"),
    (["--penalty-kind", "hard"], "--penalty-kind: invalid choice"),
    (["--orth-weight", "-1"], "--orth-weight must be"),
    (["--period", "0"], "--period must be an int >= 1"),
    (["--nuclear-weight", "-1"], "--nuclear-weight must be"),
    (["--epochs", "0"], "--epochs must be an int >= 1"),
    (["--batch-size", "5000"], "--batch-size 5000 is larger than the 1437 training images"),
    (["--dataset", "cifar10"], "--dataset cifar10 needs --data-dir"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"],
     "--data-dir /nonexistent/cifar does not exist"),
    (["--device", "tpu"], "--device 'tpu' is not a torch device"),
    (["--init", "x.pt"], "--init (a model.pt to start from) is for --method decomp or finetune"),
    (["--method", "decomp", "--init", "/nonexistent/model.pt"],
     "--init: model file /nonexistent/model.pt does not exist"),
    (["--resume"], "no-such-dir"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, message):
    err = refused(capsys, "train", tmp_path / "no-such-dir", *args)
    assert message in err, err


def test_no_cuda_is_a_bad_device(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--out", str(tmp_path / "x"), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_existing_runs_and_corrupt_checkpoints_are_left_alone(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"half a checkpoint")
    before = snapshot(out)
    assert train(out, "--epochs", "1") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is not a file written by torch.save" in err and err.count("\n") == 1
    assert snapshot(out) == before


def test_export_command(main_run, tmp_path, capsys):
    out = main_run
    onnx, program = str(tmp_path / "m.onnx"), str(tmp_path / "m.pt2")
    assert main(["export", str(out / "model.pt"), "--onnx", onnx, "--program", program]) == 0
    assert os.path.getsize(onnx) > 0 and os.path.getsize(program) > 0
    capsys.readouterr()
    assert main(["export", str(out / "model.pt"), "--onnx", onnx]) == 2
    assert "exists; not overwriting" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.pt"), "--onnx", str(tmp_path / "n.onnx")]) == 2


def test_a_missing_cifar_directory_names_each_file_once(tmp_path, capsys):
    data_dir = write_fake_cifar(str(tmp_path), per_batch=2)
    os.remove(os.path.join(data_dir, "test_batch"))
    assert main(["train", "--out", str(tmp_path / "x"), "--dataset", "cifar10", "--data-dir",
                 data_dir]) == 2
    err = capsys.readouterr().err
    assert f"--data-dir {data_dir} lacks test_batch of the CIFAR-10 python version" in err
    assert err.count("test_batch") == 1 and err.count("data_batch") == 0


def test_a_model_of_your_own(tmp_path):
    """--model package.module:callable with --model-kwargs: trained, decomposed with its first
    conv left dense, saved with its reference, loaded back and exported."""
    out = tmp_path / "own"
    assert train(out, "--model", "small_models:Classifier", "--model-kwargs",
                 '{"classes": 10, "width": 12}', "--epochs", "1") == 0
    r = report(out)
    assert r["model"] == "small_models:Classifier"
    assert r["config"]["model_kwargs"] == {"classes": 10, "width": 12}
    assert [l["name"] for l in r["layers"]] == ["body.2", "body.4"]       # body.0 left dense
    assert r["flops_speedup"] > 1 and "top1_agreement" in r
    model = load_model(str(out / "model.pt"))
    assert set(lowrank_layers(model)) == {"body.2", "body.4"}
    assert main(["export", str(out / "model.pt"), "--onnx", str(tmp_path / "own.onnx")]) == 0


def test_python_dash_m_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trp_kernels", "train", "--energy", "2", "--out",
         str(tmp_path / "x")], capture_output=True, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.returncode == 2
    assert result.stderr.strip() == "trp_kernels train: error: --energy must be in (0, 1], got 2.0"


def test_the_configuration_takes_the_five_schemes_and_a_stored_rank_pair():
    from trp_kernels.training import SCHEMES, ConfigError, TrainConfig

    assert SCHEMES == ("channel", "spatial", "tucker2", "decoupled", "pointwise")
    for scheme in SCHEMES:
        TrainConfig(scheme=scheme, method="lowrank", rank=0.5).validate()
    stored = TrainConfig(scheme="tucker2", method="lowrank", rank=[0.25, 8])   # JSON's pair
    stored.validate()
    assert stored.rank_spec == (0.25, 8)
    with pytest.raises(ConfigError, match="penalty_kind"):
        TrainConfig(penalty_kind="hard").validate()
    with pytest.raises(ConfigError, match="scheme"):
        TrainConfig(scheme="tucker3").validate()
    with pytest.raises(ConfigError, match="pointwise must be a bool"):
        TrainConfig(pointwise="yes").validate()


def test_finetune_a_compressed_model(main_run, tmp_path):
    """--method finetune: the main job's compressed model.pt, its ranks kept, trained on."""
    out = tmp_path / "tuned"
    assert train(out, "--method", "finetune", "--init", str(main_run / "model.pt"),
                 "--epochs", "1", "--lr", "0.01") == 0
    r = report(out)
    assert r["method"] == "finetune" and [h["epoch"] for h in r["history"]] == [1]
    before = load_model(str(main_run / "model.pt"))
    after = load_model(str(out / "model.pt"))
    assert lowrank_layers(after) == lowrank_layers(before)
    assert [m.rank for m in after.modules() if hasattr(m, "weight1")] == \
        [m.rank for m in before.modules() if hasattr(m, "weight1")]


def test_train_on_a_folder_of_images(tmp_path):
    from test_sources import write_folder

    write_folder(tmp_path / "shapes", sizes=((8, 8),) * 10, classes=("a", "b", "c"))
    out = tmp_path / "folder"
    assert train(out, "--dataset", str(tmp_path / "shapes"), "--model",
                 "small_models:Classifier", "--model-kwargs", '{"classes": 3}', "--epochs", "1",
                 "--batch-size", "8") == 0
    r = report(out)
    assert r["dataset"] == str(tmp_path / "shapes") and 0 <= r["test_accuracy"] <= 1
