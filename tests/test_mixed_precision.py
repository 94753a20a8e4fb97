"""bf16 mixed precision: bf16 matmuls, float32 parameters / optimizer state / losses, results close to float32."""

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest

import scaling_runs
from experiments import vae_mnist
from genjax import loop, sharding
from genjax.data.loader import to_global
from genjax.errors import GenjaxError
from genjax.precision import compute_dtype

STEPS = 150
TOLERANCE = 0.01  # relative gap allowed between the bf16 and float32 final test neg_elbo


def test_unknown_dtype_is_a_clear_error():
    assert compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(GenjaxError, match="unknown dtype 'float16'"):
        compute_dtype("float16")


def test_bf16_computes_in_bf16_and_keeps_float32_state():
    config = scaling_runs.vae_config(STEPS, dtype="bfloat16", num_devices=1)
    experiment = vae_mnist.build(config)
    mesh = sharding.make_mesh(1)
    batch = to_global(experiment.train_data.batch_at(0), sharding.batch_sharding(mesh))
    abstract_state, shardings = loop.state_layout(experiment.task, mesh, jax.random.key(0), batch)
    floats = [leaf.dtype for leaf in jax.tree.leaves(abstract_state) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert floats and all(dtype == jnp.float32 for dtype in floats)  # params, EMA, Adam moments

    state = loop.init_state(experiment.task, shardings, jax.random.key(0), batch)
    jaxpr = jax.make_jaxpr(experiment.task.train_step)(state, batch, jax.random.key(1))
    matmul_dtypes = {str(eqn.invars[0].aval.dtype) for eqn in _equations(jaxpr.jaxpr) if eqn.primitive.name == "dot_general"}
    assert matmul_dtypes == {"bfloat16"}
    logits, mean, _ = experiment.task.model.apply({"params": state.params["model"]}, batch["image"] / 255.0, jax.random.key(2))
    assert logits.dtype == mean.dtype == jnp.float32  # losses are computed in float32


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jex.core.jaxprs_in_params(eqn.params):
            yield from _equations(sub)


def test_bf16_training_matches_float32_within_tolerance(tmp_path):
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = scaling_runs.vae_config(STEPS, dtype=dtype, num_devices=1, log_every=50, checkpoint_every=STEPS)
        results[dtype] = vae_mnist.train_and_evaluate(config, tmp_path / dtype)
    f32, bf16 = results["float32"]["neg_elbo"], results["bfloat16"]["neg_elbo"]
    first = scaling_runs.train_losses(tmp_path / "bfloat16")[50]
    assert np.isfinite(bf16) and bf16 < first  # it trains
    assert abs(bf16 - f32) / f32 < TOLERANCE, (f32, bf16)
