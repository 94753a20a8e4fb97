"""Choose on validation, report on test: validation data is held out of train, `best_metric` ranks validation
evaluations only, and the test split is evaluated and logged once, at the end."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import mlp_mnist, transformer_imdb
from genjax.data import sources
from genjax import loop
from genjax.data.loader import eval_splits
from genjax.data.splits import hold_out
from genjax.errors import GenjaxError
from genjax.metrics_log import read_metrics
from genjax.task import TEST, VALIDATION


def test_hold_out_takes_the_last_rows_and_refuses_sizes_that_leave_nothing():
    columns = {"x": np.arange(10), "y": list("abcdefghij")}
    train, validation = hold_out(columns, 3)
    assert train["x"].tolist() == list(range(7)) and validation["x"].tolist() == [7, 8, 9]
    assert validation["y"] == ["h", "i", "j"]
    for size in (0, 10, -1):
        with pytest.raises(GenjaxError, match=f"validation_examples={size} must be between 1 and 9"):
            hold_out(columns, size)


def collect(batches) -> dict[str, np.ndarray]:
    batches = list(batches)
    mask = np.concatenate([b["mask"] for b in batches])
    return {k: np.concatenate([b[k] for b in batches])[mask] for k in batches[0] if k != "mask"}


def test_mnist_trains_on_train_less_its_last_5000_images_and_validates_on_them(data_dir):
    config = mlp_mnist.get_config()
    config.update(dict(data_dir=data_dir, download=False))
    experiment = mlp_mnist.build(config)
    tfds_train = sources.image_arrays("mnist", "train", data_dir, False)
    tfds_test = sources.image_arrays("mnist", "test", data_dir, False)
    assert experiment.data_signature == {"dataset": "mnist", "train": 55000, VALIDATION: 5000, TEST: 10000}
    np.testing.assert_array_equal(experiment.train_data.arrays["image"], tfds_train["image"][:55000])
    validation = collect(experiment.eval_data[VALIDATION]())
    np.testing.assert_array_equal(validation["image"], tfds_train["image"][55000:])
    np.testing.assert_array_equal(validation["label"], tfds_train["label"][55000:])
    np.testing.assert_array_equal(collect(experiment.eval_data[TEST]())["label"], tfds_test["label"])


def test_imdb_validation_reviews_are_never_trained_on_nor_seen_by_the_tokenizer(data_dir):
    config = transformer_imdb.get_config()
    config.update(dict(data_dir=data_dir, download=False, validation_examples=300, train_examples=700))
    (train_texts, train_labels), validation = transformer_imdb.training_reviews(config)
    texts, labels = sources.labelled_texts("imdb_reviews", "train", data_dir, False)
    assert train_texts == texts[:700] and validation["text"] == texts[-300:]
    np.testing.assert_array_equal(validation["label"], labels[-300:])
    tokenizer = transformer_imdb.train_tokenizer(config)
    assert tokenizer.vocab == transformer_imdb.WordTokenizer.train(texts[:700], config.vocab_size).vocab


def test_best_checkpoint_follows_validation_and_test_is_logged_once(tmp_path, data_dir):
    """Validation labels are shifted by one class, so its accuracy falls as the model learns, while the test
    accuracy rises: the kept state is the validation-best one (early), and test is evaluated once, at the end."""
    config = mlp_mnist.get_config()
    config.update(dict(data_dir=data_dir, download=False, num_train_steps=150, eval_every=50, log_every=50, checkpoint_every=50,
                       batch_size=64, best_metric="accuracy", best_mode="max"))
    config.model.hidden = (64,)
    experiment = mlp_mnist.build(config)
    validation = collect(experiment.eval_data[VALIDATION]())
    shifted = {"image": validation["image"], "label": (validation["label"] + 1) % 10}
    experiment.eval_data[VALIDATION] = eval_splits({VALIDATION: shifted}, config.eval_batch_size)[VALIDATION]
    final = loop.train_and_evaluate(config, tmp_path, experiment)

    accuracy = {row["step"]: row["accuracy"] for row in read_metrics(tmp_path, VALIDATION)}
    assert sorted(accuracy) == [50, 100, 150]
    best_step = max(accuracy, key=accuracy.get)
    assert best_step != 150, accuracy  # the shifted labels reward the least trained model
    assert sorted(int(p.name) for p in (tmp_path / "best_checkpoints").iterdir() if p.name.isdigit()) == [best_step]
    tests = read_metrics(tmp_path, TEST)
    assert [row["step"] for row in tests] == [150] and tests[0]["accuracy"] == final["accuracy"] > 0.85

    rerun = loop.train_and_evaluate(config, tmp_path, experiment)  # finished: nothing evaluated again
    assert rerun == {k: v for k, v in tests[0].items() if k not in ("step", "split")}
    assert [row["step"] for row in read_metrics(tmp_path, TEST)] == [150]

