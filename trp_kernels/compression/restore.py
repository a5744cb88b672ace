"""``restore_lowrank``: a freshly built model given the layer types a compressed model's
state_dict names, so that ``load_state_dict`` fits it.

Training frameworks keep state_dicts, not modules. A compressed model's state_dict holds, per
conv, either a dense ``weight`` (a layer kept dense) or the factors of one scheme
(``weight1``/``weight2``, ``weight_in``/``core``/``weight_out``) at that layer's rank. The
scheme and rank are read from the factors' names and shapes against the layer's dense weight
shape (the scheme registry), so no list of layers needs to be stored alongside.
"""

from __future__ import annotations

import torch
from torch import nn

from ..schemes import geometry
from ..schemes.layers import LowRankConv2d

DENSE = "dense"


def saved_forms(state_dict, prefix: str, weight_shape) -> list[tuple[str, object]]:
    """The forms in which ``state_dict`` holds the layer whose keys start with ``prefix``:
    [(DENSE, None)], or (scheme name, rank) for every scheme its factors fit, or [] when it
    holds neither. Several schemes fit only where they are the same layer: a (kh, 1) kernel's
    channel and spatial factors are the same tensors computing the same outputs. ValueError for
    factors that fit no scheme at this weight shape."""
    if prefix + "weight" in state_dict:
        return [(DENSE, None)]
    named, forms = False, []
    for scheme in geometry.SCHEMES.values():
        saved = [state_dict.get(prefix + name) for name in scheme.factor_names]
        if not all(isinstance(t, torch.Tensor) for t in saved):
            continue
        named = True
        shapes = [tuple(t.shape) for t in saved]
        if any(len(s) != 4 for s in shapes):
            continue
        rank = scheme.rank_of(*shapes)
        try:
            scheme.check_rank(rank, weight_shape)
        except (TypeError, ValueError):
            continue
        if [tuple(s) for s in scheme.factor_shapes(weight_shape, rank)] == shapes:
            forms.append((scheme.name, rank))
    if named and not forms:
        raise ValueError(f"state_dict holds factors for layer {prefix[:-1]!r} whose shapes fit "
                         f"no scheme of a {'x'.join(map(str, weight_shape))} conv")
    return forms


def dense_conv_like(layer: LowRankConv2d) -> nn.Conv2d:
    """An uninitialised nn.Conv2d with ``layer``'s geometry, bias, device and dtype."""
    factor = layer.factors[0]
    conv = nn.utils.skip_init(nn.Conv2d, layer.in_channels, layer.out_channels,
                              layer.kernel_size, stride=layer.stride, padding=layer.padding,
                              dilation=layer.dilation, bias=layer.bias is not None,
                              device=factor.device, dtype=factor.dtype)
    conv.train(layer.training)
    return conv


def restore_lowrank(model: nn.Module, state_dict) -> nn.Module:
    """Gives ``model`` (freshly built, dense or decomposed differently) the layer types that
    ``state_dict`` names, in place: a LowRankConv2d of the saved scheme and rank where the
    state_dict holds factors, a plain nn.Conv2d where it holds a dense weight, so that
    ``model.load_state_dict(state_dict)`` then works. Layers the state_dict does not mention
    are left as they are. Returns ``model``.

        model = build_my_model()
        tk.restore_lowrank(model, state_dict)
        model.load_state_dict(state_dict)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got "
                        f"{type(state_dict).__name__}")
    if isinstance(model, (nn.Conv2d, LowRankConv2d)):
        raise ValueError("model is a single conv, which cannot be replaced in place; build the "
                         "LowRankConv2d it holds instead")
    for name, module in list(model.named_modules()):
        if isinstance(module, LowRankConv2d):
            weight_shape = module.weight_shape
        elif isinstance(module, nn.Conv2d):
            weight_shape = tuple(module.weight.shape)
        else:
            continue
        forms = saved_forms(state_dict, f"{name}.", weight_shape)
        if not forms:
            continue
        scheme, rank = forms[0]
        if scheme == DENSE:
            if isinstance(module, LowRankConv2d):
                model.set_submodule(name, dense_conv_like(module))
            continue
        if isinstance(module, LowRankConv2d):
            if module.scheme in dict(forms):
                continue              # loading resizes it to the saved rank
            module = dense_conv_like(module)
        # uninitialised: loading the state_dict fills the factors
        model.set_submodule(name, LowRankConv2d.empty_from_conv(module, rank, scheme))
    return model
