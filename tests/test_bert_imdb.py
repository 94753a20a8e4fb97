"""experiments/bert_imdb on real reviews: a tiny masked-LM pretraining, a fine-tune from it that is killed and
resumes bit-identically, a fine-tune from a directory `transformers` wrote, export back to `transformers` with the
same predictions, predict, and bad starting points that stop with one line before writing anything."""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import numpy as np
import pytest
import torch
import transformers

import faults
import hf_reference as ref
from experiments import bert_imdb
from genjax import loop
from genjax.data import sources
from genjax.errors import GenjaxError
from genjax.hf.tokenizer import bert_inputs, train_wordpiece
from genjax.metrics_log import read_metrics
from test_reliability_preemption import Lines

# Tiny but real: bert-test, 64-token rows, a few hundred reviews; validation and test slices of 100 reviews.
DATA = dict(train_examples=400, validation_examples=100, test_examples=100, download=False)
PRETRAIN = dict(
    DATA, unsupervised_examples=400, vocab_size=1000, max_len=64, num_train_steps=50, batch_size=32, eval_batch_size=100,
    log_every=1, eval_every=1000, checkpoint_every=50,
)
FINE_TUNE = dict(DATA, max_len=64, batch_size=16, eval_batch_size=100, log_every=1, checkpoint_every=4, eval_every=8)
STEPS = 16


def configure(config, settings: dict, **model):
    for key, value in {**settings, **{f"model.{k}": v for k, v in model.items()}}.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory, data_dir) -> tuple[pathlib.Path, dict]:
    workdir = tmp_path_factory.mktemp("bert_pretrain")
    config = configure(bert_imdb.get_pretrain_config(), {**PRETRAIN, "optimizer.learning_rate": 3e-3, "optimizer.warmup_steps": 5}, size="bert-test", dropout=0.0)
    return workdir, bert_imdb.pretrain(config, workdir)


def fine_tune_command(workdir: pathlib.Path, init_from: pathlib.Path) -> list[str]:
    settings = {**FINE_TUNE, "num_train_steps": STEPS, "init_from": init_from, "optimizer.learning_rate": 1e-3, "optimizer.warmup_steps": 2}
    return faults.command("experiments.bert_imdb", workdir, **settings)


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, pretraining, compile_cache) -> pathlib.Path:
    """An uninterrupted fine-tune from the pretraining workdir, run as a user would (a subprocess)."""
    workdir = tmp_path_factory.mktemp("bert_fine_tune")
    done = faults.run(fine_tune_command(workdir, pretraining[0]), faults.environment(compile_cache))
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_pretraining_lowers_the_masked_token_loss_on_its_own_splits(pretraining, data_dir):
    workdir, final = pretraining
    train = read_metrics(workdir, "train")
    assert train[0]["loss"] > np.log(1000) - 0.5  # near chance at the start
    assert final["loss"] < train[0]["loss"] - 0.5  # on held-out unsupervised reviews
    texts, validation, test = bert_imdb.pretraining_texts(configure(bert_imdb.get_pretrain_config(), PRETRAIN))
    train, unlabelled = (sources.labelled_texts("imdb_reviews", split, data_dir, False)[0] for split in ("train", "unsupervised"))
    assert texts == train[:400] + unlabelled[:400]  # by position: IMDb repeats some texts across its splits
    assert validation == train[-100:] and test == unlabelled[-100:]
    assert {"model.json", "tokenizer.json"} <= {p.name for p in workdir.iterdir()}


def test_fine_tuning_starts_from_the_pretrained_encoder_and_reports_on_test_once(fine_tuned, pretraining):
    start = bert_imdb.pretrained_encoder(pretraining[0])
    pretrained = bert_imdb.restore(pretraining[0]).params
    assert set(start.params) == set(pretrained) - {"mlm_dense", "mlm_norm", "mlm_bias"}  # the head starts fresh
    np.testing.assert_array_equal(start.params["embed"]["embedding"], pretrained["embed"]["embedding"])
    # 16 steps are too few for a loss trend to hold on every run (one full-suite run went 0.71 -> 0.76): the
    # learning itself is shown by the pretraining test and the Hugging Face fine-tune round trip.
    train = read_metrics(fine_tuned, "train")
    assert train and all(np.isfinite(r["loss"]) for r in train)
    test = read_metrics(fine_tuned, "test")
    assert len(test) == 1 and {"accuracy", "precision", "recall", "f1", "roc_auc"} <= set(test[0])
    assert (fine_tuned / "roc_curve.png").stat().st_size > 1000 and (fine_tuned / "best_checkpoints").is_dir()


def test_a_fine_tune_killed_mid_run_resumes_bit_identically(tmp_path, fine_tuned, pretraining, compile_cache):
    env, workdir = faults.environment(compile_cache), tmp_path / "killed"
    cmd = fine_tune_command(workdir, pretraining[0])
    process = faults.start(cmd, env)
    lines = Lines(process)
    assert lines.wait_for_step(5) is not None, "".join(lines.seen)[-3000:]
    while not faults.committed_steps(workdir) and process.poll() is None:  # killed once a checkpoint is complete
        time.sleep(0.01)
    process.kill()
    process.wait(timeout=60)
    assert faults.committed_steps(workdir) and faults.committed_steps(workdir)[-1] < STEPS
    resumed = faults.run(cmd, env)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
    step_dir = f"checkpoints/{STEPS}"
    faults.assert_bit_identical(faults.checkpoint_arrays(workdir / step_dir), faults.checkpoint_arrays(fine_tuned / step_dir))
    figures = [{(r["step"], r["split"]): {k: v for k, v in r.items() if k != "steps_per_s"} for r in read_metrics(w)} for w in (workdir, fine_tuned)]
    assert figures[0] == figures[1] and len(read_metrics(workdir)) == len(figures[0])  # every (step, split) once


