"""VAE family: the ELBO on known inputs, real training steps, resume, shardings, the experiment end to end."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import vae_mnist
from genjax import loop, sharding
from genjax.data.loader import to_global
from genjax.metrics_log import read_metrics
from genjax.tasks.vae import gaussian_kl, iwae_log_likelihood, neg_elbo

from conftest import REPO, emulated_cpu_env, run_module


def tiny_config(**overrides):
    config = vae_mnist.get_config()
    config.update(dict(num_train_steps=20, log_every=5, eval_every=1000, checkpoint_every=10, iwae_samples=0, eval_batch_size=2000))
    config.update(overrides)
    return config


def test_neg_elbo_on_known_inputs():
    x = jnp.asarray([[1.0, 0.0, 1.0, 1.0]])
    logits = jnp.zeros((1, 4))  # p = 1/2 per pixel: -log p(x|z) = 4 log 2
    nelbo, kl = neg_elbo(logits, x, jnp.zeros((1, 3)), jnp.zeros((1, 3)))
    assert float(kl[0]) == 0.0
    assert float(nelbo[0]) == pytest.approx(4 * math.log(2), rel=1e-6)
    # KL(N(1, e^0) || N(0, 1)) = 1/2 per dimension.
    assert float(gaussian_kl(jnp.ones((1, 3)), jnp.zeros((1, 3)))[0]) == pytest.approx(1.5)


def test_iwae_bound_is_tighter_than_the_elbo(data_dir):
    experiment = vae_mnist.build(tiny_config())
    task, mesh = experiment.task, sharding.make_mesh(1)
    batch = to_global(experiment.train_data.batch_at(0), sharding.batch_sharding(mesh))
    state = jax.jit(task.init_state)(jax.random.key(0), batch)
    x = task.eval_images["test"][:50].astype(np.float32) / 255.0
    params = state.params["model"]
    mean_elbo = -float(task.eval_step(state, {"image": task.eval_images["test"][:50], "mask": np.ones(50, bool)}, jax.random.key(1)).sums["neg_elbo"]) / 50
    iwae = float(jnp.mean(iwae_log_likelihood(task.model, params, x, jax.random.key(2), num_samples=200, chunk=100)))
    assert iwae > mean_elbo  # the k-sample bound is above the one-sample ELBO, even untrained


@pytest.mark.parametrize("kind, upsample", [("mlp", "transpose"), ("conv", "transpose"), ("conv", "subpixel")])
def test_train_step_lowers_the_loss_on_real_batches(kind, upsample, data_dir):
    config = tiny_config(batch_size=64)
    config.model.kind, config.model.upsample = kind, upsample
    config.optimizer.warmup_steps = 0
    experiment = vae_mnist.build(config)
    mesh = sharding.make_mesh(1)
    data_sharding = sharding.batch_sharding(mesh)
    rng = jax.random.key(0)
    batch0 = to_global(experiment.train_data.batch_at(0), data_sharding)
    _, shardings = loop.state_layout(experiment.task, mesh, rng, batch0)
    state = jax.jit(experiment.task.init_state, out_shardings=shardings)(rng, batch0)
    train_step, _ = loop.compile_steps(experiment.task, mesh, shardings)
    losses = []
    for index in range(60):
        state, metrics = train_step(state, to_global(experiment.train_data.batch_at(index), data_sharding), rng)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 60
    assert np.mean(losses[-10:]) < 0.5 * losses[0]
    assert train_step._cache_size() == 1  # compiled once, not per step


def _final_params(workdir: pathlib.Path):
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "meta")) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]["params"]


def test_resumed_run_is_bit_identical(tmp_path, data_dir):
    config = tiny_config()
    loop.train_and_evaluate(config, tmp_path / "straight", vae_mnist.build(config))
    half = tiny_config(num_train_steps=10)
    loop.train_and_evaluate(half, tmp_path / "resumed", vae_mnist.build(half))
    loop.train_and_evaluate(config, tmp_path / "resumed", vae_mnist.build(config))  # same command again: resumes
    step_a, params_a = _final_params(tmp_path / "straight")
    step_b, params_b = _final_params(tmp_path / "resumed")
    assert step_a == step_b == 20
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d, "train")]
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")


SHARDED_RUN = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from experiments import vae_mnist
    from genjax import loop, sharding
    from genjax.data.loader import to_global
    assert jax.device_count() == 8
    config = vae_mnist.get_config()
    experiment = vae_mnist.build(config)
    out = {}
    for devices in (1, 8):
        mesh = sharding.make_mesh(devices)
        data_sharding = sharding.batch_sharding(mesh)
        rng = jax.random.key(0)
        batch0 = to_global(experiment.train_data.batch_at(0), data_sharding)
        _, shardings = loop.state_layout(experiment.task, mesh, rng, batch0)
        state = jax.jit(experiment.task.init_state, out_shardings=shardings)(rng, batch0)
        train_step, _ = loop.compile_steps(experiment.task, mesh, shardings)
        for index in range(5):
            batch = to_global(experiment.train_data.batch_at(index), data_sharding)
            assert len(batch["image"].sharding.device_set) == devices
            state, metrics = train_step(state, batch, rng)
        out[devices] = {"loss": float(metrics["loss"]),
                        "params": [np.asarray(p).ravel()[:50].tolist() for p in jax.tree.leaves(state.params)]}
    print(json.dumps(out))
    """
)


def test_eight_device_mesh_matches_one_device(data_dir):
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_RUN], cwd=REPO, capture_output=True, text=True, timeout=300,
        env=emulated_cpu_env(8),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["1"]["loss"] == pytest.approx(out["8"]["loss"], rel=1e-5)
    for a, b in zip(out["1"]["params"], out["8"]["params"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_experiment_end_to_end(tmp_path, data_dir):
    workdir = tmp_path / "vae"
    result = run_module(
        "experiments.vae_mnist", "--workdir", str(workdir), "--config.num_train_steps=30", "--config.eval_every=15",
        "--config.log_every=10", "--config.iwae_samples=100", "--config.model.latents=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in read_metrics(workdir, "validation")] == [15, 30]
    test_rows = read_metrics(workdir, "test")
    assert [r["step"] for r in test_rows] == [30]
    final = test_rows[-1]
    assert final["nll"] <= final["neg_elbo"] + 1e-3  # the IWAE bound is at least as tight as the ELBO
    train_rows = read_metrics(workdir, "train")
    assert {"loss", "neg_elbo", "kl", "grad_norm", "param_norm", "update_norm", "learning_rate", "steps_per_s"} <= set(train_rows[-1])
    assert json.loads((workdir / "config.json").read_text())["model"]["latents"] == 2
    samples = {p.name for p in (workdir / "samples").iterdir()}
    assert {"samples_0000030.png", "reconstructions_0000030.png", "manifold_0000030.png"} <= samples
    assert any((workdir / "tensorboard").iterdir())
    assert (workdir / "checkpoints" / "30").is_dir()
    assert "step 30  test " in result.stdout and "steps/s" in result.stdout
