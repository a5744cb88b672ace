"""The geometry of plain convolutions, and of the two thin convs that the ``lowrank_conv2d`` op
runs for its schemes (docs/design.md, "The schemes": ``channel`` and ``spatial``; the C++ twin
is csrc/include/trp/conv_geometry.h). Shape arithmetic only, so it works on SymInts too: the
op's fake kernel, its reference and the schemes' geometry (trp_kernels/schemes) share it."""

from __future__ import annotations

from dataclasses import dataclass


def conv_out_size(size, kernel, stride, padding, dilation):
    """Output length of a conv along one dimension."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ThinConv:
    """One plain conv of a factorised layer."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def out_hw(self, input_hw):
        return tuple(conv_out_size(input_hw[i], self.kernel[i], self.stride[i], self.padding[i],
                                   self.dilation[i]) for i in range(2))

    @property
    def weight_numel(self) -> int:
        return self.out_channels * (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]

    def macs(self, input_hw) -> tuple[int, tuple[int, int]]:
        out = self.out_hw(input_hw)       # (MACs per sample, output size)
        return self.weight_numel * out[0] * out[1], out


def chain_out_hw(convs, input_hw):
    """Output size of thin convs run one after the other."""
    for conv in convs:
        input_hw = conv.out_hw(input_hw)
    return input_hw


def op_convs(weight1_shape, weight2_shape, stride, padding, dilation, scheme: str
             ) -> tuple[ThinConv, ThinConv]:
    """The op's two thin convs for factors of these shapes: ``channel`` a kh x kw conv C->r
    with the layer's stride, padding and dilation, then a 1x1 conv r->N; ``spatial`` a kh x 1
    conv C->r with the vertical ones, then a 1 x kw conv r->N with the horizontal ones."""
    r, C, kh, kw1 = weight1_shape
    N, _, _, kw2 = weight2_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if scheme == "channel":
        return (ThinConv(C, r, (kh, kw1), (sh, sw), (ph, pw), (dh, dw)), ThinConv(r, N, (1, 1)))
    return (ThinConv(C, r, (kh, 1), (sh, 1), (ph, 0), (dh, 1)),
            ThinConv(r, N, (1, kw2), (1, sw), (0, pw), (1, dw)))