def test_predict_on_the_fine_tuned_run(fine_tuned, tmp_path):
    results = bert_imdb.predict(fine_tuned, ["A wonderful, moving film.", "the " * 500], tmp_path / "attention.png")
    assert all(r.label in ("neg", "pos") and 0.0 <= r.probability <= 1.0 for r in results)
    assert results[1].tokens == 502 and results[1].used == 64  # [CLS] + 500 words + [SEP], cut to max_len
    assert (tmp_path / "attention.png").stat().st_size > 1000
    with pytest.raises(GenjaxError, match="text 2 is empty"):
        bert_imdb.predict(fine_tuned, ["fine", "   "])
    out = faults.run([sys.executable, "-m", "experiments.bert_imdb", "predict", "--workdir", str(fine_tuned), "great fun", "--best"], faults.environment())
    assert out.returncode == 0 and out.stdout.count("P(pos)=") == 1, out.stderr[-2000:]


@pytest.fixture(scope="module")
def transformers_directory(tmp_path_factory, data_dir) -> pathlib.Path:
    """A BertForMaskedLM that `transformers` builds and saves, with a WordPiece tokenizer of IMDb reviews."""
    directory = tmp_path_factory.mktemp("hf_bert")
    tokenizer = train_wordpiece(sources.labelled_texts("imdb_reviews", "train", data_dir, False)[0][:300], vocab_size=600)
    config = transformers.BertConfig(**{**ref.BERT, "vocab_size": tokenizer.vocab_size, "max_position_embeddings": 64, "num_labels": 2})
    ref.save(transformers.BertForMaskedLM(config).eval(), directory)
    tokenizer.save(directory)
    return directory


def test_fine_tune_from_a_transformers_directory_then_export_gives_transformers_the_same_predictions(tmp_path, transformers_directory):
    config = configure(bert_imdb.get_config(), {**FINE_TUNE, "num_train_steps": 8, "init_from": str(transformers_directory)})
    experiment = bert_imdb.build(config, tmp_path / "run")
    theirs = transformers.BertForMaskedLM.from_pretrained(transformers_directory).state_dict()["bert.embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(experiment.task.initial_params["embed"]["embedding"], theirs.numpy())
    # The starting values are an argument of the initialisation: baked in as constants they would grow the program by
    # twice their bytes (hex), 880 MB for bert-base.
    batch, task = experiment.train_data.batch_at(0), experiment.task
    programs = [jax.jit(task.init_state).lower(*args).as_text() for args in ((jax.random.key(0), batch), loop.init_arguments(task, jax.random.key(0), batch))]
    assert len(programs[1]) - len(programs[0]) < sum(v.nbytes for v in jax.tree.leaves(task.initial_params)) / 4
    bert_imdb.train_and_evaluate(config, tmp_path / "run")

    bert_imdb.export(tmp_path / "run", tmp_path / "out")
    model = ref.assert_loads_cleanly("BertForSequenceClassification", tmp_path / "out")
    texts = ["A wonderful, moving film.", "The worst plot I have seen in years, and the acting is no better."]
    ours = np.asarray([r.probability for r in bert_imdb.predict(tmp_path / "run", texts)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "out" / "tokenizer.json"))
    ids = bert_inputs([np.asarray(row) for row in tokenizer(texts)["input_ids"]], 64, 0)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != 0).long()).logits
    np.testing.assert_allclose(ours, torch.softmax(logits, -1)[:, 1].numpy(), atol=1e-5)
    with pytest.raises(GenjaxError, match="exists; export into a new or empty directory"):
        bert_imdb.export(tmp_path / "run", tmp_path / "out")


@pytest.mark.parametrize("case", ["missing directory", "gpt-2 directory", "hub name offline", "another experiment's workdir"])
def test_a_bad_init_from_stops_with_one_line_and_writes_nothing(case, tmp_path, fine_tuned, data_dir):
    source, message = {
        "missing directory": (str(tmp_path / "nowhere"), "is not a directory; give a genjax pretraining workdir"),
        "gpt-2 directory": (str(ref.save(ref.gpt2(), tmp_path / "gpt2")), "describes a GPT2LMHeadModel, which cannot load as a BertForSequenceClassification"),
        "hub name offline": ("hf:genjax-tests/no-such-model", "cannot fetch 'genjax-tests/no-such-model' from the Hugging Face hub"),
        "another experiment's workdir": (str(fine_tuned), "is a workdir of experiment 'bert_imdb'; give a workdir of"),
    }[case]
    config = configure(bert_imdb.get_config(), {**FINE_TUNE, "init_from": source})
    with pytest.raises(GenjaxError) as error:
        bert_imdb.train_and_evaluate(config, tmp_path / "run")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_bad_init_from_on_the_command_line_is_one_error_line(tmp_path):
    workdir = tmp_path / "run"
    out = faults.run(faults.command("experiments.bert_imdb", workdir, init_from=tmp_path / "nowhere", download=False), faults.environment())
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert [line for line in out.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: init_from '{tmp_path / 'nowhere'}' is not a directory; give a genjax pretraining workdir, a Hugging Face "
        "model directory or hf:NAME"
    ]
    assert not workdir.exists()
