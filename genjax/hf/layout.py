"""Where each genjax BERT / GPT-2 parameter lives in a Hugging Face checkpoint, and the conversions both ways.

An `Entry` ties one genjax parameter to the Hugging Face tensors it is made of. genjax kernels are
[input axes..., output axes...] (qkv [E, 3N, D], attention out [N, D, E], dense [in, out]), so flattened they
are a matrix [in, out]:
- GPT-2's `Conv1D` weights are that matrix; BERT's `nn.Linear` weights are its transpose [out, in].
- BERT's query, key and value are three tensors; genjax's qkv kernel concatenates them along the output
  axis, which is how GPT-2's fused `c_attn` [E, 3E] already stores them (heads consecutive within each).
- Embedding tables [rows, E], biases and LayerNorm scales keep their layout (a bias may be split like its kernel).
Both models tie the output projection to the word embeddings: the tied tensors (`TIED`) are not parameters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from genjax.errors import GenjaxError

# tied tensor -> the tensor it equals; a checkpoint may hold either name (`canonical_names`)
TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
    "lm_head.weight": "transformer.wte.weight",
}
# buffers some checkpoints carry that are no parameters: causal masks, position ids
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", "position_ids")
BASE_PREFIXES = {"bert": ("bert.", ("embeddings.", "encoder.", "pooler.")), "gpt2": ("transformer.", ("wte.", "wpe.", "h.", "ln_f."))}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One genjax parameter at `path`, made of the Hugging Face tensors `names` joined along the output axis.

    in_axes: how many leading genjax axes are the input side (0: a vector; 1: a table or dense kernel;
    2: the attention output kernel [N, D, E]). transposed: Hugging Face stores [out, in] (`nn.Linear`).
    """

    path: tuple[str, ...]
    names: tuple[str, ...]
    in_axes: int
    transposed: bool = False

    def hf_shapes(self, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The Hugging Face shape of each of `names` for a genjax parameter of `shape`."""
        rows, cols = math.prod(shape[: self.in_axes]), math.prod(shape[self.in_axes :]) // len(self.names)
        one = (cols,) if self.in_axes == 0 else (cols, rows) if self.transposed else (rows, cols)
        return [one] * len(self.names)

    def to_hf(self, value: np.ndarray) -> dict[str, np.ndarray]:
        """genjax parameter -> {name: Hugging Face tensor}."""
        matrix = value.reshape(math.prod(value.shape[: self.in_axes]), -1)
        parts = np.split(matrix, len(self.names), axis=1)
        layout = (lambda p: p[0]) if self.in_axes == 0 else (lambda p: p.T) if self.transposed else (lambda p: p)
        return {name: np.ascontiguousarray(layout(part)) for name, part in zip(self.names, parts)}

    def to_genjax(self, tensors: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        """The Hugging Face tensors of `names` (shapes checked) -> the genjax parameter of `shape`."""
        layout = (lambda t: t.reshape(1, -1)) if self.in_axes == 0 else (lambda t: t.T) if self.transposed else (lambda t: t)
        return np.concatenate([layout(t) for t in tensors], axis=1).reshape(shape)


def _dense(path: tuple[str, ...], names: list[str], transposed: bool, in_axes: int = 1) -> list[Entry]:
    """A kernel and its bias from the `name.weight` / `name.bias` tensors."""
    return [
        Entry((*path, "kernel"), tuple(f"{n}.weight" for n in names), in_axes, transposed),
        Entry((*path, "bias"), tuple(f"{n}.bias" for n in names), 0),
    ]


def _norm(path: tuple[str, ...], name: str) -> list[Entry]:
    return [Entry((*path, "scale"), (f"{name}.weight",), 0), Entry((*path, "bias"), (f"{name}.bias",), 0)]


def _table(path: str, name: str) -> Entry:
    return Entry((path, "embedding"), (name,), 1)


def bert_entries(num_layers: int, architecture: str) -> tuple[list[Entry], list[Entry]]:
    """(encoder entries, head entries) of a genjax BERT with the head of `architecture`."""
    encoder = [
        _table("embed", "bert.embeddings.word_embeddings.weight"),
        _table("position_embed", "bert.embeddings.position_embeddings.weight"),
        _table("token_type_embed", "bert.embeddings.token_type_embeddings.weight"),
        *_norm(("embed_norm",), "bert.embeddings.LayerNorm"),
    ]
    for i in range(num_layers):
        hf, block = f"bert.encoder.layer.{i}.", f"block{i}"
        encoder += [
            *_dense((block, "attention", "qkv"), [f"{hf}attention.self.{x}" for x in ("query", "key", "value")], True),
            *_dense((block, "attention", "out"), [f"{hf}attention.output.dense"], True, in_axes=2),
            *_norm((block, "norm1"), f"{hf}attention.output.LayerNorm"),
            *_dense((block, "mlp", "up"), [f"{hf}intermediate.dense"], True),
            *_dense((block, "mlp", "down"), [f"{hf}output.dense"], True),
            *_norm((block, "norm2"), f"{hf}output.LayerNorm"),
        ]
    if architecture == "BertForSequenceClassification":
        head = [*_dense(("pooler",), ["bert.pooler.dense"], True), *_dense(("classifier",), ["classifier"], True)]
    else:
        head = [
            *_dense(("mlm_dense",), ["cls.predictions.transform.dense"], True),
            *_norm(("mlm_norm",), "cls.predictions.transform.LayerNorm"),
            Entry(("mlm_bias",), ("cls.predictions.bias",), 0),
        ]
    return encoder, head


def gpt2_entries(num_layers: int) -> tuple[list[Entry], list[Entry]]:
    """(all entries, no head entries) of a genjax GPT-2: its LM head is the tied token embedding."""
    entries = [_table("embed", "transformer.wte.weight"), _table("position_embed", "transformer.wpe.weight")]
    for i in range(num_layers):
        hf, block = f"transformer.h.{i}.", f"block{i}"
        entries += [
            *_norm((block, "norm1"), f"{hf}ln_1"),
            *_dense((block, "attention", "qkv"), [f"{hf}attn.c_attn"], False),
            *_dense((block, "attention", "out"), [f"{hf}attn.c_proj"], False, in_axes=2),
            *_norm((block, "norm2"), f"{hf}ln_2"),
            *_dense((block, "mlp", "up"), [f"{hf}mlp.c_fc"], False),
            *_dense((block, "mlp", "down"), [f"{hf}mlp.c_proj"], False),
        ]
    return [*entries, *_norm(("final_norm",), "transformer.ln_f")], []


def canonical_names(tensors: Mapping[str, np.ndarray], family: str) -> dict[str, np.ndarray]:
    """The checkpoint's tensors under the names of `bert_entries` / `gpt2_entries` (and `TIED`).

    Adds the base-model prefix that a bare `BertModel` / `GPT2Model` checkpoint lacks, renames the
    LayerNorm `gamma` / `beta` of TensorFlow-converted BERT checkpoints, and drops buffers.
    """
    prefix, bare_starts = BASE_PREFIXES[family]
    renamed = {}
    for name, tensor in tensors.items():
        if name.endswith(BUFFER_SUFFIXES):
            continue
        if name.startswith(bare_starts):
            name = prefix + name
        if ".LayerNorm." in name:
            name = name.replace(".LayerNorm.gamma", ".LayerNorm.weight").replace(".LayerNorm.beta", ".LayerNorm.bias")
        renamed[name] = tensor
    return renamed


def entries(architecture: str, num_layers: int) -> tuple[list[Entry], list[Entry]]:
    """(body entries, head entries) of the genjax model of `architecture`: GPT2LMHeadModel or a BERT one."""
    return gpt2_entries(num_layers) if architecture == "GPT2LMHeadModel" else bert_entries(num_layers, architecture)


def params_from_tensors(
    tensors: Mapping[str, np.ndarray],
    body: list[Entry],
    head: list[Entry],
    shapes: Mapping[tuple[str, ...], tuple[int, ...]],
    fresh_head: Mapping[tuple[str, ...], np.ndarray] | None,
    source: str,
) -> dict[str, Any]:
    """Checkpoint tensors (`canonical_names`) -> genjax params, float32 numpy, nested like the model's.

    shapes: {parameter path: shape} of the model. A head tensor the checkpoint lacks is taken from
    `fresh_head` ({path: array}, e.g. a classifier on a pretraining checkpoint); with None every tensor
    is required. Raises `GenjaxError` naming `source` and the tensor when one is missing, has the wrong
    shape, or is a tied tensor that differs from what it should equal.
    """
    tensors = dict(tensors)
    for tied, target in TIED.items():
        if tied in tensors and target in tensors and not np.array_equal(tensors[tied], tensors[target]):
            raise GenjaxError(
                f"{source}: tensor '{tied}' differs from '{target}', but genjax ties them (tie_word_embeddings); "
                "use a checkpoint with tied output weights"
            )
        if tied in tensors and target not in tensors:
            tensors[target] = tensors[tied]
    flat = {}
    for entry in [*body, *head]:
        missing = [name for name in entry.names if name not in tensors]
        if missing and fresh_head is not None and entry in head:
            flat[entry.path] = fresh_head[entry.path]
            continue
        if missing:
            raise GenjaxError(
                f"{source}: tensor '{missing[0]}' is missing (genjax parameter {'/'.join(entry.path)}); "
                "use a complete checkpoint of this architecture"
            )
        for name, expected in zip(entry.names, entry.hf_shapes(shapes[entry.path])):
            if tuple(tensors[name].shape) != expected:
                raise GenjaxError(
                    f"{source}: tensor '{name}' has shape {tuple(tensors[name].shape)} but config.json's sizes give "
                    f"{expected}; the checkpoint and its config.json disagree"
                )
        flat[entry.path] = entry.to_genjax([np.asarray(tensors[name], np.float32) for name in entry.names], shapes[entry.path])
    return traverse_util.unflatten_dict(flat)


def tensors_from_params(params: Mapping[str, Any], body: list[Entry], head: list[Entry]) -> dict[str, np.ndarray]:
    """genjax params -> {Hugging Face name: float32 tensor}, the tied tensors left out (as `save_pretrained` does)."""
    flat = traverse_util.flatten_dict(params)
    tensors: dict[str, np.ndarray] = {}
    for entry in [*body, *head]:
        tensors.update(entry.to_hf(np.asarray(flat[entry.path], np.float32)))
    return tensors
