"""The one training path: Adam on an `AutoEncoder`'s objective, from any data source.

`train(model, data, TrainConfig(...))` owns everything around the objective: batches (from a tensor,
an array, a file read by rows, a Dataset, a DataLoader or any iterable of batches), the noise,
precision and torch.compile, distributed training (rank slices and the all-gather of the codes that
the global-batch rate needs), the divergence check, logging, a progress bar, and checkpoints every N
steps with an exact resume. Given held-out points (`monitor`), it measures I(x; z) of their codes as it
goes, with draws of its own, so that the weights are the same with and without it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import ipae.distributed as distributed
from ipae._files import staged_directory
from ipae._validation import check_positive_int
from ipae.checkpoint import TrainState, load_state, load_weights, read_model_weights, save_model
from ipae.data import sources
from ipae.data.sources import TrainData
from ipae.diagnostics import measure
from ipae.models import AutoEncoder
from ipae.runtime import PRECISIONS, resolve_device, resolve_precision

__all__: list[str] = []  # users reach its public names through the package: ipae.train, ipae.TrainConfig, ...


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train, keyword-only: `TrainConfig(steps=5000, batch_size=512)`. Defaults are the paper's
    (section 4.1) where it names one.

    Fields:
        steps: Adam steps, one batch each. 5000: section 4.1, "finished after 5000 batches".
        batch_size: samples per step (section 4.1: 512). Under torchrun each process's share; a
            DataLoader's or an iterable's own batches win.
        lr: Adam's learning rate (section 4.1: 1e-3).
        n_samples: K, noise draws per sample; the paper draws one.
        seed: the batches, the noise and the rate's draws; the same seed gives the same run on a device.
        precision: "fp32", "bf16" or "auto" (bf16 where the hardware computes it natively, else fp32).
            fp32 is the reference; bf16 pays only on native bf16 hardware.
        compile: torch.compile the objective: seconds to compile, then faster steps (docs/performance.md).
        device: where to train, such as "cpu" or "cuda:0"; None: where the model is.
        log_every: steps between divergence checks (one host sync each) and log records (100).
        checkpoint_every: with `train(checkpoint_dir=...)`, save the run so far every N steps; None: never.
        monitor_every: with `train(monitor=X)`, steps between measurements of I(x; z) in nats on X, a
            multiple of log_every. 500 gives 10 points on the paper's 5000-step run; each costs seconds
            at N = 5000 points (benchmarks/monitor.py).
        monitor_samples: Monte Carlo draws per monitored point. One: I_mc and I_loo average over the N
            points (at N = 5000 one draw and 16 differ by hundredths of a nat), while the cost grows with
            the draws.
        progress: show a progress bar; None: only on a terminal.
    """

    steps: int = 5000
    batch_size: int = 512
    lr: float = 1e-3
    n_samples: int = 1
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False
    device: str | None = None
    log_every: int = 100
    checkpoint_every: int | None = None
    monitor_every: int = 500
    monitor_samples: int = 1
    progress: bool | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "n_samples", "log_every", "monitor_every", "monitor_samples"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("checkpoint_every", self.checkpoint_every, or_none=True)
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
        """The fields as a dict (JSON-ready); `TrainConfig(**config.to_dict())` gives the config back."""
        return asdict(self)

    def check_monitor(self) -> None:
        """ValueError unless a run with these settings can monitor I(x; z): it is logged with the loss."""
        if self.monitor_every % self.log_every:
            raise ValueError(
                f"monitor_every ({self.monitor_every}) must be a multiple of log_every ({self.log_every}): I(x; z) is logged with the loss"
            )


@dataclass
class TrainResult:
    """History of a run: per-step loss, distortion and rate (each (steps,) float64, the rate in nats;
    from step 0 also for a continued run), the wall time in seconds of this call's loop, the state to continue from, and the monitor's
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


def train(
    model: AutoEncoder,
    data: TrainData,
    config: TrainConfig = TrainConfig(),
    *,
    resume: TrainState | str | Path | None = None,
    stop_at: int | None = None,
    on_log: Callable[[dict], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    metadata: dict | None = None,
    monitor: Tensor | np.ndarray | None = None,
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
    I_mc, I_loo, I_lower, I_upper, I_jensen, I_points, I_log_n, I_saturated), `heldout_distortion` (one sampled code
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
    source = sources.source(data, batch_size=config.batch_size, seed=config.seed, device=device, dtype=dtype)
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
    points = torch.from_numpy(sources.torch_array(points)) if isinstance(points, np.ndarray) else points
    sources.check_array(points)
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
