"""Classifier-based sample quality for MNIST-like images (TF-GAN's mnist_score and mnist_frechet_distance).

The "Inception" network of the usual IS/FID is replaced by a trained digit CNN
(experiments/cnn_mnist.py), loaded from its checkpoint on disk:
  classifier_is  = exp(E_x KL(p(y|x) || p(y))), from its logits; 1 (one class) .. 10 (ten confident, balanced classes).
  classifier_fid = ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), on its penultimate features.
Both are only comparable between runs that use the same feature checkpoint, so
report them next to the real data's own scores (`real_data_calibration`).
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from genjax.checkpoint import fingerprint_mismatch
from genjax.errors import GenjaxError
from genjax.models.classifier import CNN

PyTree = Any
HIGHEST = jax.lax.Precision.HIGHEST


def sqrtm_psd(matrix: jax.Array) -> jax.Array:
    """The symmetric PSD square root of a symmetric PSD matrix [D, D] (eigendecomposition; tiny negative eigenvalues clipped)."""
    eigenvalues, eigenvectors = jnp.linalg.eigh(matrix)
    roots = jnp.sqrt(jnp.clip(eigenvalues, 0.0))
    return jnp.matmul(eigenvectors * roots, eigenvectors.T, precision=HIGHEST)


def trace_sqrt_product(sigma_a: jax.Array, sigma_b: jax.Array) -> jax.Array:
    """tr((S_a S_b)^(1/2)) for PSD S_a, S_b [D, D].

    S_a S_b is similar to S_a^(1/2) S_b S_a^(1/2) = M M^T with M = S_a^(1/2) S_b^(1/2), so the trace
    is the sum of M's singular values. Singular values keep float32 accuracy relative to the largest
    one, where square roots of M M^T's eigenvalues would lose half the digits of the small ones.
    """
    product = jnp.matmul(sqrtm_psd(sigma_a), sqrtm_psd(sigma_b), precision=HIGHEST)
    return jnp.sum(jnp.linalg.svd(product, compute_uv=False))


def feature_statistics(features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """features [N, D] -> (mean [D], unbiased covariance [D, D])."""
    mean = features.mean(0)
    centred = features - mean
    return mean, jnp.matmul(centred.T, centred, precision=HIGHEST) / (features.shape[0] - 1)


@jax.jit
def frechet_distance(mean_a: jax.Array, cov_a: jax.Array, mean_b: jax.Array, cov_b: jax.Array) -> jax.Array:
    """Frechet distance between the Gaussians N(mean_a, cov_a) and N(mean_b, cov_b) (means [D], covariances [D, D])."""
    return jnp.sum((mean_a - mean_b) ** 2) + jnp.trace(cov_a) + jnp.trace(cov_b) - 2.0 * trace_sqrt_product(cov_a, cov_b)


@jax.jit
def classifier_score(logits: jax.Array) -> jax.Array:
    """exp(mean_i KL(p(y|x_i) || mean_j p(y|x_j))) over logits [N, C]: between 1 and C, finite for any finite logits.

    The marginal is taken in log space and 0 * log 0 counts as 0, so classes whose probability underflows to
    0 (logit gaps of ~100 in float32) add nothing instead of making the score nan.
    """
    log_p = jax.nn.log_softmax(logits, -1)
    log_marginal = jax.nn.logsumexp(log_p, axis=0) - jnp.log(logits.shape[0])
    p = jnp.exp(log_p)
    return jnp.exp(jnp.mean(jnp.sum(jnp.where(p > 0, p * (log_p - log_marginal), 0.0), -1)))


def _latest_step_dir(path: pathlib.Path) -> pathlib.Path | None:
    """`path` itself if it is a checkpoint step (holds `state/`), else the newest step under it or its `checkpoints/`."""
    if (path / "state").is_dir():
        return path
    for directory in (path / "checkpoints", path):
        steps = [p for p in directory.glob("*") if p.name.isdigit() and (p / "state").is_dir()] if directory.is_dir() else []
        if steps:
            return max(steps, key=lambda p: int(p.name))
    return None


@functools.partial(jax.jit, static_argnames="model")
def _logits_and_features(model: CNN, params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return model.apply({"params": params}, images, method=CNN.logits_and_features)


class FeatureNetwork:
    """The trained digit CNN whose logits (IS) and penultimate features (FID) define the metrics."""

    def __init__(self, params: PyTree, model: CNN = CNN()):
        self.params = params
        self.model = model

    def logits_and_features(self, images: np.ndarray | jax.Array, batch_size: int = 1000) -> tuple[jax.Array, jax.Array]:
        """images [N, 28, 28, 1] in [0, 1] -> (logits [N, 10], features [N, 256]), `batch_size` at a time."""
        outputs = [_logits_and_features(self.model, self.params, images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return jnp.concatenate([o[0] for o in outputs]), jnp.concatenate([o[1] for o in outputs])

    def statistics(self, images: np.ndarray | jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(logits [N, 10], feature mean [D], feature covariance [D, D]) of images [N, 28, 28, 1] in [0, 1]."""
        logits, features = self.logits_and_features(images)
        return (logits, *feature_statistics(features))

    def scores(self, images: np.ndarray | jax.Array, reference: tuple[jax.Array, jax.Array]) -> dict[str, float]:
        """{classifier_is, classifier_fid} of images [N, 28, 28, 1] in [0, 1] against reference (mean, covariance)."""
        logits, mean, cov = self.statistics(images)
        return {"classifier_is": float(classifier_score(logits)), "classifier_fid": float(frechet_distance(mean, cov, *reference))}


