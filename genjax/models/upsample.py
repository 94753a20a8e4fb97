"""2x spatial upsampling for convolutional decoders and generators: transposed or sub-pixel convolution."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.errors import GenjaxError

UPSAMPLINGS = ("subpixel", "transpose")


def depth_to_space(x: jax.Array, factor: int = 2) -> jax.Array:
    """[B, H, W, factor^2 * C] -> [B, factor*H, factor*W, C]: each channel group fills one sub-pixel position."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, factor, factor, c // factor**2).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * factor, w * factor, c // factor**2)


class Upsample(nn.Module):
    """2x spatial upsampling to `features` channels: [B, H, W, C] -> [B, 2H, 2W, features].

    "transpose": a stride-2 transposed convolution with a `transpose_kernel` square kernel.
    "subpixel": a 3x3 convolution to 4*features channels, then depth_to_space (Shi et al. 2016). On CPU,
    where XLA's transposed convolutions are slow, it is the faster choice: 9.5x for the DCGAN generator's first layer
    (the last, to one channel, costs the same), 1.3-1.6x for the conv VAE's whole step (benchmarks/HISTORY.md).
    """

    features: int
    kind: str = "subpixel"
    transpose_kernel: int = 4
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "transpose":
            kernel = (self.transpose_kernel, self.transpose_kernel)
            layer = nn.ConvTranspose(self.features, kernel, strides=(2, 2), use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32)
            return layer(x)
        if self.kind == "subpixel":
            layer = nn.Conv(4 * self.features, (3, 3), use_bias=self.use_bias, dtype=self.dtype, param_dtype=jnp.float32)
            return depth_to_space(layer(x))
        raise GenjaxError(f"unknown model.upsample '{self.kind}'; choose one of {UPSAMPLINGS}")
