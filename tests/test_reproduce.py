"""The README's CPU figures and benchmarks/expected_results.json: the README's results table quotes every stored
figure (in CI), the stored file is complete, `benchmarks.reproduce` reads and selects as documented, and (slow)
the fastest run's figure comes back from its command."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from benchmarks import expected, readme_figures, reproduce
from genjax.errors import GenjaxError
from conftest import run_module

README = readme_figures.README.read_text()


def test_readme_results_table_quotes_every_stored_figure():
    assert readme_figures.mismatches(README, expected.load()) == []


def test_a_figure_the_readme_quotes_differently_is_named():
    runs = expected.load()
    charlm = next(run for run in runs if run.name == "charlm")
    final = next(f for f in charlm.figures if f.step == "final")
    moved = README.replace(final.quoted(), final.readme.format(final.expected + 0.01))
    problems = readme_figures.mismatches(moved, runs)
    assert len(problems) == 1 and f"charlm {final.name}" in problems[0] and final.quoted() in problems[0]


def test_stored_file_is_complete():
    runs = expected.load()
    assert {"vae", "charlm", "imdb", "mlp"} <= {run.name for run in expected.select(runs, [], everything=False)}
    for run in runs:
        assert {"hardware", "commit", "versions", "date"} <= set(run.taken_on), run.name
        assert run.command.startswith("python -m experiments."), run.name
        for figure in run.figures:
            assert len(figure.tolerance_reason) > 40, f"{run.name} {figure.name}: say why the tolerance is what it is"


def test_only_adds_the_runs_a_command_reads_and_refuses_unknown_names():
    runs = expected.load()
    assert [run.name for run in expected.select(runs, ["gan"], everything=False)] == ["cnn", "gan"]
    gan = next(run for run in runs if run.name == "gan")
    assert expected.substituted_command(gan, {"runs/gan_mnist": "/t/gan", "runs/cnn_mnist": "/t/cnn"})[-3:] == [
        "--workdir", "/t/gan", "--config.feature_checkpoint=/t/cnn"]
    with pytest.raises(GenjaxError, match="--only charlmm: no such run .* choose from vae, charlm"):
        expected.select(runs, ["charlm", "charlmm"], everything=False)


def _figure(**changes) -> expected.Figure:
    fields = dict(name="loss", split="test", key="loss", step="final", expected=1.5, tolerance=0.01,
                  tolerance_reason="-", readme="loss {:.2f}")
    return expected.Figure(**{**fields, **changes})


def test_read_figure_takes_the_final_or_named_step_and_names_what_is_missing(tmp_path: pathlib.Path):
    rows = [{"step": 10, "split": "test", "loss": 2.0}, {"step": 20, "split": "train", "loss": 1.0},
            {"step": 20, "split": "test", "loss": 1.505}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert reproduce.read_figure(tmp_path, _figure()) == 1.505
    assert reproduce.read_figure(tmp_path, _figure(step=10)) == 2.0
    assert _figure().within(1.505) and not _figure().within(1.52)
    with pytest.raises(GenjaxError, match=r"no rows of split 'validation' \(the run logged \['test', 'train'\]\)"):
        reproduce.read_figure(tmp_path, _figure(split="validation"))
    with pytest.raises(GenjaxError, match=r"no key 'nll' in the 'test' row of step 20 \(keys: \['loss'\]\)"):
        reproduce.read_figure(tmp_path, _figure(key="nll"))
    with pytest.raises(GenjaxError, match=r"no 'test' row at step 15 \(steps logged: \[10, 20\]\)"):
        reproduce.read_figure(tmp_path, _figure(step=15))
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "metrics.jsonl").write_text(json.dumps({"step": 20, "split": "train", "loss": 1.0}) + "\n")
    with pytest.raises(GenjaxError, match=r"no rows of split 'test' .*\['train'\]\): test is scored once, when the run ends; a run stopped early"):
        reproduce.read_figure(stopped, _figure())


def test_update_rewrites_only_the_expected_values_and_where_they_were_taken(tmp_path: pathlib.Path):
    path = tmp_path / "expected_results.json"
    shutil.copy(expected.PATH, path)
    before = {run.name: run for run in expected.load(path)}
    charlm = before["charlm"]
    values = {"charlm": {figure.name: figure.expected + 1 for figure in charlm.figures}}
    changes = expected.updated(path, values, {"hardware": "h", "commit": "c", "versions": {}, "date": "d"})
    after = {run.name: run for run in expected.load(path)}
    assert len(changes) == len(charlm.figures)
    assert [f.expected for f in after["charlm"].figures] == [f.expected + 1 for f in charlm.figures]
    assert [f.tolerance for f in after["charlm"].figures] == [f.tolerance for f in charlm.figures]
    assert after["charlm"].taken_on["commit"] == "c" and after["vae"] == before["vae"]


@pytest.mark.slow
def test_the_fastest_figure_comes_back_from_its_command():
    """The MLP, the fastest run: 84 s for the whole command on a 2-core AMD EPYC at load 5 (the char LM 196 s,
    the VAE 324 s, IMDb 537 s in the same `python -m benchmarks.reproduce` run)."""
    done = run_module("benchmarks.reproduce", "--only", "mlp", timeout=1800)
    summary = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 0 and summary["ok"], done.stdout[-3000:] + done.stderr[-3000:]
    assert {f["figure"] for f in summary["figures"]} == {f.name for run in expected.load() if run.name == "mlp" for f in run.figures}
