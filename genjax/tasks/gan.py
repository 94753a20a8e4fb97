"""GAN losses (non-saturating, hinge) and one jitted step that updates the discriminator, then the generator.

The generator's parameters are averaged (EMA, from its optimizer's `ema_decay`);
samples, grids and the classifier-IS/FID use the EMA generator with batch-norm
running statistics. These are the trained generator's; statistics re-estimated for the EMA
parameters (4,096 latents in train mode) scored no better on the 20-epoch checkpoint of
`experiments/gan_mnist.py`: IS 7.39 / FID 60.7 against 7.42 / 59.7.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from genjax import progress
from genjax.errors import GenjaxError
from genjax.models.gan import Discriminator, Generator
from genjax.optim import Optimizer
from genjax.precision import compute_dtype
from genjax.sample_quality import FeatureNetwork, real_data_calibration
from genjax.state import TrainState, apply_gradients, create_train_state, eval_params, local_copy
from genjax.task import TEST, EvalSums, Task, row_keys

NUM_GRID_SAMPLES = 64
QUALITY_CHUNK = 1000


def non_saturating_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """-log D(x) - log(1 - D(G(z))), batch mean; logits [B] each."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def non_saturating_generator_loss(fake_logits: jax.Array) -> jax.Array:
    """-log D(G(z)), batch mean (Goodfellow et al.'s non-saturating generator loss); logits [B]."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """max(0, 1 - D(x)) + max(0, 1 + D(G(z))), batch mean; logits [B] each."""
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def hinge_generator_loss(fake_logits: jax.Array) -> jax.Array:
    """-D(G(z)), batch mean; logits [B]."""
    return -jnp.mean(fake_logits)


LOSSES: dict[str, tuple[Callable, Callable]] = {
    "non_saturating": (non_saturating_discriminator_loss, non_saturating_generator_loss),
    "hinge": (hinge_discriminator_loss, hinge_generator_loss),
}


def r1_penalty(discriminate: Callable[[jax.Array], jax.Array], real: jax.Array) -> jax.Array:
    """Mescheder et al.'s R1: the batch mean of ||d D(x) / d x||^2 over real images x [B, 28, 28, 1].

    One backward pass of sum_i D(x_i) gives every example's input gradient at once: the discriminator
    couples no examples (no batch norm), so d sum_i D(x_i) / d x_j = d D(x_j) / d x_j.
    """
    grads = jax.grad(lambda x: jnp.sum(discriminate(x)))(real)
    return jnp.mean(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))


def to_signed(images: jax.Array) -> jax.Array:
    """uint8 [..] in 0..255 -> float32 in [-1, 1], the generator's output range."""
    return images.astype(jnp.float32) / 127.5 - 1.0


@functools.partial(jax.jit, static_argnames="generator")
def generate(generator: Generator, variables: dict, z: jax.Array) -> jax.Array:
    """z [N, latents] -> images [N, 28, 28, 1] in [0, 1] (batch norm in inference mode)."""
    return (generator.apply(variables, z, train=False) + 1.0) / 2.0


@functools.partial(jax.jit, static_argnames=("generator", "latents"))
def generate_chunk(generator: Generator, latents: int, variables: dict, rng: jax.Array, index: jax.Array) -> jax.Array:
    """The `index`-th chunk of QUALITY_CHUNK images [QUALITY_CHUNK, 28, 28, 1] drawn from `rng`."""
    return generate(generator, variables, jax.random.normal(jax.random.fold_in(rng, index), (QUALITY_CHUNK, latents)))


