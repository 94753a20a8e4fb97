"""DDPM family: the noise schedules and forward process on known values; a tiny real MNIST run that lowers the
held-out loss, writes its sample grid and, killed mid-run and rerun, ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import faults
from genjax.errors import GenjaxError
from genjax.metrics_log import read_metrics
from genjax.models.ddpm import UNet
from genjax.tasks.ddpm import cosine_betas, linear_betas, noise_images

STEPS, CHECKPOINT_EVERY = 40, 10


def test_schedules_match_their_papers():
    linear = linear_betas(1000)
    assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02) and np.all(np.diff(linear) > 0)
    np.testing.assert_allclose(linear_betas(500), 2 * linear_betas(1000)[::2], rtol=1e-2)  # the ends scale with 1000 / T
    cosine = cosine_betas(1000)
    alpha_bar = np.cumprod(1 - cosine)
    assert alpha_bar[0] > 0.9999 and alpha_bar[-1] < 1e-4 and cosine.max() <= 0.999


def test_forward_process_keeps_unit_variance_and_ends_in_noise():
    x0, noise = jnp.ones((2, 4, 4, 1)), jnp.full((2, 4, 4, 1), 2.0)
    alpha_bar = jnp.array([0.25, 0.0])
    out = noise_images(x0, jnp.array([0, 1]), noise, alpha_bar)
    np.testing.assert_allclose(out[0], 0.5 * 1.0 + np.sqrt(0.75) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], 2.0, rtol=1e-6)  # alpha_bar 0: pure noise


def test_unet_predicts_noise_of_the_input_shape_and_starts_at_zero():
    model = UNet(features=(8, 16), time_dim=32)
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    variables = model.init(jax.random.key(1), x, jnp.zeros((3,), jnp.int32))
    out = model.apply(variables, x, jnp.array([0, 10, 49]))
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # the last convolution starts at zero: the first loss is E[noise^2] = 1


def test_unknown_schedule_is_a_clear_error():
    from experiments import ddpm_mnist
    from genjax.optim import make_optimizer
    from genjax.tasks.ddpm import DDPMTask

    config = ddpm_mnist.get_config()
    config.diffusion.schedule = "quadratic"
    with pytest.raises(GenjaxError, match="unknown diffusion.schedule 'quadratic'"):
        DDPMTask(config, make_optimizer(config.optimizer, 10), (28, 28, 1))


def test_trains_samples_and_resumes_bit_identically_after_a_kill(tmp_path, data_dir, compile_cache):
    env = faults.environment(compile_cache)

    def command(workdir):
        return faults.command("experiments.ddpm_mnist", workdir, num_train_steps=STEPS, log_every=1, eval_every=20,
                              checkpoint_every=CHECKPOINT_EVERY, download=False)

    reference = tmp_path / "reference"
    done = faults.run(command(reference), env)
    assert done.returncode == 0, done.stderr[-3000:]
    train = [row["loss"] for row in read_metrics(reference, "train")]
    assert np.mean(train[-5:]) < 0.6 * np.mean(train[:5]), train
    validation = [row["loss"] for row in read_metrics(reference, "validation")]
    assert validation[-1] < 0.8, validation  # an untrained net predicts 0: loss E[noise^2] = 1
    assert read_metrics(reference, "test")[-1]["loss"] < 0.8
    grid = reference / "samples" / f"samples_{STEPS:07d}.png"
    assert grid.stat().st_size > 1000

    killed = tmp_path / "killed"
    process = faults.start(command(killed), env)
    while not faults.committed_steps(killed) and process.poll() is None:  # killed after its first checkpoint
        process.stdout.readline()
    process.kill()
    process.wait(timeout=60)
    assert faults.committed_steps(killed)[-1] < STEPS
    final = faults.run(command(killed), env)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resumed from" in final.stdout
    step_dir = f"checkpoints/{STEPS}"
    faults.assert_bit_identical(faults.checkpoint_arrays(killed / step_dir), faults.checkpoint_arrays(reference / step_dir))
    assert (killed / "samples" / f"samples_{STEPS:07d}.png").read_bytes() == grid.read_bytes()
