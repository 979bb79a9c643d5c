"""Training on several processes with PyTorch's distributed engine, as launched by `torchrun`.

Each process trains on its share of a global batch (DistributedDataParallel averages the gradients);
the codes of the whole global batch are gathered with their gradients, so that rate terms over pairs
see every sample: R processes with batches of B train as one process with a batch of R * B.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_gather

__all__: list[str] = []  # internal


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: torch.device) -> torch.device:
    """Join the process group that torchrun describes in the environment, if any, with gloo on the CPU
    and NCCL on CUDA, where each process takes its own GPU (LOCAL_RANK). Returns the device to train on."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def world_size() -> int:
    """How many processes train together (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's index among them (0 without torch.distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """The process that writes files and shows progress."""
    return rank() == 0


def gather_batch(local: Tensor) -> Tensor:
    """Every process's (..., B, D) share of the batch's codes, in rank order, as one (..., R * B, D) tensor.

    Differentiable: a gradient on any part flows back to the process that computed it.
    """
    if world_size() == 1:
        return local
    with warnings.catch_warnings():  # deprecated in favour of a private module; still the public, differentiable gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(local.contiguous()), dim=-2)


def average_over_processes(values: Tensor) -> Tensor:
    """The mean over processes of `values` (any shape), on every process; no gradient."""
    if world_size() == 1:
        return values
    total = values.detach().contiguous().clone()
    dist.all_reduce(total)  # a sum: gloo has no average
    return total / world_size()
