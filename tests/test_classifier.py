"""Classifiers: macro metrics on known inputs, module shapes, and a short real MLP run with its final report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import mlp_mnist
from genjax import loop, sharding
from genjax.data import sources
from genjax.data.loader import EvalBatches, to_global
from genjax.errors import GenjaxError
from genjax.metrics_log import read_metrics
from genjax.models.classifier import CNN, MLP, make_classifier
from genjax.task import TEST
from genjax.tasks.classifier import classification_metrics


def test_classification_metrics_on_known_input():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 1, 1, 1, 2, 0])
    confusion, metrics = classification_metrics(labels, predictions, 3)
    np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert metrics["f1_macro"] == pytest.approx((1 / 2 + 0.8 + 2 / 3) / 3)


def test_a_class_never_predicted_counts_as_zero_precision():
    _, metrics = classification_metrics(np.array([0, 1]), np.array([0, 0]), 2)
    assert metrics["precision_macro"] == pytest.approx(0.25) and metrics["f1_macro"] == pytest.approx(1 / 3)


def test_modules_give_float32_logits_and_features_with_float32_params():
    x = jnp.ones((5, 28, 28, 1))
    mlp = MLP(dtype=jnp.bfloat16)
    mlp_params = mlp.init(jax.random.key(0), x)["params"]
    logits = mlp.apply({"params": mlp_params}, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32
    cnn = CNN()
    cnn_params = cnn.init(jax.random.key(0), x)["params"]
    logits, features = cnn.apply({"params": cnn_params}, x, method=CNN.logits_and_features)
    assert logits.shape == (5, 10) and features.shape == (5, 256)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves((mlp_params, cnn_params)))


def test_unknown_model_kind_is_a_clear_error():
    with pytest.raises(GenjaxError, match="unknown model.kind 'resnet'"):
        make_classifier(ml_collections.ConfigDict(dict(kind="resnet")))


def test_short_mlp_run_reports_accuracy_f1_and_confusion_matrix(tmp_path, data_dir):
    config = mlp_mnist.get_config()
    config.update(dict(num_train_steps=300, log_every=100, checkpoint_every=1000, download=False))
    config.optimizer.warmup_steps = 20
    final = mlp_mnist.train_and_evaluate(config, tmp_path)
    assert final["accuracy"] > 0.93, final
    assert 0.9 < final["f1_macro"] <= 1.0 and 0.9 < final["precision_macro"] <= 1.0 and 0.9 < final["recall_macro"] <= 1.0
    assert read_metrics(tmp_path, "test")[-1]["f1_macro"] == pytest.approx(final["f1_macro"])
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 10_000


def test_evaluation_rows_hold_every_test_example_once_in_order(data_dir):
    """`loop.evaluate` hands `report` the real rows of every batch, in the split's order, padding dropped."""
    config = mlp_mnist.get_config()
    config.update(dict(num_train_steps=1, download=False))
    experiment = mlp_mnist.build(config)
    test = sources.image_arrays("mnist", "test", data_dir, False)
    subset = {k: v[:2500] for k, v in test.items()}
    experiment.eval_data[TEST] = lambda: EvalBatches(subset, 1000)  # the last batch: 500 real rows, 500 of padding
    mesh = sharding.make_mesh(1)
    data_sharding = sharding.batch_sharding(mesh)
    batch = to_global(experiment.train_data.batch_at(0), data_sharding)
    _, state_shardings = loop.state_layout(experiment.task, mesh, jax.random.key(0), batch)
    state = loop.init_state(experiment.task, state_shardings, jax.random.key(0), batch)
    _, eval_step = loop.compile_steps(experiment.task, mesh, state_shardings)

    metrics, rows = loop.evaluate(experiment, TEST, state, eval_step, data_sharding, jax.random.key(1))

    assert set(rows) == {"prediction", "label"}
    np.testing.assert_array_equal(rows["label"], subset["label"])
    logits = experiment.task.model.apply({"params": state.params["model"]}, subset["image"].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(rows["prediction"], np.argmax(logits, -1))
    assert metrics["accuracy"] == pytest.approx(np.mean(rows["prediction"] == subset["label"]), abs=1e-6)
