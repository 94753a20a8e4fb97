"""GPT-2 against `transformers`: equal causal-LM logits on a padded batch, exact load -> export round trips,
exports that `transformers` loads cleanly, the same greedy tokens as `generate`; named sizes' parameter counts."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import hf_reference as ref
from genjax.hf.directory import export_pretrained, load_pretrained
from genjax.models.bert import BertClassifier, BertMaskedLM
from genjax.models.gpt2 import GPT2
from genjax.models.sizes import SIZES, size
from genjax.sampling import generate

ARCHITECTURE = "GPT2LMHeadModel"


def genjax_logits(pretrained, batch) -> np.ndarray:
    tokens, valid = jnp.asarray(batch["tokens"]), jnp.asarray(batch["mask"], bool)
    return np.asarray(pretrained.model.apply({"params": pretrained.params}, tokens, valid=valid))


def test_logits_equal_transformers_on_a_padded_batch(tmp_path):
    reference = ref.gpt2()
    pretrained = load_pretrained(ref.save(reference, tmp_path))
    assert isinstance(pretrained.model, GPT2) and pretrained.architecture == ARCHITECTURE
    batch = ref.padded_batch()
    ours, theirs = genjax_logits(pretrained, batch), ref.logits(reference, batch, token_types=False)
    assert ours.shape == theirs.shape == (3, ref.LENGTH, ref.VOCAB)
    ref.assert_close(ours, theirs, "gpt2")


def test_load_then_export_gives_back_identical_tensors(tmp_path):
    source = ref.save(ref.gpt2(), tmp_path / "hf")
    pretrained = load_pretrained(source)
    export_pretrained(tmp_path / "out", ARCHITECTURE, pretrained.model, pretrained.params, base_config=pretrained.config)
    ref.assert_same_tensors(tmp_path / "out", source)


def test_a_genjax_model_exports_to_transformers_with_the_same_outputs(tmp_path):
    pretrained = load_pretrained(ref.save(ref.gpt2(), tmp_path / "hf"))
    ours = dataclasses.replace(pretrained, params=ref.genjax_params(pretrained.model))
    export_pretrained(tmp_path / "out", ARCHITECTURE, ours.model, ours.params)
    theirs = ref.assert_loads_cleanly(ARCHITECTURE, tmp_path / "out")
    batch = ref.padded_batch(seed=1)
    ref.assert_close(genjax_logits(ours, batch), ref.logits(theirs, batch, token_types=False), "gpt2 export")


def test_greedy_generation_gives_the_tokens_of_transformers_generate(tmp_path):
    reference = ref.gpt2(biases=False)
    pretrained = load_pretrained(ref.save(reference, tmp_path))
    prompt = np.random.default_rng(0).integers(0, ref.VOCAB, (4, 5))
    ours = generate(pretrained.model, pretrained.params, prompt, jax.random.key(0), num_new=20, temperature=0.0)
    with torch.no_grad():
        theirs = reference.generate(
            torch.tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long), max_new_tokens=20,
            do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=0,
        ).numpy()[:, 5:]
    np.testing.assert_array_equal(ours, theirs)
    assert min(len(np.unique(row)) for row in ours) >= 3  # real continuations, not one repeated token


@pytest.mark.parametrize("name", sorted(SIZES))
def test_named_sizes_have_the_parameter_count_of_transformers(name):
    """genjax's count (abstract init) equals that of the `transformers` model with the same sizes (built on the meta device)."""
    fields = size(name)
    if name.startswith("gpt2"):
        model, config = GPT2(**fields), transformers.GPT2Config(
            vocab_size=fields["vocab_size"], n_layer=fields["num_layers"], n_head=fields["num_heads"], n_embd=fields["width"],
            n_inner=fields["mlp_dim"], n_positions=fields["max_len"], bos_token_id=None, eos_token_id=None,
        )
        reference_classes = [(model, transformers.GPT2LMHeadModel)]
    else:
        config = transformers.BertConfig(
            vocab_size=fields["vocab_size"], num_hidden_layers=fields["num_layers"], num_attention_heads=fields["num_heads"],
            hidden_size=fields["width"], intermediate_size=fields["mlp_dim"], max_position_embeddings=fields["max_len"],
        )
        reference_classes = [(BertClassifier(**fields), transformers.BertForSequenceClassification), (BertMaskedLM(**fields), transformers.BertForMaskedLM)]
    for model, reference_class in reference_classes:
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
        with torch.device("meta"):
            expected = sum(p.numel() for p in reference_class(config).parameters())
        assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes)) == expected
