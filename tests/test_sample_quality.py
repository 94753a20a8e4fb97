"""Classifier-IS/FID: the matrix square root against scipy, FID/IS sanity on real digits, feature-checkpoint errors."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import scipy.linalg

from conftest import train_cnn
from genjax.data import sources
from genjax.errors import GenjaxError
from genjax.sample_quality import (
    classifier_score,
    feature_statistics,
    frechet_distance,
    load_feature_network,
    sqrtm_psd,
    trace_sqrt_product,
)


@pytest.fixture(scope="module")
def test_images(data_dir) -> np.ndarray:
    return sources.image_arrays("mnist", "test", data_dir, False)["image"][:2000].astype(np.float32) / 255.0


def random_psd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, 2 * dim))
    return (a @ a.T / (2 * dim)).astype(np.float32)


def test_sqrtm_psd_matches_scipy():
    matrix = random_psd(np.random.default_rng(0), 40)
    root = np.asarray(sqrtm_psd(jnp.asarray(matrix)))
    np.testing.assert_allclose(root, np.real(scipy.linalg.sqrtm(matrix.astype(np.float64))), atol=1e-4)
    np.testing.assert_allclose(root @ root, matrix, atol=1e-4)


def test_trace_sqrt_product_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = random_psd(rng, 40), random_psd(rng, 40)
    reference = np.trace(np.real(scipy.linalg.sqrtm(a.astype(np.float64) @ b.astype(np.float64))))
    np.testing.assert_allclose(float(trace_sqrt_product(jnp.asarray(a), jnp.asarray(b))), reference, rtol=1e-4)


def test_frechet_distance_matches_scipy_formula():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(500, 16)), rng.normal(0.3, 1.5, size=(400, 16))
    mean_x, cov_x = x.mean(0), np.cov(x, rowvar=False)
    mean_y, cov_y = y.mean(0), np.cov(y, rowvar=False)
    reference = np.sum((mean_x - mean_y) ** 2) + np.trace(cov_x + cov_y - 2 * np.real(scipy.linalg.sqrtm(cov_x @ cov_y)))
    stats_x = feature_statistics(jnp.asarray(x, jnp.float32))
    stats_y = feature_statistics(jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(float(frechet_distance(*stats_x, *stats_y)), reference, rtol=1e-4)


def test_classifier_score_bounds():
    one_class = jnp.tile(jnp.array([[5.0, 1.0, 0.0, -2.0]]), (100, 1))
    np.testing.assert_allclose(float(classifier_score(one_class)), 1.0, atol=1e-5)
    confident_balanced = 50.0 * jax.nn.one_hot(jnp.arange(1000) % 10, 10)
    np.testing.assert_allclose(float(classifier_score(confident_balanced)), 10.0, rtol=1e-4)


def test_classifier_score_stays_finite_when_classes_get_zero_probability():
    """5 of 10 classes predicted, each with logit gaps of 120: the other 5 classes' probabilities underflow to 0 in
    float32, and 0 * log 0 counts as 0 (numpy in float64: 5.0)."""
    logits = np.full((1000, 10), -120.0, np.float32)
    logits[np.arange(1000), np.arange(1000) % 5] = 0.0
    np.testing.assert_allclose(float(classifier_score(logits)), 5.0, rtol=1e-5)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(feature_checkpoint, test_images):
    network = load_feature_network(feature_checkpoint)
    _, mean, cov = network.statistics(test_images)
    self_fid = network.scores(test_images, (mean, cov))["classifier_fid"]
    noise = np.random.default_rng(0).normal(size=test_images.shape).astype(np.float32)
    noisy = [network.scores(np.clip(test_images + s * noise, 0, 1), (mean, cov))["classifier_fid"] for s in (0.1, 0.3, 0.6)]
    assert abs(self_fid) < 1e-2 * noisy[0], (self_fid, noisy)
    assert noisy[0] < noisy[1] < noisy[2], noisy


def test_is_of_one_repeated_digit_is_one_and_real_digits_score_high(feature_checkpoint, test_images):
    network = load_feature_network(feature_checkpoint)
    repeated = network.scores(np.repeat(test_images[:1], 500, axis=0), network.statistics(test_images)[1:])
    np.testing.assert_allclose(repeated["classifier_is"], 1.0, atol=1e-4)
    real = float(classifier_score(network.logits_and_features(test_images)[0]))
    assert real > 5.0, real  # ten classes, fairly confident even for this tiny CNN


def test_missing_feature_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(GenjaxError, match="not found.*experiments.cnn_mnist"):
        load_feature_network(tmp_path / "no_such_run")
    with pytest.raises(GenjaxError, match="feature_checkpoint is empty"):
        load_feature_network("")


def test_feature_checkpoint_of_the_wrong_shape_is_a_clear_error(tmp_path, data_dir):
    small = train_cnn(tmp_path / "small_cnn", steps=2, channels=(8, 16), hidden=32)
    with pytest.raises(GenjaxError, match=r"parameter \['conv0'\]\['bias'\] has shape \(8,\) there but \(32,\) expected"):
        load_feature_network(small)


def test_feature_checkpoint_that_differs_from_its_fingerprint_is_refused(tmp_path, feature_checkpoint):
    """A readable checkpoint whose weights no longer match the fingerprint written with them (bit rot that
    leaves the files well-formed) would silently skew every IS/FID: it is refused, naming the leaf."""
    steps = [p for p in (feature_checkpoint / "checkpoints").iterdir() if p.name.isdigit()]
    intact = max(steps, key=lambda p: int(p.name))
    damaged = tmp_path / "checkpoints" / intact.name
    shutil.copytree(intact / "meta", damaged / "meta")
    state = ocp.StandardCheckpointer().restore(intact.absolute() / "state")
    logits = state["params"]["model"]["logits"]
    logits["kernel"] = logits["kernel"].at[0, 0].add(1.0)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((damaged / "state").absolute(), state)
    load_feature_network(intact)
    with pytest.raises(GenjaxError, match=r"is damaged \(state differs from the fingerprint .* \['logits'\]\['kernel'\]\)"):
        load_feature_network(tmp_path)
