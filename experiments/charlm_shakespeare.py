"""Character-level transformer LM on tiny_shakespeare (nanoGPT's shakespeare_char), with KV-cached sampling.

Train:   python -m experiments.charlm_shakespeare --workdir runs/charlm [--config.recipe=gpu] [--config.KEY=VALUE ...]
Sample:  python -m experiments.charlm_shakespeare sample --workdir runs/charlm --prompt "ROMEO:" [--length 500]
         [--temperature 0.8] [--top-k 40] [--num-samples 1] [--seed 0] [--best]
         (--best: the checkpoint of the lowest validation loss, kept when trained with --config.best_metric=loss;
         the GPU recipe overfits after step 1000, so sample its best one)

Recipes (`--config.recipe` picks the base; every field stays overridable):
  cpu  4 layers, 4 heads, width 128, context 64, batch 12 (nanoGPT's CPU recipe; it reaches val loss 1.88 in
       2000 iters). Hardware: 2-core x86-64 CPU. Measured: validation loss 1.796 at step 1000 and 1.626 nats/char
       (2.35 bits) at step 2000; 1 min 45 s for the whole command on a quiet machine. See README.md.
  gpu  6 layers, 6 heads, width 384, context 256, batch 64, dropout 0.2, 5000 iters, bfloat16, fused attention
       (nanoGPT's best val loss with it: 1.4697). Measured on one H100: best validation loss 1.419 nats/char at
       step 1000, then it overfits (1.871 at step 5000, as nanoGPT's run does); 106 steps/s, 100 s in all.
Loss is in nats per character (`loss`), also reported as `bits_per_char`; samples go to <workdir>/samples/.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Sequence

import jax
import ml_collections
import numpy as np

from genjax import cli, loop
from genjax import workdir as workdir_lib
from genjax import config as config_lib
from genjax.data import sources
from genjax.data.text import CharTokenizer, TokenWindowLoader, eval_windows, load_tokenizer, save_tokenizer
from genjax.entries import Benchmark
from genjax.errors import GenjaxError
from genjax.subcommands import sample_main
from genjax.optim import make_optimizer, optimizer_config
from genjax.state import eval_params
from genjax.task import TEST, VALIDATION, Experiment, loop_config, num_train_steps
from genjax.tasks.language_model import LanguageModelTask

NAME = "charlm_shakespeare"
RECIPES = ("cpu", "gpu")
TOKENIZER_FILE = "tokenizer.json"


def get_config(recipe: str = "cpu") -> ml_collections.ConfigDict:
    """The `recipe` ("cpu" or "gpu") config."""
    if recipe not in RECIPES:
        raise GenjaxError(f"unknown recipe '{recipe}'; choose one of {RECIPES}")
    cpu = recipe == "cpu"
    config = loop_config(
        batch_size=12 if cpu else 64,
        eval_batch_size=256 if cpu else 64,
        num_train_steps=2000 if cpu else 5000,
        log_every=100,
        eval_every=500,
        checkpoint_every=1000,
    )
    config.recipe = recipe
    config.best_metric = "" if cpu else "loss"  # the GPU recipe overfits after step 1000: keep its best-validation state
    config.dataset = "tiny_shakespeare"
    config.context = 64 if cpu else 256
    config.dtype = "float32" if cpu else "bfloat16"  # computation dtype; parameters stay float32
    config.model = ml_collections.ConfigDict(
        dict(
            num_layers=4 if cpu else 6,
            num_heads=4 if cpu else 6,
            num_kv_heads=0,  # 0: = num_heads; fewer: grouped-query attention
            width=128 if cpu else 384,
            mlp_ratio=4,
            positions="rotary",  # rotary | learned
            dropout=0.0 if cpu else 0.2,
            attention_kernel="xla" if cpu else "fused",  # xla | fused (jax.nn.dot_product_attention, cuDNN on GPU)
            backward="auto",  # auto (hand-written LayerNorm/rotary backward passes on CPU, autodiff elsewhere) | hand | autodiff (also forward mode)
        )
    )
    config.optimizer = optimizer_config(
        name="adamw",
        learning_rate=2e-3 if cpu else 1e-3,
        schedule="warmup_cosine",
        warmup_steps=100,
        end_lr_factor=0.1,
        b2=0.99,
        weight_decay=0.1,
        grad_clip_norm=1.0,
    )
    config.sample = ml_collections.ConfigDict(dict(prompt="\n", length=300, temperature=0.8, top_k=40, num_samples=2))
    return config


def _recipe(argv: Sequence[str]) -> str:
    """The value of `--config.recipe` in `argv` (default "cpu"), read before the other overrides apply."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config.recipe="):
            return arg.split("=", 1)[1]
        if arg == "--config.recipe" and i + 1 < len(argv):
            return argv[i + 1]
    return "cpu"


