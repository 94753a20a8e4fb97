"""VAE losses (reparameterised ELBO, IWAE bound) and its train/eval steps."""

from __future__ import annotations

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genjax import progress
from genjax.data.images import augment_digits, dynamic_binarization
from genjax.errors import GenjaxError
from genjax.models.upsample import UPSAMPLINGS
from genjax.models.vae import KINDS, VAE
from genjax.optim import Optimizer
from genjax.precision import compute_dtype
from genjax.state import TrainState, create_train_state, eval_params, local_copy, single_network_step
from genjax.task import TEST, VALIDATION, EvalSums, Task

IWAE_CHUNK = 100  # importance samples per pass of the IWAE bound


@functools.partial(jax.jit, static_argnames="model")
def reconstruct_and_sample(model: VAE, params, x: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images x [N, 28, 28, 1] in [0, 1] -> (decoder means of their posterior means [N, 28, 28, 1],
    decoder means of 64 prior draws [64, 28, 28, 1])."""
    mean, _ = model.apply({"params": params}, x, method=VAE.encode)
    recon = jax.nn.sigmoid(model.apply({"params": params}, mean, method=VAE.decode))
    z = jax.random.normal(rng, (64, model.latents))
    return recon, jax.nn.sigmoid(model.apply({"params": params}, z, method=VAE.decode))


@functools.partial(jax.jit, static_argnames="model")
def manifold(model: VAE, params) -> jax.Array:
    """Decoder means [256, 28, 28, 1] over a 16x16 grid of normal quantiles (2-d latents only)."""
    q = jax.scipy.stats.norm.ppf(jnp.linspace(0.03, 0.97, 16))
    z = jnp.stack(jnp.meshgrid(q, q[::-1], indexing="xy"), -1).reshape(-1, 2)
    return jax.nn.sigmoid(model.apply({"params": params}, z, method=VAE.decode))


def bernoulli_log_likelihood(logits: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x | logits) summed over pixels: logits, x [B, ...] -> [B].

    Computed on flat [B, pixels] views: on [B, 28, 28, 1], with its trailing axis of size 1,
    XLA:CPU took 2.1 ms instead of 0.44 ms for 128 images (benchmarks/HISTORY.md).
    """
    flat_logits, flat_x = logits.reshape(logits.shape[0], -1), x.reshape(x.shape[0], -1)
    return -optax.sigmoid_binary_cross_entropy(flat_logits, flat_x).sum(-1)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)): [B, z] -> [B]."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def neg_elbo(logits: jax.Array, x: jax.Array, mean: jax.Array, logvar: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-example (negative ELBO, KL) in nats: -E_q[log p(x|z)] + KL(q(z|x) || p(z)), one z sample."""
    kl = gaussian_kl(mean, logvar)
    return -bernoulli_log_likelihood(logits, x) + kl, kl


