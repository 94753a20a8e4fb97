"""Hugging Face tokenizers trained on real text (IMDb reviews, tiny_shakespeare): WordPiece for BERT and
byte-level BPE for GPT-2; encode/decode round trips, save and load, and the same ids from `transformers`
once exported with a model."""

from __future__ import annotations

import re

import numpy as np
import pytest
import transformers

import hf_reference as ref
from genjax.data import sources
from genjax.hf.directory import export_pretrained, load_pretrained
from genjax.hf.tokenizer import BERT_SPECIAL, GPT2_END, load_tokenizer, train_byte_bpe, train_wordpiece
from genjax.models.bert import BertMaskedLM
from genjax.models.gpt2 import GPT2
from genjax.models.sizes import size


@pytest.fixture(scope="module")
def reviews(data_dir) -> list[str]:
    source = sources.data_source("imdb_reviews", "train", data_dir, False, ("text",))
    return [source[i]["text"].decode("utf-8") for i in range(400)]


@pytest.fixture(scope="module")
def shakespeare(data_dir) -> str:
    return sources.text("tiny_shakespeare", "train", data_dir, False)


def test_wordpiece_round_trips_and_saves(tmp_path, reviews):
    tokenizer = train_wordpiece(reviews[:300], vocab_size=2000)
    assert 1000 < tokenizer.vocab_size <= 2000
    assert [tokenizer.token_id(token) for token in BERT_SPECIAL] == [0, 1, 2, 3, 4]  # [PAD] is 0, as genjax pads
    held_out = " ".join(re.sub(r"[^a-z ]", " ", reviews[350].lower()).split())  # words BERT's normaliser keeps as they are
    ids = tokenizer.encode(held_out)
    assert ids[0] == tokenizer.token_id("[CLS]") and ids[-1] == tokenizer.token_id("[SEP]")
    assert any(tokenizer.tokenizer.id_to_token(int(i)).startswith("##") for i in ids)  # unseen words split into pieces
    assert tokenizer.decode(ids) == held_out
    tokenizer.save(tmp_path)
    np.testing.assert_array_equal(load_tokenizer(tmp_path).encode(reviews[399]), tokenizer.encode(reviews[399]))


def test_byte_level_bpe_round_trips_any_text_and_saves(tmp_path, shakespeare):
    tokenizer = train_byte_bpe([shakespeare[:200_000]], vocab_size=600)
    assert tokenizer.vocab_size == 600 and tokenizer.token_id(GPT2_END) == 0
    text = shakespeare[-500:] + " Ünïcode, emoji 🎭 and\ttabs"  # bytes never seen in training still encode
    ids = tokenizer.encode(text)
    assert len(ids) < len(text.encode("utf-8")) * 0.6  # merges learned from the training text compress it
    assert tokenizer.decode(ids) == text
    tokenizer.save(tmp_path)
    np.testing.assert_array_equal(load_tokenizer(tmp_path).encode(text), ids)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_an_exported_tokenizer_encodes_the_same_in_transformers(tmp_path, family, reviews):
    if family == "bert":
        tokenizer = train_wordpiece(reviews[:200], vocab_size=1000)
        model, architecture = BertMaskedLM(**{**size("bert-test"), "vocab_size": tokenizer.vocab_size}), "BertForMaskedLM"
    else:
        tokenizer = train_byte_bpe(reviews[:200], vocab_size=1000)
        model, architecture = GPT2(**{**size("gpt2-tiny"), "vocab_size": tokenizer.vocab_size}), "GPT2LMHeadModel"
    export_pretrained(tmp_path, architecture, model, ref.genjax_params(model), tokenizer)
    loaded = load_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in reviews[300:305]:
        np.testing.assert_array_equal(loaded.tokenizer.encode(text), tokenizer.encode(text))
        assert theirs(text)["input_ids"] == tokenizer.encode(text).tolist()
