"""DDPM on MNIST: a small U-Net predicts the noise of a linear (or cosine) schedule; the ancestral sampler draws.

Command:  python -m experiments.ddpm_mnist --workdir runs/ddpm_mnist
Result:   see the README's results table (test `loss`: mean squared error of the predicted noise per pixel, each test
          image at its own timestep and noise). Outputs: `<workdir>/samples/samples_<step>.png`, an 8x8 grid of the
          EMA model's samples of the same noise, every `sample_every` steps (0: at each evaluation).
"""

from __future__ import annotations

import ml_collections

from genjax import cli, loop
from genjax.data import sources
from genjax.data.loader import ShuffledArrayLoader, eval_splits
from genjax.data.splits import hold_out
from genjax.optim import make_optimizer, optimizer_config
from genjax.task import TEST, VALIDATION, Experiment, loop_config, num_train_steps
from genjax.tasks.ddpm import DDPMTask


def get_config() -> ml_collections.ConfigDict:
    config = loop_config(num_epochs=5, batch_size=128, eval_batch_size=1000, checkpoint_every=1000)
    config.dataset = "mnist"
    config.validation_examples = 5000  # the last 5,000 train images (train[55000:]): the validation split, never trained on
    config.diffusion = ml_collections.ConfigDict(dict(timesteps=1000, schedule="linear"))  # or "cosine"
    config.model = ml_collections.ConfigDict(dict(features=(32, 64), time_dim=128))
    config.optimizer = optimizer_config(name="adam", learning_rate=2e-4, schedule="warmup_cosine", warmup_steps=200, ema_decay=0.999)
    return config


def build(config: ml_collections.ConfigDict) -> Experiment:
    """Data, optimizer and task of the experiment described by `config`."""
    images = sources.image_arrays(config.dataset, "train", config.data_dir, config.download)["image"]
    train, validation = hold_out({"image": images}, config.validation_examples)
    test = sources.image_arrays(config.dataset, "test", config.data_dir, config.download)
    held_out = {VALIDATION: validation, TEST: {"image": test["image"]}}
    loader = ShuffledArrayLoader(train, config.batch_size, seed=config.seed)
    steps = num_train_steps(config, loader.steps_per_epoch)
    return Experiment(
        name="ddpm_mnist",
        task=DDPMTask(config, make_optimizer(config.optimizer, steps), train["image"].shape[1:]),
        train_data=loader,
        eval_data=eval_splits(held_out, config.eval_batch_size),
        num_train_steps=steps,
        data_signature={"dataset": config.dataset, "train": len(train["image"]), **{k: len(v["image"]) for k, v in held_out.items()}},
    )


train_and_evaluate = loop.trainer(build)

SMOKE = {
    "batch_size": 32, "eval_batch_size": 1000, "validation_examples": 500, "diffusion.timesteps": 50, "model.features": "(8,16)",
    "model.time_dim": 32, "optimizer.learning_rate": 2e-3, "optimizer.warmup_steps": 5, "optimizer.ema_decay": 0.0,
}


if __name__ == "__main__":
    cli.run_main(cli.experiment_main(get_config, train_and_evaluate, __doc__))
