"""Small trainer runs from the command line, and the check of a refused command, shared by the
CLI, budget and compress tests."""

import json
import os

from trp_kernels.cli import main

QUICK = ["--batch-size", "256", "--no-progress"]


def train(out, *args):
    """``python -m trp_kernels train --out out`` with a large batch and no progress bar."""
    return main(["train", "--out", str(out), *QUICK, *args])


def refused(capsys, command, out, *args):
    """``python -m trp_kernels COMMAND --out out ARGS`` refused as bad input: exit status 2, one
    line on stderr ("trp_kernels COMMAND: error: ..."), nothing written at ``out``. Returns the
    line."""
    assert main([command, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"trp_kernels {command}: error:"), err
    assert not out.exists()
    return err


def report(out):
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)
