"""The low-rank convolution benchmark cases, their random inputs and their roofline: ResNet-20 and
ResNet-18 3x3 layer shapes at TRP-like ranks, the FLOPs and the fewest bytes each case must
move, and the time a device needs for them at best (an H100's ceilings unless given others:
bench/gpu_timings.py measures the device it runs on).

TRP-like ranks: the fraction of a layer's full rank that reproduces the FLOP speed-ups TRP
reports (docs/design.md, "The schemes") on square 3x3 layers. channel (C = N): speed-up
9N / (10 r), so 2.84x (ResNet-20 channel+Nu) to 3.18x (ResNet-18 channel+Nu) gives r ~ 0.3 N,
N being the full rank; spatial: speed-up 3N / (2 r), so 2.17x (ResNet-20 spatial+Nu) gives
r ~ 0.69 N, 0.23 of the full rank 3N. Trained TRP layers differ layer by layer; these are
typical, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from layer_sets import load

from trp_kernels.ops import conv_geometry
from trp_kernels.schemes import factorization, geometry

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
RANK_FRACTION = {"channel": 0.3, "spatial": 0.23}
NETWORKS = {"resnet20": "r20", "resnet18": "r18"}



@dataclass(frozen=True)
class Ceilings:
    """A device's arithmetic rate per dtype (FLOP/s; float32 runs as TF32 on the tensor cores
    under torch's default cudnn.allow_tf32) and its memory bandwidth (bytes read + written /s)."""

    flops: dict
    bytes_per_s: float


# H100 SXM (docs/cuda_conv.md): bf16/fp16 dense tensor-core rate as measured on an H100, tf32 at
# half of it, HBM bandwidth. Predictions only: a GPU run measures its own device's ceilings.
H100 = Ceilings({"float32": 395e12, "bfloat16": 790e12, "float16": 790e12}, 3.0e12)
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Layer:
    """One 3x3 layer shape of a network."""

    network: str
    in_channels: int
    out_channels: int
    stride: int
    padding: int
    size: int  # input height = width

    @property
    def name(self) -> str:
        return (f"{NETWORKS[self.network]}-{self.in_channels}to{self.out_channels}"
                f"-s{self.stride}-{self.size}px")

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, 3, 3)

    @property
    def conv_args(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """(stride, padding, dilation) of the dense conv."""
        return (self.stride, self.stride), (self.padding, self.padding), (1, 1)

    @property
    def out_size(self) -> int:
        return conv_geometry.conv_out_size(self.size, 3, self.stride, self.padding, 1)

    def full_rank(self, scheme: str) -> int:
        return geometry.scheme(scheme).full_rank(self.weight_shape)

    def rank(self, scheme: str) -> int:
        return max(1, round(RANK_FRACTION[scheme] * self.full_rank(scheme)))

    def factor_shapes(self, scheme: str):
        return geometry.scheme(scheme).factor_shapes(self.weight_shape, self.rank(scheme))

    def thin_convs(self, scheme: str):
        return geometry.scheme(scheme).convs(self.weight_shape, self.rank(scheme), *self.conv_args)

    def macs(self, scheme: str | None) -> int:
        """Multiply-accumulates per image: the dense conv (scheme None) or the factor pair."""
        hw = (self.size, self.size)
        if scheme is None:
            dense = conv_geometry.ThinConv(self.in_channels, self.out_channels, (3, 3),
                                           *self.conv_args)
            return dense.macs(hw)[0]
        return geometry.scheme(scheme).macs(self.weight_shape, self.rank(scheme), hw,
                                            *self.conv_args)[0]

    def mid_elements(self, scheme: str) -> int:
        """Elements of the r-channel intermediate per image (what two_convs writes and reads)."""
        first = self.thin_convs(scheme)[0]
        h, w = first.out_hw((self.size, self.size))
        return first.out_channels * h * w


def layers(network: str) -> list[Layer]:
    """The distinct 3x3 layer shapes of a network, in forward order."""
    seen = {}
    for l in load()[network]:
        layer = Layer(network, l["in_channels"], l["out_channels"], l["stride"][0],
                      l["padding"][0], l["input_hw"][0])
        seen.setdefault(layer, None)
    return list(seen)


def network_layers(network: str) -> list[Layer]:
    """Every decomposable conv of a network, in forward order (repeats included)."""
    return [Layer(network, l["in_channels"], l["out_channels"], l["stride"][0], l["padding"][0],
                  l["input_hw"][0]) for l in load()[network]]


def roofline(layer: Layer, scheme: str, batch: int, dtype: str, backward: bool,
             impl: str = "fused", ceilings: Ceilings = H100) -> dict:
    """FLOPs and fewest bytes of one call (forward, or forward + backward), and the time they
    bound on a device with these ceilings. `impl` "dense" counts the dense conv's FLOPs; every impl has the same fewest
    bytes (x and y, plus grad_out and grad_x with the backward, which also reads x again)."""
    eb = ELEMENT_BYTES[dtype]
    C, N, o = layer.in_channels, layer.out_channels, layer.out_size
    x = batch * C * layer.size * layer.size
    y = batch * N * o * o
    flops = 2 * batch * layer.macs(None if impl == "dense" else scheme)
    elements = x + y
    if backward:
        flops *= 3  # grad input and grad weight each cost one forward
        elements += y + 2 * x
    min_bytes = elements * eb
    t_flops = flops / ceilings.flops[dtype]
    t_bytes = min_bytes / ceilings.bytes_per_s
    return {
        "flops": flops,
        "min_bytes": min_bytes,
        # two_convs moves the intermediate through memory: written and read in the forward;
        # recomputed, read, its gradient written and read twice in the backward.
        "intermediate_bytes": (7 if backward else 2) * batch * layer.mid_elements(scheme) * eb,
        "bound": "memory" if t_bytes >= t_flops else "compute",
        "predicted_s": max(t_flops, t_bytes),
    }


def random(shape, device, dtype, generator):
    return torch.randn(shape, device=device, generator=generator).to(DTYPES[dtype])


def layer_inputs(layer: Layer, scheme, batch, dtype, channels_last, device, seed=0):
    """x, weight1, weight2, bias and the dense weight they stand for; random, never zeros."""
    g = torch.Generator(device=device).manual_seed(seed)
    shape1, shape2 = layer.factor_shapes(scheme)
    x = random((batch, layer.in_channels, layer.size, layer.size), device, dtype, g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w1 = random(shape1, device, dtype, g) * 0.2
    w2 = random(shape2, device, dtype, g) * 0.2
    bias = random((layer.out_channels,), device, dtype, g)
    dense = factorization.full_weight(w1, w2, scheme)
    if channels_last:
        dense = dense.contiguous(memory_format=torch.channels_last)
    return x, w1, w2, bias, dense


def padded_rank(w1: torch.Tensor, w2: torch.Tensor, multiple: int = 8):
    """The factors with the rank padded by zeros to a multiple of ``multiple`` (weight1's output
    channels, weight2's input channels): the same layer, with channel counts cuDNN's tensor-core
    kernels prefer -- what a fair two-conv baseline runs (impl ``two_convs_r8``)."""
    r = w1.shape[0]
    padded = -(-r // multiple) * multiple
    p1 = w1.new_zeros((padded, *w1.shape[1:]))
    p1[:r] = w1
    p2 = w2.new_zeros((w2.shape[0], padded, *w2.shape[2:]))
    p2[:, :r] = w2
    return p1, p2
