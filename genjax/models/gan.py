"""DCGAN networks for 28x28x1 images in [-1, 1]: a batch-norm generator and a leaky-ReLU discriminator."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.models.upsample import Upsample


class Generator(nn.Module):
    """z [B, latents] -> (Dense, BN, ReLU -> [B, hidden]) -> Dense, BN, ReLU -> [B, 7, 7, 2f]
    -> 2x upsample, BN, ReLU -> [B, 14, 14, f] -> 2x upsample, tanh -> images [B, 28, 28, 1] in [-1, 1].

    `hidden` > 0 adds the fully connected layer in parentheses, as TF-GAN's MNIST generator has (1024 units);
    0 projects the latents straight to 7x7. `top_features` > 0 makes the second upsampling end in
    [B, 28, 28, top_features] (BN, ReLU) and a 3x3 convolution to the image, as TF-GAN's ends at full resolution.

    Batch norm uses the batch's statistics when `train` (updating `batch_stats`) and the running ones otherwise.
    """

    features: int = 64
    upsample: str = "subpixel"
    hidden: int = 0
    top_features: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, dtype=self.dtype, param_dtype=jnp.float32)
        dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        h = nn.relu(norm(name="hidden_norm")(dense(self.hidden, name="hidden")(z))) if self.hidden else z
        h = nn.relu(norm(name="project_norm")(dense(7 * 7 * 2 * self.features, name="project")(h)))
        h = h.reshape(z.shape[0], 7, 7, 2 * self.features)
        h = Upsample(self.features, self.upsample, use_bias=False, dtype=self.dtype, name="up1")(h)
        h = nn.relu(norm(name="up1_norm")(h))
        if self.top_features:
            h = nn.relu(norm(name="up2_norm")(Upsample(self.top_features, self.upsample, use_bias=False, dtype=self.dtype, name="up2")(h)))
            h = nn.Conv(1, (3, 3), dtype=self.dtype, param_dtype=jnp.float32, name="to_image")(h)
        else:
            h = Upsample(1, self.upsample, dtype=self.dtype, name="up2")(h)
        return jnp.tanh(h.astype(jnp.float32))


class Discriminator(nn.Module):
    """x [B, 28, 28, 1] in [-1, 1] -> 4x4 stride-2 conv (f), leaky ReLU -> 4x4 stride-2 conv (2f), leaky ReLU
    -> flatten -> Dense(1) -> real-vs-fake logits [B] (no normalisation, so per-example penalties stay valid)."""

    features: int = 64
    negative_slope: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(nn.Conv, kernel_size=(4, 4), strides=(2, 2), dtype=self.dtype, param_dtype=jnp.float32)
        h = nn.leaky_relu(conv(self.features, name="conv1")(x.astype(self.dtype)), self.negative_slope)
        h = nn.leaky_relu(conv(2 * self.features, name="conv2")(h), self.negative_slope)
        logits = nn.Dense(1, dtype=self.dtype, param_dtype=jnp.float32, name="logits")(h.reshape(h.shape[0], -1))
        return logits[:, 0].astype(jnp.float32)