def log_normal(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mean, exp(logvar)) summed over the last axis."""
    return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar + (z - mean) ** 2 / jnp.exp(logvar), axis=-1)


def iwae_log_likelihood(model: VAE, params, x: jax.Array, rng: jax.Array, num_samples: int, chunk: int) -> jax.Array:
    """Importance-sampled bound on log p(x) with `num_samples` samples (IWAE): x [B, ...] -> [B] nats.

    log p(x) >= log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x); it tightens as k grows.
    Samples are drawn `chunk` at a time to bound memory.
    """
    mean, logvar = model.apply({"params": params}, x, method=VAE.encode)

    def log_weights(key):
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (chunk, *mean.shape), mean.dtype)
        logits = model.apply({"params": params}, z.reshape(-1, z.shape[-1]), method=VAE.decode)
        log_px_z = bernoulli_log_likelihood(logits, jnp.tile(x, (chunk,) + (1,) * (x.ndim - 1))).reshape(chunk, -1)
        return log_px_z + log_normal(z, 0.0, jnp.zeros_like(z)) - log_normal(z, mean, logvar)

    keys = jax.random.split(rng, num_samples // chunk)
    weights = jax.lax.map(log_weights, keys).reshape(-1, x.shape[0])
    return jax.scipy.special.logsumexp(weights, axis=0) - math.log(weights.shape[0])


def check_config(config: ml_collections.ConfigDict) -> None:
    """GenjaxError for a model or evaluation setting the VAE cannot use, raised before any training."""
    if config.model.kind not in KINDS:
        raise GenjaxError(f"unknown model.kind '{config.model.kind}'; choose one of {KINDS}")
    if config.model.upsample not in UPSAMPLINGS:
        raise GenjaxError(f"unknown model.upsample '{config.model.upsample}'; choose one of {UPSAMPLINGS} (used by the conv decoder)")
    k = config.iwae_samples
    if k > 0 and k % min(k, IWAE_CHUNK):
        raise GenjaxError(f"iwae_samples={k} is not a multiple of {IWAE_CHUNK}; use e.g. {IWAE_CHUNK * max(1, round(k / IWAE_CHUNK))} (0 skips the IWAE bound)")


class VAETask(Task):
    """Trains a VAE on uint8 digits; the model sees Bernoulli draws x ~ Bernoulli(pixel / 255).

    Statically binarised data arrives as 0/255, for which the draw is exact, so one
    code path serves static and dynamic binarisation.
    """

    def __init__(self, config: ml_collections.ConfigDict, optimizer: Optimizer, eval_images: dict[str, np.ndarray]):
        check_config(config)
        self.config = config
        self.model = VAE(
            kind=config.model.kind,
            hidden=config.model.hidden,
            latents=config.model.latents,
            upsample=config.model.upsample,
            dtype=compute_dtype(config.dtype),
        )
        self.optimizer = optimizer
        self.eval_images = eval_images  # {split: uint8 0/255 [N, 28, 28, 1]}, the fixed binarisation of each held-out split

    def _inputs(self, rng: jax.Array, images: jax.Array) -> jax.Array:
        aug_rng, bin_rng = jax.random.split(rng)
        x = images.astype(jnp.float32)
        if self.config.data.augment:
            x = augment_digits(aug_rng, x / 255.0) * 255.0
        return dynamic_binarization(bin_rng, x)

    def init_state(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        params = self.model.init(rng, jnp.zeros((1, *batch["image"].shape[1:])), rng)["params"]
        return create_train_state({"model": params}, {"model": self.optimizer})

    def loss(self, params, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        input_rng, z_rng = jax.random.split(rng)
        x = self._inputs(input_rng, batch["image"])
        logits, mean, logvar = self.model.apply({"params": params}, x, z_rng)
        nelbo, kl = neg_elbo(logits, x, mean, logvar)
        return nelbo.mean(), {"neg_elbo": nelbo.mean(), "kl": kl.mean()}

    def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict]:
        return single_network_step(self.loss, self.optimizer, state, batch, rng, self.config.grad_accum_steps)

    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> EvalSums:
        x = batch["image"].astype(jnp.float32) / 255.0  # the fixed binarisation: exactly 0 or 1
        logits, mean, logvar = self.model.apply({"params": eval_params(state)}, x, rng)
        nelbo, kl = neg_elbo(logits, x, mean, logvar)
        mask = batch["mask"].astype(jnp.float32)
        return EvalSums({"neg_elbo": jnp.sum(nelbo * mask), "kl": jnp.sum(kl * mask)}, mask.sum())

    def write_samples(self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array) -> None:
        """Grids of 64 samples, of 32 validation images over their reconstructions and, with 2-d latents, the manifold."""
        params = local_copy(eval_params(state))
        x = self.eval_images[VALIDATION][:32].astype(np.float32) / 255.0
        recon, samples = reconstruct_and_sample(self.model, params, x, rng)
        self.save_samples(workdir, step, samples)
        self.save_samples(workdir, step, np.concatenate([x, jax.device_get(recon)]), kind="reconstructions")
        if self.config.model.latents == 2:
            self.save_samples(workdir, step, manifold(self.model, params), kind="manifold", columns=16)

    def report(
        self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array, split: str, rows: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """At the end, the IWAE `nll` on the test split (`iwae_samples` > 0)."""
        if split != TEST or self.config.iwae_samples <= 0:
            return {}
        return {"nll": self.iwae_nll(local_copy(eval_params(state)), rng, self.eval_images[TEST])}

    def iwae_nll(self, params, rng: jax.Array, images: np.ndarray) -> float:
        """Mean IWAE bound (nats per example) over `images` (uint8 0/255 [N, 28, 28, 1], a fixed binarisation)."""
        k = self.config.iwae_samples
        chunk = min(k, IWAE_CHUNK)
        bound = jax.jit(functools.partial(iwae_log_likelihood, self.model, num_samples=k, chunk=chunk))
        total, batch = 0.0, 250
        for start in progress.track(range(0, len(images), batch), f"IWAE bound (k={k})"):
            x = images[start : start + batch].astype(np.float32) / 255.0
            total += float(jnp.sum(bound(params, x, jax.random.fold_in(rng, start))))
        return -total / len(images)
