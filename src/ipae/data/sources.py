"""Where `train`'s batches come from: a tensor or array (on the device), a file read by rows
(`RowReader`, a memory-mapped array too), a map-style Dataset, or a DataLoader or any iterable of
batches. Each source gives this process's batch of every step as a floating tensor on the device, and
the settings that a continued run must share with it. Internal: `ipae.train` takes any of these kinds.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

import ipae.distributed as distributed
from ipae.data import arrays
from ipae.data.arrays import RowReader

__all__: list[str] = []  # internal

# What `train` and `fit` take as data: a tensor or array (N, ...), a `RowReader` of a file, a map-style
# Dataset, or a DataLoader or any iterable of batches (each a tensor, or an (x, y, ...) tuple whose x is used).
TrainData = Tensor | np.ndarray | RowReader | Dataset | Iterable


def check_finite(x: Tensor, where: str) -> None:
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError(f"{where} contains NaN or infinite values")


class _Schedule:
    """The sample indices of every step: shuffled passes over the N samples, one after another, so that
    every sample is used equally often; a batch that ends a pass is completed from the next. Pass p is
    the (p + 1)-th `torch.randperm(N)` of a CPU generator seeded with `seed`, and the passes are drawn
    as the steps reach them: only the pass in use is held (N indices, on `device`), never the steps x
    batch of the whole schedule. A step ahead of the pass in use draws the passes up to its own (as
    drawing the whole schedule did), one behind starts again from the seed."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        if not 1 <= batch_size <= n:  # a batch spans two passes at most
            raise ValueError(f"a batch of {batch_size} cannot be drawn from {n} samples")
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self.generator, self.drawn, self.order = None, -1, None  # the pass `drawn` is `order`

    def _pass(self, number: int) -> Tensor:  # (N,)
        if self.generator is None or number < self.drawn:
            self.generator, self.drawn = torch.Generator().manual_seed(self.seed), -1
        while self.drawn < number:
            self.order = torch.randperm(self.n, generator=self.generator).to(self.device)
            self.drawn += 1
        return self.order

    def __call__(self, step: int) -> Tensor:
        """The indices of step `step` (batch_size,)."""
        number, offset = divmod(step * self.batch_size, self.n)  # Python ints: no overflow at any step
        head = self._pass(number)[offset : offset + self.batch_size]
        if len(head) == self.batch_size:
            return head
        return torch.cat([head, self._pass(number + 1)[: self.batch_size - len(head)]])


