"""Multi-process jobs: flags/env parsing, 2 processes x 2 devices == 1 process x 4 devices, a dead process stops the job."""

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import scaling_runs
from genjax import distributed
from genjax.errors import GenjaxError
from conftest import emulated_cpu_env
from genjax.launch import process_commands, start_processes
from genjax.metrics_log import read_metrics

DEATH_BOUND_S = 90  # heartbeat timeout below (10 s) plus start-up slack on a loaded machine


def parse(*argv):
    parser = argparse.ArgumentParser()
    distributed.add_flags(parser)
    return distributed.settings_from(parser.parse_args(argv))


def test_settings_from_flags_environment_and_defaults(monkeypatch):
    for name in ("DISTRIBUTED", "COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID", "HEARTBEAT_TIMEOUT_S"):
        monkeypatch.delenv(distributed.ENV_PREFIX + name, raising=False)
    single = parse()
    assert not single.explicit and single.mode == ""
    distributed.initialize(single)  # a single process: nothing to join, no error

    explicit = parse("--coordinator_address", "10.0.0.1:1234", "--num_processes", "4", "--process_id", "3")
    assert (explicit.coordinator_address, explicit.num_processes, explicit.process_id) == ("10.0.0.1:1234", 4, 3)

    monkeypatch.setenv("GENJAX_COORDINATOR_ADDRESS", "10.0.0.2:99")
    monkeypatch.setenv("GENJAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("GENJAX_PROCESS_ID", "1")
    from_env = parse("--process_id", "0")  # a flag wins over its variable
    assert (from_env.coordinator_address, from_env.num_processes, from_env.process_id) == ("10.0.0.2:99", 2, 0)

    monkeypatch.setenv("GENJAX_DISTRIBUTED", "auto")
    with pytest.raises(GenjaxError, match="--distributed auto detects the cluster itself"):
        parse()
    monkeypatch.delenv("GENJAX_COORDINATOR_ADDRESS")
    monkeypatch.delenv("GENJAX_NUM_PROCESSES")
    monkeypatch.delenv("GENJAX_PROCESS_ID")
    assert parse().mode == "auto"


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--num_processes", "2", "--process_id", "0"), "needs --coordinator_address"),
        (("--coordinator_address", "h:1", "--num_processes", "2", "--process_id", "2"), "must lie in 0..1"),
        (("--coordinator_address", "host", "--num_processes", "2", "--process_id", "0"), "needs a port"),
    ],
)
def test_incomplete_or_inconsistent_launch_is_a_clear_error(monkeypatch, argv, message):
    for name in ("DISTRIBUTED", "COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID"):
        monkeypatch.delenv(distributed.ENV_PREFIX + name, raising=False)
    with pytest.raises(GenjaxError, match=message):
        parse(*argv)


def test_two_processes_match_one_process_with_four_devices():
    workdir, results = scaling_runs.two_process_run()
    for code, output in results:
        assert code == 0, output[-3000:]
    reference = scaling_runs.four_device_run()
    losses, expected = scaling_runs.train_losses(workdir), scaling_runs.train_losses(reference)
    assert sorted(losses) == [1, 2, 3]
    np.testing.assert_allclose([losses[s] for s in (1, 2, 3)], [expected[s] for s in (1, 2, 3)], rtol=1e-5)
    # Only process 0 prints and logs (one metrics row per step, not two); both wrote the checkpoint.
    assert "step 3/3" in results[0][1] and "step 3/3" not in results[1][1]
    assert len(read_metrics(workdir, "train")) == 3
    assert (workdir / "config.json").is_file() and (workdir / "checkpoints" / "3").is_dir()


def test_a_dead_process_stops_the_job_with_a_clear_error(tmp_path):
    victim = 1  # killing process 0, the coordinator, stops process 1 too (within ~2 s when tried by hand)
    command = [*scaling_runs.vae_args(tmp_path, 100_000), "--heartbeat_timeout_s", "10"]
    logs = [tempfile.TemporaryFile("w+") for _ in range(2)]
    processes = [
        subprocess.Popen(c, cwd=scaling_runs.REPO, env=emulated_cpu_env(2), stdout=log, stderr=subprocess.STDOUT, text=True)
        for c, log in zip(process_commands(command, 2), logs)
    ]
    survivor = processes[1 - victim]
    try:
        metrics = pathlib.Path(tmp_path, "metrics.jsonl")
        deadline = time.monotonic() + scaling_runs.RUN_TIMEOUT_S
        while not (metrics.exists() and metrics.stat().st_size) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in processes), "a process ended before training started"
            time.sleep(0.2)
        processes[victim].kill()  # mid-training, collectives in flight
        killed_at = time.monotonic()
        code = survivor.wait(timeout=DEATH_BOUND_S)
        waited = time.monotonic() - killed_at
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    logs[1 - victim].seek(0)
    output = logs[1 - victim].read()
    assert code != 0, output[-2000:]
    assert waited < DEATH_BOUND_S
    assert any(reason in output for reason in ("another task died", "unhealthy", "Connection reset", "Connection closed")), output[-3000:]


@pytest.mark.slow
def test_char_lm_two_processes_match_one_process_with_four_devices(tmp_path, monkeypatch):
    def args(workdir):
        return [sys.executable, "-m", "experiments.charlm_shakespeare", "--workdir", str(workdir),
                "--config.num_train_steps=4", "--config.log_every=1", "--config.model.num_layers=2",
                "--config.optimizer.warmup_steps=0", "--config.sample.length=20"]

    single = subprocess.run(args(tmp_path / "one"), cwd=scaling_runs.REPO, env=emulated_cpu_env(4),
                            capture_output=True, text=True, timeout=scaling_runs.RUN_TIMEOUT_S)
    assert single.returncode == 0, single.stderr[-3000:]
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # start_processes emulates CPU devices, also where a GPU is present
    processes = start_processes(args(tmp_path / "two"), 2, devices_per_process=2, cwd=scaling_runs.REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=scaling_runs.RUN_TIMEOUT_S)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    one, two = scaling_runs.train_losses(tmp_path / "one"), scaling_runs.train_losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4]
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5)
