"""What the commands of the command line share: the parser whose mistakes are one line, the
one-line usage error that names options as the command line spells them, the types of the
options that more than one command takes (--model, --model-kwargs, --rank, --input-shape), and
the model that --model and --model-kwargs build."""

from __future__ import annotations

import argparse
import json
import re

from torch import nn

from ..compression import CheckpointError, build_arch
from ..training import TRAIN_MODELS
from ..training.config import is_model_reference

PROG = "trp_kernels"
EXIT_USAGE = 2


class UsageError(Exception):
    """A usage mistake: its message is the one line printed, and the exit status is 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (no usage dump) with exit code 2."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")


def option_name(field: str) -> str:
    """An option's Python name as the command line spells it: data_dir -> --data-dir."""
    return "--" + field.replace("_", "-")


def usage_error(command: str, exc: Exception, options=()) -> UsageError:
    """``exc`` as one line of ``command``: the first line of its message, where the options it
    names (its ``options`` attribute, and ``options``) are spelled as the command line's, each
    at its first occurrence."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for field in dict.fromkeys((*getattr(exc, "options", ()), *options)):
        message = re.sub(rf"(?<![\w-]){re.escape(field)}\b", option_name(field), message,
                         count=1)
    return UsageError(f"{PROG} {command}: error: {message}")


def model_reference(text: str) -> str:
    """--model of train: one of the trainer's models, or "package.module:callable"."""
    if text in TRAIN_MODELS or is_model_reference(text) and all(text.split(":", 1)):
        return text
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(TRAIN_MODELS)} or package.module:callable, got {text!r}")


def model_kwargs(text: str) -> dict:
    """--model-kwargs: a JSON object of keyword arguments."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"must be a JSON object such as "
                                         f"'{{\"num_classes\": 10}}', got {text!r} "
                                         f"({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of keyword arguments, got "
                                         f"{text!r}")
    return value


def input_shape(text: str) -> tuple[int, int, int]:
    """--input-shape C,H,W: the shape of one input, three positive ints."""
    parts = text.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return tuple(int(p) for p in parts)
    raise argparse.ArgumentTypeError(f"must be C,H,W, three positive ints such as 3,224,224, "
                                     f"got {text!r}")


def _rank_part(text: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an int (rank) or a fraction of full rank in (0, 1], or for tucker2 a "
            f"pair R_IN,R_OUT of those, got {text!r}") from None


def rank(text: str):
    """--rank: an int (a rank cap, e.g. 8), a float (a fraction of full rank, e.g. 0.25), or
    two of those separated by a comma (tucker2's (r_in, r_out), e.g. 0.25,0.5). The values are
    checked by the scheme's own rule when the options are validated."""
    parts = text.split(",")
    if len(parts) == 2:
        return tuple(_rank_part(p) for p in parts)
    if len(parts) != 1:
        raise argparse.ArgumentTypeError(f"must be one value or a pair R_IN,R_OUT, got {text!r}")
    return _rank_part(text)


def build_model(command: str, reference: str, kwargs: dict) -> nn.Module:
    """The dense model that ``--model`` ``reference`` (package.module:callable) builds from
    ``--model-kwargs``; each way it can fail is one UsageError of ``command`` naming the
    option."""
    try:
        model = build_arch(reference, kwargs)
    except CheckpointError as exc:
        raise UsageError(f"{PROG} {command}: error: --model: {exc}") from None
    except TypeError as exc:
        raise UsageError(f"{PROG} {command}: error: --model-kwargs do not fit {reference}: "
                         f"{exc}") from None
    except Exception as exc:   # the callable's own failure: the user's fix is the same
        raise UsageError(f"{PROG} {command}: error: --model {reference} raised "
                         f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"{PROG} {command}: error: --model {reference} built a "
                         f"{type(model).__name__}, not a torch.nn.Module")
    return model
