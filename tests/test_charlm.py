"""Char LM on real tiny_shakespeare: tokenizers, window loaders, a short training run, resume, the sample command."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import charlm_shakespeare
from genjax import loop
from genjax.data import sources
from genjax.data.text import (
    PAD,
    UNK,
    CharTokenizer,
    TokenWindowLoader,
    WordTokenizer,
    eval_windows,
    load_tokenizer,
    pad_or_truncate,
    save_tokenizer,
    word_pieces,
)
from genjax.errors import GenjaxError
from genjax.metrics_log import read_metrics

from conftest import run_module


def tiny_config(**overrides):
    config = charlm_shakespeare.get_config()
    config.update(dict(num_train_steps=40, log_every=10, eval_every=1000, checkpoint_every=20, eval_batch_size=512))
    config.sample.update(dict(length=40, num_samples=1))
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def shakespeare(data_dir) -> str:
    return sources.text("tiny_shakespeare", "train", data_dir, False)


def test_char_tokenizer_round_trips_and_handles_unknown_characters(shakespeare, tmp_path):
    tokenizer = CharTokenizer.train(shakespeare)
    assert tokenizer.vocab_size == 65 + 2  # 65 distinct characters, plus <pad> and <unk>
    text = shakespeare[:2000]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.encode("hé€llo")
    assert list(ids[[1, 2]]) == [UNK, UNK] and tokenizer.decode(ids) == "h\ufffd\ufffdllo"
    assert tokenizer.encode("").shape == (0,)
    save_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    np.testing.assert_array_equal(loaded.encode(text), tokenizer.encode(text))


def test_word_tokenizer_round_trips_and_handles_unknown_words(tmp_path):
    texts = ["A fine film.<br /><br />I liked it!", "The film wasn't fine; it was dull.", "fine fine dull"]
    tokenizer = WordTokenizer.train(texts, vocab_size=8)
    assert tokenizer.vocab[2:5] == ["fine", "dull", "film"]  # most frequent first, ties alphabetical
    in_vocab = "fine film dull"
    assert tokenizer.decode(tokenizer.encode(in_vocab)) == in_vocab
    assert tokenizer.decode(tokenizer.encode("Fine, dull!")) == "fine dull"  # punctuation dropped
    assert word_pieces("Wasn't it<br />GREAT?! 10/10") == ["wasn't", "it", "great", "10", "10"]
    assert set(tokenizer.encode("zyzzyva kumquat")) == {UNK}
    save_tokenizer(tokenizer, tmp_path / "words.json")
    assert load_tokenizer(tmp_path / "words.json").vocab == tokenizer.vocab
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GenjaxError, match="not a genjax tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(GenjaxError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing.json")


def test_pad_or_truncate():
    out = pad_or_truncate([np.array([5, 6, 7]), np.array([], np.int32), np.arange(1, 10)], 4)
    np.testing.assert_array_equal(out, [[5, 6, 7, PAD], [PAD] * 4, [1, 2, 3, 4]])


def test_window_loader_is_a_pure_function_of_the_index_and_eval_windows_cover_the_text():
    tokens = np.arange(1000, dtype=np.int32)
    loader = TokenWindowLoader(tokens, context=16, global_batch_size=4, seed=3)
    a, b = loader.batch_at(7)["tokens"], TokenWindowLoader(tokens, 16, 4, 3).batch_at(7)["tokens"]
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 17) and np.all(np.diff(a, axis=1) == 1)  # contiguous windows of context + 1
    assert not np.array_equal(a, loader.batch_at(8)["tokens"])
    batches = list(eval_windows(tokens, context=16, global_batch_size=10))
    windows = np.concatenate([batch["tokens"][batch["mask"]] for batch in batches])
    targets = windows[:, 1:].ravel()
    np.testing.assert_array_equal(targets, np.arange(1, 1 + len(targets)))  # every target once, in order
    assert len(targets) == 999 // 16 * 16
    with pytest.raises(GenjaxError, match="too short"):
        TokenWindowLoader(tokens[:10], context=16, global_batch_size=4, seed=0)


def test_short_real_run_lowers_the_loss_and_writes_samples(tmp_path, data_dir):
    workdir = tmp_path / "run"
    final = charlm_shakespeare.train_and_evaluate(tiny_config(), workdir)
    train = read_metrics(workdir, "train")
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    assert final["loss"] < math.log(67) - 0.5  # well below a uniform guess over the 67 ids
    assert final["bits_per_char"] == pytest.approx(final["loss"] / math.log(2), rel=1e-5)
    sample = (workdir / "samples" / "sample_0000040.txt").read_text()
    assert len(sample) > 40 and "top_k 40" in sample
    assert (workdir / "tokenizer.json").is_file()

    result = run_module("experiments.charlm_shakespeare", "sample", "--workdir", str(workdir), "--prompt", "ROMEO:", "--length", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout.rstrip("\n")) >= 36
    empty = run_module("experiments.charlm_shakespeare", "sample", "--workdir", str(workdir), "--prompt", "")
    assert empty.returncode == 2 and "error: the prompt is empty" in empty.stderr and "Traceback" not in empty.stderr
    missing = run_module("experiments.charlm_shakespeare", "sample", "--workdir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "error:" in missing.stderr and "Traceback" not in missing.stderr


def _final_state(workdir: pathlib.Path):
    with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "meta")) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return step, restored["state"]


def test_resumed_run_is_bit_identical(tmp_path, data_dir):
    config = tiny_config(num_train_steps=20, checkpoint_every=10)
    half = tiny_config(num_train_steps=10, checkpoint_every=10)  # warmup (100 steps) does not depend on the total
    for c in (config, half):
        c.model.num_layers = 1  # resume exactness does not depend on depth, and one layer compiles faster than four
    loop.train_and_evaluate(config, tmp_path / "straight", charlm_shakespeare.build(config))
    loop.train_and_evaluate(half, tmp_path / "resumed", charlm_shakespeare.build(half))
    loop.train_and_evaluate(config, tmp_path / "resumed", charlm_shakespeare.build(config))
    step_a, state_a = _final_state(tmp_path / "straight")
    step_b, state_b = _final_state(tmp_path / "resumed")
    assert step_a == step_b == 20
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
    losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d, "train")]
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")


def test_recipes_and_config_errors():
    gpu = charlm_shakespeare.get_config("gpu")
    assert (gpu.model.num_layers, gpu.model.num_heads, gpu.model.width, gpu.context, gpu.batch_size) == (6, 6, 384, 256, 64)
    cpu = charlm_shakespeare.get_config()
    assert (cpu.model.num_layers, cpu.model.num_heads, cpu.model.width, cpu.context, cpu.batch_size) == (4, 4, 128, 64, 12)
    assert charlm_shakespeare._recipe(["--config.recipe=gpu", "--workdir", "x"]) == "gpu"
    with pytest.raises(GenjaxError, match="unknown recipe"):
        charlm_shakespeare.get_config("tpu")


def test_logical_axes_of_the_lm(data_dir):
    experiment = charlm_shakespeare.build(tiny_config())
    specs = experiment.task.param_logical_axes(experiment.train_data.batch_at(0))
    assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
    names = json.loads(json.dumps(jax.tree.map(tuple, specs, is_leaf=lambda x: not isinstance(x, dict))))  # a plain tree of names
    assert names["block0"]["mlp"]["up"]["kernel"] == ["embed", "mlp"]