class _Indexed:
    """A source of known size N: a tensor or array (on the device), a file read by a `RowReader` (a
    memory-mapped array is read from its file so too) or a map-style Dataset (read batch by batch).
    Steps index a fixed schedule of shuffled passes, so resuming at step s costs no more than the
    schedule up to s."""

    def __init__(self, data, batch_size: int, seed: int, device: torch.device, dtype: torch.dtype) -> None:
        processes, rank = distributed.world_size(), distributed.rank()
        n = len(data)
        if n == 0:
            raise ValueError("data is empty (N = 0)")
        self.local_batch = min(batch_size, n // processes)  # this process's share of the global batch
        if self.local_batch < 1:
            raise ValueError(f"{n} samples cannot be shared among {processes} processes")
        self.global_batch = self.local_batch * processes
        self.share = slice(rank * self.local_batch, (rank + 1) * self.local_batch)  # of each global batch
        self.device, self.dtype = device, dtype
        if isinstance(data, np.memmap):
            data = _unmapped(data)
        schedule_device = torch.device("cpu")
        if isinstance(data, RowReader):  # checked batch by batch: a whole pass would read a file larger than RAM
            data.check()  # still the file that was checked, before the first step
            self.read, digest = functools.partial(_file_rows, data), data.fingerprint()
        elif isinstance(data, (Tensor, np.ndarray)):
            tensor = torch.from_numpy(torch_array(data)) if isinstance(data, np.ndarray) else data
            check_array(tensor)
            digest = _fingerprint(tensor)
            tensor = tensor.to(device=device, dtype=dtype)
            schedule_device = device
            self.read = lambda index: tensor.index_select(0, index)
        else:  # a map-style Dataset
            self.read, digest = functools.partial(_dataset_rows, data), None
        self.schedule = _Schedule(n, self.global_batch, seed, schedule_device)
        self.settings = {"n_data": n, "batch_size": self.global_batch, "data_sha256": digest}

    def batches(self, first: int, end: int) -> Iterator[Tensor]:
        for step in range(first, end):
            yield self.read(self.schedule(step)[self.share]).to(device=self.device, dtype=self.dtype, non_blocking=True)


def _unmapped(array: np.memmap) -> RowReader | np.ndarray:
    """A memory-mapped array as train reads it: a C-ordered one from its file (`RowReader`), another one
    copied into memory when it is no larger than MMAP_BYTES (its rows are scattered through the file)."""
    if array.flags.c_contiguous and array.filename is not None:
        return RowReader.from_memmap(array)
    if array.nbytes > arrays.MMAP_BYTES:
        raise ValueError(
            f"a memory-mapped array of {array.nbytes} bytes that is not C-ordered: its rows are scattered through the file, "
            f"and it is larger than {arrays.MMAP_BYTES} bytes to copy into memory; save it in C order (np.ascontiguousarray)"
        )
    return np.array(array)


def _fingerprint(tensor: Tensor) -> str:
    """A SHA-256 of a tensor's dtype, shape and values, a chunk of rows at a time (from a GPU, a chunk at a time)."""
    digest = hashlib.sha256(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
    for chunk in tensor.split(max(1, arrays.CHUNK_BYTES // max(1, tensor[0].nbytes))):
        digest.update(chunk.detach().contiguous().view(torch.uint8).cpu().numpy())  # (rows, ..., bytes of a row's last axis)
    return digest.hexdigest()


def check_array(data: Tensor) -> None:
    if data.ndim < 2:
        raise ValueError(f"data must have shape (N, ...) with a sample's values after N, got {tuple(data.shape)}")
    if not (data.is_floating_point() or data.dtype in _INTEGER_DTYPES):
        raise ValueError(f"data must be numeric (floating point or integer), got {data.dtype}")
    check_finite(data, "data")


_INTEGER_DTYPES = (torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.int8, torch.int16, torch.int32, torch.int64)


def torch_array(array: np.ndarray) -> np.ndarray:
    """`array` C-contiguous, in a dtype torch can take: a ValueError (not torch's TypeError) for objects,
    strings, dates; long double as float64, which torch has not. `check_array` checks the rest."""
    if array.dtype.kind not in "biuf":
        raise ValueError(f"data must be a numeric array, got dtype {array.dtype}")
    if array.dtype.kind == "f" and array.dtype.itemsize > 8:
        array = array.astype(np.float64)
    return np.ascontiguousarray(array)


def _file_rows(reader: RowReader, index: Tensor) -> Tensor:
    """The rows `index` of a file, read from it (`RowReader`: a file changed since it was checked is a ValueError)."""
    rows = torch.from_numpy(reader(index.numpy()))
    check_finite(rows, "a batch of the data")
    return rows


def _dataset_rows(dataset: Dataset, index: Tensor) -> Tensor:
    indices = index.tolist()
    if hasattr(dataset, "__getitems__"):
        items = dataset.__getitems__(indices)
    else:
        items = [dataset[i] for i in indices]
    batch = _inputs(default_collate(items))
    check_finite(batch, "a batch of the dataset")
    return batch


def _inputs(batch) -> Tensor:
    """x of a batch: the batch itself, or the first element of an (x, y, ...) tuple or list."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, Tensor):
        raise ValueError(f"a batch must be a tensor or an (x, y) pair of tensors, got {type(batch).__name__}")
    return batch


class _Stream:
    """A DataLoader or any iterable of batches, each this process's batch; iterated again when it ends
    (a new epoch), and replayed from the start to resume (so a resumed run sees the same batches when
    the loader is built the same way, e.g. with a seeded generator)."""

    def __init__(self, data: Iterable, device: torch.device, dtype: torch.dtype) -> None:
        self.data, self.device, self.dtype = data, device, dtype
        self.settings = {"n_data": None, "batch_size": getattr(data, "batch_size", None)}

    def batches(self, first: int, end: int) -> Iterator[Tensor]:
        step = 0
        while step < end:
            produced = False
            for batch in self.data:
                produced = True
                if step >= first:
                    x = _inputs(batch)
                    check_finite(x, f"the batch of step {step}")
                    yield x.to(device=self.device, dtype=self.dtype, non_blocking=True)
                step += 1
                if step == end:
                    return
            if not produced or iter(self.data) is self.data:  # empty, or a one-shot iterator that is spent
                raise ValueError(f"the data ran out after {step} batches ({end} steps asked for); pass a re-iterable source")


def source(data, *, batch_size: int, seed: int, device: torch.device, dtype: torch.dtype):
    """The source that gives `train` its batches (see `train` for the kinds of `data`): `.batches(first,
    end)` yields this process's batch of every step as a tensor on `device` in `dtype`; `.settings` are
    what a continued run must share with it (N, the global batch and the data's fingerprint)."""
    if isinstance(data, (Tensor, np.ndarray, RowReader)) or (isinstance(data, Dataset) and not isinstance(data, IterableDataset)):
        return _Indexed(data, batch_size, seed, device, dtype)
    if isinstance(data, (DataLoader, Iterable)) and not isinstance(data, (str, bytes)):
        return _Stream(data, device, dtype)
    raise ValueError(
        f"data must be a tensor, an array, a RowReader, a Dataset, a DataLoader or an iterable of batches, got {type(data).__name__}"
    )
