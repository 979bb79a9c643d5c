"""Training loop: Adam on the model's objective, with the paper's defaults. No file I/O here."""

from __future__ import annotations

import ctypes
import functools
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ipae.distributed import average_over_processes, is_main_process, rank, world_size
from ipae.models import AutoEncoder

__all__ = ["train", "TrainResult", "TrainState", "TrainingDiverged", "CompileFailed", "check_data", "resolve_device", "PRECISIONS"]

# "fp32": everything in float32. "bf16": the layers' matmuls and activations in bfloat16 (autocast),
# the parameters, the optimiser, the rate term and the loss reduction in float32.
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class TrainState:
    """Where a run stands after `step` steps: all that `train(..., resume=state)` needs to go on
    exactly as if it had not stopped (the weights are the model's own)."""

    step: int
    settings: dict  # the settings the steps so far were trained with; a continuation must share them
    optimizer: dict  # the optimiser's state_dict
    generator: Tensor  # (bytes,) uint8: the state of the generator of noise and partners
    history: Tensor  # (step, 3) float32: loss, distortion and rate of every step so far


@dataclass
class TrainResult:
    """History of a run: per-step loss, distortion and rate (each (steps,), from step 0 also for a
    continued run), the wall time of this call's loop, and the state to continue from."""

    loss: np.ndarray
    distortion: np.ndarray
    rate: np.ndarray
    seconds: float
    state: TrainState | None = field(default=None, repr=False)


class TrainingDiverged(RuntimeError):
    """The loss turned non-finite at `step`; `result` holds the history up to and including that step."""

    def __init__(self, step: int, result: TrainResult) -> None:
        super().__init__(f"training diverged: the loss became non-finite at step {step}")
        self.step = step
        self.result = result


