"""What each `ipae` command does, one module per command (`ipae.cli` parses the command line and calls
them): `fit`, `experiment` (toy, mnist), `reproduce`, `model` (encode, decode, info) and `plot`. Each
takes the parsed options and returns the exit code; bad input raises ValueError or OSError, which
`ipae.cli.main` turns into one line and exit code 2, and a run that fails raises `Failed` (exit code 1).
Below: what they share."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ipae.distributed import init_from_environment, is_main_process


class Failed(Exception):
    """A run that failed for a reason other than bad input (exit code 1)."""


def report(line: str, file=None) -> None:
    if is_main_process():  # once, under torchrun
        print(line, file=file)


def training_device(name: str | None) -> torch.device:
    """The device to train on; under torchrun, this process joins the others (on CUDA, its own GPU)."""
    from ipae.runtime import resolve_device

    return init_from_environment(resolve_device(name))


@contextmanager
def output_directory(args) -> Iterator[Path]:
    """Where a command writes: a staged --out on the main process; a throwaway directory on the others."""
    from ipae._files import staged_directory

    if is_main_process():
        with staged_directory(args.out, overwrite=args.overwrite) as stage:
            yield stage
    else:
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch)
