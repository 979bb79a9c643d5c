"""Run independent configurations side by side, one single-threaded process per core."""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from ipae.train import keep_freed_memory

__all__ = ["map_runs"]

Item = TypeVar("Item")
Result = TypeVar("Result")


def _worker() -> None:
    """A worker process of ours: one thread, and glibc keeping freed memory (see `keep_freed_memory`)."""
    torch.set_num_threads(1)
    keep_freed_memory()


def map_runs(
    function: Callable[[Item], Result], items: Sequence[Item], *, jobs: int = 1, progress: bool | None = None, desc: str = "runs"
) -> list[Result]:
    """[function(item) for item in items], in order, with a progress bar over the items.

    jobs = 1 runs them here, one after another; jobs > 1 in that many worker processes with one
    thread each, which keeps small models busier than one process with several threads.
    `progress`: a progress bar (None: only on a terminal).
    `function` must be a module-level function (it is pickled to the workers).
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
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker) as pool:
            futures = {pool.submit(function, item): index for index, item in enumerate(items)}
            results: list = [None] * len(items)
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
            return results
