"""Small trainer runs from the command line, shared by the CLI and budget tests."""

import json
import os

from trp_kernels.cli import main

QUICK = ["--batch-size", "256", "--no-progress"]


def train(out, *args):
    """``python -m trp_kernels train --out out`` with a large batch and no progress bar."""
    return main(["train", "--out", str(out), *QUICK, *args])


def report(out):
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)
