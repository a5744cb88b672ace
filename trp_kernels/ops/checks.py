"""Python-side argument checks: the ones the C++ ops cannot phrase well (Python types, devices
of several tensors), and the options of the Python API and the trainer (energy, rank as an int or
a fraction, loss weights, FLOP budgets), each rule in one function that every caller imports.
The ops' own value ranges are checked once, in C++ (csrc/aten/trp/checks.h); the conventions are
docs/design.md, "Errors"."""

from __future__ import annotations

import math
import numbers

import torch


def tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _optional_number(value, name: str, kind, what: str, convert):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {what} or None, got {value!r}")
    return convert(value)


def optional_real(value, name: str):
    return _optional_number(value, name, numbers.Real, "a real number", float)


def optional_int(value, name: str):
    return _optional_number(value, name, numbers.Integral, "an int", int)


def start_basis(W: torch.Tensor, basis, name: str):
    """A start basis of the projection ops for W [..., m, n] (what they returned as ``basis``
    for W's previous value): None, or a float64 tensor [..., k, k] with W's batch shape,
    k = min(m, n), on W's device. The same checks as the compiled ops (csrc/aten/trp/checks.h),
    for the composite path."""
    if basis is None:
        return None
    tensor(basis, name)
    if basis.dtype != torch.float64:
        raise TypeError(f"{name} must be float64, got {basis.dtype}")
    if basis.device != W.device:
        raise ValueError(f"{name} must be on W's device {W.device}, got {basis.device}")
    k = min(W.shape[-2:])
    shape = (*W.shape[:-2], k, k)
    if tuple(basis.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} (W's batch, then k x k with "
                         f"k = min(m, n)), got {list(basis.shape)}")
    return basis


def flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


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


FUSED_SCHEMES = ("channel", "spatial")   # the schemes the lowrank_conv2d op runs


def fused_scheme(value) -> str:
    if value not in FUSED_SCHEMES:
        raise ValueError(f"scheme must be 'channel' or 'spatial', got {value!r}")
    return value


# -- option values shared by the Python API and the trainer (one home for each rule) -----------


def is_finite_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def energy(value, name: str = "energy") -> float:
    """An energy of the rank rule: a number in (0, 1]. ValueError for anything else (also a
    non-number: the trainer's users write energies as text)."""
    if not (is_finite_real(value) and 0 < value <= 1):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def non_negative(value, name: str) -> float:
    """A finite number >= 0 (a weight of a loss term, a threshold)."""
    if not (is_finite_real(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def int_at_least(value, low: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def rank_or_fraction(value, name: str = "rank"):
    """A rank option: None, an int >= 1 (a cap on each layer's rank) or a float in (0, 1] (a
    fraction of each layer's full rank). Returned as None, int or float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an int >= 1 or a fraction in (0, 1], got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        return int(value)
    if not 0 < value <= 1:
        raise ValueError(f"{name} as a fraction of the full rank must be in (0, 1], got {value}")
    return float(value)


def rank_multiple(value) -> int:
    """Every rank rounded up to a multiple of this: an int >= 1."""
    return int_at_least(value, 1, "rank_multiple")


def target_speedup(value) -> float:
    """A conv FLOP budget t > 1 (a speed-up of 1 is the dense model, which needs no option)."""
    if not (is_finite_real(value) and value > 1):
        raise ValueError(f"target_speedup must be a finite number > 1, got {value!r}")
    return float(value)
