"""``restore_lowrank``: a freshly built model given the layer types a compressed model's
state_dict names, so that ``load_state_dict`` fits it.

Training frameworks keep state_dicts, not modules. A compressed model's state_dict holds, per
conv or linear layer, either a dense ``weight`` (a layer kept dense) or the factors of one
scheme (``weight1``/``weight2``, ``weight_in``/``core``/``weight_out``) at that layer's rank. The
scheme and rank are read from the factors' names and shapes against the layer's dense weight
shape (the scheme registry; a linear weight [N, C] seen as the 1x1 conv [N, C, 1, 1], its
factors as those of the ``pointwise`` scheme), so no list of layers needs to be stored
alongside.
"""

from __future__ import annotations

import torch
from torch import nn

from ..schemes import geometry
from ..schemes.layer_kinds import DENSE_LAYERS, LOWRANK_LAYERS, conv_weight_shape, empty_lowrank
from ..schemes.lowrank_linear import LowRankLinear

DENSE = "dense"
POINTWISE = "pointwise"


def saved_forms(state_dict, prefix: str, weight_shape, linear: bool = False
                ) -> list[tuple[str, object]]:
    """The forms in which ``state_dict`` holds the layer whose keys start with ``prefix``:
    [(DENSE, None)], or (scheme name, rank) for every scheme its factors fit, ``pointwise``
    first, or [] when it holds neither. ``weight_shape``: the layer's 4-D conv weight shape;
    ``linear``: the layer is a linear one, whose factors are 2-D and of scheme ``pointwise``
    alone. Several schemes fit only where they are the same layer: a (kh, 1) kernel's channel
    and spatial factors, or a 1x1 kernel's channel and pointwise ones, are the same tensors
    computing the same outputs. ValueError for factors that fit no scheme at this weight
    shape."""
    if prefix + "weight" in state_dict:
        return [(DENSE, None)]
    named, forms = False, []
    schemes = sorted(geometry.SCHEMES.values(), key=lambda s: s.name != POINTWISE)
    for scheme in schemes:
        saved = [state_dict.get(prefix + name) for name in scheme.factor_names]
        if not all(isinstance(t, torch.Tensor) for t in saved):
            continue
        named = True
        if linear and scheme.name != POINTWISE:
            continue
        shapes = [tuple(t.shape) + (1, 1) if linear else tuple(t.shape) for t in saved]
        rank = scheme.fitted_rank(shapes, weight_shape)
        if rank is not None:
            forms.append((scheme.name, rank))
    if named and not forms:
        N, C = weight_shape[:2]
        kind = f"{N}x{C} linear layer" if linear else f"{'x'.join(map(str, weight_shape))} conv"
        raise ValueError(f"state_dict holds factors for layer {prefix[:-1]!r} whose shapes fit "
                         f"no scheme of a {kind}")
    return forms


def dense_like(layer: nn.Module) -> nn.Module:
    """An uninitialised nn.Conv2d or nn.Linear with the low-rank ``layer``'s geometry, bias,
    device and dtype."""
    factor = layer.factors[0]
    kw = {"bias": layer.bias is not None, "device": factor.device, "dtype": factor.dtype}
    if isinstance(layer, LowRankLinear):
        dense = nn.utils.skip_init(nn.Linear, layer.in_features, layer.out_features, **kw)
    else:
        dense = nn.utils.skip_init(nn.Conv2d, layer.in_channels, layer.out_channels,
                                   layer.kernel_size, stride=layer.stride,
                                   padding=layer.padding, dilation=layer.dilation, **kw)
    dense.train(layer.training)
    return dense


def restore_lowrank(model: nn.Module, state_dict) -> nn.Module:
    """Gives ``model`` (freshly built, dense or decomposed differently) the layer types that
    ``state_dict`` names, in place: a LowRankConv2d of the saved scheme and rank where the
    state_dict holds a conv's factors, a LowRankLinear where it holds a linear layer's, a plain
    nn.Conv2d or nn.Linear where it holds a dense weight, so that
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
    if isinstance(model, DENSE_LAYERS + LOWRANK_LAYERS):
        raise ValueError("model is a single conv or linear layer, which cannot be replaced in "
                         "place; build the low-rank layer it holds instead")
    for name, module in list(model.named_modules()):
        if not isinstance(module, DENSE_LAYERS + LOWRANK_LAYERS):
            continue
        linear = isinstance(module, (nn.Linear, LowRankLinear))
        forms = saved_forms(state_dict, f"{name}.", conv_weight_shape(module), linear)
        if not forms:
            continue
        scheme, rank = forms[0]
        lowrank = isinstance(module, LOWRANK_LAYERS)
        if scheme == DENSE:
            if lowrank:
                model.set_submodule(name, dense_like(module))
            continue
        if lowrank:
            if module.scheme in dict(forms):
                continue              # loading resizes it to the saved rank
            module = dense_like(module)
        # uninitialised: loading the state_dict fills the factors
        model.set_submodule(name, empty_lowrank(module, scheme, rank))
    return model