class GANTask(Task):
    """DCGAN on uint8 digits. Networks "generator" (EMA, batch_stats in model_state) and "discriminator"."""

    report_metrics = ("classifier_is", "classifier_fid")  # what `report` adds to every evaluation

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        optimizers: dict[str, Optimizer],
        feature_network: FeatureNetwork | None,
        train_images: np.ndarray,
        eval_images: dict[str, np.ndarray],
    ):
        if config.loss not in LOSSES:
            raise GenjaxError(f"unknown loss '{config.loss}'; choose one of {sorted(LOSSES)} (--config.loss=hinge)")
        if config.r1_gamma < 0:
            raise GenjaxError(f"r1_gamma={config.r1_gamma} is negative; use 0 (no penalty) or a positive weight such as 1.0")
        if config.r1_every < 1:
            raise GenjaxError(f"r1_every={config.r1_every} must be >= 1 (1: the penalty at every step; 16: every 16th, weighted 16x)")
        self.config = config
        model = config.model
        self.latents = model.latents
        dtype = compute_dtype(config.dtype)
        self.generator = Generator(features=model.generator_features, upsample=model.upsample, hidden=model.generator_hidden,
                                   top_features=model.generator_top_features, dtype=dtype)
        self.discriminator = Discriminator(features=model.discriminator_features, dtype=dtype)
        self.discriminator_loss, self.generator_loss = LOSSES[config.loss]
        self.optimizers = optimizers
        self.feature_network = feature_network  # None: no sample-quality scores (built for the step benchmarks)
        self.train_images = train_images  # uint8 [N, 28, 28, 1], for the real-data calibration
        self.eval_images = eval_images  # {split: uint8 [N, 28, 28, 1]}: each held-out split is its evaluation's FID reference
        self.grid_latents = jax.random.normal(jax.random.key(config.seed), (NUM_GRID_SAMPLES, self.latents))
        self._statistics: dict[str, tuple[jax.Array, jax.Array, jax.Array]] = {}

    def init_state(self, rng: jax.Array, batch: dict[str, jax.Array]) -> TrainState:
        g_rng, d_rng = jax.random.split(rng)
        g_variables = self.generator.init(g_rng, jnp.zeros((1, self.latents)), train=False)
        d_params = self.discriminator.init(d_rng, jnp.zeros((1, *batch["image"].shape[1:])))["params"]
        return create_train_state(
            {"generator": g_variables["params"], "discriminator": d_params},
            self.optimizers,
            {"generator": g_variables["batch_stats"]},
        )

    def _discriminate(self, params, real: jax.Array, fake: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(real logits [B], fake logits [B]) from one pass over the concatenated batch."""
        logits = self.discriminator.apply({"params": params}, jnp.concatenate([real, fake]))
        return logits[: real.shape[0]], logits[real.shape[0] :]

    def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, dict]:
        """Discriminator step on G(z), then a generator step through the updated discriminator on the same G(z).

        G(z) is computed once; its VJP carries the generator's gradient, so each
        network's update is the usual alternating one. `loss` is the discriminator's objective:
        `d_loss` plus, with `r1_gamma` > 0, the lazily applied R1 term (`_lazy_r1`); `r1_penalty` is
        R1 * r1_every on the steps that apply it and 0 on the others, so its mean over whole multiples
        of r1_every steps is the mean R1.
        """
        rng = jax.random.fold_in(rng, state.step)
        real = to_signed(batch["image"])
        z = jax.random.normal(rng, (real.shape[0], self.latents))

        def generate(g_params):
            variables = {"params": g_params, "batch_stats": state.model_state["generator"]}
            return self.generator.apply(variables, z, train=True, mutable=["batch_stats"])

        fake, generator_vjp, g_updates = jax.vjp(generate, state.params["generator"], has_aux=True)

        def d_loss_fn(d_params):
            real_logits, fake_logits = self._discriminate(d_params, real, fake)
            return self.discriminator_loss(real_logits, fake_logits), (real_logits, fake_logits)

        d_params = state.params["discriminator"]
        (d_loss, (real_logits, fake_logits)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
        r1_weighted = jnp.zeros(())
        if self.config.r1_gamma > 0:
            r1_weighted, d_grads = self._lazy_r1(d_params, d_grads, real, state.step)
        state, d_health = apply_gradients(state, "discriminator", d_grads, self.optimizers["discriminator"])

        def g_loss_fn(images):
            return self.generator_loss(self.discriminator.apply({"params": state.params["discriminator"]}, images))

        g_loss, image_grads = jax.value_and_grad(g_loss_fn)(fake)
        (g_grads,) = generator_vjp(image_grads)
        state, g_health = apply_gradients(state, "generator", g_grads, self.optimizers["generator"])
        state = state.replace(step=state.step + 1, model_state={"generator": g_updates["batch_stats"]})
        metrics = {
            "loss": d_loss + r1_weighted,
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real_accuracy": jnp.mean(real_logits > 0),
            "d_fake_accuracy": jnp.mean(fake_logits < 0),
        }
        if self.config.r1_gamma > 0:
            metrics["r1_penalty"] = r1_weighted / (0.5 * self.config.r1_gamma)
        return state, {**metrics, **d_health, **g_health}

    def _lazy_r1(self, d_params, d_grads, real: jax.Array, step: jax.Array):
        """(weighted penalty, d_grads plus its gradient): r1_gamma / 2 * r1_every * R1 on steps that are multiples
        of `r1_every`; (0, d_grads unchanged) on the others (StyleGAN2's lazy regularisation: the same weight per
        step on average, at 1 / r1_every of R1's cost, whose double backward pass slows a step about 2.9x on CPU).
        The sum happens inside the penalised branch, so the other steps add no zero tree."""
        every = self.config.r1_every
        weight = 0.5 * self.config.r1_gamma * every

        def penalty(params):
            return weight * r1_penalty(lambda x: self.discriminator.apply({"params": params}, x), real)

        def penalised(grads):
            value, r1_grads = jax.value_and_grad(penalty)(d_params)
            return value, jax.tree.map(jnp.add, grads, r1_grads)

        return jax.lax.cond(step % every == 0, penalised, lambda grads: (jnp.zeros(()), grads), d_grads)

    def forward_passes(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The forward passes of one train step, for counting its FLOPs: G(z) once, D on the real and generated images
        (discriminator update) and D on the generated ones again (generator update)."""
        real = batch["image"].astype(jnp.float32)
        fake = self.generator.apply(self.sampling_variables(state, ema=False), jnp.zeros((real.shape[0], self.latents)), train=False)
        discriminate = functools.partial(self.discriminator.apply, {"params": state.params["discriminator"]})
        return discriminate(jnp.concatenate([real, fake])), discriminate(fake)

    def sampling_variables(self, state: TrainState, ema: bool = True) -> dict:
        """The generator's variables for sampling: EMA (or trained) parameters and batch-norm running statistics."""
        params = eval_params(state, "generator") if ema else state.params["generator"]
        return {"params": params, "batch_stats": state.model_state["generator"]}

    def eval_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> EvalSums:
        """Sums of the discriminator's accuracy on real held-out images and on as many EMA-generator samples, one
        latent per row (from its `row_keys`: the same sample for a row at every evaluation)."""
        latents = jax.vmap(lambda key: jax.random.normal(key, (self.latents,)))(row_keys(rng, batch))
        fake = generate(self.generator, self.sampling_variables(state), latents) * 2.0 - 1.0
        real_logits, fake_logits = self._discriminate(state.params["discriminator"], to_signed(batch["image"]), fake)
        mask = batch["mask"].astype(jnp.float32)
        sums = {"d_real_accuracy": jnp.sum((real_logits > 0) * mask), "d_fake_accuracy": jnp.sum((fake_logits < 0) * mask)}
        return EvalSums(sums, mask.sum())

    def statistics(self, split: str) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The held-out `split`'s (logits, feature mean, feature covariance), computed once: its FID reference."""
        if self.feature_network is None:
            raise GenjaxError(
                "this GAN task was built without its metric CNN (gan_mnist.build(config, with_metrics=False)), so it "
                "cannot score samples; build it with with_metrics=True and --config.feature_checkpoint=<cnn_mnist workdir>"
            )
        if split not in self._statistics:
            self._statistics[split] = self.feature_network.statistics(self.eval_images[split].astype(np.float32) / 255.0)
        return self._statistics[split]

    def write_samples(self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array) -> None:
        """`<workdir>/samples/samples_<step>.png`: the EMA generator's images of the same fixed latents at every step."""
        self.save_samples(workdir, step, generate(self.generator, local_copy(self.sampling_variables(state)), self.grid_latents))

    def sample_quality(self, variables: dict, rng: jax.Array, split: str) -> dict[str, float]:
        """classifier_is and classifier_fid (to the held-out `split`) of `num_quality_samples` generator samples."""
        reference = self.statistics(split)[1:]  # first, as it checks that the task has its metric CNN
        chunks = -(-self.config.num_quality_samples // QUALITY_CHUNK)
        sampling = progress.track(range(chunks), f"sampling for classifier scores on {split}", unit="chunks")
        images = jnp.concatenate([generate_chunk(self.generator, self.latents, variables, rng, i) for i in sampling])
        return self.feature_network.scores(images[: self.config.num_quality_samples], reference)

    def report(
        self, state: TrainState, step: int, workdir: pathlib.Path, rng: jax.Array, split: str, rows: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """The EMA generator's classifier-IS/FID to `split`.

        On the test split (the end) also the trained (non-EMA) generator's scores (`raw_` prefix) and the real data's own.
        """
        metrics = self.sample_quality(local_copy(self.sampling_variables(state)), rng, split)
        if split == TEST:
            raw = self.sample_quality(local_copy(self.sampling_variables(state, ema=False)), rng, split)
            metrics.update({f"raw_{k}": v for k, v in raw.items()})
            metrics.update(real_data_calibration(self.feature_network, self.train_images, self.statistics(TEST)))
        return metrics
