"""A Hugging Face model directory (or `hf:NAME`) -> a genjax model with its parameters and tokenizer, and back.

    pretrained = load_pretrained("hf:bert-base-uncased", "BertForSequenceClassification", rng)
    logits = pretrained.model.apply({"params": pretrained.params}, tokens)
    export_pretrained(out, "BertForSequenceClassification", pretrained.model, params, pretrained.tokenizer)

Every check (config, tokenizer vocabulary, tensor names and shapes) runs before anything is returned or
written, and a failure is one `GenjaxError` line naming the file, the tensor or the field.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from genjax.errors import GenjaxError
from genjax.hf import files
from genjax.hf.config import SOURCES, TARGETS, config_from_model, family, model_from_config, source_architecture
from genjax.hf.hub import model_directory
from genjax.hf.layout import canonical_names, entries, params_from_tensors, tensors_from_params
from genjax.hf.tokenizer import FILE as TOKENIZER_FILE
from genjax.hf.tokenizer import GPT2_END, HFTokenizer, check_vocabulary, load_tokenizer


@dataclasses.dataclass
class Pretrained:
    """A loaded model: `architecture` (one of `TARGETS`), the flax `model`, its float32 `params` (nested as
    `model.init` makes them, unboxed), the `config` read from config.json, and the `tokenizer` (None without
    tokenizer.json)."""

    architecture: str
    model: nn.Module
    params: dict[str, Any]
    config: dict[str, Any]
    tokenizer: HFTokenizer | None


def param_shapes(model: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{parameter path: shape} of `model`, computed without allocating it."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(nn.unbox(abstract["params"])).items()}


def _check_target(architecture: str) -> None:
    if architecture not in TARGETS:
        raise GenjaxError(f"genjax does not build '{architecture}'; choose one of {tuple(TARGETS)}")


def load_pretrained(
    source: str | pathlib.Path, architecture: str | None = None, rng: jax.Array | None = None, dtype: Any = jnp.float32
) -> Pretrained:
    """Loads the model directory `source` (or `hf:NAME`) as `architecture` (None: the one its config.json names).

    A head the checkpoint lacks (a classifier on a pretraining checkpoint, say) is initialised from `rng`;
    every other tensor must be there with its shape. `dtype` is the model's computation dtype.
    """
    directory = model_directory(source)
    config_path = directory / files.CONFIG
    config = files.read_json(config_path)
    checkpoint_architecture = source_architecture(config, str(config_path))
    architecture = architecture or SOURCES[checkpoint_architecture]
    _check_target(architecture)
    if family(architecture) != family(checkpoint_architecture):
        raise GenjaxError(f"{config_path} describes a {checkpoint_architecture}, which cannot load as a {architecture}")
    model = model_from_config(config, architecture, str(config_path), dtype)
    tokenizer = load_tokenizer(directory)
    if tokenizer is not None:
        check_vocabulary(tokenizer, model.vocab_size, str(directory / TOKENIZER_FILE))
    tensors, weights_path = files.read_weights(directory)
    tensors = canonical_names(tensors, family(architecture))
    body, head = entries(architecture, model.num_layers)
    fresh_head = None
    if checkpoint_architecture != architecture and any(name not in tensors for entry in head for name in entry.names):
        if rng is None:
            raise GenjaxError(f"{weights_path} has no {architecture} head; pass a key (rng) to initialise it")
        fresh = jax.jit(model.init)(rng, jnp.zeros((1, 1), jnp.int32))["params"]
        fresh_head = {path: np.asarray(value, np.float32) for path, value in traverse_util.flatten_dict(nn.unbox(fresh)).items()}
    params = params_from_tensors(tensors, body, head, param_shapes(model), fresh_head, str(weights_path))
    return Pretrained(architecture, model, params, config, tokenizer)


def export_pretrained(
    directory: pathlib.Path,
    architecture: str,
    model: nn.Module,
    params: dict[str, Any],
    tokenizer: HFTokenizer | None = None,
    base_config: dict[str, Any] | None = None,
) -> None:
    """Writes `directory`/config.json, model.safetensors (float32) and, with a tokenizer, tokenizer.json, which
    `transformers`' `<architecture>.from_pretrained` loads. `base_config`: a config.json to keep the other fields of."""
    _check_target(architecture)
    if type(model) is not TARGETS[architecture]:
        raise GenjaxError(
            f"a {type(model).__name__} cannot be exported as {architecture}; export it as the architecture it is "
            f"({', '.join(name for name, cls in TARGETS.items() if cls is type(model))})"
        )
    expected = param_shapes(model)
    given = {path: tuple(np.shape(value)) for path, value in traverse_util.flatten_dict(nn.unbox(params)).items()}
    if given != expected:
        path = next(iter(sorted(set(expected.items()) ^ set(given.items()))))[0]
        raise GenjaxError(
            f"the parameters do not fit the {architecture} model at '{'/'.join(path)}' "
            f"({given.get(path, 'absent')} given, {expected.get(path, 'absent')} expected); export them as the model they belong to"
        )
    if tokenizer is not None:
        check_vocabulary(tokenizer, model.vocab_size, "the tokenizer to export")
    config = config_from_model(model, architecture, base_config)
    end = None if tokenizer is None else tokenizer.tokenizer.token_to_id(GPT2_END)
    if family(architecture) == "gpt2" and end is not None:
        config.update(bos_token_id=end, eos_token_id=end)
    tensors = tensors_from_params(nn.unbox(params), *entries(architecture, model.num_layers))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / files.CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    files.write_safetensors(tensors, directory / files.SAFETENSORS)
    if tokenizer is not None:
        tokenizer.save(directory)
