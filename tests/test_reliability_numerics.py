"""Numerical faults: a NaN/Inf loss or gradient stops the run naming the step, the metric and the last good
checkpoint, or with `skip_nonfinite=True` skips the update and counts it; no checkpoint ever holds a NaN.

NaNs come from a real divergence (an absurd learning rate) or from a fault injector: a
loader that marks chosen batches and a VAE loss multiplied by (1 + NaN) on them, which
makes the loss and every gradient NaN exactly at those steps.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import faults
from experiments import vae_mnist
from genjax import loop, sharding
from genjax.data.loader import to_global
from genjax.errors import GenjaxError
from genjax.metrics_log import read_metrics
from genjax.tasks.vae import VAETask


class PoisonedLoader:
    """`loader`'s batches plus `poison` [B] float32: NaN in the batches at `bad_indices`, 0 elsewhere."""

    def __init__(self, loader, bad_indices: set[int]):
        self.loader, self.bad_indices = loader, bad_indices
        self.global_batch_size = loader.global_batch_size
        self.steps_per_epoch = loader.steps_per_epoch

    def batch_at(self, index: int) -> dict[str, np.ndarray]:
        batch = self.loader.batch_at(index)
        value = np.nan if index in self.bad_indices else 0.0
        return {**batch, "poison": np.full(len(batch["image"]), value, np.float32)}


class PoisonedVAETask(VAETask):
    """The VAE, with its loss times (1 + sum(poison)): bit-identical on clean batches, NaN loss and grads on poisoned."""

    def loss(self, params, batch, rng):
        loss, metrics = super().loss(params, batch, rng)
        return loss * (1.0 + batch["poison"].sum()), metrics


def tiny_config(**overrides):
    config = vae_mnist.get_config()
    config.update(dict(batch_size=32, iwae_samples=0, eval_batch_size=2000, eval_every=1000, log_every=5, checkpoint_every=5))
    config.update(overrides)
    return config


def poisoned_experiment(config, bad_indices: set[int]):
    experiment = vae_mnist.build(config)
    task = PoisonedVAETask(config, experiment.task.optimizer, experiment.task.eval_images)
    return dataclasses.replace(experiment, task=task, train_data=PoisonedLoader(experiment.train_data, bad_indices))


def assert_checkpoints_finite(workdir) -> None:
    for step in faults.committed_steps(workdir):
        arrays = faults.checkpoint_arrays(workdir / "checkpoints" / str(step))
        assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f"), f"NaN in checkpoint {step}"


def test_skipping_step_keeps_the_state_on_a_nonfinite_batch_and_updates_on_a_clean_one(data_dir):
    config = tiny_config()
    experiment = poisoned_experiment(config, bad_indices={1})
    mesh = sharding.make_mesh(1)
    data_sharding, rng = sharding.batch_sharding(mesh), jax.random.key(0)
    batch = lambda i: to_global(experiment.train_data.batch_at(i), data_sharding)
    _, shardings = loop.state_layout(experiment.task, mesh, rng, batch(0))
    train_step, _ = loop.compile_steps(experiment.task, mesh, shardings, skip_nonfinite=True)
    state, _ = train_step(loop.init_state(experiment.task, shardings, rng, batch(0)), batch(0), rng)
    before = jax.device_get(state)

    state, metrics = train_step(state, batch(1), rng)  # poisoned
    assert not np.isfinite(float(metrics["loss"])) and not np.isfinite(float(metrics["grad_norm"]))
    after = jax.device_get(state)
    assert int(after.step) == 2  # the step counter (and so the next key) still advances
    for name in ("params", "opt_state", "ema_params", "model_state"):
        assert jax.tree.all(jax.tree.map(np.array_equal, getattr(before, name), getattr(after, name))), name

    state, metrics = train_step(state, batch(2), rng)  # clean again
    assert np.isfinite(float(metrics["loss"]))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), after.params, jax.device_get(state.params))
    assert all(jax.tree.leaves(changed))


def test_nonfinite_loss_stops_naming_step_metric_and_last_good_checkpoint(data_dir, tmp_path):
    config = tiny_config(num_train_steps=30)
    with pytest.raises(GenjaxError) as error:
        loop.train_and_evaluate(config, tmp_path, poisoned_experiment(config, bad_indices={12}))
    message = str(error.value)
    assert "non-finite" in message and "loss" in message and "grad_norm" in message
    assert "at step 13" in message  # batch 12 is the 13th update
    assert f"last good checkpoint: {tmp_path.absolute() / 'checkpoints' / '10'}" in message
    assert faults.committed_steps(tmp_path) == [5, 10]  # the step-15 checkpoint was never written
    assert_checkpoints_finite(tmp_path)


@pytest.mark.slow  # a real divergence; CI covers the stop with the injected NaN above
def test_divergence_from_a_huge_learning_rate_stops_without_a_nan_checkpoint(data_dir, tmp_path):
    config = tiny_config(num_train_steps=60, log_every=1, checkpoint_every=1)
    config.optimizer.update(learning_rate=1e8, schedule="constant", warmup_steps=0)
    with pytest.raises(GenjaxError, match=r"non-finite .*at step \d+; stopped without saving") as error:
        vae_mnist.train_and_evaluate(config, tmp_path)
    steps = faults.committed_steps(tmp_path)
    stopped_at = int(str(error.value).split("at step ")[1].split(";")[0].split()[0])
    assert max(steps, default=0) == stopped_at - 1  # every finite step was saved, the NaN one never
    assert_checkpoints_finite(tmp_path)


def test_skip_nonfinite_counts_skipped_updates_and_finishes(data_dir, tmp_path):
    config = tiny_config(num_train_steps=20, skip_nonfinite=True)
    final = loop.train_and_evaluate(config, tmp_path, poisoned_experiment(config, bad_indices={3, 7, 8}))
    assert np.isfinite(final["neg_elbo"])
    rows = read_metrics(tmp_path, "train")
    assert [r["skipped_updates"] for r in rows] == [1, 2, 0, 0]  # windows of 5 steps
    assert all(np.isfinite(r["loss"]) for r in rows)  # means over the applied updates only
    assert faults.committed_steps(tmp_path) == [10, 15, 20]
    assert_checkpoints_finite(tmp_path)


@pytest.mark.slow
def test_skip_nonfinite_still_stops_when_every_update_of_a_window_is_skipped(data_dir, tmp_path):
    config = tiny_config(num_train_steps=20, skip_nonfinite=True)
    with pytest.raises(GenjaxError, match=r"at step 6 \(all 5 updates since the last log were skipped\)"):
        loop.train_and_evaluate(config, tmp_path, poisoned_experiment(config, bad_indices=set(range(5, 10))))
    assert faults.committed_steps(tmp_path) == [5]
    assert_checkpoints_finite(tmp_path)
