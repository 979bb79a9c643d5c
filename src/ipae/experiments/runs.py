"""What every experiment's runs share: one configuration type, seeds, names and the training log."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ipae._files import json_lines, remove_stale, write_json
from ipae._version import __version__
from ipae.models import PRESETS, ModelSpec, paper_conventions
from ipae.rates import InformationPotential, Rate, spec
from ipae.reporting import cpu_name, revision
from ipae.training import TrainConfig, TrainingDiverged, TrainResult, train

__all__: list[str] = []  # internal

# The modules whose code trains a run or measures it. Records whose fingerprints of these differ may not
# measure the same thing, so a study's summary refuses to mix them (`ipae.experiments.rate_matched`).
CODE_FILES = (
    "information.py", "mixture.py", "rates.py", "layers.py", "networks.py", "models.py", "training.py", "runtime.py",
    "diagnostics.py", "evaluation.py", "data/mnist.py", "data/toy.py", "data/arrays.py", "data/sources.py",
    "experiments/mnist.py", "experiments/toy.py", "experiments/runs.py",
)  # fmt: skip


def code_fingerprint() -> str:
    """The first 16 hex digits of the SHA-256 of CODE_FILES (names and bytes) as installed."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in CODE_FILES:
        digest.update(name.encode() + b"\0" + (package / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def run_provenance(device: object) -> dict:
    """What a run's record says of where it ran: the commit of the code, the fingerprint of its training
    and diagnostics code, the CPU with torch's capability, and the device it trained on."""
    import torch

    package = Path(__file__).resolve().parent.parent
    return {
        "commit": revision(package),
        "code": code_fingerprint(),
        "machine": f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()})",
        "device": str(device),
    }


@dataclass(frozen=True)
class Run:
    """One configuration of an experiment: the rate term and its weight, the master seed, and how to
    train (the paper's settings unless told otherwise). Runs are compared by identity of their rate."""

    rate: Rate = field(default_factory=InformationPotential)  # IPAE with N_j = 1, as in Figure 1
    beta: float = 0.01  # weight of the rate term
    seed: int = 0  # the data (or subset), the initial weights and the training stream are drawn from it
    training: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))  # its seed is replaced by one drawn from `seed`
    paper_exact: bool = False  # the model follows the paper as printed (`ipae.models.paper_conventions`)

    def name(self) -> str:
        """A directory name: the rate, its options and beta, e.g. "ip-n_partners8-beta1e-05"."""
        options = "".join(f"-{key}{'all' if value is None else value}" for key, value in spec(self.rate).items() if key != "name")
        return f"{self.rate.name}{options}-beta{self.beta:g}{'-paper' if self.paper_exact else ''}"

    def row(self) -> dict:
        """The columns a results table shows of the configuration."""
        options = ", ".join(f"{key}={'all' if value is None else value}" for key, value in spec(self.rate).items() if key != "name")
        training = self.training
        return {
            "rate": self.rate.name,
            "options": options,
            "beta": self.beta,
            "steps": training.steps,
            "seed": self.seed,
            "precision": training.precision,
            "paper_exact": self.paper_exact,
        }

    def model(self, preset: str) -> ModelSpec:
        """The run's model: the preset named `preset` (`ipae.models.PRESETS`: the architecture and the
        distortion) with the run's rate and beta, as printed where `paper_exact`."""
        options = spec(self.rate)
        model = replace(PRESETS[preset], rate=options.pop("name"), rate_options=options, beta=self.beta)
        if self.paper_exact:
            model = replace(model, **paper_conventions({"rate": self.rate, "distortion": model.distortion}))
        return model

    def to_dict(self, preset: str) -> dict:
        """The configuration as JSON, with the model built on `preset` (`model`): what a run's record keeps."""
        model = self.model(preset).to_dict()
        return {"model": model, "seed": self.seed, "paper_exact": self.paper_exact, "training": self.training.to_dict()}


def child_seeds(seed: int, count: int) -> list[int]:
    """Independent seeds for the data, the weights and the training stream, all from `seed`."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(count)]


def train_logged(model, data, config: TrainConfig, log: Path, *, monitor=None) -> tuple[TrainResult | None, dict]:
    """Train with the JSON-lines log at `log` (and `train`'s `monitor`); returns the result and {"status": "ok"},
    or None and the failure's record (status, error, failed_step, train_seconds) when the loss turned non-finite."""
    try:
        with json_lines(log) as write:
            return train(model, data, config, on_log=write, monitor=monitor), {"status": "ok"}
    except TrainingDiverged as diverged:
        return None, {"status": "failed", "error": str(diverged), "failed_step": diverged.step, "train_seconds": diverged.result.seconds}


class SweepBusy(OSError):
    """Another process is writing the sweep directory."""


# The sweep directories this process holds the lock of: (device, inode) of the lock file -> its descriptor.
_LOCKS: dict[tuple[int, int], int] = {}
LOCK_NAME = "sweep.lock"


def lock_sweep(out: Path) -> None:
    """Take the lock of the sweep directory `out` (out/sweep.lock, an fcntl.flock), held until this
    process ends: two processes resuming one sweep would train the same runs and write the same files.
    The same process may take it again. SweepBusy, naming the holder's pid, when another process holds it.
    Where fcntl is missing (Windows), nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return
    for key, held in list(_LOCKS.items()):  # the locks of sweep directories removed since: let them go
        if os.fstat(held).st_nlink == 0:
            os.close(held)
            del _LOCKS[key]
    descriptor = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    status = os.fstat(descriptor)
    if (status.st_dev, status.st_ino) in _LOCKS:  # ours already
        os.close(descriptor)
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip()
        os.close(descriptor)
        who = f"another process (pid {holder})" if holder.isdigit() else "another process"
        raise SweepBusy(f"{out}: {who} is running this sweep; wait for it to end, or stop it") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    _LOCKS[(status.st_dev, status.st_ino)] = descriptor


def claim_sweep(out: Path, settings: dict, keys: tuple[str, ...], *, kind: str, absent: dict | None = None) -> None:
    """Make `out` a sweep directory with `settings` (out/sweep.json), or check that the sweep there
    shares `settings` in `keys`: a resumed sweep keeps runs that must be comparable with the new ones.
    `absent`: the values of keys that older sweep.json files do not record. The sweep is locked for
    this process first (`lock_sweep`): another process that claims it meanwhile is refused."""
    record = out / "sweep.json"
    if record.exists():
        lock_sweep(out)
        kept = (absent or {}) | json.loads(record.read_text())
        differing = [f"{key} {kept.get(key)!r} there, {settings[key]!r} now" for key in keys if kept.get(key) != settings[key]]
        if differing:
            raise ValueError(f"{out} holds a sweep with other settings ({'; '.join(differing)}); use another --out")
        return
    remove_stale(record)  # a sweep.json that a killed claim was writing
    if out.exists() and any(path.name != LOCK_NAME for path in out.iterdir()):
        raise FileExistsError(f"{out} exists and does not hold a {kind} sweep; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    lock_sweep(out)
    write_json(record, {**settings, "version": __version__})
