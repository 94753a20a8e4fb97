"""DDPM (Ho et al. 2020): epsilon-prediction loss, linear or cosine noise schedule, ancestral sampler."""

from __future__ import annotations

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genjax.errors import GenjaxError
from genjax.models.ddpm import UNet
from genjax.optim import Optimizer
from genjax.precision import compute_dtype
from genjax.state import TrainState, create_train_state, eval_params, local_copy, single_network_step
from genjax.task import EvalSums, Task, row_keys

NUM_GRID_SAMPLES = 64


def linear_betas(timesteps: int) -> np.ndarray:
    """Ho et al.'s betas, linear from 1e-4 to 0.02 over 1000 steps (the ends scaled by 1000 / timesteps): [T]."""
    scale = 1000 / timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)


def cosine_betas(timesteps: int, offset: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal's betas, from alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2), clipped at 0.999: [T]."""
    t = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    alpha_bar = np.cos((t + offset) / (1 + offset) * math.pi / 2) ** 2
    return np.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def to_signed(images: jax.Array) -> jax.Array:
    """uint8 [...] in 0..255 -> float32 in [-1, 1], the data range the diffusion runs in."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def noise_images(x0: jax.Array, t: jax.Array, noise: jax.Array, alpha_bar: jax.Array) -> jax.Array:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise: x0, noise [B, H, W, C], t int [B] -> [B, H, W, C]."""
    a = alpha_bar[t][:, None, None, None]
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def ancestral_sample(model: UNet, betas: jax.Array, params, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Images [N, H, W, C] in [0, 1] from x_T ~ N(0, I) by Ho et al.'s sampler (sigma_t^2 = beta_t), T model calls:
    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps(x_t, t)) / sqrt(alpha_t) + sigma_t z (no z at t = 0)."""
    alphas = 1.0 - betas
    alpha_bar = jnp.cumprod(alphas)
    start_rng, step_rng = jax.random.split(rng)

    def step(x, t):
        eps = model.apply({"params": params}, x, jnp.full((shape[0],), t))
        mean = (x - betas[t] / jnp.sqrt(1.0 - alpha_bar[t]) * eps) / jnp.sqrt(alphas[t])
        z = jax.random.normal(jax.random.fold_in(step_rng, t), shape)
        return mean + jnp.where(t > 0, jnp.sqrt(betas[t]), 0.0) * z, None

    x, _ = jax.lax.scan(step, jax.random.normal(start_rng, shape), jnp.arange(len(betas) - 1, -1, -1))
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


class DDPMTask(Task):
    """Trains a `UNet` to predict the noise added to uint8 images ({'image': [B, H, W, C]}) at a uniform timestep.

    `loss` is the mean squared error of that prediction per pixel (Ho et al.'s simplified objective); evaluation
    gives every held-out row its own timestep and noise, the same at every evaluation (`row_keys`).
    """

    def __init__(self, config: ml_collections.ConfigDict, optimizer: Optimizer, image_shape: tuple[int, int, int]):
        if config.diffusion.schedule not in SCHEDULES:
            raise GenjaxError(f"unknown diffusion.schedule '{config.diffusion.schedule}'; choose one of {sorted(SCHEDULES)}")
        if config.diffusion.timesteps < 1:
            raise GenjaxError(f"diffusion.timesteps={config.diffusion.timesteps} must be >= 1; the paper uses 1000")
        self.config = config
        self.model = UNet(features=tuple(config.model.features), time_dim=config.model.time_dim, dtype=compute_dtype(config.dtype))
        self.optimizer = optimizer
        self.image_shape = tuple(image_shape)  # (H, W, C) of the samples
        self.betas = jnp.asarray(SCHEDULES[config.diffusion.schedule](config.diffusion.timesteps), jnp.float32)
        self.alpha_bar = jnp.cumprod(1.0 - self.betas)
        self._sample = jax.jit(functools.partial(ancestral_sample, self.model, self.betas), static_argnums=(2,))

    def init_state(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        x = jnp.zeros((1, *batch["image"].shape[1:]))
        return create_train_state({"model": self.model.init(rng, x, jnp.zeros((1,), jnp.int32))["params"]}, {"model": self.optimizer})

    def per_example_loss(self, params, images: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """Mean squared error of the predicted noise per example: images uint8 [B, H, W, C], t [B], noise -> [B]."""
        x_t = noise_images(to_signed(images), t, noise, self.alpha_bar)
        eps = self.model.apply({"params": params}, x_t, t)
        return jnp.mean(jnp.square(eps - noise), axis=(1, 2, 3))

    def loss(self, params, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict]:
        t_rng, noise_rng = jax.random.split(rng)
        images = batch["image"]
        t = jax.random.randint(t_rng, (images.shape[0],), 0, len(self.betas))
        noise = jax.random.normal(noise_rng, images.shape)
        return self.per_example_loss(params, images, t, noise).mean(), {}

    def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict]:
        return single_network_step(self.loss, self.optimizer, state, batch, rng, self.config.grad_accum_steps)

    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> EvalSums:
        """The loss summed over the real rows, each at its own timestep and noise drawn from its row key."""
        keys = row_keys(rng, batch)
        t = jax.vmap(lambda key: jax.random.randint(key, (), 0, len(self.betas)))(keys)
        noise = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, 1), batch["image"].shape[1:]))(keys)
        mask = batch["mask"].astype(jnp.float32)
        return EvalSums({"loss": jnp.sum(self.per_example_loss(eval_params(state), batch["image"], t, noise) * mask)}, mask.sum())

    def sample(self, params, rng: jax.Array, num: int) -> jax.Array:
        """`num` images [num, H, W, C] in [0, 1] by the ancestral sampler (`diffusion.timesteps` model calls)."""
        return self._sample(params, rng, (num, *self.image_shape))

    def write_samples(self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array) -> None:
        """`<workdir>/samples/samples_<step>.png`: an 8x8 grid of the (EMA) model's samples from the same noise."""
        images = self.sample(local_copy(eval_params(state)), rng, NUM_GRID_SAMPLES)
        self.save_samples(workdir, step, images)
