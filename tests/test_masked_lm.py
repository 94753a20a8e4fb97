"""Masked-LM pretraining: BERT's 15% selection and 80/10/10 corruption measured over a million tokens, and a
short real run of the shared loop on IMDb reviews that lowers the masked-token loss."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import loop
from genjax.data import sources
from genjax.data.loader import ShuffledArrayLoader, eval_splits
from genjax.data.text import pad_or_truncate
from genjax.hf.tokenizer import BERT_SPECIAL, train_wordpiece
from genjax.models.bert import BertMaskedLM
from genjax.models.sizes import size
from genjax.optim import make_optimizer, optimizer_config
from genjax.task import TEST, VALIDATION, Experiment, loop_config
from genjax.tasks.masked_lm import MaskedLMTask, mask_tokens

VOCAB, MASK_ID, SPECIAL = 1000, 4, (0, 1, 2, 3, 4)


def dense_selection(masked, shape) -> np.ndarray:
    """bool [B, L]: the positions whose slots are selected."""
    selected = np.zeros(shape, bool)
    rows = np.broadcast_to(np.arange(shape[0])[:, None], masked.positions.shape)
    live = np.asarray(masked.weights) > 0
    selected[rows[live], np.asarray(masked.positions)[live]] = True
    assert selected.sum() == live.sum()  # distinct positions
    return selected


def test_masking_selects_15_percent_of_ordinary_tokens_and_splits_them_80_10_10():
    tokens = jax.random.randint(jax.random.key(0), (2048, 512), 0, VOCAB)  # 1M tokens, 0.5% of them special
    masked = mask_tokens(jax.random.key(1), tokens, mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL)
    tokens, inputs = np.asarray(tokens), np.asarray(masked.inputs)
    selected = dense_selection(masked, tokens.shape)
    special = np.isin(tokens, SPECIAL)
    assert not selected[special].any() and (inputs[special] == tokens[special]).all()  # padding and specials untouched
    assert (inputs[~selected] == tokens[~selected]).all()
    np.testing.assert_array_equal(selected.sum(1), np.round(0.15 * (~special).sum(1)))  # 15% of each row's ordinary tokens
    np.testing.assert_array_equal(masked.targets, np.take_along_axis(tokens, np.asarray(masked.positions), 1))
    chosen_in, chosen_tokens = inputs[selected], tokens[selected]
    masked_share = chosen_in == MASK_ID
    replaced = ~masked_share & (chosen_in != chosen_tokens)
    kept = chosen_in == chosen_tokens  # includes the random draws that hit the token itself (1 in 1000 of 10%)
    assert masked_share.mean() == pytest.approx(0.8, abs=0.005)
    assert replaced.mean() == pytest.approx(0.1 * (1 - 1 / VOCAB), abs=0.005)
    assert kept.mean() == pytest.approx(0.1 + 0.1 / VOCAB, abs=0.005)
    assert len(np.unique(chosen_in[replaced])) > 0.9 * VOCAB  # random replacements cover the vocabulary
    assert np.bincount(np.flatnonzero(selected) % tokens.shape[1], minlength=512).min() > 0  # every position can be chosen
    again = mask_tokens(jax.random.key(1), jnp.asarray(tokens), mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL)
    other = mask_tokens(jax.random.key(2), jnp.asarray(tokens), mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL)
    np.testing.assert_array_equal(again.inputs, inputs)  # a function of its key
    assert (np.asarray(other.inputs) != inputs).mean() > 0.1


def test_padded_rows_select_from_their_tokens_only():
    tokens = np.full((3, 40), 0, np.int32)  # 0 is padding
    tokens[0, :40], tokens[1, :20], tokens[2, :3] = 7, 8, 9
    masked = mask_tokens(jax.random.key(0), jnp.asarray(tokens), mask_id=MASK_ID, vocab_size=VOCAB, special_ids=SPECIAL)
    selected = dense_selection(masked, tokens.shape)
    np.testing.assert_array_equal(selected.sum(1), [6, 3, 0])  # round(0.15 x 40, 20, 3)
    assert not selected[tokens == 0].any()


def test_the_gathered_head_equals_the_full_head_at_its_positions():
    model = BertMaskedLM(**{**size("bert-test"), "vocab_size": VOCAB})
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 5, VOCAB)
    params = model.init(jax.random.key(1), tokens)["params"]
    at = jnp.asarray([[3, 0, 15], [7, 8, 1]])
    full = model.apply({"params": params}, tokens)
    gathered = model.apply({"params": params}, tokens, at, method=BertMaskedLM.predict_at)
    np.testing.assert_allclose(gathered, np.take_along_axis(np.asarray(full), np.asarray(at)[..., None], 1), atol=1e-5)


def test_a_short_pretraining_run_lowers_the_masked_token_loss(tmp_path, data_dir):
    source = sources.data_source("imdb_reviews", "unsupervised", data_dir, False, ("text",))
    texts = [source[i]["text"].decode("utf-8") for i in range(704)]
    tokenizer = train_wordpiece(texts[:512], vocab_size=2000)
    tokens = pad_or_truncate([tokenizer.encode(text) for text in texts], 64)
    steps = 60
    config = loop_config(
        batch_size=32, eval_batch_size=64, num_train_steps=steps, log_every=1, eval_every=10**9, checkpoint_every=1000, download=False
    )
    config.optimizer = optimizer_config(name="adamw", learning_rate=3e-3, schedule="warmup_cosine", warmup_steps=5)
    model = BertMaskedLM(**{**size("bert-test"), "vocab_size": tokenizer.vocab_size, "dropout_rate": 0.0})
    special = [tokenizer.token_id(token) for token in BERT_SPECIAL]
    task = MaskedLMTask(config, make_optimizer(config.optimizer, steps), model, tokenizer.token_id("[MASK]"), special)
    held_out = {VALIDATION: {"tokens": tokens[512:640]}, TEST: {"tokens": tokens[640:]}}
    experiment = Experiment(
        "masked_lm_test", task, ShuffledArrayLoader({"tokens": tokens[:512]}, 32, seed=0), eval_splits(held_out, 64), num_train_steps=steps,
    )
    final = loop.train_and_evaluate(config, tmp_path, experiment)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first_loss = next(r["loss"] for r in records if r["split"] == "train")  # step 1
    assert first_loss > np.log(tokenizer.vocab_size) - 0.5  # it starts near chance
    assert final["loss"] < first_loss - 1.0  # held-out reviews: it learns (word frequencies at least)
    assert final["accuracy"] > 20 / tokenizer.vocab_size
