"""Damaged checkpoints: real truncation/overwrites of files in `<workdir>/checkpoints/<step>/...`.

A damaged newest checkpoint is reported with its path, moved to `damaged_checkpoints/`,
and the run resumes from the previous intact one, ending bit-identical to the undamaged
run. A workdir whose checkpoints are all damaged is an error that changes nothing.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

import faults
from experiments import vae_mnist
from genjax.errors import GenjaxError

STEPS, EVERY = 30, 10


def tiny_config():
    config = vae_mnist.get_config()
    config.update(dict(num_train_steps=STEPS, checkpoint_every=EVERY, log_every=10, eval_every=1000,
                       batch_size=32, iwae_samples=0, eval_batch_size=2000))
    return config


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, data_dir) -> pathlib.Path:
    """A finished run with intact checkpoints at steps 10, 20 and 30."""
    workdir = tmp_path_factory.mktemp("pristine")
    vae_mnist.train_and_evaluate(tiny_config(), workdir)
    assert faults.committed_steps(workdir) == [10, 20, 30]
    return workdir


def data_file(step_dir: pathlib.Path) -> pathlib.Path:
    return faults.largest_file(step_dir / "state")


def truncate_data(step_dir: pathlib.Path) -> None:
    path = data_file(step_dir)
    os.truncate(path, path.stat().st_size // 2)


def overwrite_data_bytes(step_dir: pathlib.Path) -> None:
    """Same size, 4 KiB in the middle replaced: what bit rot or a torn write leaves."""
    path = data_file(step_dir)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(bytes(range(256)) * 16)


def flip_one_byte(step_dir: pathlib.Path) -> None:
    path = data_file(step_dir)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))


def delete_state_manifest(step_dir: pathlib.Path) -> None:
    (step_dir / "state" / "manifest.ocdbt").unlink()


def garble_meta(step_dir: pathlib.Path) -> None:
    (step_dir / "meta" / "metadata").write_text('{"experiment": "vae_mn')


def empty_state_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "state" / "_METADATA").write_bytes(b"")


DAMAGES = {
    "truncated-data": {30: truncate_data},
    "overwritten-bytes-then-one-flipped-bit": {30: overwrite_data_bytes, 20: flip_one_byte},
    "missing-manifest": {30: delete_state_manifest},
    "garbled-meta-then-empty-metadata": {30: garble_meta, 20: empty_state_metadata},
}


SLOW_DAMAGES = {"missing-manifest"}  # orbax reports it itself, as it does truncation: kept out of CI


@pytest.mark.parametrize(
    "damage", [pytest.param(d, marks=pytest.mark.slow) if d in SLOW_DAMAGES else d for d in DAMAGES], ids=list(DAMAGES)
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(damage, pristine, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(pristine, workdir)
    for step, damage_fn in DAMAGES[damage].items():
        damage_fn(workdir / "checkpoints" / str(step))
    good = min(DAMAGES[damage]) - EVERY

    vae_mnist.train_and_evaluate(tiny_config(), workdir)

    out, err = capsys.readouterr()
    # orbax may also report an "Exception ignored in <coroutine ...>" of its own on stderr (timing-dependent),
    # so the warnings are read line by line: each names the root cause, not orbax's wrapper around it.
    warnings = [line for line in err.splitlines() if line.startswith("warning: checkpoint ")]
    for step in DAMAGES[damage]:
        prefix = f"warning: checkpoint {workdir.absolute() / 'checkpoints' / str(step)} is damaged ("
        (warning,) = [line for line in warnings if line.startswith(prefix)]
        assert "<bound method" not in warning
        assert (workdir / "damaged_checkpoints" / str(step)).is_dir()
    assert f"resumed from {workdir.absolute() / 'checkpoints' / str(good)} (step {good})" in out
    assert faults.committed_steps(workdir) == [10, 20, 30]
    faults.assert_bit_identical(
        faults.checkpoint_arrays(workdir / "checkpoints" / "30"), faults.checkpoint_arrays(pristine / "checkpoints" / "30")
    )


def test_only_damaged_checkpoints_is_an_error_that_changes_nothing(pristine, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(pristine, workdir)
    for step in (10, 20, 30):
        truncate_data(workdir / "checkpoints" / str(step))
    before = faults.tree_snapshot(workdir / "checkpoints")
    with pytest.raises(GenjaxError, match=r"every checkpoint in .*checkpoints is damaged \(steps \[10, 20, 30\]\)"):
        vae_mnist.train_and_evaluate(tiny_config(), workdir)
    assert faults.tree_snapshot(workdir / "checkpoints") == before
    assert not (workdir / "damaged_checkpoints").exists()


@pytest.mark.slow  # CI covers it through the preemption test's kill during a checkpoint write
def test_unfinished_first_write_starts_fresh(pristine, tmp_path):
    """A run killed while writing its first checkpoint leaves only a temporary directory: that is not damage."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    shutil.copytree(pristine / "checkpoints" / "10", workdir / "checkpoints" / "10.orbax-checkpoint-tmp-1234")
    truncate_data(workdir / "checkpoints" / "10.orbax-checkpoint-tmp-1234")
    vae_mnist.train_and_evaluate(tiny_config(), workdir)
    assert faults.committed_steps(workdir) == [10, 20, 30]
    assert not any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())
    faults.assert_bit_identical(
        faults.checkpoint_arrays(workdir / "checkpoints" / "30"), faults.checkpoint_arrays(pristine / "checkpoints" / "30")
    )