def load_feature_network(path: str | pathlib.Path, model: CNN = CNN()) -> FeatureNetwork:
    """The CNN parameters `params['model']` of a cnn_mnist checkpoint, checked against `model`'s shapes.

    `path` is a cnn_mnist workdir (its newest checkpoint is used) or one `<workdir>/checkpoints/<step>` directory.
    """
    how = "train it with `python -m experiments.cnn_mnist --workdir DIR` and pass --config.feature_checkpoint=DIR"
    if not str(path):
        raise GenjaxError(f"no feature network given: config.feature_checkpoint is empty; {how}")
    step_dir = _latest_step_dir(pathlib.Path(path))
    if step_dir is None:
        raise GenjaxError(f"feature checkpoint '{path}' not found (no checkpoints/<step>/state under it); {how}")
    try:
        state = ocp.StandardCheckpointer().restore(step_dir.absolute() / "state")
        params = state["params"]["model"]
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir.absolute() / "meta")
    except Exception as error:  # orbax raises many types for unreadable checkpoints; a missing key is KeyError
        raise GenjaxError(f"feature checkpoint '{step_dir}' is not a readable genjax classifier checkpoint ({type(error).__name__}: {str(error)[:200]}); {how}") from None
    mismatch = fingerprint_mismatch(meta, params, path=".params['model']")
    if mismatch:
        raise GenjaxError(f"feature checkpoint '{step_dir}' is damaged ({mismatch}); use an intact cnn_mnist checkpoint: {how}")
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    expected_shapes = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(expected)}
    found_shapes = {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(params)}
    for key in sorted(set(expected_shapes) | set(found_shapes)):
        if expected_shapes.get(key) != found_shapes.get(key):
            raise GenjaxError(
                f"feature checkpoint '{step_dir}' does not hold the metric CNN {model.channels}-{model.hidden}: "
                f"parameter {key} has shape {found_shapes.get(key)} there but {expected_shapes.get(key)} expected; "
                f"use a cnn_mnist checkpoint trained with the default model config ({how})"
            )
    return FeatureNetwork(jax.tree.map(jnp.asarray, params), model)


def real_data_calibration(
    network: FeatureNetwork, train_images: np.ndarray, test_statistics: tuple[jax.Array, jax.Array, jax.Array]
) -> dict[str, float]:
    """The real data's own scores, the scale GAN figures are read on.

    `test_statistics` is `network.statistics` of the test split and `train_images` uint8 [N, 28, 28, 1].
    real_test_classifier_is: IS of the test split (the ceiling); real_train_classifier_is and
    real_train_classifier_fid: IS and FID to the test split of the first len(test) training images (the floor of FID).
    """
    test_logits, test_mean, test_cov = test_statistics
    train = network.scores(train_images[: len(test_logits)].astype(np.float32) / 255.0, (test_mean, test_cov))
    return {
        "real_test_classifier_is": float(classifier_score(test_logits)),
        "real_train_classifier_is": train["classifier_is"],
        "real_train_classifier_fid": train["classifier_fid"],
    }
