"""Deterministic, seeded, resumable batch loaders and their transfer to global sharded `jax.Array`s.

A loader maps a batch index to this process's slice of that global batch, as
pure numpy indexing over arrays already in memory. The data position is then a
single integer (the index of the next batch), which the checkpoint stores, so a
resumed run sees exactly the batches an uninterrupted run would have seen.
Each process reads only its own rows; `to_global` assembles the process-local
rows of every process into one global array sharded over the mesh's data axis.
Small in-memory datasets are instead copied to every device once (`ResidentArrays`)
and only the row indices of each batch travel.
"""

from __future__ import annotations

import functools
import queue
import threading
from typing import Callable, Iterator, Protocol

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from genjax.errors import GenjaxError

Batch = dict[str, np.ndarray]


class Loader(Protocol):
    """Anything that yields process-local training batches by index."""

    global_batch_size: int

    def batch_at(self, index: int) -> Batch:
        """This process's rows of global batch number `index` (any index >= 0: loaders repeat forever)."""
        ...


def process_rows(global_batch_size: int) -> slice:
    """The rows of a global batch that belong to this process."""
    count, index = jax.process_count(), jax.process_index()
    if global_batch_size % count:
        raise GenjaxError(f"batch size {global_batch_size} is not divisible by the {count} processes")
    per_process = global_batch_size // count
    return slice(index * per_process, (index + 1) * per_process)


class ShuffledArrayLoader:
    """Epochs of a seeded permutation over in-memory arrays; the last partial batch of an epoch is dropped.

    Batch `index` comes from epoch `index // steps_per_epoch`, whose permutation is
    drawn from `(seed, epoch)`, so any batch can be produced without replaying earlier ones.
    """

    def __init__(self, arrays: Batch, global_batch_size: int, seed: int):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            raise GenjaxError(f"arrays of different lengths {sorted(sizes)} cannot be batched together")
        self.num_examples = sizes.pop()
        if global_batch_size > self.num_examples:
            raise GenjaxError(f"batch size {global_batch_size} exceeds the {self.num_examples} examples")
        self.arrays = arrays
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.steps_per_epoch = self.num_examples // global_batch_size
        self._rows = process_rows(global_batch_size)
        self._epoch = -1
        self._permutation = np.empty(0, np.int64)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.arrays.values())

    def rows_at(self, index: int) -> np.ndarray:
        """The example indices of this process's rows of global batch `index`: int [local batch]."""
        epoch, position = divmod(index, self.steps_per_epoch)
        if epoch != self._epoch:
            self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            self._epoch = epoch
        start = position * self.global_batch_size
        # Sorted before the process split: ascending reads are cache-friendlier, and the global batch
        # (row order included, which per-row random draws follow) is the same for any number of processes.
        return np.sort(self._permutation[start : start + self.global_batch_size])[self._rows]

    def batch_at(self, index: int) -> Batch:
        rows = self.rows_at(index)
        return {k: v[rows] for k, v in self.arrays.items()}


