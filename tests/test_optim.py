"""The shared Optax pipeline: schedules, clipping, masked weight decay, accumulation, EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genjax.errors import GenjaxError
from genjax.optim import accumulate_gradients, decay_mask, make_optimizer, make_schedule, optimizer_config
from genjax.state import apply_gradients, create_train_state

PARAMS = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}, "norm": {"scale": jnp.ones((2,))}}


def test_warmup_cosine_schedule_values():
    schedule = make_schedule(optimizer_config(learning_rate=1.0, schedule="warmup_cosine", warmup_steps=10, end_lr_factor=0.1), 110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(60)) == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-5)  # half-way down the cosine
    assert float(schedule(110)) == pytest.approx(0.1)


def test_adam_matches_optax_adam():
    grads = jax.tree.map(lambda p: jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape) - 1.0, PARAMS)
    ours = make_optimizer(optimizer_config(name="adam", learning_rate=0.01), 100).tx
    reference = optax.adam(0.01)
    u1, _ = ours.update(grads, ours.init(PARAMS), PARAMS)
    u2, _ = reference.update(grads, reference.init(PARAMS), PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)


def test_global_norm_clipping():
    grads = jax.tree.map(lambda p: 10.0 * jnp.ones_like(p), PARAMS)
    tx = make_optimizer(optimizer_config(name="sgd", momentum=0.0, learning_rate=1.0, grad_clip_norm=1.0), 10).tx
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    assert float(optax.global_norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_weight_decay_skips_biases_and_norm_scales():
    assert decay_mask(PARAMS) == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}
    tx = make_optimizer(optimizer_config(name="adamw", learning_rate=1.0, weight_decay=0.1), 10).tx
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * np.ones((3, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
    np.testing.assert_array_equal(updates["norm"]["scale"], 0.0)


def test_unknown_optimizer_and_schedule_are_clear_errors():
    with pytest.raises(GenjaxError, match="optimizer.name 'lamb'"):
        make_optimizer(optimizer_config(name="lamb"), 10)
    with pytest.raises(GenjaxError, match="optimizer.schedule 'linear'"):
        make_optimizer(optimizer_config(schedule="linear"), 10)


def _linear_loss(params, batch, rng):
    error = batch["x"] @ params["w"] - batch["y"]
    return jnp.mean(error**2), {"abs_error": jnp.mean(jnp.abs(error))}


def test_accumulated_gradients_equal_the_full_batch():
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(16, 4)), jnp.float32), "y": jnp.asarray(rng.normal(size=(16,)), jnp.float32)}
    params = {"w": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    grad_fn = jax.value_and_grad(_linear_loss, has_aux=True)
    full_metrics, full_grads = accumulate_gradients(grad_fn, params, batch, jax.random.key(0), 1)
    micro_metrics, micro_grads = accumulate_gradients(grad_fn, params, batch, jax.random.key(0), 4)
    np.testing.assert_allclose(micro_grads["w"], full_grads["w"], rtol=1e-5)
    np.testing.assert_allclose(micro_metrics["loss"], full_metrics["loss"], rtol=1e-5)
    with pytest.raises(GenjaxError, match="grad_accum_steps=3"):
        accumulate_gradients(grad_fn, params, batch, jax.random.key(0), 3)


def test_ema_tracks_parameters_and_health_scalars_are_reported():
    optimizer = make_optimizer(optimizer_config(name="sgd", momentum=0.0, learning_rate=1.0, ema_decay=0.9), 10)
    state = create_train_state({"model": PARAMS}, {"model": optimizer})
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    state, health = apply_gradients(state, "model", grads, optimizer)
    # params: 1 - 1 = 0; EMA: 0.9 * 1 + 0.1 * 0 = 0.9.
    np.testing.assert_allclose(state.params["model"]["dense"]["kernel"], 0.0)
    np.testing.assert_allclose(state.ema_params["model"]["dense"]["kernel"], 0.9, rtol=1e-6)
    assert set(health) == {"grad_norm", "update_norm", "param_norm", "learning_rate"}
    assert float(health["grad_norm"]) == pytest.approx(np.sqrt(6 + 2 + 2))
