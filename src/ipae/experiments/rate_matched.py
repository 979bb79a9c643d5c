"""IPAE and the VAE compared at the same information rate, not at the same beta.

The eq. 10 bound grows like Var(mu) / sigma^2, the VAE's KL like log of the signal-to-noise ratio, so
one beta compresses the two models very differently. Here each model (`MODELS`) is trained over its
own beta grid (`GRIDS`), every run's I(x; z) is measured on held-out codes (`ipae.diagnostics`), and
the models are compared where their measured I(x; z) coincides: each repeat's metric is interpolated
along that model's curve of metric against I_mc, at target rates inside the range all models share,
and the paired differences against the VAE get a sign test and a paired t-test.

Repeats are paired: repeat r of every model uses the same data (subset), initial weights and batches.
A sweep is resumable: finished repeats (one JSON each) are kept, so the pilot's repeat 0 of a beta is
also the main sweep's repeat 0 of that beta.

Every run also measures I(x; z) of held-out points while it trains (`train(monitor=...)`), so that the
trajectories of one repeat's runs in the information plane (trajectories.png) show where during training
each model compresses. Monitoring does not change the weights, so the records are those of a run without it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

from ipae._files import write_atomic
from ipae.diagnostics import SATURATION_GAP
from ipae.evaluation import holm, paired_comparison
from ipae.experiments.mnist import run_repeat
from ipae.experiments.parallel import map_runs
from ipae.experiments.runs import Run, child_seeds, claim_sweep
from ipae.experiments.toy import run_toy
from ipae.plotting import plot_runs, read_runs
from ipae.rates import InformationPotential, PairwiseKL, PriorKL, Rate
from ipae.reporting import markdown_table, save_png, write_table
from ipae.training import TrainConfig

__all__ = ["reproduce_rate_matched"]

DATASETS = ("toy", "mnist134", "mnist10")
REFERENCE = "vae"
MODELS: dict[str, type[Rate] | partial] = {
    "vae": PriorKL,
    "ip1": partial(InformationPotential, 1),
    "ip8": partial(InformationPotential, 8),
    "pairwise-kl": PairwiseKL,
}

# The pilot: one repeat per beta, decades wide enough to go from about 1 nat to saturation. The MNIST
# grids start where the rate weighs anything against a distortion of about 65 nats: eq. 10 reads
# about 1.6e4 nats at beta = 1e-5, the KL about 270 at beta = 1e-3, so lower betas are saturated.
PILOT_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "toy": {
        "vae": (0.01, 0.1, 1.0, 3.0, 10.0),
        "ip1": (1e-3, 0.01, 0.1, 0.3, 1.0),
        "ip8": (1e-3, 0.01, 0.1, 0.3, 1.0),
        "pairwise-kl": (0.1, 1.0, 3.0, 10.0),
    },
    **{
        dataset: {
            "vae": (1e-3, 0.01, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0),
            "ip1": (1e-5, 1e-3, 0.01, 0.1, 1.0),
            "ip8": (0.1, 1.0),  # N_j = 1 was saturated up to beta = 0.01
            "pairwise-kl": (0.1, 1.0, 10.0, 100.0),
        }
        for dataset in ("mnist134", "mnist10")
    },
}
# The main sweeps' grids, picked from the pilots' tables: for each model, betas whose pilot I(x; z) falls
# between about 1 nat and saturation, close enough that neighbouring cells differ by about 1 nat (at most
# 1.5 inside the matched range is the requirement). mnist134, from its pilot (docs/rate_matched/
# mnist134-pilot-topup, whose I_mc also counted training images): the VAE 6.96 nats at beta 3, 2.82 at
# 10, 0.36 at 30, about 3.5 nats per unit of ln beta, so steps of x1.35-1.4; IPAE 7.5 at 0.1, 4.3 at 1,
# about 1.4 nats per unit of ln beta, so steps of x2; pairwise KL saturated at 1, 2.55 at 10, 0 at 100.
# A dataset without a pilot yet runs its pilot grid.
# toy, from its pilot (docs/rate_matched/toy/pilot.md): the VAE saturated at 0.01, then 4.2 nats at 0.1,
# 2.7 at 1, 1.7 at 3, 0.6 at 10, so three cells fill the gap below 0.1 and one splits 0.1-1; IPAE 4.6 at
# 1e-3 falling by about 0.4 nats per unit of ln beta to 1.1 at 1 (N_j = 8 within 0.13 nats), so 1e-4
# reaches higher; pairwise KL 4.1 at 0.1, 3.3 at 1, 2.0 at 3, so cells at 2 and 5 and one at 0.01.
# Amendment (docs/rate_matched.md, "Amendment"): every VAE grid gets a cell between each two of its
# pre-registered ones (the gaps halve), once the toy's main sweep had shown the interpolation bias; the
# toy's primary test still reads its pre-registered VAE cells only (PRIMARY_MATCHING).
GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    **PILOT_GRIDS,
    "toy": {
        "vae": (0.03, 0.04, 0.05, 0.07, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0),
        "ip1": (1e-4, 1e-3, 0.01, 0.1, 0.3, 1.0),
        "ip8": (1e-4, 1e-3, 0.01, 0.1, 0.3, 1.0),
        "pairwise-kl": (0.01, 0.1, 1.0, 2.0, 3.0, 5.0),
    },
    "mnist134": {
        "vae": (4.0, 4.7, 5.5, 6.4, 7.5, 8.7, 10.0, 12.0, 14.0, 17.0, 20.0),
        "ip1": (0.3, 0.6, 1.2, 2.5, 5.0),
        "ip8": (0.3, 0.6, 1.2, 2.5, 5.0),
        "pairwise-kl": (3.0, 4.5, 7.0, 10.0, 15.0),
    },
}

# What each dataset's comparison reports, and whether lower is better.
METRICS: dict[str, dict[str, bool]] = {
    "toy": {"E_sampled": True, "E": True, "nmi": False, "distortion": True},
    "mnist": {"svm_error_sampled": True, "svm_error": True, "nmi": False, "ari": False, "distortion": True},
}
# The pre-registered primary endpoint (docs/rate_matched.md, committed before the main sweeps' records):
# the metric of sampled codes, since mean codes are not limited by the rate (the VAE at I = 0 still
# scores 9.4 % on mean codes); the paired t-test over repeats of the mean matched difference, Holm-adjusted
# across the three comparisons, at ALPHA. Every other metric is secondary.
PRIMARY = {"toy": "E_sampled", "mnist": "svm_error_sampled"}
ALPHA = 0.05


class Matching(NamedTuple):
    """How a comparison reads each repeat's VAE curve: from the VAE cells `vae_betas` (None: all), thinned
    to every `every`-th of them by beta, and interpolated between them by `interpolation`."""

    interpolation: str = "linear"  # a key of INTERPOLATIONS
    vae_betas: tuple[float, ...] | None = None
    every: int = 1


# The primary endpoint's matching. The toy's is the pre-registered one (3366ffa): linear along the
# pre-registered VAE cells. MNIST's was amended before any of its main records existed, once the toy had
# shown that linear interpolation along the VAE's convex curve, with cells about 1 nat apart, lowers the
# matched difference by about as much as the whole effect (docs/rate_matched.md, "Amendment"): monotone
# cubic (PCHIP) interpolation along every VAE cell, the cells twice as dense.
PRIMARY_MATCHING = {
    "toy": Matching("linear", vae_betas=(0.03, 0.05, 0.1, 0.3, 1.0, 3.0, 10.0)),
    "mnist134": Matching("pchip"),
    "mnist10": Matching("pchip"),
}
# Secondary: how far the primary metric's matched differences move with the interpolation. A convex
# reference read by its chords sits too high between cells, and more so the wider they are apart.
SENSITIVITY = {
    "linear": Matching("linear"),
    "pchip": Matching("pchip"),
    "linear, every other VAE cell": Matching("linear", every=2),
    "pchip, every other VAE cell": Matching("pchip", every=2),
}
REPEATS = 6  # paired repeats per cell: with 5 a two-sided sign test cannot go below 0.0625
CELL_COLUMNS = ("model", "beta", "runs", "failed", "saturated", "I_mc", "I_loo", "I_lower", "I_upper")
MATCHED_COLUMNS = ("metric", "role", "model", "I_low", "I_high", "model_cells", "vae_cells", "max_gap", "runs", "n", "difference")
MATCHED_COLUMNS += ("better", "worse", "tied", "p_t", "p_holm", "p_sign")
SENSITIVITY_COLUMNS = ("metric", "model", "matching", "vae_cells", "runs", "n", "difference", "better", "worse", "p_t")
SWEEP_SETTINGS = ("dataset", "steps", "seed", "precision")
TRAJECTORIES = "trajectories.png"
# The held-out points a toy run's training monitor measures, of the 5000 its record measures. All 5000
# (D = 16) every 500 steps cost 14.5 % of the training time (benchmarks/monitor.py --preset toy, one
# shared core); the estimators are quadratic in N, so 2500 cost 4.6 %, with log N = 7.8 nats still above
# the toy's unsaturated rates. MNIST runs measure all their points (3842 for mnist134, D = 8: about 1.5 %).
TOY_MONITOR_POINTS = 2500


def metrics_of(dataset: str) -> dict[str, bool]:
    return METRICS["toy" if dataset == "toy" else "mnist"]


def primary_of(dataset: str) -> str:
    return PRIMARY["toy" if dataset == "toy" else "mnist"]


def _cells(dataset: str, grids: dict[str, tuple[float, ...]], training: TrainConfig, seed: int) -> list[tuple[str, Run]]:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    unknown = set(grids) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return [(model, Run(MODELS[model](), float(beta), seed, training)) for model, betas in grids.items() for beta in betas]


def _repeat(dataset: str, runs_directory: Path, data_dir: Path | None, task: tuple[str, Run, int]) -> dict:
    """Repeat `repeat` of one cell, kept when finished; its record with the model's label."""
    model, run, repeat = task
    cell = runs_directory / run.name()
    cell.mkdir(parents=True, exist_ok=True)
    if dataset == "toy":
        out = cell / f"repeat-{repeat}"
        record = out / "metrics.json"
        if not record.exists():
            out.mkdir(parents=True, exist_ok=True)
            paired = Run(run.rate, run.beta, child_seeds(run.seed, repeat + 1)[repeat], run.training, run.paper_exact)
            run_toy(paired, out, device="cpu", progress=False, monitor=True, monitor_points=TOY_MONITOR_POINTS)
        found = json.loads(record.read_text())
        found |= {"repeat": repeat, **run.row()}
    else:
        found = run_repeat(run, data_dir, cell, repeat, dataset=dataset, monitor=True)
    return {"model": model, "dataset": dataset, **found}


