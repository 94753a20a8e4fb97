"""Input pipeline: TFDS sources with clear errors, deterministic resumable loaders, binarisation, augmentation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genjax import sharding
from genjax.data import sources
from genjax.data.images import augment_digits, dynamic_binarization, static_binarization
from genjax.data import loader as loader_lib
from genjax.data.loader import ResidentArrays, ShuffledArrayLoader, device_prefetch, EvalBatches, to_global
from genjax.errors import GenjaxError


def test_mnist_decodes_once_to_arrays(data_dir):
    test = sources.image_arrays("mnist", "test")
    assert test["image"].shape == (10000, 28, 28, 1) and test["image"].dtype == np.uint8
    assert np.bincount(test["label"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert sources.image_arrays("mnist", "test") is test  # cached: no second decode


def test_unknown_dataset_missing_dir_and_bad_split_are_clear(tmp_path, data_dir):
    with pytest.raises(GenjaxError, match="unknown dataset 'mnistt'.*prepared in .*mnist"):
        sources.data_source("mnistt", "train")
    with pytest.raises(GenjaxError, match="data dir '.*nowhere' does not exist; set TFDS_DATA_DIR"):
        sources.data_source("mnist", "train", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(GenjaxError, match="'mnist' is not prepared in data dir"):
        sources.data_source("mnist", "train", data_dir=str(tmp_path), download=False)
    with pytest.raises(GenjaxError, match="no split 'validation'; its splits are \\['train', 'test'\\]"):
        sources.data_source("mnist", "validation")


def test_loader_is_deterministic_resumable_and_covers_each_epoch():
    arrays = {"x": np.arange(100), "y": np.arange(100) * 2}
    loader = ShuffledArrayLoader(arrays, global_batch_size=10, seed=3)
    epoch0 = [loader.batch_at(i) for i in range(10)]
    assert sorted(np.concatenate([b["x"] for b in epoch0]).tolist()) == list(range(100))
    assert all(np.array_equal(b["y"], 2 * b["x"]) for b in epoch0)
    fresh = ShuffledArrayLoader(arrays, global_batch_size=10, seed=3)
    assert np.array_equal(fresh.batch_at(7)["x"], epoch0[7]["x"])  # any position, no replay needed
    assert not np.array_equal(np.sort(fresh.batch_at(10)["x"]), np.sort(epoch0[0]["x"]))  # epoch 1 reshuffles
    other_seed = ShuffledArrayLoader(arrays, global_batch_size=10, seed=4)
    assert not np.array_equal(other_seed.batch_at(0)["x"], epoch0[0]["x"])


def test_eval_batches_cover_every_example_once_with_a_mask():
    arrays = {"x": np.arange(25)}
    batches = list(EvalBatches(arrays, 10))
    assert [len(b["x"]) for b in batches] == [10, 10, 10]
    real = np.concatenate([b["x"][b["mask"]] for b in batches])
    assert real.tolist() == list(range(25))
    assert len(EvalBatches(arrays, 10)) == 3
    assert np.concatenate([b["row"] for b in batches]).tolist() == list(range(30))  # each row's index, padding past the end


def test_device_prefetch_yields_global_batches_in_order():
    loader = ShuffledArrayLoader({"x": np.arange(64, dtype=np.float32)}, global_batch_size=8, seed=0)
    data_sharding = sharding.batch_sharding(sharding.make_mesh())
    stream = device_prefetch(loader, start_index=3, sharding=data_sharding)
    got = [next(stream) for _ in range(4)]
    stream.close()
    for offset, batch in enumerate(got):
        assert isinstance(batch["x"], jax.Array) and batch["x"].sharding == data_sharding
        np.testing.assert_array_equal(batch["x"], loader.batch_at(3 + offset)["x"])


def test_resident_arrays_gather_the_same_batches_as_the_host(data_dir):
    """Real MNIST rows kept on the device: batch `index` equals the host-gathered batch, across an epoch boundary."""
    train = sources.image_arrays("mnist", "train")
    loader = ShuffledArrayLoader({"image": train["image"][:1000], "label": train["label"][:1000]}, global_batch_size=64, seed=1)
    data_sharding = sharding.batch_sharding(sharding.make_mesh())
    resident = ResidentArrays(loader, data_sharding)
    for index in (0, 1, loader.steps_per_epoch - 1, loader.steps_per_epoch, 40):
        (batch,), host = resident.batches_at(index, 1), to_global(loader.batch_at(index), data_sharding)
        assert batch.keys() == host.keys() and all(batch[k].sharding == data_sharding for k in batch)
        for key in batch:
            assert batch[key].dtype == host[key].dtype
            np.testing.assert_array_equal(batch[key], host[key])
    # Several batches gathered in one call, across the epoch boundary, are the same batches one by one.
    start = loader.steps_per_epoch - 2
    for offset, batch in enumerate(resident.batches_at(start, 4)):
        assert all(batch[k].sharding == data_sharding for k in batch)
        np.testing.assert_array_equal(batch["image"], loader.batch_at(start + offset)["image"])


def test_only_small_datasets_are_made_resident(monkeypatch):
    loader = ShuffledArrayLoader({"x": np.arange(64, dtype=np.float32)}, global_batch_size=8, seed=0)
    data_sharding = sharding.batch_sharding(sharding.make_mesh())
    assert loader_lib.resident(loader)
    monkeypatch.setattr(loader_lib, "RESIDENT_MAX_BYTES", loader.nbytes - 1)
    assert not loader_lib.resident(loader)
    assert [b["x"].tolist() for b in loader_lib.global_batches(loader, data_sharding)(5)] == [loader.batch_at(5)["x"].tolist()]


def test_binarisations():
    images = np.full((4, 28, 28, 1), 128, np.uint8)
    first, again = static_binarization(images, seed=1), static_binarization(images, seed=1)
    assert np.array_equal(first, again) and set(np.unique(first)) == {0, 1}
    assert abs(first.mean() - 128 / 255) < 0.05
    dynamic = dynamic_binarization(jax.random.key(0), jnp.asarray(images))
    assert set(np.unique(np.asarray(dynamic)).tolist()) == {0.0, 1.0}
    assert not np.array_equal(np.asarray(dynamic), np.asarray(dynamic_binarization(jax.random.key(1), jnp.asarray(images))))
    # Statically binarised data stored as 0/255 passes through the dynamic draw unchanged.
    exact = jnp.asarray(first * 255)
    np.testing.assert_array_equal(dynamic_binarization(jax.random.key(5), exact), first.astype(np.float32))


def test_augmentation_identity_and_shift(data_dir):
    digits = jnp.asarray(sources.image_arrays("mnist", "test")["image"][:8], jnp.float32) / 255.0
    same = augment_digits(jax.random.key(0), digits, max_rotation_deg=0.0, max_zoom=0.0, max_shift=0.0)
    np.testing.assert_allclose(same, digits, atol=1e-5)
    moved = augment_digits(jax.random.key(0), digits)
    assert moved.shape == digits.shape and not np.allclose(moved, digits)
    # A small rigid transform keeps most of the ink on the canvas.
    np.testing.assert_allclose(moved.sum((1, 2, 3)), digits.sum((1, 2, 3)), rtol=0.3)
