"""VAE encoders and decoders for 28x28x1 images: the classic MLP (784-500-z) and a small conv net."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGE_SHAPE = (28, 28, 1)


class MLPEncoder(nn.Module):
    """[B, 28, 28, 1] -> (mean, logvar), each [B, latents]."""

    hidden: int = 500
    latents: int = 20

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.latents, name="mean")(h), nn.Dense(self.latents, name="logvar")(h)


class MLPDecoder(nn.Module):
    """[B, latents] -> Bernoulli logits [B, 28, 28, 1]."""

    hidden: int = 500

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(z))
        return nn.Dense(28 * 28, name="logits")(h).reshape(z.shape[0], *IMAGE_SHAPE)


class ConvEncoder(nn.Module):
    """[B, 28, 28, 1] -> two stride-2 convs (14x14, 7x7) -> dense -> (mean, logvar) [B, latents]."""

    features: int = 32
    hidden: int = 256
    latents: int = 20

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.relu(nn.Conv(self.features, (3, 3), strides=2, name="conv1")(x))
        h = nn.relu(nn.Conv(2 * self.features, (3, 3), strides=2, name="conv2")(h))
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(h.reshape(h.shape[0], -1)))
        return nn.Dense(self.latents, name="mean")(h), nn.Dense(self.latents, name="logvar")(h)


class ConvDecoder(nn.Module):
    """[B, latents] -> dense 7x7 -> two stride-2 transposed convs -> logits [B, 28, 28, 1]."""

    features: int = 32
    hidden: int = 256

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(z))
        h = nn.relu(nn.Dense(7 * 7 * 2 * self.features, name="project")(h)).reshape(z.shape[0], 7, 7, 2 * self.features)
        h = nn.relu(nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), name="up1")(h))
        h = nn.relu(nn.ConvTranspose(self.features, (3, 3), strides=(2, 2), name="up2")(h))
        return nn.Conv(1, (3, 3), name="logits")(h)


class VAE(nn.Module):
    """Gaussian encoder q(z|x), Bernoulli decoder p(x|z), standard normal prior.

    `kind` is "mlp" (784-hidden-latents, the classic) or "conv".
    """

    kind: str = "mlp"
    hidden: int = 500
    latents: int = 20

    def setup(self) -> None:
        if self.kind == "mlp":
            self.encoder = MLPEncoder(self.hidden, self.latents)
            self.decoder = MLPDecoder(self.hidden)
        elif self.kind == "conv":
            self.encoder = ConvEncoder(hidden=self.hidden, latents=self.latents)
            self.decoder = ConvDecoder(hidden=self.hidden)
        else:
            raise ValueError(f"unknown VAE kind '{self.kind}'; choose 'mlp' or 'conv'")

    def __call__(self, x: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, 28, 28, 1] in {0, 1} -> (logits [B, 28, 28, 1], mean [B, z], logvar [B, z])."""
        mean, logvar = self.encoder(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        return self.decoder(z), mean, logvar

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        return self.decoder(z)