def reproduce_rate_matched(
    out: Path,
    training: TrainConfig,
    *,
    dataset: str = "mnist134",
    pilot: bool = False,
    grids: dict[str, tuple[float, ...]] | None = None,
    repeats: int | None = None,
    seed: int = 0,
    data_dir: Path | None = None,
    jobs: int = 1,
    progress: bool | None = None,
) -> dict:
    """Run the sweep of `dataset` into `out` (created, or resumed when it holds the same sweep), then
    write runs.jsonl, the per-cell table (pilot.{md,csv,json} for the pilot, cells.{md,csv,json}
    otherwise), trajectories.png (`summarise`) and, for the main sweep, the matched table
    matched.{md,csv,json} and rate_matched.png.
    `pilot`: PILOT_GRIDS with one repeat (default); else GRIDS with REPEATS repeats. The records of
    finished runs (runs/<cell>/repeat-<r>.json, or .../repeat-<r>/metrics.json for the toy) are kept,
    so a sweep continues wherever they are; each run's training log (repeat-<r>.jsonl, or
    .../repeat-<r>/metrics.jsonl) holds I(x; z) of the held-out points its record measures, every
    `training.monitor_every` steps and at the end. Returns {"cells": rows, "matched": rows or None,
    "summary": the note or None, "trajectories": what became of trajectories.png}."""
    grids = grids or (PILOT_GRIDS if pilot else GRIDS)[dataset]
    repeats = repeats or (1 if pilot else REPEATS)
    cells = _cells(dataset, grids, training, seed)
    training.check_monitor()
    claim_sweep(
        out,
        {"dataset": dataset, "steps": training.steps, "seed": seed, "precision": training.precision},
        SWEEP_SETTINGS,
        kind="rate-matched",
    )
    tasks = [(model, run, repeat) for repeat in range(repeats) for model, run in cells]
    records = map_runs(
        partial(_repeat, dataset, out / "runs", data_dir), tasks, jobs=jobs, progress=progress, desc=f"rate-matched {dataset}"
    )
    return summarise(out, records, dataset, pilot=pilot)


