"""A CPU kernel: layer normalisation over the last axis with a hand-written backward pass.

Same function and parameters ('scale', 'bias') as `flax.linen.LayerNorm`, statistics in float32; the
epsilon is flax's 1e-6 unless given (BERT's is 1e-12, GPT-2's 1e-5). The backward pass is the
closed-form gradient instead of autodiff's, which launches fewer fusions on XLA:CPU. The transformers
use it only where an experiment's `model.backward` asks ("auto": on CPU; `uses_hand_backward`), and
`flax.linen.LayerNorm` otherwise (genjax/models/attention.py `layer_norm`).

Differentiation: reverse mode to any order (grad of grad is tested against flax's). Forward mode
(`jax.jvp`, `jax.jacfwd`, forward-over-reverse) raises, as for every `jax.custom_vjp`. The same closed
form as a `jax.custom_jvp`, which allows both, made the char LM step 1.22-1.31x slower.
"""

from __future__ import annotations

from typing import Any

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from genjax.errors import GenjaxError

EPSILON = 1e-6  # flax.linen.LayerNorm's default
BACKWARDS = ("auto", "hand", "autodiff")


def uses_hand_backward(choice: str) -> bool:
    """Whether a model built with `backward` = `choice` (one of BACKWARDS) uses the hand-written backward passes
    of LayerNorm and rotary (reverse mode only): "hand", or "auto" on a CPU backend (where they pay: the char LM's
    CPU step is 1.29x slower without them, benchmarks/RESULTS.md)."""
    if choice not in BACKWARDS:
        raise GenjaxError(f"unknown backward '{choice}'; choose one of {BACKWARDS}")
    return choice == "hand" or (choice == "auto" and jax.default_backend() == "cpu")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float = EPSILON) -> jax.Array:
    """float32 x [..., E], scale [E], bias [E] -> (x - mean) / sqrt(var + epsilon) * scale + bias, [..., E]."""
    return _forward(x, scale, bias, epsilon)[0]


def _forward(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    mean = x.mean(-1, keepdims=True)
    variance = jnp.maximum((x * x).mean(-1, keepdims=True) - mean * mean, 0.0)
    inv_std = jax.lax.rsqrt(variance + epsilon)
    normed = (x - mean) * inv_std
    return normed * scale + bias, (normed, inv_std, scale)


def _backward(epsilon: float, residuals: tuple[jax.Array, ...], grad: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    normed, inv_std, scale = residuals
    grad_normed = grad * scale
    grad_x = inv_std * (
        grad_normed - grad_normed.mean(-1, keepdims=True) - normed * (grad_normed * normed).mean(-1, keepdims=True)
    )
    rows = tuple(range(grad.ndim - 1))
    return grad_x, (grad * normed).sum(rows), grad.sum(rows)


layer_norm.defvjp(_forward, _backward)


class LayerNorm(nn.Module):
    """x [..., E] -> `layer_norm` of x in `dtype`; computed in float32 whatever the input dtype."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    epsilon: float = EPSILON
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        f32 = jnp.float32
        return layer_norm(x.astype(f32), scale.astype(f32), bias.astype(f32), self.epsilon).astype(self.dtype)
