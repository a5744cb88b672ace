"""User errors of the three commands, one test case each: every option is checked before any
work, and a mistake is one line naming the option, exit status 2, no traceback, nothing
written (docs/design.md, "Errors")."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from small_models import Classifier
from trp_kernels.cli import main
from trp_kernels.compression import save_model

SMALL = ["--model", "small_models:Classifier", "--input-shape", "1,8,8", "--no-progress"]


def tree(root):
    """Every path under ``root`` with its bytes (None for a directory)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.join(folder, name)] = None
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[path] = f.read()
    return out


def assert_refused(capsys, root, argv, message):
    """``python -m trp_kernels ARGV`` exits with 2 and one line "trp_kernels CMD: error: ..."
    holding ``message``, and writes nothing under ``root``."""
    before = tree(root)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith(f"trp_kernels {argv[0]}: error: "), err
    assert "Traceback" not in err and captured.out == ""
    assert message in err, err
    assert tree(root) == before


@pytest.fixture
def unwritable(tmp_path):
    """A directory in which no file can be created: /sys for root (whom permissions do not
    stop), else a directory without write permission."""
    if os.geteuid() == 0:
        yield "/sys"
        return
    path = tmp_path / "locked"
    path.mkdir()
    path.chmod(0o500)
    yield str(path)
    path.chmod(0o700)


