"""BERT against `transformers`: equal logits (classification, masked LM, padded batches), exact load -> export
round trips, exports that `transformers` loads cleanly, a pretraining checkpoint fine-tuned with a fresh head."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_reference as ref
from genjax.hf.directory import export_pretrained, load_pretrained
from genjax.models.bert import BertClassifier

ARCHITECTURES = ["BertForSequenceClassification", "BertForMaskedLM"]


def genjax_logits(pretrained, batch) -> np.ndarray:
    tokens, types, valid = (jnp.asarray(batch[key]) for key in ("tokens", "token_types", "mask"))
    return np.asarray(pretrained.model.apply({"params": pretrained.params}, tokens, types, valid.astype(bool)))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_equal_transformers_on_a_padded_batch(tmp_path, architecture):
    reference = ref.bert(architecture)
    pretrained = load_pretrained(ref.save(reference, tmp_path))
    assert pretrained.architecture == architecture
    batch = ref.padded_batch()
    theirs, ours = ref.logits(reference, batch, token_types=True), genjax_logits(pretrained, batch)
    assert ours.shape == theirs.shape == ((3, 3) if architecture == "BertForSequenceClassification" else (3, ref.LENGTH, ref.VOCAB))
    ref.assert_close(ours, theirs, f"bert {architecture}")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_load_then_export_gives_back_identical_tensors(tmp_path, architecture):
    source = ref.save(ref.bert(architecture), tmp_path / "hf")
    pretrained = load_pretrained(source)
    export_pretrained(tmp_path / "out", architecture, pretrained.model, pretrained.params, base_config=pretrained.config)
    ref.assert_same_tensors(tmp_path / "out", source)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_genjax_model_exports_to_transformers_with_the_same_outputs(tmp_path, architecture):
    pretrained = load_pretrained(ref.save(ref.bert(architecture), tmp_path / "hf"))
    ours = dataclasses.replace(pretrained, params=ref.genjax_params(pretrained.model))
    export_pretrained(tmp_path / "out", architecture, ours.model, ours.params)
    theirs = ref.assert_loads_cleanly(architecture, tmp_path / "out")
    batch = ref.padded_batch(seed=1)
    ref.assert_close(genjax_logits(ours, batch), ref.logits(theirs, batch, token_types=True), f"bert {architecture} export")


def test_a_masked_lm_checkpoint_loads_as_a_classifier_with_a_fresh_head(tmp_path):
    source = ref.save(ref.bert("BertForMaskedLM"), tmp_path)
    classifier = load_pretrained(source, "BertForSequenceClassification", jax.random.key(0))
    assert isinstance(classifier.model, BertClassifier) and classifier.model.num_classes == 3
    masked_lm = load_pretrained(source)
    encoder = {k: v for k, v in classifier.params.items() if k not in ("pooler", "classifier")}
    jax.tree.map(np.testing.assert_array_equal, encoder, {k: masked_lm.params[k] for k in encoder})
    assert set(classifier.params) - set(encoder) == {"pooler", "classifier"}
    assert np.abs(classifier.params["classifier"]["kernel"]).min() > 0  # initialised from the key


def test_pytorch_bin_checkpoints_load_like_safetensors(tmp_path):
    import torch

    reference = ref.bert("BertForMaskedLM")
    ref.save(reference, tmp_path / "safetensors")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "safetensors" / "config.json").read_text())
    torch.save(reference.state_dict(), tmp_path / "bin" / "pytorch_model.bin")  # holds the tied decoder weights too
    from_bin, from_safetensors = load_pretrained(tmp_path / "bin"), load_pretrained(tmp_path / "safetensors")
    jax.tree.map(np.testing.assert_array_equal, from_bin.params, from_safetensors.params)


def test_a_bfloat16_checkpoint_loads_as_its_float32_values(tmp_path):
    import torch

    reference = ref.bert("BertForMaskedLM").to(torch.bfloat16)
    pretrained = load_pretrained(ref.save(reference, tmp_path))
    expected = reference.bert.encoder.layer[1].output.dense.weight.detach().float().numpy().T
    np.testing.assert_array_equal(pretrained.params["block1"]["mlp"]["down"]["kernel"], expected)
    assert pretrained.params["block1"]["mlp"]["down"]["kernel"].dtype == np.float32
