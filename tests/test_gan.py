"""GAN family: losses on known inputs, network shapes, a short real run that lowers FID, bit-identical resume."""

from __future__ import annotations

import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import gan_mnist
from genjax.errors import GenjaxError
from genjax.metrics_log import read_metrics
from genjax.models.gan import Discriminator, Generator
from genjax.models.upsample import depth_to_space
from genjax.tasks.gan import (
    hinge_discriminator_loss,
    hinge_generator_loss,
    non_saturating_discriminator_loss,
    non_saturating_generator_loss,
    r1_penalty,
)


def test_non_saturating_losses_on_known_inputs():
    zeros = jnp.zeros(4)
    np.testing.assert_allclose(non_saturating_discriminator_loss(zeros, zeros), 2 * math.log(2), rtol=1e-6)
    np.testing.assert_allclose(non_saturating_generator_loss(zeros), math.log(2), rtol=1e-6)
    confident = non_saturating_discriminator_loss(jnp.full(4, 10.0), jnp.full(4, -10.0))
    np.testing.assert_allclose(confident, 2 * math.log1p(math.exp(-10.0)), rtol=1e-5)
    # The generator's gradient pushes its logits up and stays large where D rejects the fakes.
    grad = jax.grad(non_saturating_generator_loss)(jnp.array([-10.0, 0.0]))
    np.testing.assert_allclose(grad, [-0.5 * (1 - jax.nn.sigmoid(-10.0)), -0.25], rtol=1e-5)


def test_hinge_losses_on_known_inputs():
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5])
    np.testing.assert_allclose(hinge_discriminator_loss(real, fake), (0.0 + 0.5) / 2 + (0.0 + 1.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(hinge_generator_loss(jnp.array([1.0, 3.0])), -2.0, rtol=1e-6)


def test_r1_penalty_is_the_mean_squared_input_gradient_norm_of_each_real_image():
    discriminator = Discriminator(features=8)
    images = jax.random.uniform(jax.random.key(0), (5, 28, 28, 1), minval=-1.0, maxval=1.0)
    params = discriminator.init(jax.random.key(1), images)["params"]
    discriminate = lambda x: discriminator.apply({"params": params}, x)
    one_by_one = jax.vmap(jax.grad(lambda x: discriminate(x[None])[0]))(images)  # each image through D alone
    expected = jnp.mean(jnp.sum(one_by_one**2, axis=(1, 2, 3)))
    assert float(expected) > 0
    np.testing.assert_allclose(r1_penalty(discriminate, images), expected, rtol=1e-5)


def test_depth_to_space_places_channel_groups_as_sub_pixels():
    x = jnp.arange(2 * 4 * 3).reshape(1, 1, 2, 4 * 3)  # [B=1, H=1, W=2, 4 * C=3]
    y = depth_to_space(x)
    assert y.shape == (1, 2, 4, 3)
    np.testing.assert_array_equal(y[0, 0, 0], x[0, 0, 0, 0:3])  # top-left sub-pixel of input pixel (0, 0)
    np.testing.assert_array_equal(y[0, 0, 1], x[0, 0, 0, 3:6])  # top-right
    np.testing.assert_array_equal(y[0, 1, 0], x[0, 0, 0, 6:9])  # bottom-left
    np.testing.assert_array_equal(y[0, 1, 3], x[0, 0, 1, 9:12])  # bottom-right of input pixel (0, 1)


@pytest.mark.parametrize("upsample, hidden, top", [("subpixel", 0, 0), ("subpixel", 12, 0), ("transpose", 0, 0), ("subpixel", 0, 4), ("transpose", 0, 4)])
def test_networks_shapes_and_float32_params(upsample, hidden, top):
    generator = Generator(features=8, upsample=upsample, hidden=hidden, top_features=top, dtype=jnp.bfloat16)
    discriminator = Discriminator(features=8)
    variables = generator.init(jax.random.key(0), jnp.zeros((3, 16)), train=False)
    project_inputs = hidden or 16  # the latents, or the hidden layer's units
    assert variables["params"]["project"]["kernel"].shape == (project_inputs, 7 * 7 * 16)
    assert ("hidden" in variables["params"]) == (hidden > 0)
    if top:  # a 28x28 stage of `top` channels, then a 3x3 convolution to the image
        assert variables["params"]["to_image"]["kernel"].shape == (3, 3, top, 1) and "up2_norm" in variables["params"]
    else:
        assert "to_image" not in variables["params"]
    images, updates = generator.apply(variables, jnp.ones((3, 16)), train=True, mutable=["batch_stats"])
    assert images.shape == (3, 28, 28, 1) and images.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(images))) <= 1.0 and "batch_stats" in updates
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    logits = discriminator.apply(discriminator.init(jax.random.key(1), images), images)
    assert logits.shape == (3,)


