"""GPT-2 and BERT at their published sizes on synthetic tokens: the experiment `benchmarks.step_throughput`
times for `--model gpt2|bert --size ...`, and the tests train (tiny size) on emulated meshes.

The tokens are a fixed Zipf-distributed stream (seeded), so the loss falls as the model learns the unigram
distribution and no dataset has to be prepared. GPT-2 trains as a next-token LM (`LanguageModelTask`), BERT
as a masked LM (`MaskedLMTask`). `config.model` selects the family, the size and the scale options:
`remat` (none | full | dots), `scan_layers`, `attention_kernel` (auto | xla | blocked | fused | cudnn).
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from genjax.data.text import TokenWindowLoader, eval_windows
from genjax.entries import Benchmark
from genjax.errors import GenjaxError
from genjax.models.bert import BertMaskedLM
from genjax.models.gpt2 import GPT2
from genjax.models.layer_norm import uses_hand_backward
from genjax.models.sizes import size
from genjax.optim import make_optimizer, optimizer_config
from genjax.precision import compute_dtype
from genjax.state import TrainState
from genjax.task import TEST, VALIDATION, Experiment, loop_config
from genjax.tasks.language_model import LanguageModelTask
from genjax.tasks.masked_lm import MaskedLMTask

NAME = "sized_transformers"
# --size names of each family -> genjax/models/sizes.py names
SIZES = {
    "gpt2": {"tiny": "gpt2-tiny", "124m": "gpt2", "355m": "gpt2-medium", "774m": "gpt2-large", "1.5b": "gpt2-xl"},
    "bert": {"tiny": "bert-tiny", "mini": "bert-mini", "base": "bert-base", "large": "bert-large"},
}
# Published sizes on synthetic tokens (--size, --seq-len).
BENCHMARKS = {
    family: Benchmark(overrides={"model.family": family}, tokens_per_example=lambda config: config.seq_len) for family in SIZES
}
STREAM_TOKENS = {TEST: 1 << 14, VALIDATION: 1 << 14}  # held-out stream lengths; the training stream: `train_tokens`
ZIPF_EXPONENT = 1.2
MASK_ID, PAD_ID = 1, 0  # BERT's [MASK] and padding ids in the synthetic vocabulary (never drawn as data)


def get_config() -> ml_collections.ConfigDict:
    """Tiny GPT-2 at sequence 128, float32, Adam with a constant learning rate."""
    config = loop_config(batch_size=16, eval_batch_size=16, num_train_steps=20, log_every=1, eval_every=1000, checkpoint_every=1000)
    config.seq_len = 128  # tokens per example (GPT-2: the context; BERT: the padded length)
    config.train_tokens = 1 << 18
    config.grad_accum_steps = 1
    config.model = ml_collections.ConfigDict(
        dict(
            family="gpt2",  # gpt2 | bert
            size="tiny",  # gpt2: tiny | 124m | 355m | 774m | 1.5b; bert: tiny | mini | base | large
            num_layers=0,  # 0: the size's
            num_heads=0,  # 0: the size's; else a head count dividing the width (e.g. for a tensor axis of 8)
            remat="none",  # none | full | dots (see genjax/models/transformer.py REMAT_POLICIES)
            scan_layers=False,  # True: the blocks run as one nn.scan, parameters stacked on a 'layers' axis
            attention_kernel="auto",  # auto (cuDNN where it fits, else xla) | xla | blocked | fused | cudnn
            backward="auto",  # auto (hand-written LayerNorm/rotary backward passes on CPU, autodiff elsewhere) | hand | autodiff (also forward mode)
            dropout=0.0,
        )
    )
    config.optimizer = optimizer_config(name="adamw", learning_rate=1e-3, weight_decay=0.01)
    return config


def model_fields(config: ml_collections.ConfigDict) -> dict:
    """The model's constructor fields: the named size with the config's head count, context and scale options."""
    family, name = config.model.family, config.model.size
    if family not in SIZES:
        raise GenjaxError(f"unknown model family '{family}'; choose one of {sorted(SIZES)}")
    if name not in SIZES[family]:
        raise GenjaxError(f"unknown {family} size '{name}'; choose one of {list(SIZES[family])}")
    fields = size(SIZES[family][name])
    if config.seq_len > fields["max_len"]:
        raise GenjaxError(f"seq_len={config.seq_len} exceeds {family}-{name}'s {fields['max_len']} positions; use --config.seq_len<={fields['max_len']}")
    m = config.model
    return {
        **fields,
        "num_layers": m.num_layers or fields["num_layers"],
        "num_heads": m.num_heads or fields["num_heads"],
        "dropout_rate": m.dropout,
        "attention_kernel": m.attention_kernel,
        "hand_backward": uses_hand_backward(m.backward),
        "remat": m.remat,
        "scan_layers": m.scan_layers,
        "dtype": compute_dtype(config.dtype),
    }


class SizedLMTask(LanguageModelTask):
    """`LanguageModelTask` around a given model (no tokenizer: the tokens are synthetic, so no text samples)."""

    def __init__(self, config: ml_collections.ConfigDict, optimizer, model: GPT2):
        super().__init__(config, optimizer, tokenizer=None, model=model, bits_name="bits_per_token")

    def report(self, state: TrainState, step, workdir, rng, split, rows) -> dict[str, float]:
        return {}


def token_stream(length: int, vocab_size: int, seed: int) -> np.ndarray:
    """int32 [length]: Zipf-distributed token ids in [2, vocab_size) (0 and 1 stay padding and [MASK])."""
    draws = np.random.default_rng(seed).zipf(ZIPF_EXPONENT, length)
    return (2 + (draws - 1) % (vocab_size - 2)).astype(np.int32)


def build(config: ml_collections.ConfigDict) -> Experiment:
    """The family's task on synthetic token streams (training, validation and test streams from different seeds)."""
    fields = model_fields(config)
    family, vocab = config.model.family, fields["vocab_size"]
    context = config.seq_len if family == "gpt2" else config.seq_len - 1  # windows of seq_len + 1 (GPT-2) or seq_len tokens
    optimizer = make_optimizer(config.optimizer, max(config.num_train_steps, 1))
    if family == "gpt2":
        task = SizedLMTask(config, optimizer, GPT2(**fields))
    else:
        task = MaskedLMTask(config, optimizer, BertMaskedLM(**fields, pad_id=PAD_ID), mask_id=MASK_ID, special_ids=(PAD_ID, MASK_ID))
    train = TokenWindowLoader(token_stream(config.train_tokens, vocab, config.seed), context, config.batch_size, config.seed)
    held_out = {split: token_stream(n, vocab, config.seed + 1 + i) for i, (split, n) in enumerate(STREAM_TOKENS.items())}
    return Experiment(
        name=NAME,
        task=task,
        train_data=train,
        eval_data={s: functools.partial(eval_windows, tokens, context, config.eval_batch_size) for s, tokens in held_out.items()},
        num_train_steps=config.num_train_steps,
        data_signature={"dataset": f"zipf{ZIPF_EXPONENT}", "train_tokens": config.train_tokens},
    )