def summarise(out: Path, records: list[dict], dataset: str, *, pilot: bool = False) -> dict:
    """The tables and the figures of a sweep's `records`, written into `out` (see reproduce_rate_matched)."""
    provenance = check_provenance(records)
    write_atomic(out / "runs.jsonl", partial(_write_lines, records))
    rows = cell_rows(records)
    name = "pilot" if pilot else "cells"
    write_table(out, name, rows, CELL_COLUMNS + tuple(metrics_of(dataset)), note=_cell_note(records))
    trajectories = draw_trajectories(out, records, dataset)
    if pilot:
        return {"cells": rows, "matched": None, "summary": None, "trajectories": trajectories}
    matching = PRIMARY_MATCHING[dataset]
    matched = matched_comparison(records, metrics_of(dataset), primary_of(dataset), matching)
    note = summary(matched, records, provenance)
    write_table(out, "matched", matched, MATCHED_COLUMNS, note=f"{_matching_note(matching)} {note}")
    checks = [row for metric, lower in metrics_of(dataset).items() for row in interpolation_check(records, metric, lower_is_better=lower)]
    write_table(out, "interpolation", checks, SENSITIVITY_COLUMNS, note=_SENSITIVITY_NOTE)
    save_png(_figure(records, metrics_of(dataset), dataset), out / "rate_matched.png")
    return {"cells": rows, "matched": matched, "summary": note, "trajectories": trajectories}


