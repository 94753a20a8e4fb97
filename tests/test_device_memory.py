"""A train or eval step that needs more memory than a device has stops before the first step, with one line naming
the batch size, both sizes and the fixes, and writes nothing into the workdir (every other run of the suite is a pair
of steps that fit going through the same check)."""

from __future__ import annotations

import jax
import pytest

from benchmarks import sized_transformers
from genjax import device_memory, loop, sharding
from genjax.errors import GenjaxError
from genjax.workdir import LOCK_FILE


def test_a_step_that_cannot_fit_stops_before_anything_is_written(tmp_path):
    """GPT-2 124M at 256 x 1024 tokens without remat keeps hundreds of GiB of activations: more than any host's
    memory, which is what a CPU device has. Compiled from shapes only, so nothing of that size is allocated."""
    config = sized_transformers.get_config()
    config.update(num_devices=1, batch_size=256, seq_len=1024, train_tokens=1 << 19)
    config.model.update(size="124m", scan_layers=True)
    workdir = tmp_path / "w"
    with pytest.raises(GenjaxError, match=r"^batch_size=256 needs \d+\.\d GiB per device but a device has \d+\.\d GiB; "
                                          r"lower --config.batch_size, use --config.model.remat=full"):
        loop.train_and_evaluate(config, workdir, sized_transformers.build(config))
    assert [path.name for path in workdir.iterdir()] == [LOCK_FILE]


def test_an_eval_step_that_cannot_fit_stops_before_anything_is_written(tmp_path):
    """The tiny GPT-2 trains at batch 16, but its eval step at 2^17 windows of 128 tokens would hold their
    [B, T, vocab] logits: tens of GiB. Found while compiling, before the first train step."""
    config = sized_transformers.get_config()
    config.update(num_devices=1, eval_batch_size=1 << 17)
    workdir = tmp_path / "w"
    with pytest.raises(GenjaxError, match=r"^the eval step at eval_batch_size=131072 needs \d+\.\d GiB per device but a device "
                                          r"has \d+\.\d GiB; lower --config.eval_batch_size, or split the state"):
        loop.train_and_evaluate(config, workdir, sized_transformers.build(config))
    assert [path.name for path in workdir.iterdir()] == [LOCK_FILE]


def test_a_cpu_device_has_the_host_memory_shared_by_the_mesh_devices_of_this_process():
    mesh = sharding.make_mesh(1)
    assert device_memory.reported_limit(jax.devices()[0]) is None  # CPU devices report no allocator limit
    assert device_memory.device_limit(mesh) > 2**30
    with pytest.raises(GenjaxError, match=r"^batch_size=8 needs 3\.0 GiB per device but a device has 2\.0 GiB; lower --batch-size, use"):
        device_memory.check_fits(3 * 2**30, 2 * 2**30, "batch_size=8", device_memory.train_fixes("lower --batch-size"))
    device_memory.check_fits(2 * 2**30, 2 * 2**30, "batch_size=8", "-")  # exactly full fits
    device_memory.check_fits(2**50, None, "batch_size=8", "-")  # no known limit: no check
