"""VAE encoders and decoders for 28x28x1 images: the classic MLP (784-500-z) and a small conv net.

Every module computes in `dtype` (float32 or bfloat16) with float32 parameters
(Flax's default `param_dtype`); the VAE hands its outputs back in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.errors import GenjaxError
from genjax.models.upsample import Upsample

KINDS = ("mlp", "conv")

IMAGE_SHAPE = (28, 28, 1)


class MLPEncoder(nn.Module):
    """[B, 28, 28, 1] -> (mean, logvar), each [B, latents]."""

    hidden: int = 500
    latents: int = 20
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.latents, dtype=self.dtype, name="mean")(h), nn.Dense(self.latents, dtype=self.dtype, name="logvar")(h)


class MLPDecoder(nn.Module):
    """[B, latents] -> Bernoulli logits [B, 28, 28, 1]."""

    hidden: int = 500
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(z))
        return nn.Dense(28 * 28, dtype=self.dtype, name="logits")(h).reshape(z.shape[0], *IMAGE_SHAPE)


class ConvEncoder(nn.Module):
    """[B, 28, 28, 1] -> two stride-2 convs (14x14, 7x7) -> dense -> (mean, logvar) [B, latents]."""

    features: int = 32
    hidden: int = 256
    latents: int = 20
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.relu(nn.Conv(self.features, (3, 3), strides=2, dtype=self.dtype, name="conv1")(x))
        h = nn.relu(nn.Conv(2 * self.features, (3, 3), strides=2, dtype=self.dtype, name="conv2")(h))
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(h.reshape(h.shape[0], -1)))
        return nn.Dense(self.latents, dtype=self.dtype, name="mean")(h), nn.Dense(self.latents, dtype=self.dtype, name="logvar")(h)


class ConvDecoder(nn.Module):
    """[B, latents] -> dense 7x7 -> two 2x upsamplings (14x14, 28x28) -> logits [B, 28, 28, 1].

    `upsample`: "subpixel" (3x3 convolutions to 4x the channels, then depth-to-space;
    genjax/models/upsample.py) or "transpose" (3x3 stride-2 transposed convolutions).
    """

    features: int = 32
    hidden: int = 256
    upsample: str = "subpixel"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(z))
        h = nn.relu(nn.Dense(7 * 7 * 2 * self.features, dtype=self.dtype, name="project")(h))
        h = h.reshape(z.shape[0], 7, 7, 2 * self.features)
        for name in ("up1", "up2"):
            h = nn.relu(Upsample(self.features, self.upsample, transpose_kernel=3, dtype=self.dtype, name=name)(h))
        return nn.Conv(1, (3, 3), dtype=self.dtype, name="logits")(h)


class VAE(nn.Module):
    """Gaussian encoder q(z|x), Bernoulli decoder p(x|z), standard normal prior.

    `kind` is "mlp" (784-hidden-latents, the classic) or "conv"; `upsample` is the conv decoder's
    (see ConvDecoder). The networks compute in `dtype`; means, log-variances, latents and logits are float32.
    """

    kind: str = "mlp"
    hidden: int = 500
    latents: int = 20
    upsample: str = "subpixel"
    dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        if self.kind == "mlp":
            self.encoder = MLPEncoder(self.hidden, self.latents, self.dtype)
            self.decoder = MLPDecoder(self.hidden, self.dtype)
        elif self.kind == "conv":
            self.encoder = ConvEncoder(hidden=self.hidden, latents=self.latents, dtype=self.dtype)
            self.decoder = ConvDecoder(hidden=self.hidden, upsample=self.upsample, dtype=self.dtype)
        else:
            raise GenjaxError(f"unknown model.kind '{self.kind}'; choose one of {KINDS}")

    def __call__(self, x: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, 28, 28, 1] in {0, 1} -> (logits [B, 28, 28, 1], mean [B, z], logvar [B, z])."""
        mean, logvar = self.encode(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        return self.decode(z), mean, logvar

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [B, 28, 28, 1] -> float32 (mean, logvar) [B, z]."""
        mean, logvar = self.encoder(x)
        return mean.astype(jnp.float32), logvar.astype(jnp.float32)

    def decode(self, z: jax.Array) -> jax.Array:
        """z [B, z] -> float32 logits [B, 28, 28, 1]."""
        return self.decoder(z).astype(jnp.float32)