def _log_of(out: Path, dataset: str, record: dict) -> Path:
    """The training log of a record's run: runs/<cell>/repeat-<r>/metrics.jsonl (toy) or runs/<cell>/repeat-<r>.jsonl."""
    cell = out / "runs" / Run(MODELS[record["model"]](), record["beta"]).name()
    repeat = f"repeat-{record['repeat']}"
    return cell / repeat / "metrics.jsonl" if dataset == "toy" else cell / f"{repeat}.jsonl"


def _monitored(log: Path) -> bool:
    """Whether the training log at `log` holds I(x; z) measured while training (a damaged log does not)."""
    try:
        return log.is_file() and any(len(run.trajectory()["step"]) for run in read_runs(log))
    except ValueError:
        return False


def draw_trajectories(out: Path, records: list[dict], dataset: str) -> str:
    """out/trajectories.png: the information-plane trajectories of one repeat's runs, the lowest-numbered
    repeat with the most runs whose training log measured I(x; z) while training (`trajectory_plot`).
    Records of code that did not monitor (or whose logs were not kept) have none: then nothing is
    drawn. Returns a sentence saying which."""
    logs: dict[int, list[Path]] = {}
    for record in records:
        log = _log_of(out, dataset, record)
        if _monitored(log):
            logs.setdefault(record["repeat"], []).append(log)
    if not logs:
        return (
            f"No run's training log holds I(x; z) measured while training (records of code that did not monitor, or logs not kept): "
            f"no {TRAJECTORIES}."
        )
    repeat = min(logs, key=lambda number: (-len(logs[number]), number))
    plot = trajectory_plot(logs[repeat])
    plot_runs(**plot, out=out / TRAJECTORIES)
    runs = sum(record["repeat"] == repeat for record in records)
    return (
        f"{TRAJECTORIES}: the information-plane trajectories of repeat {repeat}: {len(logs[repeat])} of its {runs} runs measured "
        "I(x; z) while training."
    )


def model_cell(name: str) -> tuple[str, float] | None:
    """The model and beta of a cell directory's name (`Run.name()` of a rate of MODELS):
    "ip-n_partners8-beta0.1" -> ("ip8", 0.1); None for another name."""
    _, separator, text = name.rpartition("-beta")
    try:
        beta = float(text)
    except ValueError:
        return None
    found = [model for model, rate in MODELS.items() if separator and Run(rate(), beta).name() == name]
    return (found[0], beta) if found else None


