"""Run independent configurations side by side: one single-threaded process per core, or on a Dask cluster."""

from __future__ import annotations

import ctypes
import io
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from ipae._files import write_atomic
from ipae._validation import check_positive_int
from ipae.runtime import keep_freed_memory

__all__: list[str] = []  # internal

Item = TypeVar("Item")
Result = TypeVar("Result")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with_parent(parent: int) -> None:
    """End this process when its parent, the process `parent`, dies, however it dies (SIGKILL, the OOM killer).

    A worker whose parent is gone waits forever on its task queue, holding its memory, and would run beside a
    resumed sweep. Linux delivers SIGKILL at the parent's death (PR_SET_PDEATHSIG: strictly, at the death of
    the thread that started this process; `map_runs` starts its workers from the thread that waits for them).
    Elsewhere a daemon thread looks at the parent every second. A parent that died before this call is seen
    at once: this process has been handed to another one.
    """
    if sys.platform.startswith("linux"):
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:  # pragma: no cover
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="ipae-parent-watch").start()
    if os.getppid() != parent:
        os._exit(1)


def _watch_parent(parent: int) -> None:  # pragma: no cover
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _worker(parent: int) -> None:
    """A worker process of ours: it ends with `parent`, uses one thread, and glibc keeps freed memory (see `keep_freed_memory`)."""
    end_with_parent(parent)
    torch.set_num_threads(1)
    keep_freed_memory()


def map_runs(
    function: Callable[[Item], Result], items: Sequence[Item], *, jobs: int = 1, progress: bool | None = None, desc: str = "runs"
) -> list[Result]:
    """[function(item) for item in items], in order, with a progress bar over the items.

    jobs = 1 runs them here, one after another; jobs > 1 in that many worker processes with one
    thread each, which keeps small models busier than one process with several threads.
    `progress`: a progress bar (None: only on a terminal).
    `function` must be a module-level function (it is pickled to the workers). The workers end with
    this process, however it ends (`end_with_parent`). Inside `on_cluster`, the runs go to its cluster
    instead, and `jobs` does not apply.
    """
    check_positive_int("jobs", jobs)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(items), disable=not show, desc=desc, unit="run")
    with bar:
        cluster = _CLUSTER.get()
        if cluster is not None:
            return _map_on_cluster(function, items, cluster, bar)
        if jobs == 1:
            results = []
            for item in items:
                results.append(function(item))
                bar.update()
            return results
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(function, item): index for index, item in enumerate(items)}
            results: list = [None] * len(items)
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
            return results


# ---------------------------------------------------------------------------------------------------------
# A Dask cluster: the workers compute, this process writes.


@dataclass(frozen=True)
class _Cluster:
    client: object  # a distributed.Client
    out: Path  # the directory the runs write into, here


_CLUSTER: ContextVar[_Cluster | None] = ContextVar("ipae_cluster", default=None)
_BASE: ContextVar[Path] = ContextVar("ipae_relocation_base")


@contextmanager
def on_cluster(address: str, out: str | Path) -> Iterator[None]:
    """Within this block, `map_runs` runs its items on the Dask cluster whose scheduler is at `address`
    (such as "tcp://10.0.0.5:8786"), one task per item, and `out` is the directory its runs write into.

    A worker shares no file with this process: it runs an item in a scratch directory of its own that
    holds the JSON files under `out` (the records of finished runs, which the run functions look for), with
    every path under `out` in the function and the item pointing there instead; it sends back the result
    and the files the run wrote, and this process writes those under `out`, each atomically and in the
    order the worker wrote them (a record last). So the sweep's lock, its resume and its atomic records
    are this process's, as with local workers. A run whose worker is lost is run again elsewhere (Dask's
    `distributed.scheduler.allowed-failures`, 3 by default). Paths outside `out`, such as an MNIST
    directory, must exist on the workers as here. Workers should have one thread each (`--nthreads 1`):
    a run is single-threaded, as in the local worker processes, so that its numbers are the same.
    """
    try:
        from distributed import Client
    except ImportError:
        raise ModuleNotFoundError("running on a Dask cluster needs dask.distributed: pip install 'ipae[cluster]'") from None
    with Client(address, timeout="30s") as client:
        token = _CLUSTER.set(_Cluster(client, Path(out).absolute()))
        try:
            yield
        finally:
            _CLUSTER.reset(token)


def _map_on_cluster(function: Callable[[Item], Result], items: Sequence[Item], cluster: _Cluster, bar) -> list[Result]:
    from distributed import KilledWorker
    from distributed import as_completed as completed

    client, out = cluster.client, cluster.out
    known = {
        "directories": sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_dir()),
        "files": {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*.json")) if path.is_file()},
    }
    # a task's result, not scattered data: the cluster computes it again should the workers that hold it be lost
    shared = client.submit(_identity, known, pure=False)
    futures = {client.submit(_run_in_scratch, _dumps((function, item), out), shared, pure=False): i for i, item in enumerate(items)}
    results: list = [None] * len(items)
    try:
        for future in completed(futures):
            try:
                payload = future.result()
            except KilledWorker as lost:  # the scheduler gave up after its allowed failures
                raise ConnectionError(
                    f"the cluster lost the workers of a run until it gave up ({lost}); the finished runs are kept: rerun with --resume"
                ) from None
            result, files = _loads(payload, out)
            for name, data in files:  # in the order the worker wrote them
                path = out / name
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, lambda temporary, data=data: temporary.write_bytes(data))
            results[futures[future]] = result
            bar.update()
    finally:
        client.cancel(list(futures))
    return results


def _identity(value: object) -> object:
    return value


def _run_in_scratch(payload: bytes, known: dict) -> bytes:
    """On a worker: the item's run in a scratch directory that stands for the client's `out`; its result and
    the files it wrote (name, bytes), oldest first, pickled with their paths pointing at `out` again."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="ipae-run-") as directory:
            scratch = Path(directory)
            for name in known["directories"]:
                (scratch / name).mkdir(parents=True, exist_ok=True)
            for name, data in known["files"].items():
                (scratch / name).write_bytes(data)
            function, item = _loads(payload, scratch)
            result = function(item)
            written = sorted((path.stat().st_mtime_ns, path) for path in scratch.rglob("*") if path.is_file())
            files = [(path.relative_to(scratch).as_posix(), path.read_bytes()) for _, path in written]
            files = [(name, data) for name, data in files if known["files"].get(name) != data]
            return _dumps((result, files), scratch)
    finally:
        torch.set_num_threads(threads)


class _Relocating(pickle.Pickler):
    """Pickles each path under `root` as its part below `root`, to be read under another directory (`_loads`)."""

    def __init__(self, file, root: Path):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.root = root

    def reducer_override(self, obj):
        if isinstance(obj, Path) and obj.absolute().is_relative_to(self.root):
            return _relocated, (obj.absolute().relative_to(self.root).as_posix(),)
        return NotImplemented


def _relocated(relative: str) -> Path:
    return _BASE.get() / relative


def _dumps(obj: object, root: Path) -> bytes:
    buffer = io.BytesIO()
    _Relocating(buffer, root).dump(obj)
    return buffer.getvalue()


def _loads(data: bytes, base: Path) -> object:
    token = _BASE.set(base)
    try:
        return pickle.loads(data)
    finally:
        _BASE.reset(token)