def small_config(feature_checkpoint: pathlib.Path, **overrides):
    """A GAN small enough for a test: narrow networks, 1,000 quality samples."""
    config = gan_mnist.get_config()
    config.update(dict(batch_size=32, log_every=20, feature_checkpoint=str(feature_checkpoint), num_quality_samples=1000, download=False))
    config.model.update(dict(latents=16, generator_hidden=32, generator_features=16, discriminator_features=16))
    config.optimizers.generator.update(dict(learning_rate=1e-3, ema_decay=0.9))
    config.optimizers.discriminator.learning_rate = 1e-3
    config.update(overrides)
    return config


def test_short_run_lowers_the_generator_fid(tmp_path, feature_checkpoint):
    config = small_config(feature_checkpoint, num_train_steps=300, eval_every=60, checkpoint_every=1000)
    final = gan_mnist.train_and_evaluate(config, tmp_path)
    evaluations = read_metrics(tmp_path, "validation")
    assert [row["step"] for row in evaluations] == [60, 120, 180, 240, 300]
    assert [row["step"] for row in read_metrics(tmp_path, "test")] == [300]
    first, last = evaluations[0]["classifier_fid"], evaluations[-1]["classifier_fid"]
    assert last < 0.8 * first, [row["classifier_fid"] for row in evaluations]
    assert final["real_train_classifier_fid"] < last and final["real_test_classifier_is"] > final["classifier_is"] >= 1.0
    assert sorted(p.name for p in (tmp_path / "samples").iterdir())[-1] == "samples_0000300.png"


def test_lazy_r1_enters_the_discriminator_objective_only_on_its_steps(feature_checkpoint):
    """With r1_gamma, step 0 (a multiple of r1_every) adds gamma / 2 * r1_every * R1 to the discriminator's
    objective and changes its update; step 1 does not."""
    steps = {}
    for gamma in (0.0, 10.0):
        experiment = gan_mnist.build(small_config(feature_checkpoint, r1_gamma=gamma, r1_every=4))
        batch = {"image": jnp.asarray(experiment.train_data.batch_at(0)["image"])}
        state = experiment.task.init_state(jax.random.key(0), batch)
        step = jax.jit(experiment.task.train_step)
        first = step(state, batch, jax.random.key(1))
        steps[gamma] = (first, step(state.replace(step=state.step + 1), batch, jax.random.key(1)))
    ((plain, plain_metrics), (plain_1, _)), ((penalised, metrics), (penalised_1, metrics_1)) = steps[0.0], steps[10.0]
    assert "r1_penalty" not in plain_metrics and float(metrics["r1_penalty"]) > 0 and float(metrics_1["r1_penalty"]) == 0
    np.testing.assert_allclose(metrics["loss"], metrics["d_loss"] + 5.0 * metrics["r1_penalty"], rtol=1e-5)
    np.testing.assert_allclose(metrics["d_loss"], plain_metrics["d_loss"], rtol=1e-6)  # same state, same batch

    def max_change(a, b):
        return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), a, b)))

    assert max_change(penalised.params["discriminator"], plain.params["discriminator"]) > 0
    assert max_change(penalised_1.params["discriminator"], plain_1.params["discriminator"]) == 0


def restore_raw_state(workdir: pathlib.Path, step: int):
    return ocp.StandardCheckpointer().restore((workdir / "checkpoints" / str(step) / "state").absolute())


def test_resume_is_bit_identical(tmp_path, feature_checkpoint):
    config = small_config(feature_checkpoint, num_train_steps=20, eval_every=1000, checkpoint_every=10)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    gan_mnist.train_and_evaluate(config, straight)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "20")  # as if preempted after the step-10 checkpoint
    gan_mnist.train_and_evaluate(config, resumed)
    a, b = restore_raw_state(straight, 20), restore_raw_state(resumed, 20)
    assert set(a["params"]) == set(a["opt_state"]) == {"generator", "discriminator"}
    assert set(a["ema_params"]) == set(a["model_state"]) == {"generator"}
    paths_a, paths_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in paths_a] == [p for p, _ in paths_b]
    for (path, x), (_, y) in zip(paths_a, paths_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    assert int(a["step"]) == 20


def test_unknown_loss_and_missing_feature_network_are_clear_errors(tmp_path, feature_checkpoint):
    with pytest.raises(GenjaxError, match="unknown loss 'wasserstein'"):
        gan_mnist.build(small_config(feature_checkpoint, loss="wasserstein"))
    with pytest.raises(GenjaxError, match="r1_gamma=-1.0 is negative"):
        gan_mnist.build(small_config(feature_checkpoint, r1_gamma=-1.0))
    with pytest.raises(GenjaxError, match="feature checkpoint .* not found"):
        gan_mnist.build(small_config(tmp_path / "missing"))


def test_a_task_built_without_metrics_trains_but_refuses_to_score(tmp_path):
    """The step benchmarks build the GAN without its metric CNN: scoring samples is then a clear error."""
    experiment = gan_mnist.build(small_config(tmp_path / "no_cnn_here"), with_metrics=False)
    task = experiment.task
    state = task.init_state(jax.random.key(0), experiment.train_data.batch_at(0))
    with pytest.raises(GenjaxError, match=r"built without its metric CNN .* with_metrics=True"):
        task.sample_quality(task.sampling_variables(state), jax.random.key(1), "validation")
