"""Reference models for the Hugging Face tests: small `transformers` BERT and GPT-2 models with every tensor
randomised (biases and LayerNorm parameters too, so that a misplaced tensor shows), saved with `save_pretrained`."""

from __future__ import annotations

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import torch
import transformers

VOCAB = 99
LENGTH = 12
BERT = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
    max_position_embeddings=64, type_vocab_size=2, num_labels=3,
)
GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=None, eos_token_id=None)


def bert(architecture: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A `transformers` BERT model of `architecture` (e.g. "BertForMaskedLM") with random parameters, in eval mode."""
    return _randomised(getattr(transformers, architecture)(transformers.BertConfig(**BERT)), seed)


def gpt2(seed: int = 0, biases: bool = True) -> transformers.GPT2LMHeadModel:
    """A `transformers` GPT-2 with random parameters, in eval mode; `biases` False leaves every bias 0
    (with random biases, a random GPT-2's greedy continuation soon repeats one token)."""
    return _randomised(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)), seed, biases)


def _randomised(model: transformers.PreTrainedModel, seed: int, biases: bool = True) -> transformers.PreTrainedModel:
    """Every parameter drawn afresh (LayerNorm scales around 1), so logits are O(1) and every tensor matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name.endswith("weight") and ("LayerNorm" in name or ".ln_" in name):
                parameter.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias") and not biases:
                parameter.zero_()
            else:
                parameter.copy_(0.15 * noise)
    return model.eval()


def save(model: transformers.PreTrainedModel, directory: pathlib.Path) -> pathlib.Path:
    model.save_pretrained(directory)
    return directory


def padded_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Three rows of 12, 8 and 4 real tokens, right-padded with 0: 'tokens', 'mask' (1 = real), 'token_types'."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(LENGTH)[None] < np.asarray([[LENGTH], [8], [4]])).astype(np.int64)
    tokens = rng.integers(1, VOCAB, (3, LENGTH)) * mask
    token_types = (np.arange(LENGTH)[None] >= 3).astype(np.int64) * mask
    return {"tokens": tokens, "mask": mask, "token_types": token_types}


def logits(model: transformers.PreTrainedModel, batch: dict[str, np.ndarray], token_types: bool) -> np.ndarray:
    """The model's float32 logits on the padded batch (with its attention mask)."""
    inputs = {"input_ids": torch.tensor(batch["tokens"]), "attention_mask": torch.tensor(batch["mask"])}
    if token_types:
        inputs["token_type_ids"] = torch.tensor(batch["token_types"])
    with torch.no_grad():
        return model(**inputs).logits.numpy()


def assert_loads_cleanly(architecture: str, directory: pathlib.Path) -> transformers.PreTrainedModel:
    """`from_pretrained` of `directory`, asserting no missing, unexpected or mismatched weights."""
    model, info = getattr(transformers, architecture).from_pretrained(directory, output_loading_info=True)
    assert {key: set(value) for key, value in info.items()} == {
        "missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": set()
    }
    return model.eval()


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str, tolerance: float = 1e-4) -> None:
    """Equal within `tolerance` absolute (float32), on logits large enough that a misplaced tensor would show."""
    assert np.abs(theirs).max() > 1.0
    difference = float(np.abs(ours - theirs).max())
    print(f"{what}: max |genjax - transformers| = {difference:.2e}")
    assert difference <= tolerance


def assert_same_tensors(exported: pathlib.Path, source: pathlib.Path) -> None:
    """The two directories' model.safetensors hold the same names and bit-identical tensors."""
    before = safetensors.numpy.load_file(source / "model.safetensors")
    after = safetensors.numpy.load_file(exported / "model.safetensors")
    assert sorted(after) == sorted(before)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def genjax_params(model):
    """Parameters made by genjax for `model`: its own initialisation, every leaf then moved off it (biases
    and LayerNorm parameters are not constants), as float32 numpy."""
    params = nn.unbox(jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"])
    rng = np.random.default_rng(2)
    return jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape, np.float32), params)