class EvalBatches:
    """Every example of `arrays` once, in order, as global batches of `global_batch_size` (this process's rows of
    each); the last batch is zero-padded. Iterable again and sized (`len`: the number of batches).

    Besides the arrays, each batch carries `mask` (bool [B], True on real rows) and `row` (int32 [B], each row's
    index in the split, padding rows continuing past its end): the loop's evaluation keys per example (see
    `task.row_keys`), the same for a row at every evaluation whatever the batch size.
    """

    def __init__(self, arrays: Batch, global_batch_size: int):
        self.arrays, self.global_batch_size = arrays, global_batch_size
        self.num = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return -(-self.num // self.global_batch_size)

    def __iter__(self) -> Iterator[Batch]:
        size, rows = self.global_batch_size, process_rows(self.global_batch_size)
        for start in range(0, self.num, size):
            stop = min(start + size, self.num)
            pad = size - (stop - start)
            batch = {k: np.concatenate([v[start:stop], np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in self.arrays.items()}
            batch["mask"] = np.arange(size) < stop - start
            batch["row"] = np.arange(start, start + size, dtype=np.int32)
            yield {k: v[rows] for k, v in batch.items()}


def eval_splits(held_out: dict[str, Batch], global_batch_size: int) -> dict[str, Callable[[], EvalBatches]]:
    """{split: arrays} -> {split: a callable giving that split's `EvalBatches`} (`Experiment.eval_data`)."""
    return {split: functools.partial(EvalBatches, arrays, global_batch_size) for split, arrays in held_out.items()}


def to_global(batch: Batch, sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assembles the process-local rows of every process into global arrays sharded by `sharding`."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


# Datasets up to this size are copied once to every device and batches are gathered there (ResidentArrays).
RESIDENT_MAX_BYTES = 512 * 2**20


class ResidentArrays:
    """A ShuffledArrayLoader's arrays, copied once to every device of `sharding`'s mesh; global batches
    are gathered on the devices.

    Batch `index` holds exactly the rows of `loader.batch_at(index)`, so training and resume are
    unchanged; what goes away is each batch's host-side gather and host-to-device copy, which cannot
    keep up with sub-millisecond steps on a GPU (benchmarks/HISTORY.md). Only the row indices travel,
    sharded like the batch, so each device gathers its own rows from its copy: no communication.
    """

    def __init__(self, loader: ShuffledArrayLoader, sharding: NamedSharding):
        self.loader = loader
        self.sharding = sharding
        replicated = NamedSharding(sharding.mesh, PartitionSpec())
        # Row indices [batches, rows], each batch's rows split like the batch.
        self._rows_sharding = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
        self.arrays = {
            k: jax.make_array_from_callback(v.shape, replicated, lambda index, v=v: v[index]) for k, v in loader.arrays.items()
        }
        self._gather = jax.jit(
            lambda arrays, rows: [{k: v[batch_rows] for k, v in arrays.items()} for batch_rows in rows],
            in_shardings=(replicated, self._rows_sharding),
            out_shardings=sharding,
        )

    def batches_at(self, index: int, count: int) -> list[dict[str, jax.Array]]:
        """Global batches `index, ..., index + count - 1`, gathered in one call: a list of
        {name: [global_batch_size, ...]} sharded like the batch."""
        rows = np.stack([self.loader.rows_at(index + offset) for offset in range(count)]).astype(np.int32)
        return self._gather(self.arrays, jax.make_array_from_process_local_data(self._rows_sharding, rows))


def resident(loader: Loader) -> bool:
    """Whether `loader`'s batches are gathered on the devices (ResidentArrays): in-memory arrays up to
    RESIDENT_MAX_BYTES. Otherwise each process gathers its rows on the host for `to_global`."""
    return isinstance(loader, ShuffledArrayLoader) and loader.nbytes <= RESIDENT_MAX_BYTES


# Resident batches gathered per call: one dispatch and one transfer of row indices for this many steps
# rather than for each (about 80 instead of 300 us of host work per MNIST batch on the 2-core CPU).
RESIDENT_BATCHES_PER_CALL = 8


def global_batches(loader: Loader, sharding: NamedSharding) -> Callable[[int], list[dict[str, jax.Array]]]:
    """index -> the next global batches from `index` on, sharded by `sharding`: RESIDENT_BATCHES_PER_CALL of
    them, gathered on the devices, where `resident` says; else one, gathered on the host."""
    if resident(loader):
        arrays = ResidentArrays(loader, sharding)
        return lambda index: arrays.batches_at(index, RESIDENT_BATCHES_PER_CALL)
    return lambda index: [to_global(loader.batch_at(index), sharding)]


def device_prefetch(
    loader: Loader, start_index: int, sharding: NamedSharding, depth: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Yields global batches `start_index, start_index + 1, ...`, produced ahead on a thread: `depth`
    waiting, plus the rest of the last `global_batches` call.

    The thread gathers rows and starts the host-to-device copy while the devices run
    the previous step, so input overlaps compute.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> None:
        """Puts `item` in the buffer unless the consumer has gone."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        index = start_index
        try:
            batches_from = global_batches(loader, sharding)
            while not stop.is_set():
                batches = batches_from(index)
                for batch in batches:
                    offer(batch)
                index += len(batches)
        except BaseException as error:  # surfaced to the consumer, never swallowed
            offer(error)

    thread = threading.Thread(target=produce, daemon=True, name="genjax-prefetch")
    thread.start()
    try:
        while True:
            item = buffer.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()  # a daemon thread left inside a JAX call crashes interpreter shutdown
