"""genjax's LayerNorm (hand-written backward pass) against flax.linen.LayerNorm: parameters, values, gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax.models.layer_norm import LayerNorm


def inputs(shape=(3, 7, 16)):
    keys = jax.random.split(jax.random.key(0), 4)
    x = 3.0 + 2.0 * jax.random.normal(keys[0], shape)  # a mean far from 0 tests the fast variance
    params = {"scale": 1.0 + 0.1 * jax.random.normal(keys[1], shape[-1:]), "bias": 0.1 * jax.random.normal(keys[2], shape[-1:])}
    return x, params, jax.random.normal(keys[3], shape)


def test_parameters_values_and_gradients_equal_flax():
    x, params, weights = inputs()
    ours, theirs = LayerNorm(), nn.LayerNorm()
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, theirs.init(jax.random.key(0), x))
    np.testing.assert_allclose(ours.apply({"params": params}, x), theirs.apply({"params": params}, x), atol=1e-5)

    def loss(module):
        return lambda params, x: jnp.sum(weights * module.apply({"params": params}, x))

    ours_grads = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    theirs_grads = jax.grad(loss(theirs), argnums=(0, 1))(params, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), ours_grads, theirs_grads)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_output_dtype_is_the_module_dtype_and_statistics_stay_float32(dtype):
    x, params, _ = inputs()
    out = LayerNorm(dtype=dtype).apply({"params": params}, x.astype(dtype))
    assert out.dtype == dtype
    reference = nn.LayerNorm(dtype=dtype).apply({"params": params}, x.astype(dtype))
    np.testing.assert_allclose(out.astype(jnp.float32), reference.astype(jnp.float32), atol=0.05)
    grad = jax.grad(lambda x: jnp.sum(LayerNorm(dtype=dtype).apply({"params": params}, x).astype(jnp.float32)))(x.astype(dtype))
    assert grad.dtype == dtype


def test_second_derivatives_by_reverse_over_reverse_equal_flax():
    """Hessian-vector products (grad of grad) differentiate through the hand-written backward pass.

    Forward mode (jax.jvp, jax.jacfwd, forward-over-reverse) does not apply to a custom VJP; see layer_norm.py.
    """
    x, params, weights = inputs()
    direction = jax.random.normal(jax.random.key(5), x.shape)

    def hvp(module):
        loss = lambda x: jnp.sum(weights * jnp.tanh(module.apply({"params": params}, x)))
        return jax.grad(lambda x: jnp.vdot(jax.grad(loss)(x), direction))(x)

    reference = hvp(nn.LayerNorm())
    assert float(jnp.abs(reference).max()) > 0.1  # a direction the norm is not invariant to
    np.testing.assert_allclose(hvp(LayerNorm()), reference, atol=1e-4, rtol=1e-4)
