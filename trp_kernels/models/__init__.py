"""Model constructors by name. Every model has a ``never_decomposed`` tuple naming the layers
that TRP, decomposition and low-rank training leave dense by default (the first conv and the
classifier); ``trp_kernels.compression.never_decomposed`` reads it."""

from __future__ import annotations

from torch import nn

from .cifar_mobilenet import CifarMobileNetV2, mobilenetv2
from .cifar_resnet import CifarResNet, resnet20, resnet32, resnet56
from .imagenet_resnet import ImageNetResNet, resnet18, resnet50

MODELS = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenetv2": mobilenetv2,
}


def create_model(name: str, **kwargs) -> nn.Module:
    """The model called ``name`` (a key of MODELS), built with ``kwargs``."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "create_model", "CifarResNet", "ImageNetResNet", "CifarMobileNetV2",
           "resnet20", "resnet32", "resnet56", "resnet18", "resnet50", "mobilenetv2"]
