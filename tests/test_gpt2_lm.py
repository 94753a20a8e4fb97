"""experiments/gpt2_lm on tiny_shakespeare: a short run lowers the loss, samples, exports a directory that
`transformers`' GPT2LMHeadModel loads cleanly with the same logits, and a new run starts from that directory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hf_reference as ref
from experiments import gpt2_lm
from genjax.metrics_log import read_metrics

TINY = dict(vocab_size=400, context=64, num_train_steps=40, batch_size=16, eval_batch_size=64, log_every=1, eval_every=20,
            checkpoint_every=20, download=False)


def tiny_config(**overrides):
    config = gpt2_lm.get_config()
    config.update({**TINY, **overrides})
    config.model.size = "gpt2-tiny"
    config.optimizer.warmup_steps = 5
    config.sample.length = 16
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("gpt2")
    return workdir, gpt2_lm.train_and_evaluate(tiny_config(), workdir)


def test_a_short_run_lowers_the_loss_and_samples(trained):
    workdir, final = trained
    train = read_metrics(workdir, "train")
    assert final["loss"] < train[0]["loss"] - 0.5 and "bits_per_token" in final
    assert sorted(p.name for p in (workdir / "samples").iterdir()) == ["sample_0000020.txt", "sample_0000040.txt"]
    texts = gpt2_lm.sample(workdir, "ROMEO:", 20, 0.8, 40, 2, 0)
    assert len(texts) == 2 and all(texts)


def test_export_loads_in_transformers_with_the_same_logits_and_trains_again_from_there(trained, tmp_path):
    workdir, _ = trained
    assert gpt2_lm.export(workdir, tmp_path / "hf") == "GPT2LMHeadModel"
    theirs = ref.assert_loads_cleanly("GPT2LMHeadModel", tmp_path / "hf")
    task, params, _ = gpt2_lm.restore(workdir)
    tokens = task.tokenizer.encode("ROMEO:\nWhat light through yonder window breaks?")[None]
    ours = np.asarray(task.model.apply({"params": params}, tokens))
    with torch.no_grad():
        expected = theirs(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    ref.assert_close(ours, expected, "gpt2_lm export")

    config = tiny_config(init_from=str(tmp_path / "hf"), num_train_steps=4, eval_every=4, checkpoint_every=4)
    experiment = gpt2_lm.build(config, tmp_path / "again")
    np.testing.assert_array_equal(experiment.task.initial_params["embed"]["embedding"], params["embed"]["embedding"])
    final = gpt2_lm.train_and_evaluate(config, tmp_path / "again")
    assert final["loss"] < read_metrics(workdir, "train")[0]["loss"] - 0.5  # it starts where the first run ended


def test_remat_from_the_config_leaves_the_losses_unchanged(trained, tmp_path):
    """`--config.model.remat` (full: each block recomputed in the backward pass) trains to the same losses as keeping
    every activation, from the same exported starting point."""
    workdir, _ = trained
    gpt2_lm.export(workdir, tmp_path / "hf")
    losses = {}
    for remat in ("none", "full"):
        config = tiny_config(init_from=str(tmp_path / "hf"), num_train_steps=4, eval_every=4, checkpoint_every=4)
        config.model.remat = remat
        gpt2_lm.train_and_evaluate(config, tmp_path / remat)
        losses[remat] = [row["loss"] for row in read_metrics(tmp_path / remat, "train")]
    assert len(losses["none"]) == 4
    np.testing.assert_allclose(losses["full"], losses["none"], rtol=1e-6)
