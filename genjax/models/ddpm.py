"""A small U-Net that predicts the noise of a diffusion step (Ho et al.'s DDPM network, scaled down for 28x28)."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Transformer-style sinusoidal features of integer timesteps: t [B] -> [B, dim] (dim even)."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(10_000.0) * jnp.arange(half) / half)
    angles = t.astype(jnp.float32)[:, None] * frequencies[None]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, and a residual (1x1-projected if needed)."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, time: jax.Array) -> jax.Array:
        """x [B, H, W, C], time [B, E] -> [B, H, W, features]."""
        groups = min(8, self.features)
        h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(nn.silu(nn.GroupNorm(min(8, x.shape[-1]), dtype=self.dtype)(x)))
        h = h + nn.Dense(self.features, dtype=self.dtype)(nn.silu(time))[:, None, None, :]
        h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(nn.silu(nn.GroupNorm(groups, dtype=self.dtype)(h)))
        skip = x if x.shape[-1] == self.features else nn.Conv(self.features, (1, 1), dtype=self.dtype)(x)
        return skip + h


class UNet(nn.Module):
    """Noise prediction eps(x_t, t): one ResBlock per resolution on the way down (28 -> 14 -> 7 for 2 levels), one
    in the middle, and one per resolution on the way up, each fed the matching skip connection.

    Attributes:
      features: channels per resolution, e.g. (32, 64): the first at full size, each next after a 2x2 downsampling.
      time_dim: width of the timestep embedding.
    """

    features: Sequence[int] = (32, 64)
    time_dim: int = 128
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """x [B, H, W, C] (H, W divisible by 2**(levels-1)), t int [B] -> predicted noise [B, H, W, C], float32."""
        time = nn.Dense(self.time_dim, dtype=self.dtype)(timestep_embedding(t, self.time_dim))
        time = nn.Dense(self.time_dim, dtype=self.dtype)(nn.silu(time))
        h = nn.Conv(self.features[0], (3, 3), dtype=self.dtype)(x)
        skips = []
        for level, features in enumerate(self.features):
            if level > 0:
                h = nn.Conv(features, (3, 3), strides=(2, 2), dtype=self.dtype)(h)
            h = ResBlock(features, self.dtype)(h, time)
            skips.append(h)
        h = ResBlock(self.features[-1], self.dtype)(h, time)
        for level in reversed(range(len(self.features))):
            h = ResBlock(self.features[level], self.dtype)(jnp.concatenate([h, skips[level]], axis=-1), time)
            if level > 0:
                b, height, width, c = h.shape
                h = jax.image.resize(h, (b, 2 * height, 2 * width, c), "nearest")
        h = nn.silu(nn.GroupNorm(min(8, self.features[0]), dtype=self.dtype)(h))
        out = nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
        return out.astype(jnp.float32)