@pytest.fixture
def files(tmp_path):
    """Files of every kind a model or weights option may wrongly be given."""
    directory = tmp_path / "files"
    directory.mkdir()
    good = directory / "good.pt"
    save_model(Classifier(), str(good), "small_models:Classifier", {}, (1, 8, 8))
    data = good.read_bytes()
    (directory / "truncated.pt").write_bytes(data[:len(data) // 2])
    (directory / "empty.pt").write_bytes(b"")
    (directory / "random.pt").write_bytes(bytes(range(3, 256)) * 4)
    torch.save(nn.Linear(2, 2), directory / "module.pt")
    torch.save(Classifier().state_dict(), directory / "state_dict.pt")
    (directory / "a_file").write_text("in the way")
    return directory


# -- the output path ------------------------------------------------------------------------
OUT_CASES = {
    "a file": (lambda f, u: str(f / "a_file"), "exists and is not a directory"),
    "inside a file": (lambda f, u: str(f / "a_file" / "run"), "a_file is a file, not a "
                                                               "directory"),
    "not writable": (lambda f, u: os.path.join(u, "run"), "cannot create files in"),
    "a name too long": (lambda f, u: str(f / ("x" * 300)), "is longer than the 255 bytes"),
    "empty": (lambda f, u: "", "--out must name a directory, got ''"),
}


@pytest.mark.parametrize("case", OUT_CASES)
def test_compress_out(capsys, tmp_path, files, unwritable, case):
    out, message = OUT_CASES[case]
    assert_refused(capsys, tmp_path, ["compress", "--out", out(files, unwritable), *SMALL,
                                      "--energy", "0.5"], message)


@pytest.mark.parametrize("case", OUT_CASES)
def test_train_out(capsys, tmp_path, files, unwritable, case):
    out, message = OUT_CASES[case]
    assert_refused(capsys, tmp_path, ["train", "--out", out(files, unwritable), "--epochs", "1"],
                   message)


@pytest.mark.parametrize("case, target, message", [
    ("inside a file", "a_file/m.onnx", "--onnx {files}/a_file/m.onnx: {files}/a_file is a file, "
                                       "not a directory"),
    ("a directory", ".", "--onnx {files}/. is a directory; name the file to write"),
    ("no such directory", "none/m.onnx", "--onnx {files}/none/m.onnx: directory "
                                         "{files}/none does not exist"),
    ("exists", "good.pt", "--onnx {files}/good.pt exists; not overwriting it"),
])
def test_export_output_file(capsys, tmp_path, files, case, target, message):
    path = os.path.join(str(files), target)
    assert_refused(capsys, tmp_path, ["export", str(files / "good.pt"), "--onnx", path],
                   message.format(files=files))


def test_export_to_an_unwritable_directory(capsys, tmp_path, files, unwritable):
    path = os.path.join(unwritable, "m.onnx")
    assert_refused(capsys, tmp_path, ["export", str(files / "good.pt"), "--program", path],
                   f"--program {path}: cannot create files in {unwritable}")


# -- the model file ---------------------------------------------------------------------------
MODEL_FILES = {
    "truncated.pt": "is truncated or damaged: its zip archive is incomplete",
    "empty.pt": "is empty (0 bytes): it was never completely written; write it again",
    "random.pt": "is not a file written by torch.save (it is neither a zip archive nor a "
                 "pickle)",
    "module.pt": "holds pickled Python objects other than tensors and plain values (such as a "
                 "whole nn.Module saved with torch.save(model)), which trp_kernels does not "
                 "unpickle: save the model's state_dict instead, or use trp_kernels.save_model",
    "state_dict.pt": "holds a state_dict (layer names to tensors), not a model file written by "
                     "trp_kernels",
    "": "is a directory, not a file",
}


@pytest.mark.parametrize("name", MODEL_FILES)
def test_compress_model_file(capsys, tmp_path, files, name):
    path = str(files / name) if name else str(files)
    hint = ": give --model package.module:callable and --weights" if name == "state_dict.pt" \
        else ""
    assert_refused(capsys, tmp_path, ["compress", "--out", str(tmp_path / "out"), "--model",
                                      path, "--energy", "0.5"],
                   f"--model model file {path} {MODEL_FILES[name]}{hint}")


@pytest.mark.parametrize("name", [n for n in MODEL_FILES if n != "state_dict.pt"])
def test_compress_weights_file(capsys, tmp_path, files, name):
    path = str(files / name) if name else str(files)
    message = MODEL_FILES[name].replace("model file", "weights file")
    assert_refused(capsys, tmp_path, ["compress", "--out", str(tmp_path / "out"), *SMALL,
                                      "--weights", path, "--energy", "0.5"],
                   f"--weights: weights file {path} {message}")


@pytest.mark.parametrize("name", MODEL_FILES)
def test_export_model_file(capsys, tmp_path, files, name):
    path = str(files / name) if name else str(files)
    assert_refused(capsys, tmp_path, ["export", path, "--onnx", str(tmp_path / "m.onnx")],
                   f"model file {path} {MODEL_FILES[name]}")


@pytest.mark.parametrize("name", ["truncated.pt", "random.pt", "module.pt"])
def test_train_init_file(capsys, tmp_path, files, name):
    path = str(files / name)
    assert_refused(capsys, tmp_path, ["train", "--out", str(tmp_path / "out"), "--method",
                                      "decomp", "--init", path],
                   f"--init: model file {path} {MODEL_FILES[name]}")


# -- data, fine-tuning and selection ----------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--data", "nowhere", "--energy", "0.5"],
     "--data nowhere is not a folder, nor package.module:callable"),
    (["--data", "small_datasets:broken", "--energy", "0.5"],
     "--data small_datasets:broken raised OSError: the data server is down"),
    (["--model-kwargs", '{"classes": 3}', "--data", "digits", "--energy", "0.5"],
     "--model gives [1, 3] for an input, but --data digits has 10 classes"),
    (["--input-shape", "1,9,9", "--data", "digits", "--energy", "0.5"],
     "--data digits holds inputs of shape [1, 8, 8], the model takes [1, 9, 9]"),
    (["--finetune-epochs", "1", "--energy", "0.5"],
     "--finetune-epochs needs --data: the labelled images to fine-tune on"),
    (["--data", "digits", "--finetune-epochs", "-1", "--energy", "0.5"],
     "--finetune-epochs must be an int >= 0"),
    (["--data", "digits", "--finetune-epochs", "1", "--finetune-batch-size", "1",
      "--energy", "0.5"], "--finetune-batch-size must be an int >= 2"),
    (["--data", "digits", "--calibration-samples", "0", "--energy", "0.5"],
     "--calibration-samples must be an int >= 1"),
    (["--data", "digits", "--finetune-epochs", "1", "--lr", "0", "--energy", "0.5"],
     "--lr must be a finite number > 0"),
    (["--select", "accuracy", "--energy", "0.5"],
     "--select accuracy chooses the ranks of --target-speedup by their accuracy on --data: "
     "give both"),
    (["--select", "accuracy", "--data", "digits", "--energy", "0.5"],
     "--select accuracy chooses the ranks of --target-speedup"),
    (["--data", "digits", "--calibration", "x.pt", "--energy", "0.5"],
     "give --data (labelled images) or --calibration (inputs alone), not both"),
    (["--resume", "--energy", "0.5"], "--resume needs the --out and --finetune-epochs of the "
                                      "interrupted command"),
])
def test_compress_data_options(capsys, tmp_path, args, message):
    argv = ["compress", "--out", str(tmp_path / "out"),
            *[a for a in SMALL if a not in ("--input-shape", "1,8,8")], *args]
    if "--input-shape" not in args:
        argv += ["--input-shape", "1,8,8"]
    assert_refused(capsys, tmp_path, argv, message)


def test_train_dataset_and_finetune(capsys, tmp_path):
    assert_refused(capsys, tmp_path, ["train", "--out", str(tmp_path / "o"), "--dataset",
                                      str(tmp_path / "none")],
                   f"--dataset {tmp_path / 'none'} is not a folder, nor package.module:callable")
    assert_refused(capsys, tmp_path, ["train", "--out", str(tmp_path / "o"), "--method",
                                      "finetune"],
                   "--method finetune needs --init: the model.pt to fine-tune")


def test_compress_resume_without_an_interrupted_run(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert_refused(capsys, tmp_path, ["compress", "--out", str(out), *SMALL, "--data",
                                      "digits", "--energy", "0.5", "--finetune-epochs", "1",
                                      "--resume"],
                   f"--resume: --out {out} holds no compressed.pt of an interrupted "
                   f"fine-tuning; run the command without --resume")
