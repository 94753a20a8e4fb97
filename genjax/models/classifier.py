"""Digit classifiers for 28x28x1 images: the Keras-example MLP and the Flax-example CNN.

Both take images scaled to [0, 1] and return class logits in float32. The CNN's
penultimate layer (`CNN.logits_and_features`) is the feature space of the
classifier-based sample-quality metrics (genjax/sample_quality.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from genjax.errors import GenjaxError

KINDS = ("mlp", "cnn")
_FIELDS = {"mlp": {"hidden": (tuple, list)}, "cnn": {"channels": (tuple, list), "hidden": int}}  # per kind: the type of each field
_KIND_NAMES = {(tuple, list): "a tuple of widths", int: "one width"}


class MLP(nn.Module):
    """[B, 28, 28, 1] -> flatten -> (Dense, ReLU, dropout) per hidden width -> logits [B, num_classes]."""

    hidden: Sequence[int] = (512, 512)
    num_classes: int = 10
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = x.reshape(x.shape[0], -1).astype(self.dtype)
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name=f"hidden{i}")(h))
            h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="logits")(h)
        return logits.astype(jnp.float32)


class CNN(nn.Module):
    """[B, 28, 28, 1] -> (3x3 conv, ReLU, 2x2 avg-pool) per channel count -> Dense(hidden), ReLU -> logits.

    With the defaults this is the Flax MNIST example's network: conv32, conv64, dense256, dense10.
    """

    channels: Sequence[int] = (32, 64)
    hidden: int = 256
    num_classes: int = 10
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    def setup(self) -> None:
        self.convs = [
            nn.Conv(c, (3, 3), dtype=self.dtype, param_dtype=jnp.float32, name=f"conv{i}") for i, c in enumerate(self.channels)
        ]
        self.penultimate = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32, name="hidden")
        self.dropout = nn.Dropout(self.dropout_rate)
        self.head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="logits")

    def logits_and_features(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """x [B, 28, 28, 1] -> (logits [B, num_classes], penultimate ReLU features [B, hidden]), float32."""
        h = x.astype(self.dtype)
        for conv in self.convs:
            h = nn.avg_pool(nn.relu(conv(h)), (2, 2), strides=(2, 2))
        features = nn.relu(self.penultimate(h.reshape(h.shape[0], -1)))
        logits = self.head(self.dropout(features, deterministic=not train))
        return logits.astype(jnp.float32), features.astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.logits_and_features(x, train)[0]


def make_classifier(model: ml_collections.ConfigDict, dtype: Any = jnp.float32) -> nn.Module:
    """The classifier named by `model.kind` ("mlp" or "cnn") with the config's widths and dropout,
    computing its matmuls/convolutions in `dtype` (parameters stay float32)."""
    for field, kind in _FIELDS.get(model.kind, {}).items():
        if not isinstance(model.get(field), kind):
            has = f"sets it to {model[field]!r}" if field in model else "lacks it"
            raise GenjaxError(
                f"model.kind '{model.kind}' needs model.{field} ({_KIND_NAMES[kind]}) and this config {has}; "
                f"train the {model.kind.upper()} with experiments.{model.kind}_mnist"
            )
    if model.kind == "mlp":
        return MLP(hidden=tuple(model.hidden), dropout_rate=model.dropout_rate, dtype=dtype)
    if model.kind == "cnn":
        return CNN(channels=tuple(model.channels), hidden=model.hidden, dropout_rate=model.dropout_rate, dtype=dtype)
    raise GenjaxError(f"unknown model.kind '{model.kind}'; choose one of {KINDS}")
