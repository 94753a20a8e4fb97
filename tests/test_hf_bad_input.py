"""Bad Hugging Face input stops with one `GenjaxError` line naming the file, the tensor or the fix, before
anything is returned or written: missing or misshapen tensors, unknown architectures or settings, damaged
files, a tokenizer larger than the embeddings, a hub name without internet, a .bin checkpoint without torch."""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

import hf_reference as ref
from genjax.errors import GenjaxError
from genjax.hf.directory import export_pretrained, load_pretrained
from genjax.hf.tokenizer import train_byte_bpe
from genjax.models.gpt2 import GPT2
from genjax.models.sizes import size


@pytest.fixture(scope="module")
def bert_directory(tmp_path_factory) -> pathlib.Path:
    return ref.save(ref.bert("BertForMaskedLM"), tmp_path_factory.mktemp("bert"))


def damaged_copy(source: pathlib.Path, directory: pathlib.Path, *, config=None, tensors=None, raw: bytes | None = None) -> pathlib.Path:
    """A copy of the model directory with config.json edited by `config`, the tensors edited by `tensors`
    (functions of the dict) or model.safetensors replaced by `raw` bytes."""
    settings = json.loads((source / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config(settings) if config else settings))
    weights = safetensors.numpy.load_file(source / "model.safetensors")
    safetensors.numpy.save_file(tensors(weights) if tensors else weights, directory / "model.safetensors", metadata={"format": "pt"})
    if raw is not None:
        (directory / "model.safetensors").write_bytes(raw)
    return directory


def without(name: str):
    return lambda weights: {k: v for k, v in weights.items() if k != name}


def reshaped(name: str):
    return lambda weights: {**weights, name: np.zeros((weights[name].shape[0] + 1, *weights[name].shape[1:]), np.float32)}


CASES = {
    "missing tensor": (dict(tensors=without("bert.encoder.layer.1.attention.self.key.weight")),
                       "tensor 'bert.encoder.layer.1.attention.self.key.weight' is missing"),
    "wrong shape": (dict(tensors=reshaped("bert.encoder.layer.0.intermediate.dense.weight")),
                    "tensor 'bert.encoder.layer.0.intermediate.dense.weight' has shape (38, 32) but config.json's sizes give (37, 32)"),
    "architecture not implemented": (dict(config=lambda c: {**c, "architectures": ["RobertaForMaskedLM"], "model_type": "roberta"}),
                                     "architecture 'RobertaForMaskedLM' (model_type 'roberta') is not implemented"),
    "setting not implemented": (dict(config=lambda c: {**c, "hidden_act": "relu"}), "config.json sets hidden_act='relu'"),
    "size missing from config": (dict(config=lambda c: {k: v for k, v in c.items() if k != "hidden_size"}), "config.json has no 'hidden_size'"),
    "corrupt safetensors": (dict(raw=b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}"), "model.safetensors is not a readable safetensors file"),
    "truncated safetensors": (dict(raw=None), "model.safetensors is not a readable safetensors file"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_model_directory_stops_with_one_line_naming_the_cause(tmp_path, bert_directory, case):
    damage, message = CASES[case]
    if case == "truncated safetensors":
        damage = dict(raw=(bert_directory / "model.safetensors").read_bytes()[:-1000])
    directory = damaged_copy(bert_directory, tmp_path, **damage)
    with pytest.raises(GenjaxError) as error:
        load_pretrained(directory)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(directory) in str(error.value)


def test_a_tokenizer_larger_than_the_embeddings_is_refused(tmp_path, bert_directory):
    directory = damaged_copy(bert_directory, tmp_path)
    train_byte_bpe(["a few words to learn from"], vocab_size=300).save(directory)  # 300 tokens, 99 embedding rows
    with pytest.raises(GenjaxError, match=r"tokenizer.json: the tokenizer has \d+ tokens but the embeddings only 99 rows"):
        load_pretrained(directory)


def test_a_hub_name_without_internet_names_the_fix():
    with pytest.raises(GenjaxError) as error:
        load_pretrained("hf:genjax-tests/no-such-model")
    assert "cannot fetch 'genjax-tests/no-such-model' from the Hugging Face hub" in str(error.value)
    assert "--local-dir DIR" in str(error.value) and "\n" not in str(error.value)


def test_a_pytorch_checkpoint_without_torch_names_the_fix(tmp_path, bert_directory, monkeypatch):
    (tmp_path / "config.json").write_text((bert_directory / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError, as where it is not installed
    with pytest.raises(GenjaxError, match="pytorch_model.bin is a PyTorch checkpoint and reading it needs torch: pip install torch"):
        load_pretrained(tmp_path)


def test_a_directory_without_weights_or_config_names_what_it_needs(tmp_path, bert_directory):
    with pytest.raises(GenjaxError, match="config.json is missing"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((bert_directory / "config.json").read_text())
    with pytest.raises(GenjaxError, match="holds no weights: expected model.safetensors"):
        load_pretrained(tmp_path)


def test_a_bad_export_writes_nothing(tmp_path, bert_directory):
    masked_lm = load_pretrained(bert_directory)
    classifier = load_pretrained(bert_directory, "BertForSequenceClassification", jax.random.key(0))
    out = tmp_path / "out"
    with pytest.raises(GenjaxError, match="a BertMaskedLM cannot be exported as BertForSequenceClassification; .* \\(BertForMaskedLM\\)"):
        export_pretrained(out, "BertForSequenceClassification", masked_lm.model, masked_lm.params)
    with pytest.raises(GenjaxError, match="the parameters do not fit the BertForSequenceClassification model at 'classifier/bias'"):
        export_pretrained(out, "BertForSequenceClassification", classifier.model, masked_lm.params)
    model = GPT2(**{**size("gpt2-tiny"), "vocab_size": 200})
    with pytest.raises(GenjaxError, match=r"the tokenizer has 2\d\d tokens but the embeddings only 200 rows"):  # 256 bytes at least
        export_pretrained(out, "GPT2LMHeadModel", model, ref.genjax_params(model), train_byte_bpe(["some text"], 300))
    assert not out.exists()