def make_task(config: ml_collections.ConfigDict, tokenizer: CharTokenizer, total_steps: int) -> LanguageModelTask:
    return LanguageModelTask(config, make_optimizer(config.optimizer, total_steps), tokenizer)


def build(config: ml_collections.ConfigDict, tokenizer: CharTokenizer | None = None) -> Experiment:
    """Data, optimizer and task; the tokenizer is trained on the train split unless given."""
    train_text = sources.text(config.dataset, "train", config.data_dir, config.download)
    tokenizer = tokenizer or CharTokenizer.train(train_text)
    loader = TokenWindowLoader(tokenizer.encode(train_text), config.context, config.batch_size, config.seed)
    held_out = {split: tokenizer.encode(sources.text(config.dataset, split, config.data_dir, config.download)) for split in (VALIDATION, TEST)}
    steps = num_train_steps(config, loader.steps_per_epoch)
    return Experiment(
        name=NAME,
        task=make_task(config, tokenizer, steps),
        train_data=loader,
        eval_data={split: functools.partial(eval_windows, tokens, config.context, config.eval_batch_size) for split, tokens in held_out.items()},
        num_train_steps=steps,
        workdir_files={TOKENIZER_FILE: functools.partial(save_tokenizer, tokenizer)},
        data_signature={"dataset": config.dataset, "train_tokens": len(loader.tokens), **{f"{k}_tokens": len(v) for k, v in held_out.items()}},
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Trains (resuming if possible); the tokenizer is kept as `<workdir>/tokenizer.json` (and reused on resume)."""
    saved = workdir_lib.check_path(workdir) / TOKENIZER_FILE
    return loop.train_and_evaluate(config, workdir, build(config, load_tokenizer(saved) if saved.exists() else None))


def sample(
    workdir: str | pathlib.Path, prompt: str, length: int, temperature: float, top_k: int, num_samples: int, seed: int, best: bool = False
) -> list[str]:
    """Continuations of `prompt` from the newest checkpoint in `workdir`, or with `best` the one kept by
    `config.best_metric` (KV-cached, jitted)."""
    workdir = pathlib.Path(workdir)
    config = config_lib.load_saved_config(get_config(), workdir, NAME)  # config.json holds every field, recipe included
    tokenizer = load_tokenizer(workdir / TOKENIZER_FILE)
    task = make_task(config, tokenizer, max(config.num_train_steps, 1))
    example = {"tokens": np.zeros((1, config.context + 1), np.int32)}
    state = loop.restore_trained_state(workdir, NAME, task, example, best)
    return task.sample(eval_params(state), prompt, jax.random.key(seed), length, temperature, top_k, num_samples)


BENCHMARKS = {
    "charlm": Benchmark(tokens_per_example=lambda config: config.context),
    "charlm_gpu": Benchmark(
        recipe="gpu", tokens_per_example=lambda config: config.context,
        test_overrides=("--config.model.num_layers=1",),  # the recipe's width, heads, context and kernel; 6x less work
    ),
}
SMOKE = {"batch_size": 16, "eval_batch_size": 64, "sample.length": 20}


def main(argv: Sequence[str]) -> None:
    """The shared entry point; `--config.recipe` picks the defaults the other flags then override."""
    subcommands = {"sample": lambda rest: sample_main(rest, "python -m experiments.charlm_shakespeare sample", sample)}
    cli.experiment_main(lambda: get_config(_recipe(argv)), train_and_evaluate, __doc__, subcommands)(argv)


if __name__ == "__main__":
    cli.run_main(main)
