"""bf16 mixed precision: bf16 matmuls, float32 parameters / optimizer state / losses, results close to float32."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scaling_runs
from benchmarks import step_throughput
from experiments import vae_mnist
from genjax import flops, loop, sharding
from genjax.data.loader import to_global
from genjax.errors import GenjaxError
from genjax.precision import compute_dtype

STEPS = 150
TOLERANCE = 0.01  # relative gap allowed between the bf16 and float32 final test neg_elbo


def test_unknown_dtype_is_a_clear_error():
    assert compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(GenjaxError, match="unknown dtype 'float16'"):
        compute_dtype("float16")


@pytest.mark.parametrize("model", list(step_throughput.FAMILIES))
def test_bf16_computes_in_bf16_and_keeps_float32_state(model, family_args):
    """Every family with `dtype=bfloat16`: each matmul and convolution of its train step takes bf16
    inputs, while parameters, EMA and optimizer moments stay float32."""
    family = step_throughput.FAMILIES[model]
    # The fused kernel's XLA fallback (CPU) takes the attention-score gradient in float32 by design.
    kernel = ["--config.model.attention_kernel=xla"] if model == "charlm_gpu" else []
    config = step_throughput.make_config(family, 8, "bfloat16", [*family_args(model), *kernel])
    experiment = importlib.import_module(family.module).build(config, **family.build_kwargs)
    mesh = sharding.make_mesh(1)
    batch = to_global(experiment.train_data.batch_at(0), sharding.batch_sharding(mesh))
    abstract_state, _ = loop.state_layout(experiment.task, mesh, jax.random.key(0), batch)
    floats = [leaf.dtype for leaf in jax.tree.leaves(abstract_state) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert floats and all(dtype == jnp.float32 for dtype in floats)

    jaxpr = jax.make_jaxpr(experiment.task.train_step)(abstract_state, batch, jax.random.key(1)).jaxpr
    input_dtypes = {(eqn.primitive.name, str(v.aval.dtype)) for eqn, _ in flops.matmul_equations(jaxpr) for v in eqn.invars}
    assert {dtype for _, dtype in input_dtypes} == {"bfloat16"}, input_dtypes


def test_bf16_vae_losses_are_float32(data_dir):
    config = scaling_runs.vae_config(STEPS, dtype="bfloat16", num_devices=1)
    task = vae_mnist.build(config).task
    images = jnp.ones((4, 28, 28, 1))
    params = task.model.init(jax.random.key(0), images, jax.random.key(1))["params"]
    logits, mean, _ = task.model.apply({"params": params}, images, jax.random.key(2))
    assert logits.dtype == mean.dtype == jnp.float32  # losses are computed in float32


def test_bf16_training_matches_float32_within_tolerance(tmp_path):
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = scaling_runs.vae_config(STEPS, dtype=dtype, num_devices=1, log_every=50, checkpoint_every=STEPS)
        results[dtype] = vae_mnist.train_and_evaluate(config, tmp_path / dtype)
    f32, bf16 = results["float32"]["neg_elbo"], results["bfloat16"]["neg_elbo"]
    first = scaling_runs.train_losses(tmp_path / "bfloat16")[50]
    assert np.isfinite(bf16) and bf16 < first  # it trains
    assert abs(bf16 - f32) / f32 < TOLERANCE, (f32, bf16)
