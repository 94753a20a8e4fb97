"""Bad input catalogue: each case, run through the real entry point as a process, ends with exactly one
`error: ...` line naming the bad value and the fix, exit status 2, no traceback, and an unchanged workdir.

Variants of a case already covered (nested key, float, missing value, wrong dataset kind,
download on) are marked slow to keep CI short.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import faults
from conftest import REPO, emulated_cpu_env
from experiments import vae_mnist
from genjax import entries
from genjax.errors import GenjaxError, first_line

VAE = "experiments.vae_mnist"
TINY = dict(num_train_steps=20, checkpoint_every=10, log_every=10)


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory, data_dir) -> pathlib.Path:
    """A finished tiny VAE run (checkpoints 10 and 20) with the settings `faults.command` gives the VAE."""
    workdir = tmp_path_factory.mktemp("vae_workdir")
    config = vae_mnist.get_config()
    config.update({**entries.smoke_settings(VAE), **TINY})
    vae_mnist.train_and_evaluate(config, workdir)
    assert faults.committed_steps(workdir) == [10, 20]
    return workdir


@pytest.fixture
def workdir_copy(vae_workdir, tmp_path) -> pathlib.Path:
    copy = tmp_path / "run"
    shutil.copytree(vae_workdir, copy)
    return copy


def run_vae(workdir, compile_cache, env=None, module=VAE, **overrides) -> subprocess.CompletedProcess:
    return faults.run(faults.command(module, workdir, **{**TINY, **overrides}), faults.environment(compile_cache, **(env or {})))


def error_line(done: subprocess.CompletedProcess, orbax_logs_traceback: bool = False) -> str:
    """The single `error: ...` line of a run that must have failed cleanly.

    With `orbax_logs_traceback`, orbax's own ERROR log of its failed background write
    (a traceback) may precede it; the error line must still be the last line.
    """
    assert done.returncode == 2, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    if orbax_logs_traceback:
        assert done.stderr.strip().splitlines()[-1].startswith("error: "), done.stderr[-3000:]
    else:
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def test_unknown_dataset(tmp_path, compile_cache):
    line = error_line(run_vae(tmp_path / "w", compile_cache, dataset="mnsit"))
    assert "unknown dataset 'mnsit'" in line and "mnist" in line  # lists the prepared ones
    assert not (tmp_path / "w").exists()


def test_data_dir_that_does_not_exist(tmp_path, compile_cache):
    missing = tmp_path / "no_such_dir"
    line = error_line(run_vae(tmp_path / "w", compile_cache, data_dir=missing))
    assert f"data dir '{missing}' does not exist" in line and "TFDS_DATA_DIR" in line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "download", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["download-off", "download-on-without-tensorflow"]
)
def test_empty_data_dir(download, tmp_path, compile_cache):
    if download and importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("with TensorFlow installed an empty data dir starts a download")
    empty = tmp_path / "empty"
    empty.mkdir()
    line = error_line(run_vae(tmp_path / "w", compile_cache, data_dir=empty, download=download))
    assert "dataset 'mnist' is not prepared in" in line and str(empty) in line
    assert ("--config.download=True" in line) if not download else ("TensorFlow" in line and "TFDS_DATA_DIR" in line)
    assert not (tmp_path / "w").exists()


def test_split_that_does_not_exist(tmp_path, compile_cache):
    """The char LM reads a 'validation' split; imdb_reviews has text but only train/test(/unsupervised)."""
    done = faults.run(
        faults.command("experiments.charlm_shakespeare", tmp_path / "w", dataset="imdb_reviews", num_train_steps=2),
        faults.environment(compile_cache),
    )
    line = error_line(done)
    assert "dataset 'imdb_reviews' has no split 'validation'" in line and "'train'" in line
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_dataset_of_the_wrong_kind(tmp_path, compile_cache):
    line = error_line(run_vae(tmp_path / "w", compile_cache, dataset="tiny_shakespeare"))
    assert "dataset 'tiny_shakespeare' lacks feature(s) ['image', 'label']" in line


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("--config.learnin_rate=0.1", ["unknown config key 'learnin_rate'", "optimizer.learning_rate"]),
        pytest.param("--config.optimizer.lr=0.1", ["unknown config key 'optimizer.lr'", "optimizer.learning_rate"], marks=pytest.mark.slow),
        ("--config.batch_size=big", ["config key 'batch_size' expects int", "'big'", f"--config.batch_size={vae_mnist.get_config().batch_size}"]),
        pytest.param("--config.optimizer.learning_rate=fast", ["config key 'optimizer.learning_rate' expects float", "'fast'"], marks=pytest.mark.slow),
        pytest.param("--config.iwae_samples", ["config override '--config.iwae_samples' has no value"], marks=pytest.mark.slow),
        ("--workdr=/tmp/x", ["unknown arguments ['--workdr=/tmp/x']"]),
    ],
    ids=["unknown-key", "unknown-nested-key", "bad-int", "bad-float", "no-value", "unknown-flag"],
)
def test_bad_command_line(override, fragments, tmp_path, compile_cache):
    cmd = [sys.executable, "-m", VAE, "--workdir", str(tmp_path / "w"), override]
    line = error_line(faults.run(cmd, faults.environment(compile_cache)))
    for fragment in fragments:
        assert fragment in line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "setting, value, fragments",
    [
        ("model.kind", "resnet", ["unknown model.kind 'resnet'", "('mlp', 'conv')"]),
        ("model.upsample", "nearest", ["unknown model.upsample 'nearest'", "('subpixel', 'transpose')"]),
        ("iwae_samples", 150, ["iwae_samples=150 is not a multiple of 100", "use e.g. 200"]),
        ("data.binarization", "otsu", ["unknown data.binarization 'otsu'", "'dynamic' or 'static'"]),
    ],
)
def test_vae_setting_it_cannot_use_fails_before_training(setting, value, fragments, data_dir):
    """Caught when the experiment is built, not after training (the IWAE bound runs only at the end)."""
    config = vae_mnist.get_config()
    config.update_from_flattened_dict({setting: value, "data_dir": data_dir})
    with pytest.raises(GenjaxError) as error:
        vae_mnist.build(config)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_batch_size_not_divisible_by_the_devices(tmp_path, compile_cache):
    line = error_line(run_vae(tmp_path / "w", compile_cache, env=emulated_cpu_env(2), batch_size=33))
    assert "batch_size=33 is not divisible by data x fsdp = 2" in line and "--config.batch_size=32" in line
    assert faults.committed_steps(tmp_path / "w") == []


def test_workdir_of_another_experiment(workdir_copy, compile_cache):
    before = faults.tree_snapshot(workdir_copy)
    line = error_line(run_vae(workdir_copy, compile_cache, module="experiments.mlp_mnist", batch_size=32))
    assert "written by experiment 'vae_mnist', not 'mlp_mnist'" in line and "fresh --workdir" in line
    assert faults.tree_snapshot(workdir_copy) == before


def test_workdir_of_an_incompatible_config(workdir_copy, compile_cache):
    before = faults.tree_snapshot(workdir_copy)
    line = error_line(run_vae(workdir_copy, compile_cache, **{"model.hidden": 100}))
    assert f"checkpoint {workdir_copy.absolute() / 'checkpoints' / '20'} was trained with another model config (hidden: 500 there, 100 here)" in line
    assert faults.tree_snapshot(workdir_copy) == before
    # A checkpoint that predates the recorded model config is still refused, by its state's shapes.
    meta_path = workdir_copy / "checkpoints" / "20" / "meta" / "metadata"
    meta_path.write_text(json.dumps({k: v for k, v in json.loads(meta_path.read_text()).items() if k != "model"}))
    before = faults.tree_snapshot(workdir_copy)
    line = error_line(run_vae(workdir_copy, compile_cache, **{"model.hidden": 100}))
    assert f"checkpoint {workdir_copy.absolute() / 'checkpoints' / '20'} does not fit this config" in line
    assert re.search(r"state leaf \S+ has shape \[[0-9, ]*500[0-9, ]*\] there but \[[0-9, ]*100[0-9, ]*\] here \(changed model shape\?\)", line), line
    assert faults.tree_snapshot(workdir_copy) == before


def test_checkpoint_from_a_newer_format_version(workdir_copy, compile_cache):
    meta_path = workdir_copy / "checkpoints" / "20" / "meta" / "metadata"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    before = faults.tree_snapshot(workdir_copy)
    line = error_line(run_vae(workdir_copy, compile_cache))
    assert "format version 99, newer than this genjax" in line and "upgrade genjax" in line
    assert faults.tree_snapshot(workdir_copy) == before


def test_unwritable_workdir(tmp_path, compile_cache):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    line = error_line(run_vae(blocker / "run", compile_cache))
    assert f"workdir '{blocker / 'run'}' is not writable" in line and "choose another --workdir" in line


def _can_mount_tmpfs(mount_point: pathlib.Path) -> bool:
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs '{mount_point}'"],
        capture_output=True,
    ) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def test_error_lines_name_the_os_reason_even_when_shortened():
    tensorstore_style = (
        'RESOURCE_EXHAUSTED: Error writing "params/0.0" in OCDBT database at local file "' + "/deep" * 60 + '": '
        "Failed to write 140380 bytes to file 17: No space left on device [os_error_code='28'] "
        "[source locations='" + "tensorstore/kvstore/file/file_key_value_store.cc:123 " * 8 + "']"
    )
    line = first_line(ValueError(tensorstore_style))
    assert line.endswith("[OS error: No space left on device]") and len(line) < 400
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as disk_full:
            raise RuntimeError("Event loop is closed") from disk_full
    except RuntimeError as chained:
        assert first_line(chained) == "RuntimeError: Event loop is closed [OS error: No space left on device]"


def test_disk_full_while_saving_keeps_the_previous_checkpoints(workdir_copy, tmp_path, compile_cache):
    """The workdir sits on a private tmpfs with ~3 MB free: the step-30 checkpoint (~8 MB) cannot be written."""
    mount_point, result = tmp_path / "mnt", tmp_path / "after"
    mount_point.mkdir()
    if not _can_mount_tmpfs(mount_point):
        pytest.skip("cannot mount a private tmpfs here (no user namespaces)")
    used = sum(p.stat().st_size for p in workdir_copy.rglob("*") if p.is_file())
    size_kb = used // 1024 + 3 * 1024
    before = faults.tree_snapshot(workdir_copy / "checkpoints")
    cmd = " ".join(f"'{c}'" for c in faults.command(VAE, mount_point / "run", **{**TINY, "num_train_steps": 30}))
    script = (
        f"mount -t tmpfs -o size={size_kb}k tmpfs '{mount_point}' && cp -a '{workdir_copy}' '{mount_point}/run' && "
        f"{cmd}; status=$?; cp -a '{mount_point}/run' '{result}'; exit $status"
    )
    done = faults.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], faults.environment(compile_cache))
    line = error_line(done, orbax_logs_traceback=True)
    assert f"writing checkpoint {mount_point / 'run' / 'checkpoints' / '30'} failed" in line
    assert "No space left on device" in line, done.stderr[-3000:]
    assert "free disk space" in line
    assert faults.committed_steps(result) == [10, 20]
    after = faults.tree_snapshot(result / "checkpoints")
    assert {k: v for k, v in after.items() if not k.startswith("30.orbax-checkpoint-tmp")} == before


# A full filesystem put in place of one metrics sink, in a private mount namespace: the run resumed at step 20
# fails at its step-30 log line, which comes before the step-30 checkpoint. The copied metrics.jsonl is padded
# with blank lines (which readers skip) to a whole tmpfs page, or the next line would fit in its last page.
FILL_SINK = {
    "metrics.jsonl": (
        "cp '{run}/metrics.jsonl' '{full}/' && size=$(stat -c %s '{full}/metrics.jsonl') && "
        "head -c $(( (4096 - size % 4096) % 4096 )) /dev/zero | tr '\\0' '\\n' >> '{full}/metrics.jsonl' && "
        "mount --bind '{full}/metrics.jsonl' '{run}/metrics.jsonl'"
    ),
    "tensorboard": "mount --bind '{full}' '{run}/tensorboard'",
}


@pytest.mark.parametrize("sink", list(FILL_SINK))
def test_disk_full_while_logging_metrics_is_one_line_and_keeps_the_checkpoints(sink, workdir_copy, tmp_path, compile_cache):
    full = tmp_path / "full"
    full.mkdir()
    if not _can_mount_tmpfs(full):
        pytest.skip("cannot mount a private tmpfs here (no user namespaces)")
    before = faults.tree_snapshot(workdir_copy / "checkpoints")
    cmd = " ".join(f"'{c}'" for c in faults.command(VAE, workdir_copy, **{**TINY, "num_train_steps": 30}))
    script = (
        f"mount -t tmpfs -o size=64k tmpfs '{full}' && "
        + FILL_SINK[sink].format(run=workdir_copy, full=full)
        + f" && {{ dd if=/dev/zero of='{full}/filler' bs=4k 2>/dev/null; true; }} && {cmd}"
    )
    done = faults.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], faults.environment(compile_cache))
    line = error_line(done)  # TensorBoard's writer thread and its exit-time flush report to library.log, not stderr
    assert f"writing {workdir_copy / sink} failed (No space left on device)" in line and "free disk space" in line
    assert faults.committed_steps(workdir_copy) == [10, 20]
    assert faults.tree_snapshot(workdir_copy / "checkpoints") == before


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(keep_checkpoints=0), "keep_checkpoints=0 must be >= 1"),
        (dict(keep_checkpoints=-1), "keep_checkpoints=-1 must be >= 1"),
        (dict(batch_size=0), "batch_size=0 must be >= 1"),
        (dict(eval_batch_size=-5), "eval_batch_size=-5 must be >= 1"),
        (dict(log_every=0), "log_every=0 must be >= 1"),
        (dict(checkpoint_every=0), "checkpoint_every=0 must be >= 1"),
        (dict(num_train_steps=-1), "num_train_steps=-1 must be >= 0"),
        (dict(num_train_steps=0, num_epochs=0), "num_epochs=0 trains nothing"),
        (dict(best_metric="perplexity"), "best_metric 'perplexity' is not one of this experiment's validation metrics ['kl', 'neg_elbo']"),
        (dict(best_metric="nll", iwae_samples=100), "the test split is never used to choose"),  # the IWAE bound: test only
        (dict(best_mode="lowest"), "unknown best_mode 'lowest'"),
        (dict(validation_examples=60000), "validation_examples=60000 must be between 1 and 59999"),
    ],
    ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None,
)
def test_loop_setting_out_of_range_stops_before_anything_is_written(overrides, fragment, tmp_path, compile_cache):
    line = error_line(run_vae(tmp_path / "w", compile_cache, **overrides))
    assert fragment in line, line
    assert faults.committed_steps(tmp_path / "w") == [] and not (tmp_path / "w" / "metrics.jsonl").exists()


def test_empty_workdir(tmp_path, compile_cache):
    """Run from an empty directory: nothing may be written into it (the current directory)."""
    env = faults.environment(compile_cache, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", VAE, "--workdir", ""], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert "--workdir is empty" in error_line(done)
    assert list(tmp_path.iterdir()) == []


def test_resume_on_another_dataset_is_refused(workdir_copy, compile_cache):
    before = faults.tree_snapshot(workdir_copy)
    line = error_line(run_vae(workdir_copy, compile_cache, dataset="fashion_mnist"))
    assert "was trained on other data (dataset: 'mnist' there, 'fashion_mnist' here)" in line and "fresh --workdir" in line
    assert faults.tree_snapshot(workdir_copy) == before


def test_removed_checkpoints_do_not_restart_a_logged_run(workdir_copy, compile_cache):
    shutil.rmtree(workdir_copy / "checkpoints")
    before = faults.tree_snapshot(workdir_copy)
    line = error_line(run_vae(workdir_copy, compile_cache))
    assert "has metrics up to step 20 but no checkpoints/ directory (removed?)" in line and "metrics.jsonl" in line
    assert faults.tree_snapshot(workdir_copy) == before


def test_model_kind_of_the_other_classifier(tmp_path, compile_cache):
    line = error_line(run_vae(tmp_path / "w", compile_cache, module="experiments.mlp_mnist", **{"model.kind": "cnn"}))
    assert "model.kind 'cnn' needs model.channels" in line and "experiments.cnn_mnist" in line
    assert not (tmp_path / "w").exists()


def test_damaged_dataset_file_is_named(tmp_path, compile_cache, data_dir):
    copy = tmp_path / "tfds"
    shutil.copytree(pathlib.Path(data_dir) / "mnist", copy / "mnist")
    shard = next((copy / "mnist").rglob("mnist-train.array_record*"))
    shard.chmod(0o644)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    line = error_line(run_vae(tmp_path / "w", compile_cache, data_dir=copy))
    assert f"dataset 'mnist' split 'train' cannot be read from {shard}" in line and "damaged" in line
    assert not (tmp_path / "w").exists()


def test_inference_on_a_workdir_of_another_experiment(workdir_copy):
    from experiments import charlm_shakespeare

    with pytest.raises(GenjaxError, match="holds a run of experiment 'vae_mnist', not 'charlm_shakespeare'"):
        charlm_shakespeare.sample(workdir_copy, "ROMEO:", 5, 0.0, 0, 1, 0)


ROUTING_SCRIPT = """
import logging, sys
from genjax import cli
from genjax.errors import GenjaxError

