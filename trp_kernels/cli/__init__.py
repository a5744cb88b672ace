"""Command line: ``python -m trp_kernels train ...``, ``python -m trp_kernels compress ...`` and
``python -m trp_kernels export ...`` (also installed as ``trp-kernels``), one module per command
(train.py, compress.py, export.py) and what they share (options.py). docs/training.md documents
train and export, docs/compression.md compress.

Exit codes: 0 done; 1 training diverged; 2 bad input (a one-line error naming the problem by
its command-line option; nothing is written); 130 interrupted (the checkpoint of the last
finished epoch remains).
"""

from __future__ import annotations

import argparse
import sys

from . import compress, export, train
from .options import EXIT_USAGE, PROG, Parser, UsageError

COMMANDS = {"train": train, "compress": compress, "export": export}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Trained Rank Pruning and low-rank training.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS.values():
        command.add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return COMMANDS[args.command].run(args)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
