"""A train step that needs more memory than a device has stops before the first step, with one line naming the batch
size, both sizes and the fixes, and writes nothing into the workdir (every other run of the suite is a step that fits
going through the same check)."""

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


def test_a_cpu_device_has_the_host_memory_shared_by_the_mesh_devices_of_this_process():
    mesh = sharding.make_mesh(1)
    assert device_memory.reported_limit(jax.devices()[0]) is None  # CPU devices report no allocator limit
    assert device_memory.device_limit(mesh) > 2**30
    with pytest.raises(GenjaxError, match=r"^batch_size=8 needs 3\.0 GiB per device but a device has 2\.0 GiB; lower --batch-size"):
        device_memory.check_fits(3 * 2**30, 2 * 2**30, 8, "lower --batch-size")
    device_memory.check_fits(2 * 2**30, 2 * 2**30, 8)  # exactly full fits
    device_memory.check_fits(2**50, None, 8)  # no known limit: no check