class Leaky:
    def __del__(self):
        raise RuntimeError("raised while collected")

def main(argv):
    logging.getLogger("orbax").error("Traceback (most recent call last): a library's own report")
    Leaky()  # collected at once: Python reports what it cannot raise
    raise GenjaxError("the one line")

cli.run_main(main, sys.argv[1:])
"""


def test_library_messages_go_to_the_workdir_log(tmp_path):
    """The entry point sends the libraries' log records and the exceptions Python cannot raise (orbax's dropped
    reads of a damaged checkpoint: hundreds of lines) to `<workdir>/library.log`; stderr holds the error line,
    which names that log."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    done = faults.run([sys.executable, "-c", ROUTING_SCRIPT, "--workdir", str(workdir)], faults.environment())
    assert done.stderr.strip() == f"error: the one line (library messages: {workdir / 'library.log'})", done.stderr
    log = (workdir / "library.log").read_text()
    assert "a library's own report" in log and "RuntimeError: raised while collected" in log


def test_every_checkpoint_damaged_through_the_command(workdir_copy, compile_cache):
    """One warning per checkpoint, then the error line last on stderr. orbax's reports of the dropped reads go to
    library.log when it makes them while genjax runs; their timing varies, so a stray one is tolerated here."""
    for step in (10, 20):
        for data in (workdir_copy / "checkpoints" / str(step) / "state").rglob("*"):
            if data.is_file() and data.stat().st_size > 100_000:  # the compressed arrays
                damaged = bytearray(data.read_bytes())
                damaged[len(damaged) // 2 : len(damaged) // 2 + 1000] = bytes(1000)
                data.write_bytes(bytes(damaged))
    done = run_vae(workdir_copy, compile_cache)
    assert "every checkpoint in" in error_line(done, orbax_logs_traceback=True)
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: checkpoint ")]
    assert len(warnings) == 2 and all("is damaged" in line for line in warnings), done.stderr[-3000:]