class CompileFailed(RuntimeError):
    """torch.compile could not compile the objective here (on the CPU it needs a working C++ compiler)."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as a torch.device; None means CUDA when it is present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r} ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but CUDA is not available here")
    return device


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MiB in the heap instead of returning them to the OS.

    By default glibc unmaps a large block when it is freed, so every training step page-faults its
    activations back in (about 4000 faults a step for the toy model, a third of its time). Raising
    M_MMAP_THRESHOLD and M_TRIM_THRESHOLD stops that, at the price of a resident heap that does not
    shrink. Process-wide, done once; returns False where there is no glibc (then nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))


def check_data(data: Tensor, n_inputs: int) -> None:
    """Raise ValueError unless `data` is a non-empty, finite (N, n_inputs) floating tensor."""
    if not isinstance(data, Tensor):
        raise ValueError(f"data must be a torch.Tensor, got {type(data).__name__}")
    if data.ndim != 2 or data.shape[1] != n_inputs:
        raise ValueError(f"data must have shape (N, {n_inputs}), got {tuple(data.shape)}")
    if data.shape[0] == 0:
        raise ValueError("data is empty (N = 0)")
    if not data.is_floating_point():
        raise ValueError(f"data must be floating point, got {data.dtype}")
    if not torch.isfinite(data).all():
        raise ValueError("data contains NaN or infinite values")


def _batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Tensor:
    """(steps, batch_size) sample indices: shuffled passes over the data, concatenated, so that every
    sample is used equally often. Drawn once, before the loop."""
    epochs = -(-steps * batch_size // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(epochs)])
    return order[: steps * batch_size].view(steps, batch_size)


def train(
    model: AutoEncoder,
    data: Tensor,
    *,
    steps: int = 5000,
    batch_size: int = 512,
    lr: float = 1e-3,
    n_pairs: int | None = 1,
    n_samples: int = 1,
    seed: int = 0,
    precision: str = "fp32",
    progress: bool | None = None,
    log_every: int = 100,
    on_log: Callable[[dict], None] | None = None,
    resume: TrainState | None = None,
    stop_at: int | None = None,
    compile: bool = False,
) -> TrainResult:
    """Train `model` in place on `data` (N, n_inputs) with Adam; returns the per-step history.

    Defaults are the paper's (section 4.1): Adam, lr 1e-3, batch 512, 5000 steps, K = 1 noise draw,
    N_j = `n_pairs` = 1 partner (None: all pairs). A batch larger than N is cut to N. `seed` fixes the
    batches, the noise and the partners: the same seed and model give the same result on a device.
    Under torch.distributed (torchrun; see ipae.distributed) `batch_size` is each process's share: R
    processes train on a global batch of R * batch_size as one process would, and log its losses.
    `precision`: a key of PRECISIONS; "bf16" trades precision in the layers for speed.
    `compile`: run the model's objective through torch.compile (one process only). It costs seconds
    of compiling when training starts (less once inductor's on-disk cache holds the graph), needs
    a C++ compiler on the CPU, and pays mostly with bf16 (docs/performance.md); results differ from
    the eager ones by rounding.
    `progress`: a progress bar (None: only on a terminal). Every `log_every` steps the loop checks the
    loss once (one host sync), raises `TrainingDiverged` at the first non-finite step, and passes
    `on_log` the means of loss, distortion and rate over those steps.
    Continuing: `resume` (a result's `.state`, with the model as it was then) goes on from its step;
    `stop_at` ends after that many steps of the `steps`-step schedule. Run in pieces this way, training
    gives the same weights as in one piece (bit for bit on the CPU), whatever `steps` the pieces name.
    """
    check_data(data, model.config.n_inputs)
    if steps < 1 or batch_size < 1 or n_samples < 1 or log_every < 1:
        raise ValueError(f"steps, batch_size, n_samples and log_every must be >= 1, got {steps}, {batch_size}, {n_samples}, {log_every}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if n_pairs is not None and n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1 or None (all pairs), got {n_pairs}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    processes, index = world_size(), rank()
    if compile and processes > 1:
        raise ValueError("compile=True is not supported under torch.distributed; train without it")
    local_batch = min(batch_size, data.shape[0] // processes)  # this process's share of the global batch
    if local_batch < 1:
        raise ValueError(f"{data.shape[0]} samples cannot be shared among {processes} processes")
    batch_size = local_batch * processes
    settings = {"n_data": data.shape[0], "batch_size": batch_size, "lr": lr, "n_pairs": n_pairs, "n_samples": n_samples, "seed": seed}
    settings["precision"] = precision
    first_step, end = (0 if resume is None else resume.step), (steps if stop_at is None else stop_at)
    if not first_step < end <= steps:
        raise ValueError(f"nothing to train: steps {first_step}..{end} of a {steps}-step schedule")
    if resume is not None and resume.settings != settings:
        differing = ", ".join(
            f"{key} {resume.settings.get(key)!r} then, {value!r} now"
            for key, value in settings.items()
            if resume.settings.get(key) != value
        )
        raise ValueError(f"cannot continue the run with other settings: {differing}")
    device = next(model.parameters()).device
    data = data.to(device=device, dtype=next(model.parameters()).dtype)
    indices = _batch_indices(data.shape[0], batch_size, steps, torch.Generator().manual_seed(seed))
    indices = indices[:, index * local_batch : (index + 1) * local_batch].contiguous().to(device)  # (steps, local batch)
    step_model = model if processes == 1 else DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    objective = torch.compile(model.objective, dynamic=False) if compile else model.objective
    generator = torch.Generator(device).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # one kernel for all parameters
    history = torch.empty(end, 3, device=device)  # (steps, [loss, distortion, rate]), read every log_every
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        generator.set_state(resume.generator)
        history[:first_step] = resume.history[:first_step].to(device)
    autocast_dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    keep_freed_memory()
    show = (sys.stderr.isatty() if progress is None else progress) and is_main_process()
    model.train()
    start = time.perf_counter()
    with tqdm(initial=first_step, total=end, disable=not show, desc="train", unit="step", leave=False) as bar:
        for step in range(first_step, end):
            batch = data.index_select(0, indices[step])
            with autocast:
                if processes > 1:  # through DistributedDataParallel, which hooks forward() (= loss)
                    terms = step_model(batch, generator=generator, n_pairs=n_pairs, n_samples=n_samples)
                else:
                    noise = model.draw_noise(local_batch, generator=generator, n_pairs=n_pairs, n_samples=n_samples)
                    try:
                        terms = objective(batch, noise, generator)
                    except torch._dynamo.exc.BackendCompilerFailed as error:
                        reason = str(error).strip().splitlines()[0]
                        raise CompileFailed(f"torch.compile failed ({reason}); train without compiling") from error
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()
            history[step] = torch.stack(terms).detach()
            if (step + 1) % log_every == 0 or step + 1 == end:
                window = history[max(first_step, step - step % log_every) : step + 1]  # the steps since the last check
                window[:] = average_over_processes(window)  # the global batch's loss and distortion on every process
                finite = torch.isfinite(window[:, 0])
                if not finite.all():
                    first = step + 1 - len(window) + int((~finite).nonzero()[0])
                    raise TrainingDiverged(first, _result(history[: first + 1], time.perf_counter() - start))
                if on_log is not None:
                    loss, distortion, rate = window.mean(dim=0).tolist()
                    on_log({"step": step + 1, "loss": loss, "distortion": distortion, "rate": rate, "seconds": time.perf_counter() - start})
                bar.set_postfix(loss=f"{float(window[-1, 0]):.4g}", refresh=False)
                bar.update(step + 1 - bar.n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    state = TrainState(end, settings, _detached(optimizer.state_dict()), generator.get_state(), history.cpu())
    return _result(history, time.perf_counter() - start, state)


def _detached(optimizer_state: dict) -> dict:
    """A copy of an optimiser's state_dict that later steps of the optimiser cannot change."""
    state = {index: {name: value.detach().clone() for name, value in values.items()} for index, values in optimizer_state["state"].items()}
    return {"state": state, "param_groups": optimizer_state["param_groups"]}


def _result(history: Tensor, seconds: float, state: TrainState | None = None) -> TrainResult:
    values = history.cpu().double().numpy()
    return TrainResult(loss=values[:, 0], distortion=values[:, 1], rate=values[:, 2], seconds=seconds, state=state)
