"""The one training path: Adam on an `AutoEncoder`'s objective, from any data source.

`train(model, data, TrainConfig(...))` owns everything around the objective: batches (from a tensor,
an array, a file read by rows, a Dataset, a DataLoader or any iterable of batches), the noise,
precision and torch.compile, distributed training (rank slices and the all-gather of the codes that
the global-batch rate needs), the divergence check, logging, a progress bar, and checkpoints every N
steps with an exact resume. Given held-out points (`monitor`), it measures I(x; z) of their codes as it
goes, with draws of its own, so that the weights are the same with and without it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate
from tqdm.auto import tqdm

import ipae.distributed as distributed
from ipae._files import staged_directory
from ipae.checkpoint import TrainState, load_state, load_weights, read_model_weights, save_model
from ipae.data import arrays
from ipae.data.arrays import RowReader
from ipae.diagnostics import measure
from ipae.models import AutoEncoder

__all__ = [
    "TrainConfig",
    "train",
    "TrainResult",
    "TrainState",
    "TrainingDiverged",
    "CompileFailed",
    "resolve_device",
    "resolve_precision",
    "native_bf16",
    "keep_freed_memory",
    "PRECISIONS",
]

# "fp32": everything in float32. "bf16": the layers' matmuls and activations in bfloat16 (autocast),
# the parameters, the optimiser, the rate term and the loss reduction in float32; faster only where the
# hardware has bfloat16 arithmetic (see `native_bf16`). "auto": bf16 where it is native, else fp32.
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are the paper's (section 4.1)."""

    steps: int = 5000  # section 4.1: "finished after 5000 batches"
    batch_size: int = 512  # section 4.1; per process under torchrun; a DataLoader's or iterable's own batches win
    lr: float = 1e-3  # section 4.1, Adam
    n_samples: int = 1  # K noise draws per sample; the paper draws one
    seed: int = 0  # the batches, the noise and the rate's draws: the same seed gives the same run on a device
    precision: str = "fp32"  # a key of PRECISIONS; fp32 is the reference, bf16 pays only on native bf16 hardware
    compile: bool = False  # torch.compile the objective: seconds to compile, then faster steps (docs/performance.md)
    device: str | None = None  # where to train; None: where the model is
    log_every: int = 100  # steps between divergence checks (one host sync each) and log records
    checkpoint_every: int | None = None  # with a checkpoint directory: save the run so far every N steps
    # With train(monitor=X): steps between measurements of I(x; z) on X, a multiple of log_every. 500 gives
    # 10 points on the paper's 5000-step run; each costs seconds at N = 5000 (benchmarks/monitor.py).
    monitor_every: int = 500
    # Monte Carlo draws per monitor point: one, because I_mc and I_loo average over the N points (at N =
    # 5000 one draw and 16 differ by hundredths of a nat) while the cost of the draws grows with their number.
    monitor_samples: int = 1
    progress: bool | None = None  # a progress bar; None: only on a terminal

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "n_samples", "log_every", "monitor_every", "monitor_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        every = self.checkpoint_every
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ValueError(f"checkpoint_every must be an integer >= 1 or None, got {every!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not -(2**63) <= self.seed < 2**64:  # torch.Generator's range
            raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {self.seed!r}")
        if not isinstance(self.compile, bool):  # compile="no" would be true
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True, False or None, got {self.progress!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def check_monitor(self) -> None:
        """ValueError unless a run with these settings can monitor I(x; z): it is logged with the loss."""
        if self.monitor_every % self.log_every:
            raise ValueError(
                f"monitor_every ({self.monitor_every}) must be a multiple of log_every ({self.log_every}): I(x; z) is logged with the loss"
            )


@dataclass
class TrainResult:
    """History of a run: per-step loss, distortion and rate (each (steps,), from step 0 also for a
    continued run), the wall time of this call's loop, the state to continue from, and the monitor's
    measurements (`train(monitor=...)`; from step 0 also for a continued run)."""

    loss: np.ndarray
    distortion: np.ndarray
    rate: np.ndarray
    seconds: float
    state: TrainState | None = field(default=None, repr=False)
    monitor: list[dict] = field(default_factory=list)


class TrainingDiverged(RuntimeError):
    """The loss turned non-finite at `step`, or the weights did in its update (`what`: "the loss" or
    "the weights"); `result` holds the history up to and including that step."""

    def __init__(self, step: int, result: TrainResult, *, what: str = "the loss") -> None:
        super().__init__(f"training diverged: {what} became non-finite at step {step}")
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


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 matmuls are emulated, several times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


@functools.cache
def _warn_emulated_bf16(device_type: str) -> None:  # once per process and device type
    warnings.warn(
        f"precision 'bf16' on a {device_type} without native bfloat16 (no AVX512-BF16 or AMX; CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}): its matmuls are emulated and slower than fp32 (5x measured); "
        "use precision 'auto' or 'fp32'",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "fp32" or "bf16": "auto" is bf16 where `native_bf16(device)`, else fp32; "bf16" where it is not
    native warns (once) that it will be slower."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        _warn_emulated_bf16(device.type)
    return precision


@functools.cache
def keep_freed_memory() -> bool:
    """Opt-in, process-wide: ask glibc to keep freed blocks of up to 32 MiB in the heap instead of
    returning them to the OS.

    By default glibc unmaps a large block when it is freed, so every training step page-faults its
    activations back in (about 4000 faults a step for the toy model, a third of its time). Raising
    M_MMAP_THRESHOLD and M_TRIM_THRESHOLD stops that, at the price of a resident heap that does not
    shrink, for the whole process. `train` never calls it; the `ipae` command and the worker processes
    of `ipae.experiments` do. Done once; returns False where there is no glibc (then nothing changes).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))


# data sources: each gives this process's batch of every step, as a floating tensor on the device


def _check_finite(x: Tensor, where: str) -> None:
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

    def __init__(self, data, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> None:
        processes, rank = distributed.world_size(), distributed.rank()
        n = len(data)
        if n == 0:
            raise ValueError("data is empty (N = 0)")
        self.local_batch = min(config.batch_size, n // processes)  # this process's share of the global batch
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
            tensor = torch.from_numpy(_torch_array(data)) if isinstance(data, np.ndarray) else data
            _check_array(tensor)
            digest = _fingerprint(tensor)
            tensor = tensor.to(device=device, dtype=dtype)
            schedule_device = device
            self.read = lambda index: tensor.index_select(0, index)
        else:  # a map-style Dataset
            self.read, digest = functools.partial(_dataset_rows, data), None
        self.schedule = _Schedule(n, self.global_batch, config.seed, schedule_device)
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


def _check_array(data: Tensor) -> None:
    if data.ndim < 2:
        raise ValueError(f"data must have shape (N, ...) with a sample's values after N, got {tuple(data.shape)}")
    if not (data.is_floating_point() or data.dtype in _INTEGER_DTYPES):
        raise ValueError(f"data must be numeric (floating point or integer), got {data.dtype}")
    _check_finite(data, "data")


_INTEGER_DTYPES = (torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.int8, torch.int16, torch.int32, torch.int64)


def _torch_array(array: np.ndarray) -> np.ndarray:
    """`array` C-contiguous, in a dtype torch can take: a ValueError (not torch's TypeError) for objects,
    strings, dates; long double as float64, which torch has not. `_check_array` checks the rest."""
    if array.dtype.kind not in "biuf":
        raise ValueError(f"data must be a numeric array, got dtype {array.dtype}")
    if array.dtype.kind == "f" and array.dtype.itemsize > 8:
        array = array.astype(np.float64)
    return np.ascontiguousarray(array)


def _file_rows(reader: RowReader, index: Tensor) -> Tensor:
    """The rows `index` of a file, read from it (`RowReader`: a file changed since it was checked is a ValueError)."""
    rows = torch.from_numpy(reader(index.numpy()))
    _check_finite(rows, "a batch of the data")
    return rows


def _dataset_rows(dataset: Dataset, index: Tensor) -> Tensor:
    indices = index.tolist()
    if hasattr(dataset, "__getitems__"):
        items = dataset.__getitems__(indices)
    else:
        items = [dataset[i] for i in indices]
    batch = _inputs(default_collate(items))
    _check_finite(batch, "a batch of the dataset")
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
                    _check_finite(x, f"the batch of step {step}")
                    yield x.to(device=self.device, dtype=self.dtype, non_blocking=True)
                step += 1
                if step == end:
                    return
            if not produced or iter(self.data) is self.data:  # empty, or a one-shot iterator that is spent
                raise ValueError(f"the data ran out after {step} batches ({end} steps asked for); pass a re-iterable source")


def _source(data, config: TrainConfig, device: torch.device, dtype: torch.dtype):
    if isinstance(data, (Tensor, np.ndarray, RowReader)) or (isinstance(data, Dataset) and not isinstance(data, IterableDataset)):
        return _Indexed(data, config, device, dtype)
    if isinstance(data, (DataLoader, Iterable)) and not isinstance(data, (str, bytes)):
        return _Stream(data, device, dtype)
    raise ValueError(
        f"data must be a tensor, an array, a RowReader, a Dataset, a DataLoader or an iterable of batches, got {type(data).__name__}"
    )


def train(
    model: AutoEncoder,
    data,
    config: TrainConfig = TrainConfig(),
    *,
    resume: TrainState | str | Path | None = None,
    stop_at: int | None = None,
    on_log: Callable[[dict], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    metadata: dict | None = None,
    monitor=None,
) -> TrainResult:
    """Train `model` in place with Adam on `data`; returns the per-step history.

    `data`: a tensor or array (N, ...), a `RowReader` of a file or a memory-mapped array (read batch by
    batch from its file; one not in C order is copied into memory, up to MMAP_BYTES), a map-style
    `Dataset`, a `DataLoader`, or any iterable of batches; a batch that is `(x, y)` trains on x.
    Sources of known size follow a fixed schedule of shuffled passes drawn from `config.seed`; a
    DataLoader or iterable gives its own batches and is iterated again at its end.
    Under torch.distributed (torchrun) `config.batch_size` is each process's share: R processes train
    on a global batch of R * batch_size as one process would (a DataLoader or iterable must give each
    process its own share), the rate sees the codes of the whole global batch, and the logs are its means.
    Every `config.log_every` steps the loop checks the loss once (one host sync), raises
    `TrainingDiverged` at the first non-finite step and passes `on_log` the means of loss, distortion
    and rate over those steps, with "seconds" since the call began. A continued run first passes the
    records of the steps before its resume step again, from the saved history ("seconds": None), so
    that its log equals an uninterrupted run's.
    Checkpoints: with `checkpoint_dir` and `config.checkpoint_every` = N, the run so far (the model, its
    training state and `metadata`) replaces `checkpoint_dir` every N steps, atomically.
    Continuing: `resume` (a result's `.state`, with the model as it was then; or a checkpoint directory,
    whose weights are loaded into `model`) goes on from its step; `stop_at` ends after that many steps
    of the schedule. Run in pieces, training gives the same weights as in one piece (bit for bit on the CPU).
    A continuation must have the run's settings and, from a tensor, array or file, its data (a SHA-256
    of which the state records); the call is checked whole before the model changes.
    Monitoring: with `monitor`, held-out points (M, ...) as a tensor or array, every `config.monitor_every`
    steps and at the end the log record also holds I(x; z) of their codes (`ipae.diagnostics.information`:
    I_mc, I_loo, I_lower, I_upper, I_points, I_log_n, I_saturated), `heldout_distortion` (one sampled code
    each) and `monitor_seconds` (what the measurement took). The codes are encoded in eval mode without
    gradients, and the draws come from a generator of their own, seeded from `config.seed` and the step:
    the weights are those of a run without `monitor`, and a continued run measures as one that never stopped.
    """
    if not isinstance(model, AutoEncoder):
        raise ValueError(f"model must be an ipae.AutoEncoder, got {type(model).__name__}")
    weights = None  # the call is checked whole before the model changes: a refused call leaves it as it was
    if isinstance(resume, (str, Path)):
        weights, resume = read_model_weights(model, resume), load_state(resume)
    processes, rank = distributed.world_size(), distributed.rank()
    if config.compile and processes > 1:
        raise ValueError("compile=True is not supported under torch.distributed; train without it")
    first, end = (0 if resume is None else resume.step), (config.steps if stop_at is None else stop_at)
    if not first < end <= config.steps:
        raise ValueError(f"nothing to train: steps {first}..{end} of a {config.steps}-step schedule")
    parameter = next(model.parameters())
    device = parameter.device if config.device is None else resolve_device(config.device)
    dtype = parameter.dtype
    precision = resolve_precision(config.precision, device)
    source = _source(data, config, device, dtype)
    monitor = None if monitor is None else _monitor_points(monitor, model, config, device, dtype)
    settings = {**source.settings, "lr": config.lr, "n_samples": config.n_samples, "seed": config.seed, "precision": precision}
    if resume is not None:
        _check_continuation(resume.settings, settings)
    if checkpoint_dir is not None and config.checkpoint_every is not None:
        target = Path(checkpoint_dir)
        if target.exists() and not (target / "model.json").is_file() and (not target.is_dir() or any(target.iterdir())):
            raise ValueError(
                f"{target}: exists and is not a model directory; checkpoints replace it, so name a new or a checkpoint directory"
            )
    model.to(device)
    if weights is not None:
        load_weights(model, weights)
    step_model = model if processes == 1 else DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    objective = torch.compile(model.objective, dynamic=False) if config.compile else step_model
    gather = distributed.gather_batch if processes > 1 else None
    generator = torch.Generator(device).manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)  # one kernel for all parameters
    history = torch.empty(end, 3, device=device)  # (steps, [loss, distortion, rate]), read every log_every
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer)
        generator.set_state(resume.generator)
        history[:first] = resume.history[:first].to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    every = config.checkpoint_every if checkpoint_dir is not None else None
    main = distributed.is_main_process()
    show = (sys.stderr.isatty() if config.progress is None else config.progress) and main
    n_latent = None
    checked, logged = first, first - first % config.log_every  # a continued run logs the same windows as one that never stopped
    measured = [record for record in (resume.monitor if resume is not None else []) if record["step"] <= logged]
    if resume is not None and on_log is not None:  # the records of the steps before `resume`, again: a continued log is whole
        earlier = {record["step"]: record for record in measured}
        for done in range(config.log_every, logged + 1, config.log_every):
            loss, distortion, rate = history[done - config.log_every : done].mean(dim=0).tolist()
            record = {"step": done, "loss": loss, "distortion": distortion, "rate": rate, "seconds": None}
            on_log(record | {key: value for key, value in earlier.get(done, {}).items() if key != "step"})
    start = time.perf_counter()
    model.train()
    with tqdm(initial=first, total=end, disable=not show, desc="train", unit="step", leave=False) as bar:
        for step, batch in enumerate(source.batches(first, end), start=first):
            if n_latent is None:
                n_latent = _code_size(model, batch)
            local = batch.shape[0]
            noise = model.draw_noise((local * processes, n_latent), generator=generator, n_samples=config.n_samples)
            eps = noise.eps[:, rank * local : (rank + 1) * local]  # (K, B, D): this process's share
            with autocast:
                try:
                    terms = objective(batch, eps, noise.draws) if gather is None else objective(batch, eps, noise.draws, gather)
                except torch._dynamo.exc.BackendCompilerFailed as error:
                    reason = str(error).strip().splitlines()[0]
                    raise CompileFailed(f"torch.compile failed ({reason}); train without compiling") from error
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            optimizer.step()
            history[step] = torch.stack(terms).detach()
            done = step + 1
            log_now = done % config.log_every == 0 or done == end  # monitor_every is a multiple of log_every
            save_now = every is not None and done % every == 0 and done < end
            if not (log_now or save_now):
                continue
            window = history[checked:done]
            window[:] = distributed.average_over_processes(window)  # the global batch's loss on every process
            finite = torch.isfinite(window[:, 0])
            if not finite.all():
                bad = checked + int((~finite).nonzero()[0])
                raise TrainingDiverged(bad, _result(history[: bad + 1], time.perf_counter() - start))
            if not _finite_weights(model):  # a finite loss can still have an inf gradient: the last update, no loss has seen yet
                raise TrainingDiverged(done - 1, _result(history[:done], time.perf_counter() - start), what="the weights")
            checked = done
            if log_now:
                found = {}
                if monitor is not None and (done % config.monitor_every == 0 or done == end):
                    found = _measure(model, monitor, config, done)
                    measured.append({"step": done, **found})
                if on_log is not None:
                    loss, distortion, rate = history[logged:done].mean(dim=0).tolist()
                    record = {"step": done, "loss": loss, "distortion": distortion, "rate": rate, "seconds": time.perf_counter() - start}
                    on_log(record | found)
                bar.set_postfix(loss=f"{float(history[done - 1, 0]):.4g}", refresh=False)
                bar.update(done - bar.n)
                logged = done
            if save_now and main:
                state = TrainState(
                    done, settings, _detached(optimizer.state_dict()), generator.get_state(), history[:done].cpu(), list(measured)
                )
                with staged_directory(checkpoint_dir, overwrite=True) as stage:
                    save_model(model, stage, metadata=metadata, state=state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    state = TrainState(end, settings, _detached(optimizer.state_dict()), generator.get_state(), history.cpu(), list(measured))
    return _result(history, time.perf_counter() - start, state, measured)


def _monitor_points(points, model: AutoEncoder, config: TrainConfig, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The held-out points of `train(monitor=...)` as a tensor on the device, checked before training starts."""
    if not isinstance(points, (Tensor, np.ndarray)):
        raise ValueError(f"monitor must be a tensor or an array of held-out points (M, ...), got {type(points).__name__}")
    points = torch.from_numpy(_torch_array(points)) if isinstance(points, np.ndarray) else points
    _check_array(points)
    if len(points) < 2:
        raise ValueError(f"monitor needs at least 2 held-out points (I_loo leaves each one out), got {len(points)}")
    if model.architecture is not None:
        model.architecture.check_input(tuple(points.shape[1:]))
    config.check_monitor()
    return points.to(device=device, dtype=dtype)


def _monitor_seed(seed: int, step: int) -> int:
    """The seed of the monitor's draws at `step`: a stream apart from training's, the same in a continued run."""
    return int(np.random.SeedSequence((seed % 2**64, _MONITOR_STREAM, step)).generate_state(1, np.uint64)[0])


_MONITOR_STREAM = 0x6D6F6E  # tells the monitor's seeds from any other use of (seed, step)


def _measure(model: AutoEncoder, points: Tensor, config: TrainConfig, step: int) -> dict:
    """The monitor's record at `step`: I(x; z) and the distortion of the held-out `points`, in eval mode."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(_monitor_seed(config.seed, step))  # `encode` gives float64 codes on the CPU
    model.eval()
    try:
        found = measure(model, points, generator=generator, n_samples=config.monitor_samples)
    finally:
        model.train()
    distortion = found.pop("distortion")
    return found | {"heldout_distortion": distortion, "monitor_seconds": time.perf_counter() - start}


def _check_continuation(then: dict, now: dict) -> None:
    """ValueError unless a run trained with settings `then` may go on with settings `now`. The data's
    fingerprint is compared where both runs have one: a state saved before fingerprints were recorded,
    or a run on a Dataset or a stream (not fingerprinted: that would take a pass over it), goes on."""
    fingerprinted = then.get("data_sha256") is not None and now.get("data_sha256") is not None
    if fingerprinted and then["data_sha256"] != now["data_sha256"]:
        raise ValueError(
            f"cannot continue the run on other data: its {now['n_data']} samples differ from those it was trained on "
            f"(SHA-256 {then['data_sha256'][:12]}... then, {now['data_sha256'][:12]}... now)"
        )
    differing = ", ".join(
        f"{key} {then.get(key)!r} then, {value!r} now" for key, value in now.items() if key != "data_sha256" and then.get(key) != value
    )
    if differing:
        raise ValueError(f"cannot continue the run with other settings: {differing}")


@torch.no_grad()
def _code_size(model: AutoEncoder, batch: Tensor) -> int:
    """D of the model's codes, from one sample, in eval mode (a BatchNorm cannot see a batch of one in training)."""
    if model.architecture is not None:
        model.architecture.check_input(tuple(batch.shape[1:]))
    model.eval()
    try:
        mu, logvar = model.encode(batch[:1])
    finally:
        model.train()
    if mu.ndim != 2 or logvar.shape != mu.shape:
        raise ValueError(
            f"the encoder must return (mu, logvar), each (B, D); it returned shapes {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    return mu.shape[1]


def _finite_weights(model: AutoEncoder) -> bool:
    """Whether every parameter is finite (one host sync)."""
    return bool(torch.stack([parameter.isfinite().all() for parameter in model.parameters()]).all())


def _detached(optimizer_state: dict) -> dict:
    """A copy of an optimiser's state_dict that later steps of the optimiser cannot change."""
    state = {index: {name: value.detach().clone() for name, value in values.items()} for index, values in optimizer_state["state"].items()}
    return {"state": state, "param_groups": optimizer_state["param_groups"]}


def _result(history: Tensor, seconds: float, state: TrainState | None = None, monitor: list[dict] | None = None) -> TrainResult:
    values = history.cpu().double().numpy()
    return TrainResult(
        loss=values[:, 0], distortion=values[:, 1], rate=values[:, 2], seconds=seconds, state=state, monitor=list(monitor or [])
    )
