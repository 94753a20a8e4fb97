"""`config.best_metric`: the state of the best evaluation is kept beside the rolling checkpoints, survives a restart
and is what `sample --best` uses; it ranks validation evaluations only; an unknown metric, or one other than the
kept checkpoint's, is a clear error that costs no training; a damaged kept checkpoint is set aside and the ranking starts over."""

from __future__ import annotations

import pathlib

import pytest

from experiments import charlm_shakespeare
from genjax.errors import GenjaxError
from genjax.metrics_log import read_metrics

import faults


def small_config(**overrides):
    """The char LM's CPU recipe, one narrow layer, evaluated every 10 steps; "max" loss keeps the worst
    evaluation, so the kept state is never simply the newest one."""
    config = charlm_shakespeare.get_config()
    config.update(dict(num_train_steps=30, log_every=10, eval_every=10, checkpoint_every=10, keep_checkpoints=10,
                       eval_batch_size=512, best_metric="loss", best_mode="max"))
    config.model.update(dict(num_layers=1, width=32, num_heads=2))
    config.sample.update(dict(length=20, num_samples=1))
    config.update(overrides)
    return config


def evaluation_losses(workdir: pathlib.Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(workdir, "validation")}


def kept_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "best_checkpoints").iterdir() if p.name.isdigit())


def test_best_evaluation_is_kept_across_a_restart_and_sampled(tmp_path, data_dir, capsys):
    workdir = tmp_path / "run"
    charlm_shakespeare.train_and_evaluate(small_config(), workdir)
    losses = evaluation_losses(workdir)
    assert sorted(losses) == [10, 20, 30]
    worst = max(losses, key=losses.get)
    assert worst != 30, losses  # the loss fell while training: the kept state is not the newest
    assert kept_steps(workdir) == [worst]
    faults.assert_bit_identical(
        faults.checkpoint_arrays(workdir / "best_checkpoints" / str(worst)), faults.checkpoint_arrays(workdir / "checkpoints" / str(worst))
    )

    # Restarted for 20 more steps: the best value is read back, so later (better-loss) evaluations do not replace it.
    charlm_shakespeare.train_and_evaluate(small_config(num_train_steps=50), workdir)
    assert sorted(evaluation_losses(workdir)) == [10, 20, 30, 40, 50]
    assert kept_steps(workdir) == [worst]

    # The kept value is a loss ranked by "max": another metric or direction cannot be compared with it.
    for changed in (dict(best_metric="bits_per_char"), dict(best_mode="min")):
        with pytest.raises(GenjaxError, match=r"best checkpoint .*best_checkpoints/%d was kept for best_metric 'loss' \(best_mode max\)" % worst):
            charlm_shakespeare.train_and_evaluate(small_config(num_train_steps=50, **changed), workdir)
    assert kept_steps(workdir) == [worst]

    newest = charlm_shakespeare.sample(workdir, "ROMEO:", 20, 0.0, 0, 1, 0)
    best = charlm_shakespeare.sample(workdir, "ROMEO:", 20, 0.0, 0, 1, 0, best=True)
    assert len(best[0]) == 20 and best != newest  # greedy continuations of different states

    # A kept checkpoint whose meta is unreadable is reported and set aside; the ranking starts over.
    (workdir / "best_checkpoints" / str(worst) / "meta" / "metadata").write_text('{"experiment": "charlm_sh')
    charlm_shakespeare.train_and_evaluate(small_config(num_train_steps=60), workdir)
    assert f"warning: checkpoint {workdir.absolute() / 'best_checkpoints' / str(worst)} is damaged" in capsys.readouterr().err
    assert (workdir / "damaged_best_checkpoints" / str(worst)).is_dir()
    assert kept_steps(workdir) == [60]


def test_unknown_best_metric_is_a_clear_error_before_the_first_step(tmp_path, data_dir):
    workdir = tmp_path / "run"
    with pytest.raises(GenjaxError, match=r"best_metric 'perplexity' is not one of this experiment's validation metrics \['bits_per_char', 'loss'\]"):
        charlm_shakespeare.train_and_evaluate(small_config(best_metric="perplexity", checkpoint_every=1000), workdir)
    assert faults.committed_steps(workdir) == [] and not (workdir / "metrics.jsonl").exists()
    with pytest.raises(GenjaxError, match="unknown best_mode 'lowest'"):
        charlm_shakespeare.train_and_evaluate(small_config(best_mode="lowest"), tmp_path / "other")
    charlm_shakespeare.train_and_evaluate(small_config(best_metric="", num_train_steps=10), workdir)
    with pytest.raises(GenjaxError, match="no best_checkpoints in workdir .*--config.best_metric"):
        charlm_shakespeare.sample(workdir, "ROMEO:", 20, 0.0, 0, 1, 0, best=True)
