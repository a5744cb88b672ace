"""Python-side argument checks: the ones the C++ ops cannot phrase well (Python types, devices
of several tensors). Value ranges are checked once, in C++ (csrc/aten/trp/checks.h)."""

from __future__ import annotations

import numbers

import torch


def tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def optional_real(value, name: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {value!r}")
    return float(value)


def optional_int(value, name: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {value!r}")
    return int(value)


def same_device(reference: torch.Tensor, reference_name: str, **others) -> None:
    for name, t in others.items():
        if t is not None and t.device != reference.device:
            raise ValueError(f"{name} is on {t.device} but {reference_name} is on {reference.device}")


def pair(value, name: str) -> list[int]:
    """An int or a pair of ints, as nn.Conv2d accepts for stride/padding/dilation."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [int(value), int(value)]
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    ):
        return [int(value[0]), int(value[1])]
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


SCHEMES = ("channel", "spatial")


def scheme(value) -> str:
    if value not in SCHEMES:
        raise ValueError(f"scheme must be 'channel' or 'spatial', got {value!r}")
    return value
