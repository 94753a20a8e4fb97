"""GPT-2 causal language modelling on a TFDS text set (default tiny_shakespeare), byte-level BPE, KV-cached
sampling, and export to Hugging Face `transformers`' GPT2LMHeadModel.

Train:   python -m experiments.gpt2_lm --workdir runs/gpt2 [--config.init_from=DIR | hf:NAME] [--config.KEY=VALUE ...]
Sample:  python -m experiments.gpt2_lm sample --workdir runs/gpt2 --prompt "ROMEO:" [--length 100] [--temperature 0.8]
         [--top-k 40] [--num-samples 1] [--seed 0] [--best]
Export:  python -m experiments.gpt2_lm export --workdir runs/gpt2 --out DIR [--best]

Splits (issue 29): the dataset's own `validation` (periodic evaluations, `best_metric`) and `test` (once, at the
end). From scratch, the byte-level BPE tokenizer is trained on the `train` split only; a Hugging Face model
directory or hf:NAME (`--config.init_from`) brings its weights and tokenizer.json instead. Loss is in nats per
token (`loss`), also as `bits_per_token`; samples go to <workdir>/samples/. The workdir keeps tokenizer.json and
model.json (the config.json of its model), read by sample and export.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import ml_collections
import numpy as np

from genjax import cli, loop
from genjax import config as config_lib
from genjax.data import sources
from genjax.data.text import TokenWindowLoader, eval_windows
from genjax.errors import GenjaxError
from genjax.hf.tokenizer import HFTokenizer, train_byte_bpe
from genjax.hf.workdir import MODEL_FILE, WORKDIR, export_workdir, load_hf_start, saved_model, source_kind, workdir_files
from genjax.models.gpt2 import GPT2
from genjax.models.layer_norm import uses_hand_backward
from genjax.models.sizes import size
from genjax.optim import make_optimizer, optimizer_config
from genjax.precision import compute_dtype
from genjax.state import eval_params
from genjax.subcommands import export_main, sample_main
from genjax.task import TEST, VALIDATION, Experiment, loop_config, num_train_steps
from genjax.tasks.language_model import LanguageModelTask

NAME = "gpt2_lm"
ARCHITECTURE = "GPT2LMHeadModel"
PROG = "python -m experiments.gpt2_lm"


def get_config() -> ml_collections.ConfigDict:
    config = loop_config(batch_size=16, eval_batch_size=64, num_train_steps=2000, log_every=100, eval_every=500, checkpoint_every=500)
    config.dataset = "tiny_shakespeare"
    config.init_from = ""  # "" (from scratch) | a Hugging Face model directory | hf:NAME
    config.vocab_size = 2048  # byte-level BPE tokens when the tokenizer is trained here (from scratch)
    config.context = 128  # tokens per training window; from scratch also the model's positions
    config.grad_accum_steps = 1
    config.model = ml_collections.ConfigDict(
        dict(
            size="gpt2-mini",  # genjax/models/sizes.py; from scratch only (a starting point brings its own model)
            dropout=0.0,
            attention_kernel="xla",  # xla | fused (jax.nn.dot_product_attention, cuDNN on GPU)
            remat="none",  # none | full | dots: what each block keeps for the backward pass (genjax/models/transformer.py)
            backward="auto",  # auto (hand-written LayerNorm/rotary backward passes on CPU, autodiff elsewhere) | hand | autodiff (also forward mode)
        )
    )
    config.optimizer = optimizer_config(
        name="adamw", learning_rate=1e-3, schedule="warmup_cosine", warmup_steps=100, end_lr_factor=0.1, b2=0.99,
        weight_decay=0.1, grad_clip_norm=1.0,
    )
    config.sample = ml_collections.ConfigDict(dict(prompt="\n", length=64, temperature=0.8, top_k=40, num_samples=2))
    return config


def for_training(config: ml_collections.ConfigDict, model: GPT2) -> GPT2:
    """`model` with the run's dropout, attention kernel, remat and computation dtype; GenjaxError when the context or the
    samples exceed its positions."""
    longest = max(config.context, config.sample.length + 1)
    if longest > model.max_len:
        raise GenjaxError(f"context={config.context} / sample.length={config.sample.length} exceed the model's {model.max_len} positions; lower them")
    m = config.model
    return model.clone(
        dropout_rate=m.dropout, attention_kernel=m.attention_kernel, hand_backward=uses_hand_backward(m.backward),
        remat=m.remat, dtype=compute_dtype(config.dtype),
    )


def start(config: ml_collections.ConfigDict, workdir: pathlib.Path, train_text: str) -> tuple[GPT2, HFTokenizer, dict | None]:
    """(model, tokenizer, starting parameters or None) of the run in `workdir`: the workdir's own when it has
    checkpoints, else from `config.init_from`, else a fresh `config.model.size` GPT-2 with a BPE tokenizer."""
    if (workdir / "checkpoints").is_dir() and (workdir / MODEL_FILE).is_file():
        model, tokenizer, _ = saved_model(workdir, ARCHITECTURE)
        return model, tokenizer, None
    if not config.init_from:
        tokenizer = train_byte_bpe(train_text.splitlines(keepends=True), config.vocab_size)
        model = GPT2(**{**size(config.model.size), "vocab_size": tokenizer.vocab_size, "max_len": config.context})
        return model, tokenizer, None
    if source_kind(config.init_from) == WORKDIR:
        raise GenjaxError(
            f"init_from '{config.init_from}' is a genjax workdir; export it first ({PROG} export --workdir ... --out DIR) "
            "and pass DIR, or give hf:NAME"
        )
    pretrained = load_hf_start(config.init_from, ARCHITECTURE, None)
    return pretrained.model, pretrained.tokenizer, pretrained.params


def make_task(config: ml_collections.ConfigDict, model: GPT2, tokenizer: HFTokenizer, total_steps: int, params=None) -> LanguageModelTask:
    optimizer = make_optimizer(config.optimizer, total_steps)
    return LanguageModelTask(config, optimizer, tokenizer, for_training(config, model), params, bits_name="bits_per_token")


def build(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Experiment:
    """Data, starting point, optimizer and task of the run in `workdir` (nothing is written)."""
    text = functools.partial(sources.text, config.dataset, data_dir=config.data_dir, download=config.download)
    train_text = text("train")
    model, tokenizer, params = start(config, workdir, train_text)
    loader = TokenWindowLoader(tokenizer.encode(train_text), config.context, config.batch_size, config.seed)
    held_out = {split: tokenizer.encode(text(split)) for split in (VALIDATION, TEST)}
    steps = num_train_steps(config, loader.steps_per_epoch)
    return Experiment(
        name=NAME,
        task=make_task(config, model, tokenizer, steps, params),
        train_data=loader,
        eval_data={split: functools.partial(eval_windows, tokens, config.context, config.eval_batch_size) for split, tokens in held_out.items()},
        num_train_steps=steps,
        workdir_files=workdir_files(model, ARCHITECTURE, tokenizer),
        data_signature={"dataset": config.dataset, "train_tokens": len(loader.tokens), **{f"{k}_tokens": len(v) for k, v in held_out.items()}},
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, float]:
    """Trains (resuming if possible); returns the test metrics."""
    workdir = pathlib.Path(workdir)
    return loop.train_and_evaluate(config, workdir, build(config, workdir))


def restore(workdir: pathlib.Path, best: bool = False) -> tuple[LanguageModelTask, dict, dict]:
    """(task, evaluation parameters, model.json fields) of the newest (with `best`: the best-validation) checkpoint."""
    config = config_lib.load_saved_config(get_config(), workdir, NAME)
    model, tokenizer, model_config = saved_model(workdir, ARCHITECTURE)
    task = make_task(config, model, tokenizer, max(config.num_train_steps, 1))
    state = loop.restore_trained_state(workdir, NAME, task, {"tokens": np.zeros((1, config.context + 1), np.int32)}, best)
    return task, eval_params(state), model_config


def sample(
    workdir: str | pathlib.Path, prompt: str, length: int, temperature: float, top_k: int, num_samples: int, seed: int, best: bool = False
) -> list[str]:
    """Continuations of `prompt` (`length` tokens each) from the run in `workdir` (KV-cached, jitted)."""
    task, params, _ = restore(pathlib.Path(workdir), best)
    return task.sample(params, prompt, jax.random.key(seed), length, temperature, top_k, num_samples)


def export(workdir: str | pathlib.Path, out: pathlib.Path, best: bool = False) -> str:
    """Writes the run in `workdir` as a GPT2LMHeadModel directory `out`; returns the architecture."""
    task, params, model_config = restore(pathlib.Path(workdir), best)
    export_workdir(out, ARCHITECTURE, task.model, params, task.tokenizer, model_config)
    return ARCHITECTURE


SUBCOMMANDS = {
    "sample": lambda argv: sample_main(argv, f"{PROG} sample", sample, default_length=100),
    "export": lambda argv: export_main(argv, f"{PROG} export", export),
}

if __name__ == "__main__":
    cli.run_main(cli.experiment_main(get_config, train_and_evaluate, __doc__, SUBCOMMANDS))
