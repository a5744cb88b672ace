"""Which convs TRP, decomposition and low-rank training act on: the decomposable ones, one
default for all three (the model's ``never_decomposed``, or its first conv), an explicit
``layers`` list, and errors naming the option."""

import pytest
from torch import nn

import trp_kernels as tk
from small_models import small_resnet
from trp_kernels.compression import decomposable_layers, is_decomposable, never_decomposed


def lowrank_names(model):
    return [name for name, m in model.named_modules() if isinstance(m, tk.LowRankConv2d)]


def test_the_default_is_the_models_never_decomposed_for_all_three():
    names = [name for name, _ in decomposable_layers(small_resnet())]
    assert "conv1" not in names and len(names) == 18
    decomposed = small_resnet()
    report = tk.decompose_model(decomposed, rank=2)
    lowrank = small_resnet()
    tk.make_lowrank(lowrank, rank=2)
    trp = tk.TRPRegularizer(small_resnet())
    assert [l.name for l in report.layers] == names
    assert lowrank_names(decomposed) == lowrank_names(lowrank) == names
    assert [name for name, _ in trp.layers] == names
    assert type(decomposed.conv1) is nn.Conv2d


def test_a_model_without_never_decomposed_keeps_its_first_conv_dense():
    """A model from outside the library: skip=None leaves its stem dense too, and the report
    says which layer that was."""
    class Outside(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3)), nn.ReLU(),
                                          nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 1))

        def forward(self, x):
            return self.features(x)

    model = Outside()
    # and its last layer, a 1x1 conv, as a classifier: a pointwise compression's to act on
    assert never_decomposed(model) == ("features.0.0", "features.3")
    report = tk.decompose_model(model, rank=2)
    assert [l.name for l in report.layers] == ["features.2"]
    assert report.skipped == ["features.0.0"]
    assert "layers left dense by skip (by name): 'features.0.0'" in str(report)
    assert never_decomposed(nn.Sequential(nn.ReLU())) == ()
    mine = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))
    mine.never_decomposed = ()                 # a model's own empty list is respected
    assert [l.name for l in tk.decompose_model(mine, rank=2).layers] == ["0", "1"]


def test_skip_empty_decomposes_the_first_conv_too():
    model = small_resnet()
    report = tk.decompose_model(model, rank=2, skip=())
    assert report.layers[0].name == "conv1" and len(report.layers) == 19


def test_layers_decomposes_exactly_those_in_model_order():
    model = small_resnet()
    report = tk.decompose_model(model, rank=2, layers=["layer3.0.conv2", "conv1"])
    assert [l.name for l in report.layers] == ["conv1", "layer3.0.conv2"]
    assert lowrank_names(model) == ["conv1", "layer3.0.conv2"]


def test_trp_decompose_passes_its_own_layers():
    model = small_resnet().eval()
    trp = tk.TRPRegularizer(model, skip=("conv1", "layer2.0.conv1"))
    trp.project()
    report = trp.decompose(threshold=1e-4)
    assert [l.name for l in report.layers] == [name for name, _ in trp.layers]
    assert "layer2.0.conv1" not in lowrank_names(model) and len(report.layers) == 17


@pytest.mark.parametrize("kwargs, message", [
    ({"layers": ["conv9"]}, "layers names layers the model does not have"),
    ({"layers": ["bn1"]}, "not decomposable"),
    ({"layers": ["conv1"], "skip": ()}, "not both"),
    ({"skip": ["conv9"]}, "skip"),
])
def test_bad_selections_name_the_option(kwargs, message):
    model = small_resnet()
    with pytest.raises(ValueError, match=message):
        tk.decompose_model(model, rank=2, **kwargs)
    assert not lowrank_names(model)


def test_layers_as_one_string_is_a_type_error():
    with pytest.raises(TypeError, match="layers must be a list of layer names"):
        tk.decompose_model(small_resnet(), rank=2, layers="conv1")


def test_is_decomposable():
    assert is_decomposable(nn.Conv2d(3, 4, 3))
    assert is_decomposable(nn.Conv2d(3, 4, (3, 1)))
    assert not is_decomposable(nn.Conv2d(3, 4, 1))
    assert not is_decomposable(nn.Conv2d(4, 4, 3, groups=2))
    assert not is_decomposable(nn.Linear(3, 4))
