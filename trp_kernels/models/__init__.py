"""Model constructors by name. Every model has a ``never_decomposed`` tuple naming the layers
that TRP, decomposition and low-rank training leave dense (the first conv)."""

from __future__ import annotations

from torch import nn

from .cifar_resnet import CifarResNet, resnet20, resnet32, resnet56
from .imagenet_resnet import ImageNetResNet, resnet18, resnet50

MODELS = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def create_model(name: str, **kwargs) -> nn.Module:
    """The model called ``name`` (a key of MODELS), built with ``kwargs``."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)


def never_decomposed(model: nn.Module) -> tuple[str, ...]:
    """The layer names ``model`` asks to keep dense (none for a model that does not say)."""
    return tuple(getattr(model, "never_decomposed", ()))


__all__ = ["MODELS", "create_model", "never_decomposed", "CifarResNet", "ImageNetResNet",
           "resnet20", "resnet32", "resnet56", "resnet18", "resnet50"]
