"""Which convs of a model the compression acts on: the decomposable ones (what TRP factorises),
less those the model asks to keep dense or the caller skips, or exactly those the caller names."""

from __future__ import annotations

from torch import nn


def is_decomposable(module: nn.Module) -> bool:
    """An nn.Conv2d with groups 1 and a kernel larger than 1x1 (what TRP factorises)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.kernel_size[0] * module.kernel_size[1] > 1
    )


def never_decomposed(model: nn.Module) -> tuple[str, ...]:
    """The layer names ``model`` asks to keep dense, from its ``never_decomposed`` attribute
    (this library's ResNets name their first conv); none for a model without one."""
    return tuple(getattr(model, "never_decomposed", ()))


def decomposable_layers(model: nn.Module, skip=None, layers=None) -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) in model order of the decomposable convs to act on: those named in
    ``layers`` if given (each must be a decomposable conv), else every decomposable conv not
    named in ``skip``; ``skip=None`` means the model's ``never_decomposed`` (see there)."""
    modules = dict(model.named_modules())
    if layers is not None:
        if skip is not None:
            raise ValueError("give skip (layers to leave dense) or layers (layers to "
                             "decompose), not both")
        if isinstance(layers, str):
            raise TypeError(f"layers must be a list of layer names, got the str {layers!r}")
        chosen = set(layers)
        unknown = sorted(chosen - set(modules))
        if unknown:
            raise ValueError(f"layers names layers the model does not have: {unknown}")
        dense = sorted(name for name in chosen if not is_decomposable(modules[name]))
        if dense:
            raise ValueError(f"layers names modules that are not decomposable convs (nn.Conv2d, "
                             f"groups 1, kernel larger than 1x1): {dense}")
        return [(name, m) for name, m in modules.items() if name in chosen]
    skip = set(never_decomposed(model) if skip is None else skip)
    unknown = sorted(skip - set(modules))
    if unknown:
        raise ValueError(f"skip names layers the model does not have: {unknown}")
    return [(name, m) for name, m in modules.items() if is_decomposable(m) and name not in skip]
