"""The optional ONNX packages, installed together as the ``trp_kernels[onnx]`` extra: onnx and
onnxscript for ``export_onnx``, onnxruntime for ``measure="onnxruntime"``. Without them, what
needs them stops at once with one line that names the extra (``require``), instead of an
ImportError from deep inside torch.onnx.

``quiet_export`` hides what torch.onnx prints on every export whatever the model: a warning per
torchvision op it cannot register when torchvision is absent, and a FutureWarning from torch's
own pytree code.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from contextlib import contextmanager

INSTALL = 'pip install "trp_kernels[onnx]"'


class MissingExtra(ImportError, ValueError):
    """An optional package is not installed. An ImportError, and a ValueError too: the option
    that needs it is refused like any other unusable option (docs/design.md, "Errors")."""


def require(*modules: str, purpose: str) -> None:
    """Raises MissingExtra, naming the missing packages and the extra, unless every module of
    ``modules`` can be imported; ``purpose`` says what needs them."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"{purpose} needs {' and '.join(missing)}, not installed: "
                           f"{INSTALL}", name=missing[0])


# torch.onnx's logger that warns once per torchvision op on every export without torchvision
REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


@contextmanager
def quiet_export():
    """A block in which torch.onnx's messages that say nothing about the model are hidden;
    every other warning still shows."""
    logger = logging.getLogger(REGISTRATION_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                    category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)
