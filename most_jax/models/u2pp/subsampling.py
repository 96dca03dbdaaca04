"""WeNet's Conv2dSubsampling4/6/8: stride-2/3 2-D convolutions (no padding) + ReLU over
(time, frequency), then a Linear to the model width.

Conv kernels are stored [X_time, X_freq, Y_in, Y_out] (torch's Conv2d weight [O, I, H, W]
permuted (2, 3, 1, 0)), under `conv/<i>` with WeNet's nn.Sequential indices (0, 2, 4: the ReLUs
sit between), so a WeNet checkpoint maps by name. The Linear (`out`; WeNet's `out.0` for x4 and
`linear` for x6/x8) reads the conv output flattened channel-major, c * F' + f, as WeNet's
transpose(1, 2).view(b, t, c * f).

The subsampling is not cached when streaming: WeNet feeds overlapping windows instead, so each
variant states its rate and right context (frames of look-ahead one output frame needs).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from most_jax.nn.mlp import Linear
from most_jax.nn.params import DTYPES, normal_param, zeros_param


@dataclasses.dataclass(frozen=True)
class Variant:
    convs: tuple[tuple[int, int], ...]  # (kernel, stride) per conv layer
    rate: int  # input frames per output frame
    right_context: int  # sum over layers of (kernel - 1) * (input frames per step of that layer's input)
    mask_slices: tuple[tuple[int, int], ...]  # WeNet's x_mask[:, :, start::step] per layer


VARIANTS = {
    "conv2d": Variant(((3, 2), (3, 2)), 4, 6, ((2, 2), (2, 2))),
    "conv2d6": Variant(((3, 2), (5, 3)), 6, 10, ((2, 2), (4, 3))),
    "conv2d8": Variant(((3, 2), (3, 2), (3, 2)), 8, 14, ((2, 2), (2, 2), (2, 2))),
}


def output_length(variant: Variant, length: int) -> int:
    """Frames out of `length` input frames: (n - k) // s + 1 per conv (no padding)."""
    for kernel, stride in variant.convs:
        length = max((length - kernel) // stride + 1, 0)
    return length


class Conv2dSubsampling(nnx.Module):
    def __init__(self, input_layer: str, idim: int, odim: int, *, rngs: nnx.Rngs, std: float, param_dtype: str,
                 dtype: str):
        if input_layer not in VARIANTS:
            raise ValueError(f"input_layer must be one of {sorted(VARIANTS)}, got {input_layer!r}")
        self.variant = VARIANTS[input_layer]
        self.dtype = DTYPES[dtype]
        convs, y_in, freq = {}, 1, idim
        for n, (kernel, stride) in enumerate(self.variant.convs):
            convs[str(2 * n)] = nnx.Dict(
                kernel=normal_param(rngs, (kernel, kernel, y_in, odim), (None, None, None, "embed"), std, param_dtype),
                bias=zeros_param((odim,), ("embed",), param_dtype))
            y_in, freq = odim, (freq - kernel) // stride + 1
        if freq < 1:
            raise ValueError(f"{idim} feature bins are too few for {input_layer} subsampling")
        self.conv = nnx.Dict(convs)
        self.out = Linear(odim * freq, odim, (None, "embed"), rngs=rngs, std=std, param_dtype=param_dtype,
                          dtype=dtype, bias=True)

    @property
    def rate(self) -> int:
        return self.variant.rate

    @property
    def right_context(self) -> int:
        return self.variant.right_context

    def __call__(self, x_BUI: jax.Array, valid_BU: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(features [B, U, I], valid frames [B, U]) -> ([B, T, D], valid [B, T])."""
        if output_length(self.variant, x_BUI.shape[1]) < 1:
            raise ValueError(f"{x_BUI.shape[1]} input frames give no output frame after "
                             f"x{self.rate} subsampling (need at least {self.right_context + 1})")
        h = x_BUI.astype(self.dtype)[..., None]  # [B, U, I, Y=1]: time and frequency are the 2-D axes
        for n, (_, stride) in enumerate(self.variant.convs):
            conv = self.conv[str(2 * n)]
            h = jax.lax.conv_general_dilated(h, conv["kernel"][...].astype(self.dtype), (stride, stride), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(h + conv["bias"][...].astype(self.dtype)[None, None, None, :])
        b, t, f, y = h.shape
        x_BTD = self.out(h.transpose(0, 1, 3, 2).reshape(b, t, y * f))
        for start, step in self.variant.mask_slices:
            valid_BU = valid_BU[:, start::step]
        return x_BTD, valid_BU
