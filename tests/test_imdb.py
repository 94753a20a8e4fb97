"""IMDb sentiment on real reviews: metrics on known inputs, a short training run, and `predict` on the saved model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from experiments import transformer_imdb
from genjax.errors import GenjaxError
from genjax.metrics_log import read_metrics
from genjax.tasks.text_classifier import binary_metrics, model_from_config, roc_curve

from conftest import run_module


def test_binary_metrics_on_known_inputs(capsys):
    labels = np.array([1, 1, 0, 0, 1, 0])
    perfect = binary_metrics(np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3]), labels)
    assert perfect == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "roc_auc": 1.0}
    assert binary_metrics(np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7]), labels)["roc_auc"] == 0.0
    assert binary_metrics(np.full(6, 0.5), labels)["roc_auc"] == pytest.approx(0.5)  # one tie: the diagonal
    mixed = binary_metrics(np.array([0.9, 0.4, 0.6, 0.2, 0.8, 0.1]), labels)  # tp 2, fp 1, fn 1
    assert (mixed["precision"], mixed["recall"], mixed["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert mixed["roc_auc"] == pytest.approx(8 / 9)  # 8 of the 9 (pos, neg) pairs ranked right
    one_class = binary_metrics(np.array([0.9, 0.4]), np.array([1, 1]))
    assert np.isnan(one_class["roc_auc"]) and one_class["recall"] == 0.5  # undefined, not 0.0; the others still hold
    assert "ROC-AUC is undefined with labels of one class only ([1])" in capsys.readouterr().err
    fpr, tpr = roc_curve(np.array([0.9, 0.4, 0.6, 0.2, 0.8, 0.1]), labels)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0 and np.all(np.diff(fpr) >= 0)


def test_the_default_attention_kernel_is_the_platform_s_faster_one():
    config = transformer_imdb.get_config()
    assert config.model.attention_kernel == "auto"
    assert model_from_config(config, vocab_size=100).attention_kernel == ("blocked" if jax.default_backend() == "cpu" else "xla")
    config.model.attention_kernel = "fused"
    assert model_from_config(config, vocab_size=100).attention_kernel == "fused"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A short real run: 2,000 training reviews cut to 128 words, 60 steps, evaluated on 1,000 test reviews."""
    workdir = tmp_path_factory.mktemp("imdb")
    config = transformer_imdb.get_config()
    config.update(dict(train_examples=2000, test_examples=1000, vocab_size=5000, max_len=128, num_train_steps=60,
                       log_every=20, checkpoint_every=30))
    final = transformer_imdb.train_and_evaluate(config, workdir)
    return workdir, final


def test_short_real_run_lowers_the_loss_and_reports_every_metric(trained):
    workdir, final = trained
    train = read_metrics(workdir, "train")
    assert train[-1]["loss"] < train[0]["loss"] - 0.05
    assert final["accuracy"] > 0.6  # 60 steps on 2,000 reviews: clearly better than chance on unseen ones
    assert set(final) >= {"loss", "accuracy", "precision", "recall", "f1", "roc_auc"}
    assert final["roc_auc"] > 0.65
    assert (workdir / "roc_curve.png").stat().st_size > 1000
    assert (workdir / "tokenizer.json").is_file()


def test_predict_on_the_saved_model(trained, tmp_path):
    workdir, _ = trained
    results = transformer_imdb.predict(workdir, ["A wonderful, moving film. Brilliant acting!", "word " * 5000])
    assert [len(r) for r in results] == [4, 4]
    assert all(label in ("neg", "pos") and 0.0 <= p <= 1.0 for label, p, _, _ in results)
    assert results[1][2:] == (5000, 128)  # a very long text is cut to max_len
    with pytest.raises(GenjaxError, match="text 2 is empty"):
        transformer_imdb.predict(workdir, ["fine", "   "])
    with pytest.raises(GenjaxError, match="train first"):
        transformer_imdb.predict(tmp_path, ["fine"])

    reviews = tmp_path / "reviews.txt"
    reviews.write_text("The worst movie I have ever seen.\n\nI loved every minute of it.\n")
    png = tmp_path / "attention.png"
    out = run_module("experiments.transformer_imdb", "predict", "--workdir", str(workdir), "great fun", "--file", str(reviews),
                     "--attention-png", str(png))
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "P(pos)=" in line]
    assert len(lines) == 3 and lines[1].endswith("The worst movie I have ever seen.")  # the blank line is skipped
    assert png.stat().st_size > 1000

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good movie\nbad \xff\xfe bytes\n")
    out = run_module("experiments.transformer_imdb", "predict", "--workdir", str(workdir), "--file", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "line 2 is not UTF-8 (byte 0xff at column 5)" in out.stderr
    out = run_module("experiments.transformer_imdb", "predict", "--workdir", str(workdir), "")
    assert out.returncode == 2 and "error: text 1 is empty" in out.stderr and "Traceback" not in out.stderr
