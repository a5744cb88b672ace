"""Which layers of a model the compression acts on: the decomposable convs (what TRP factorises)
and, with ``pointwise``, the 1x1 convs and linear layers too (scheme "pointwise" acts on those
alone), less those the model asks to keep dense or the caller skips, or exactly those the caller
names. Each layer is factorised in the scheme ``layer_scheme`` gives it."""

from __future__ import annotations

from torch import nn


def is_decomposable(module: nn.Module) -> bool:
    """An nn.Conv2d with groups 1 and a kernel larger than 1x1 (what TRP factorises)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.kernel_size[0] * module.kernel_size[1] > 1
    )


def is_pointwise(module: nn.Module) -> bool:
    """An nn.Linear, or an nn.Conv2d with groups 1 and a 1x1 kernel: a plain matrix W [N, C],
    what the ``pointwise`` scheme factorises."""
    return isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and module.groups == 1 and module.kernel_size == (1, 1))


def acts_on(module: nn.Module, scheme: str = "channel", pointwise: bool = False) -> bool:
    """Whether a compression in ``scheme`` (with ``pointwise``) factorises ``module``."""
    if scheme == "pointwise":
        return is_pointwise(module)
    return is_decomposable(module) or (pointwise and is_pointwise(module))


def layer_scheme(module: nn.Module, scheme: str) -> str:
    """The scheme ``module`` is factorised in when the model's scheme is ``scheme``: 1x1 convs
    and linear layers always in "pointwise", the other convs in ``scheme``."""
    return "pointwise" if is_pointwise(module) else scheme


def per_scheme(layers, schemes: list[str], build) -> list:
    """``build(modules, s)`` called once per scheme s of ``schemes`` (each layer's, as
    ``layer_scheme`` gives it) on the modules of ``layers`` ((name, module) pairs) in that
    scheme; its results back in the order of ``layers``. Batched factorisations and SVDs group
    by scheme this way."""
    out: list = [None] * len(layers)
    for s in dict.fromkeys(schemes):
        indices = [i for i, t in enumerate(schemes) if t == s]
        for i, result in zip(indices, build([layers[i][1] for i in indices], s)):
            out[i] = result
    return out


def counts_linear(scheme: str, pointwise: bool) -> bool:
    """Whether MAC counts include linear layers: when the compression acts on them (each
    counted as a 1x1 conv on the rows of its input); otherwise they are the papers' conv MACs."""
    return pointwise or scheme == "pointwise"


def never_decomposed(model: nn.Module) -> tuple[str, ...]:
    """The layer names kept dense unless the caller says otherwise: the model's own
    ``never_decomposed`` attribute (this library's models name their first conv and their
    classifier), or, for a model without one, its first nn.Conv2d in module order (the stem of
    the usual models) and its classifier (its last layer, when that is a linear layer or a 1x1
    conv). The stem sees the image's few channels: its factorised form saves little and costs
    accuracy (docs/compression.md, "Which layers"). The classifier's outputs are the logits,
    which a rank-r factorisation confines to an r-dimensional subspace whatever the training,
    and it costs a small share of the MACs (a 1000 x 1280 classifier is 0.4% of MobileNetV2's);
    docs/compression.md, "1x1 convolutions and linear layers"."""
    own = getattr(model, "never_decomposed", None)
    if own is not None:
        return tuple(own)
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))]
    kept = [next((name for name, m in layers if isinstance(m, nn.Conv2d)), None)]
    if layers and is_pointwise(layers[-1][1]):
        kept.append(layers[-1][0])
    return tuple(dict.fromkeys(name for name in kept if name is not None))


def decomposable_layers(model: nn.Module, skip=None, layers=None, scheme: str = "channel",
                        pointwise: bool = False) -> list[tuple[str, nn.Module]]:
    """(name, layer) in model order of the layers to act on (``acts_on``): those named in
    ``layers`` if given (each must be one), else every one not named in ``skip``; ``skip=None``
    means the model's ``never_decomposed`` (see there)."""
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
        dense = sorted(name for name in chosen if not acts_on(modules[name], scheme, pointwise))
        if dense:
            raise ValueError(f"layers names modules that are not decomposable "
                             f"{_kinds(scheme, pointwise)}: {dense}")
        return [(name, m) for name, m in modules.items() if name in chosen]
    skip = set(never_decomposed(model) if skip is None else skip)
    unknown = sorted(skip - set(modules))
    if unknown:
        raise ValueError(f"skip names layers the model does not have: {unknown}")
    return [(name, m) for name, m in modules.items()
            if acts_on(m, scheme, pointwise) and name not in skip]


def _kinds(scheme: str, pointwise: bool) -> str:
    """What ``acts_on`` accepts, for error messages."""
    convs = "convs (nn.Conv2d, groups 1, kernel larger than 1x1)"
    pointwise_layers = "1x1 convs (groups 1) or linear layers"
    if scheme == "pointwise":
        return f"layers in scheme 'pointwise': {pointwise_layers}"
    return f"{convs} or {pointwise_layers}" if pointwise else convs
