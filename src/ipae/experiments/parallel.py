"""Run independent configurations side by side, one single-threaded process per core."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from ipae.train import keep_freed_memory

__all__ = ["map_runs"]

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
    this process, however it ends (`end_with_parent`).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(items), disable=not show, desc=desc, unit="run")
    with bar:
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
