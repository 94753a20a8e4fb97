"""Analytic FLOP counts (genjax/flops.py) against hand-computed values and XLA's own cost analysis.

Tolerances against XLA: XLA also counts elementwise work (bias adds, softmax), about 1-2%
here, so 3% for dense and attention; for padded ("SAME") convolutions XLA skips the taps
that fall on padding, which on 7x7 maps are 9% of them, so 12% there.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from genjax import flops
from genjax.errors import GenjaxError


def xla_flops(fn, *args) -> float:
    """XLA's FLOP count of `fn`, compiled for the CPU: XLA:GPU hands convolutions to cuDNN custom calls,
    which its cost analysis does not count (it reports -1 for the whole program)."""
    on_cpu = jax.device_put(args, jax.devices("cpu")[0])
    return jax.jit(fn).lower(*on_cpu).compile().cost_analysis()["flops"]


def init_apply(module: nn.Module, *inputs):
    params = module.init(jax.random.key(0), *inputs)
    return params, lambda p, *x: module.apply(p, *x)


def test_dense_layer():
    x = jnp.ones((128, 784))
    params, apply = init_apply(nn.Dense(500), x)
    assert flops.dense_flops(128, 784, 500) == 2 * 128 * 784 * 500 == 100_352_000
    assert flops.count_flops(apply, params, x) == 100_352_000
    assert xla_flops(apply, params, x) == pytest.approx(100_352_000, rel=0.03)


def test_attention_block():
    """Q, K, V and output projections plus the scores and weighted values of 4 heads over 16 positions."""
    x = jnp.ones((2, 16, 64))
    params, apply = init_apply(nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=64), x)
    projections = 4 * 2 * (2 * 16) * 64 * 64
    scores_and_values = 2 * 2 * 2 * 16 * 16 * 64
    assert flops.attention_flops(2, 16, 16, 64) == scores_and_values == 131_072
    assert flops.count_flops(apply, params, x) == projections + scores_and_values == 1_179_648
    assert xla_flops(apply, params, x) == pytest.approx(1_179_648, rel=0.03)


def test_valid_convolution():
    x = jnp.ones((4, 10, 10, 8))
    params, apply = init_apply(nn.Conv(16, (3, 3), padding="VALID"), x)
    expected = 2 * 4 * (8 * 8) * (3 * 3) * 8 * 16
    assert flops.conv_flops(4, (8, 8), (3, 3), 8, 16) == expected == 589_824
    assert flops.count_flops(apply, params, x) == expected
    assert xla_flops(apply, params, x) == pytest.approx(expected, rel=0.03)


def test_strided_and_transposed_convolutions():
    """The conv VAE's layers: a stride-2 3x3 conv 14x14x32 -> 7x7x64 and its transpose 7x7x64 -> 14x14x32."""
    x = jnp.ones((8, 14, 14, 32))
    params, apply = init_apply(nn.Conv(64, (3, 3), strides=2), x)
    expected = 2 * 8 * (7 * 7) * (3 * 3) * 32 * 64
    assert flops.count_flops(apply, params, x) == flops.conv_flops(8, (7, 7), (3, 3), 32, 64) == expected
    assert xla_flops(apply, params, x) == pytest.approx(expected, rel=0.12)

    y = jnp.ones((8, 7, 7, 64))
    params, apply = init_apply(nn.ConvTranspose(32, (3, 3), strides=(2, 2)), y)
    expected = 2 * 8 * (7 * 7) * (3 * 3) * 64 * 32  # each input value scattered over a 3x3 window
    assert flops.conv_transpose_flops(8, (7, 7), (3, 3), 64, 32) == expected
    assert flops.count_flops(apply, params, y) == expected
    assert xla_flops(apply, params, y) == pytest.approx(expected, rel=0.12)


def test_gradients_cost_two_forwards_per_layer():
    """Backward of a conv: input and weight gradients, each as costly as the forward."""
    x = jnp.ones((8, 14, 14, 32))
    params, apply = init_apply(nn.Conv(64, (3, 3), strides=2), x)
    forward = flops.count_flops(apply, params, x)
    cotangent = jnp.ones((8, 7, 7, 64))

    def both_gradients(p, x):
        return jax.vjp(apply, p, x)[1](cotangent)

    assert flops.count_flops(both_gradients, params, x) == 3 * forward  # the vjp's forward + 2 gradients
    assert xla_flops(both_gradients, params, x) == pytest.approx(2 * forward, rel=0.12)  # XLA drops the unused forward


def test_mlp_training_step_is_six_n_per_example():
    batch, sizes = 32, (784, 500, 10)
    x = jnp.ones((batch, sizes[0]))
    model = nn.Sequential([nn.Dense(sizes[1]), nn.relu, nn.Dense(sizes[2])])
    params, apply = init_apply(model, x)
    weights = sizes[0] * sizes[1] + sizes[1] * sizes[2]
    assert flops.train_flops(lambda p, x: apply(p, x).sum(), params, x) == 6 * weights * batch

    # What autodiff actually runs: no gradient for the input of the first layer.
    step = lambda p, x: jax.value_and_grad(lambda p: apply(p, x).sum())(p)
    assert flops.count_flops(step, params, x) == 6 * weights * batch - 2 * batch * sizes[0] * sizes[1]


class TinyDecoder(nn.Module):
    """Embedding, `layers` blocks of causal self-attention and a 4x MLP, output projection."""

    vocab: int = 50
    d_model: int = 32
    heads: int = 4
    layers: int = 2

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        h = nn.Embed(self.vocab, self.d_model)(tokens)
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.layers):
            h = h + nn.SelfAttention(num_heads=self.heads)(nn.LayerNorm()(h), mask=mask)
            h = h + nn.Dense(self.d_model)(nn.gelu(nn.Dense(4 * self.d_model)(nn.LayerNorm()(h))))
        return nn.Dense(self.vocab)(nn.LayerNorm()(h))


def test_transformer_training_flops_formula():
    """3 x the counted forward equals (6 N + 12 L T d) per token, N the matmul weights."""
    batch, context = 3, 16
    model = TinyDecoder()
    tokens = jnp.zeros((batch, context), jnp.int32)
    params, apply = init_apply(model, tokens)
    d = model.d_model
    matmul_params = model.layers * (4 * d * d + 2 * 4 * d * d) + d * model.vocab
    expected = flops.transformer_train_flops(batch * context, matmul_params, model.layers, context, d)
    assert flops.train_flops(apply, params, tokens) == expected


def test_scan_counts_every_iteration_and_while_is_refused():
    w = jnp.ones((16, 16))

    def scanned(w):
        return jax.lax.scan(lambda h, _: (h @ w, None), jnp.ones((4, 16)), None, length=5)[0]

    assert flops.count_flops(scanned, w) == 5 * flops.dense_flops(4, 16, 16)
    with pytest.raises(GenjaxError, match="while loop"):
        flops.count_flops(lambda w: jax.lax.while_loop(lambda h: h.sum() < 0, lambda h: h @ w, w), w)
