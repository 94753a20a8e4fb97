"""A checkpoint written on one topology resumes on another (1 device, 4 devices, 2 processes x 2 devices).

The continuation must reproduce the uninterrupted 4-device run's losses (float
tolerance: reductions run in another order), which holds only if the parameters,
optimizer state, RNG and data position all carried over.
"""

import numpy as np
import pytest

import scaling_runs
from experiments import vae_mnist

RTOL = 1e-4  # same math, different reduction order across devices


def assert_same_losses(workdir, reference, steps):
    losses, expected = scaling_runs.train_losses(workdir), scaling_runs.train_losses(reference)
    np.testing.assert_allclose([losses[s] for s in steps], [expected[s] for s in steps], rtol=RTOL)


def continue_on_one_device(source, tmp_path):
    workdir = scaling_runs.copy_checkpoint(source, 3, tmp_path / "one_device")
    vae_mnist.train_and_evaluate(scaling_runs.vae_config(6, num_devices=1), workdir)
    return workdir


def test_four_device_checkpoint_continues_on_one_device(tmp_path):
    reference = scaling_runs.four_device_run()
    workdir = continue_on_one_device(reference, tmp_path)
    assert sorted(scaling_runs.train_losses(workdir)) == [4, 5, 6]  # resumed at step 3, data position 3
    assert_same_losses(workdir, reference, [4, 5, 6])
    np.testing.assert_allclose(scaling_runs.final_test(workdir)["neg_elbo"], scaling_runs.final_test(reference)["neg_elbo"], rtol=RTOL)


def test_two_process_checkpoint_continues_on_one_device(tmp_path):
    source, results = scaling_runs.two_process_run()
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:]
    workdir = continue_on_one_device(source, tmp_path)
    assert_same_losses(workdir, scaling_runs.four_device_run(), [4, 5, 6])


@pytest.mark.slow  # a second 2-process job (~35 s of CPU); restoring a multi-process checkpoint stays in CI above
def test_one_device_checkpoint_continues_on_two_processes(tmp_path):
    reference = scaling_runs.four_device_run()
    vae_mnist.train_and_evaluate(scaling_runs.vae_config(3, num_devices=1), tmp_path / "one_device")
    assert_same_losses(tmp_path / "one_device", reference, [1, 2, 3])
    workdir = scaling_runs.copy_checkpoint(tmp_path / "one_device", 3, tmp_path / "two_processes")
    results = scaling_runs.run_two_processes(workdir, 6)
    assert [code for code, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert "resumed from" in results[0][1]
    assert sorted(scaling_runs.train_losses(workdir)) == [4, 5, 6]
    assert_same_losses(workdir, reference, [4, 5, 6])