def _repeat_of(path: Path) -> tuple[Path, dict, str, float, int] | None:
    """(the sweep directory, its sweep.json, the model, beta, repeat) of a run of a rate-matched sweep:
    SWEEP/runs/<cell>/repeat-R (the toy's run directory) or its metrics.jsonl, or SWEEP/runs/<cell>/repeat-R.jsonl."""
    path = Path(path)
    if path.name == "metrics.jsonl":
        path = path.parent
    name = path.stem if path.suffix == ".jsonl" else path.name
    number = name.removeprefix("repeat-")
    cell = model_cell(path.parent.name)
    if not (name.startswith("repeat-") and number.isdigit() and cell is not None and path.parent.parent.name == "runs"):
        return None
    sweep = path.parent.parent.parent
    try:
        settings = json.loads((sweep / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(settings, dict) or settings.get("dataset") not in DATASETS:
        return None
    return sweep.resolve(), settings, *cell, int(number)


def trajectory_plot(paths: Sequence[str | Path]) -> dict | None:
    """How `ipae.plotting.plot_runs` draws runs of one repeat of one rate-matched sweep, as the sweep's
    trajectories.png: {"paths", "labels", "groups", "title"}, the runs in the order of MODELS, then beta,
    labelled "<model> β=<beta>", one colour (group) per model. None unless every path is a run of the same
    repeat of one sweep: SWEEP/runs/<cell>/repeat-R (or its metrics.jsonl) of the toy, SWEEP/runs/<cell>/repeat-R.jsonl
    of MNIST, where SWEEP/sweep.json names a dataset of DATASETS."""
    found = [_repeat_of(Path(path)) for path in paths]
    if not found or None in found or len({(sweep, repeat) for sweep, _, _, _, repeat in found}) > 1:
        return None
    order = sorted(range(len(found)), key=lambda index: (list(MODELS).index(found[index][2]), found[index][3]))
    _, settings, _, _, repeat = found[0]
    return {
        "paths": [paths[index] for index in order],
        "labels": [f"{found[index][2]} β={found[index][3]:g}" for index in order],
        "groups": [found[index][2] for index in order],
        "title": f"rate-matched {settings['dataset']}, repeat {repeat}: I(x; z) of held-out points while training, one colour per model",
    }


def _write_lines(records: list[dict], path: Path) -> None:
    with path.open("w") as file:
        for record in records:
            file.write(json.dumps({key: value for key, value in record.items() if key != "config"}, sort_keys=True) + "\n")


def _ok(records: list[dict]) -> list[dict]:
    return [record for record in records if record.get("status") == "ok"]


def matched_information(record: dict) -> float:
    """The rate a run is matched at: the midpoint of I_mc (a lower bound in expectation) and I_loo (an
    upper bound), within SATURATION_GAP / 2 of the truth for an unsaturated run whatever the codes' shape."""
    return (record["I_mc"] + record["I_loo"]) / 2


def _usable(records: list[dict], metric: str) -> list[dict]:
    """Finished, unsaturated runs that measured `metric`: the only ones that enter the matching."""
    return [record for record in _ok(records) if not record["I_saturated"] and record.get(metric) is not None]


def check_provenance(records: list[dict]) -> dict:
    """{"commits": the commits the finished records were trained at, "code": their one code fingerprint}.
    ValueError where finished records differ in the fingerprint of their training and diagnostics code
    (`ipae.experiments.runs.CODE_FILES`): such records would not measure the same thing."""
    done = _ok(records)
    codes = {record.get("code") for record in done}
    if len(codes) > 1:
        by_code = {code: sorted({r.get("commit") or "unknown" for r in done if r.get("code") == code}) for code in codes}
        found = "; ".join(f"{code or 'none'} (commits {', '.join(commits)})" for code, commits in by_code.items())
        raise ValueError(f"the records come from different training or diagnostics code: {found}; rerun them at one commit")
    return {"commits": sorted({record.get("commit") or "unknown" for record in done}), "code": next(iter(codes), None)}


def cell_rows(records: list[dict]) -> list[dict]:
    """One row per (model, beta): the runs, failures, saturated runs, and the means of I(x; z) and each
    metric over the finished runs."""
    keys = sorted({(record["model"], record["beta"]) for record in records}, key=lambda key: (list(MODELS).index(key[0]), key[1]))
    rows = []
    for model, beta in keys:
        cell = [record for record in records if (record["model"], record["beta"]) == (model, beta)]
        done = _ok(cell)
        row = {"model": model, "beta": beta, "runs": len(cell), "failed": len(cell) - len(done)}
        row["saturated"] = sum(bool(record.get("I_saturated")) for record in done)
        for key in ("I_mc", "I_loo", "I_lower", "I_upper", *METRICS["toy"], *METRICS["mnist"]):
            values = [record[key] for record in done if record.get(key) is not None]
            row[key] = statistics.mean(values) if values else None
        rows.append(row)
    return rows


def _cell_note(records: list[dict]) -> str:
    done = _ok(records)
    if not done:
        return "No run finished."
    points = {record["I_points"] for record in done}
    log_n = math.log(min(points))
    return (
        f"Means over the repeats that finished. I(x; z) in nats of {', '.join(map(str, sorted(points)))} held-out codes: I_mc and "
        f"I_loo the Monte Carlo estimates with each point's own component kept and left out, I_lower and I_upper the Bhattacharyya "
        f"and pairwise-KL bounds; I_mc cannot exceed log N = {log_n:.2f}. `saturated` counts runs with I_loo - I_mc > "
        f"{SATURATION_GAP} nats, which are left out of the matching."
    )


def _matching_note(matching: Matching) -> str:
    cells = "every VAE cell" if matching.vae_betas is None else f"the VAE cells at beta {', '.join(f'{b:g}' for b in matching.vae_betas)}"
    return f"Each run is matched to its repeat's VAE read from {cells}, interpolated by {matching.interpolation}."


_SENSITIVITY_NOTE = (
    "Secondary (not part of the pre-registered test): each metric's matched difference (model - VAE, per repeat then "
    "averaged; p of the paired t-test, unadjusted) under several readings of the VAE curve. `linear` reads the curve "
    "by its chords, which lie above a convex curve between cells; `pchip` by monotone cubic interpolation; `every "
    "other VAE cell` doubles the gaps, so a difference that grows there comes from the interpolation, not the models."
)


def reference_cells(records: list[dict], matching: Matching) -> list[dict]:
    """`records` with the VAE's runs limited to the cells that `matching` reads its curve from."""
    betas = sorted({record["beta"] for record in records if record["model"] == REFERENCE})
    if matching.vae_betas is not None:
        betas = [beta for beta in betas if any(math.isclose(beta, kept) for kept in matching.vae_betas)]
    kept = set(betas[:: matching.every])
    return [record for record in records if record["model"] != REFERENCE or record["beta"] in kept]


def _pchip(rates: np.ndarray, values: np.ndarray, at: float) -> float:
    from scipy.interpolate import PchipInterpolator

    return float(PchipInterpolator(rates, values)(at))


INTERPOLATIONS = {"linear": lambda rates, values, at: float(np.interp(at, rates, values)), "pchip": _pchip}


def interpolation_check(records: list[dict], metric: str, *, lower_is_better: bool) -> list[dict]:
    """The matched difference of `metric` for each model under each reading of the VAE curve in SENSITIVITY."""
    rows = []
    for name, matching in SENSITIVITY.items():
        kept = reference_cells(records, matching)
        vae_cells = len({record["beta"] for record in kept if record["model"] == REFERENCE})
        for model in (m for m in MODELS if m != REFERENCE):
            pairs = [row for row in matched_runs(kept, metric, matching.interpolation) if row["model"] == model]
            compared = paired_comparison(*_per_repeat(pairs), lower_is_better=lower_is_better)
            rows.append({"metric": metric, "model": model, "matching": name, "vae_cells": vae_cells, "runs": len(pairs), **compared})
    return rows


def _per_repeat(pairs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Each repeat's mean of its matched runs' values and of their VAE references."""
    repeats = sorted({row["repeat"] for row in pairs})
    values = np.array([statistics.mean(row["value"] for row in pairs if row["repeat"] == r) for r in repeats])
    return values, np.array([statistics.mean(row["vae"] for row in pairs if row["repeat"] == r) for r in repeats])


def _vae_curve(records: list[dict], repeat: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference's curve in one repeat: (matched I, metric) of its usable runs, sorted by I."""
    points = sorted(
        (matched_information(r), r[metric]) for r in _usable(records, metric) if r["model"] == REFERENCE and r["repeat"] == repeat
    )
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def matched_runs(records: list[dict], metric: str, interpolation: str = "linear") -> list[dict]:
    """Every usable run of a non-reference model, paired with the VAE of its own repeat at its own
    measured rate: the VAE's metric interpolated (INTERPOLATIONS[interpolation]) along that repeat's curve of metric against
    matched I. A run outside the span of its repeat's VAE curve is left out (never extrapolated)."""
    rows = []
    for record in _usable(records, metric):
        if record["model"] == REFERENCE:
            continue
        rates, values = _vae_curve(records, record["repeat"], metric)
        rate = matched_information(record)
        if len(rates) < 2 or not rates[0] <= rate <= rates[-1]:
            continue
        reference = INTERPOLATIONS[interpolation](rates, values, rate)
        rows.append(
            {
                "model": record["model"],
                "beta": record["beta"],
                "repeat": record["repeat"],
                "I": rate,
                "value": record[metric],
                "vae": reference,
            }
        )
    return rows


def _pair_range(records: list[dict], model: str, metric: str) -> tuple[float, float] | None:
    """The rates both `model` and the VAE cover in every repeat that has usable runs of both: the
    intersection over those repeats of the overlap of the two models' spans. None where there is none."""
    low, high = -math.inf, math.inf
    for repeat in sorted({record["repeat"] for record in records}):
        spans = []
        for name in (model, REFERENCE):
            rates = [matched_information(r) for r in _usable(records, metric) if r["model"] == name and r["repeat"] == repeat]
            if rates:
                spans.append((min(rates), max(rates)))
        if len(spans) < 2:  # a repeat without usable runs of one of the two (failed or saturated) has no span
            continue
        low, high = max(low, *(span[0] for span in spans)), min(high, *(span[1] for span in spans))
    return (low, high) if low < high else None


def _cells_inside(records: list[dict], model: str, metric: str, span: tuple[float, float] | None) -> tuple[int, float | None]:
    """How many of `model`'s cells have their mean matched I inside `span`, and the widest gap between
    neighbouring cell means inside it (None for fewer than two)."""
    if span is None:
        return 0, None
    usable = [r for r in _usable(records, metric) if r["model"] == model]
    means = sorted(statistics.mean(matched_information(r) for r in usable if r["beta"] == beta) for beta in {r["beta"] for r in usable})
    inside = [mean for mean in means if span[0] <= mean <= span[1]]
    return len(inside), (max(np.diff(inside)) if len(inside) > 1 else None)


def matched_comparison(records: list[dict], metrics: dict[str, bool], primary: str, matching: Matching = Matching()) -> list[dict]:  # noqa: B008 (a tuple: immutable)
    """Each model against the VAE at matched rates, one row per (metric, model).

    `matched_runs` pairs every usable run with its repeat's VAE; per repeat the differences of its
    matched runs are averaged, and the paired t-test (and the sign test) run over the repeats. For the
    `primary` metric the three t-tests' p-values are Holm-adjusted (`p_holm`); the other metrics are
    secondary and keep their raw p. `n` counts the repeats, `runs` the matched runs. The VAE's curve is
    read as `matching` says."""
    records = reference_cells(records, matching)
    rows = []
    for metric, lower_is_better in metrics.items():
        family = []
        for model in (m for m in MODELS if m != REFERENCE):
            pairs = [row for row in matched_runs(records, metric, matching.interpolation) if row["model"] == model]
            values, reference = _per_repeat(pairs)
            span = _pair_range(records, model, metric)
            model_cells, model_gap = _cells_inside(records, model, metric, span)
            vae_cells, vae_gap = _cells_inside(records, REFERENCE, metric, span)
            row = {
                "metric": metric,
                "role": "primary" if metric == primary else "secondary",
                "model": model,
                "I_low": None if span is None else span[0],
                "I_high": None if span is None else span[1],
                "model_cells": model_cells,
                "vae_cells": vae_cells,
                "max_gap": max((gap for gap in (model_gap, vae_gap) if gap is not None), default=None),
                "runs": len(pairs),
                **paired_comparison(values, reference, lower_is_better=lower_is_better),
            }
            family.append(row)
        if metric == primary:
            for row, adjusted in zip(family, holm([row["p_t"] for row in family]), strict=True):
                row["p_holm"] = adjusted
        rows += family
    return rows


def summary(matched: list[dict], records: list[dict], provenance: dict) -> str:
    """The primary endpoint's verdict for each model, then the secondary metrics, as measured."""
    failed = sum(record.get("status") != "ok" for record in records)
    saturated = sum(bool(record.get("I_saturated")) for record in _ok(records))
    lines = []
    for row in matched:
        if row["n"] == 0:
            lines.append(f"{row['model']} vs vae, {row['metric']} ({row['role']}): no run matched.")
            continue
        p = row.get("p_holm") if row["role"] == "primary" else row["p_t"]
        label = "Holm-adjusted paired t-test" if row["role"] == "primary" else "paired t-test, unadjusted"
        if p is not None and p < ALPHA:
            verdict = "lower" if row["difference"] < 0 else "higher"
        else:
            verdict = "no difference shown"
        span = "no common range" if row["I_low"] is None else f"I {row['I_low']:.2f} to {row['I_high']:.2f} nats"
        shown = "n/a" if p is None else f"{p:.3g}"
        lines.append(
            f"{row['model']} vs vae, {row['metric']} ({row['role']}): mean difference {row['difference']:+.4g} over n = {row['n']} "
            f"repeats ({row['runs']} matched runs, {span}); {verdict} (p = {shown}, {label}; better in {row['better']}, "
            f"worse in {row['worse']})."
        )
    tail = (
        f" Failed runs: {failed} of {len(records)}; saturated (left out): {saturated}."
        f" Records from commit(s) {', '.join(provenance['commits'])}, code {provenance['code']}."
    )
    return " ".join(lines) + tail


def _figure(records: list[dict], metrics: dict[str, bool], dataset: str) -> Figure:
    """One panel per metric against I(x; z): each unsaturated run at the midpoint of its two estimates,
    with a bar from I_mc to I_loo; each saturated run as a hollow ">" at I_mc (a floor: its I_loo can read
    hundreds of nats); the unsaturated cells' means joined along beta; the rates where runs saturate shaded
    and log N dashed."""
    figure = Figure(figsize=(4.2 * len(metrics), 3.8))
    done = _ok(records)
    log_n = math.log(min(record["I_points"] for record in done)) if done else None
    saturated = [record["I_mc"] for record in done if record["I_saturated"]]
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), index + 1)
        for number, model in enumerate(MODELS):
            colour = f"C{number}"
            runs = [record for record in done if record["model"] == model and record.get(metric) is not None]
            kept = [r for r in runs if not r["I_saturated"]]
            axes.errorbar(
                [matched_information(r) for r in kept],
                [r[metric] for r in kept],
                xerr=[[matched_information(r) - r["I_mc"] for r in kept], [r["I_loo"] - matched_information(r) for r in kept]],
                fmt="o",
                markersize=3,
                color=colour,
                alpha=0.45,
                elinewidth=0.5,
            )
            floors = [r for r in runs if r["I_saturated"]]
            axes.scatter([r["I_mc"] for r in floors], [r[metric] for r in floors], marker=">", s=18, facecolors="none", edgecolors=colour)
            cells = cell_rows(kept)
            axes.plot(
                [(row["I_mc"] + row["I_loo"]) / 2 for row in cells], [row[metric] for row in cells], color=colour, linewidth=1, label=model
            )
        if saturated and log_n is not None:
            axes.axvspan(min(saturated), log_n + 0.3, color="0.92", zorder=0, label="saturated runs (> at I_mc)")
        if log_n is not None:
            axes.axvline(log_n, color="0.4", linestyle="--", linewidth=0.8, label="log N")
            axes.set_xlim(-0.2, log_n + 0.3)
        axes.set_xlabel("I(x; z) of held-out codes, nats (bar: I_mc to I_loo)", fontsize=8)
        axes.set_ylabel(metric)
        axes.set_title(f"{dataset}: {metric}", fontsize=9)
        axes.tick_params(labelsize=7)
        if index == 0:
            axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def report(result: dict) -> str:
    """What `ipae reproduce rate-matched` prints: the cells' table, then the matched-rate table and its summary."""
    text = markdown_table(result["cells"], CELL_COLUMNS)
    if result["matched"] is not None:
        text += markdown_table(result["matched"], MATCHED_COLUMNS) + result["summary"] + "\n"
    return text + result["trajectories"]
