"""Figures of training runs, drawn from the logs the runs wrote: the information plane and the loss curves.

A run is found by its training log (JSON lines, one record per log step, `ipae.train`'s `on_log`):
- a directory with metrics.jsonl: a run of `ipae fit` or `ipae toy`;
- a log file itself: metrics.jsonl, or repeat-R.jsonl of a rate-matched or MNIST sweep's cell;
- a directory with repeat-R.jsonl or repeat-R/metrics.jsonl files: a sweep's cell, one run per repeat.
Beside a log, the run's record (metrics.json beside metrics.jsonl, repeat-R.json beside repeat-R.jsonl)
gives the final I(x; z) when the log has none.

The information plane shows I(x; z) of held-out points (the records of `train(monitor=...)`): I_mc against
the held-out distortion, step by step, in a band from the lower (Bhattacharyya) to the upper (pairwise-KL)
bound; log N dashed, where an estimate from N points stops; saturated measurements crossed.
Runs of one group (a model of a sweep, `RunLog.group`) share a colour and one legend entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ipae.diagnostics import SATURATION_GAP
from ipae.reporting import save_png

__all__: list[str] = []  # users reach its public names through the package: ipae.plot_runs


@dataclass(frozen=True)
class RunLog:
    """One run: its label, its training log (the records in order), its final record ({} if none) and
    its group (None: a colour of its own; else the colour and the legend entry it shares with its group)."""

    label: str
    records: list[dict]
    final: dict = field(default_factory=dict)
    group: str | None = None

    def trajectory(self) -> dict[str, np.ndarray]:
        """The monitored records' step, heldout_distortion, I_mc, I_lower, I_upper, I_log_n and I_saturated, each (M,)."""
        measured = [record for record in self.records if _measured(record, "heldout_distortion")]
        keys = ("step", "heldout_distortion", "I_mc", "I_lower", "I_upper", "I_log_n", "I_saturated")
        return {key: np.array([record[key] for record in measured], dtype=bool if key == "I_saturated" else float) for key in keys}

    def final_point(self) -> dict | None:
        """I(x; z) and the held-out distortion of the final record: its `heldout_distortion` (`ipae fit`), or its
        `distortion` where it holds diagnose's numbers (`ipae toy`, a sweep's repeat); None without I(x; z)."""
        if _measured(self.final, "heldout_distortion"):
            return {**self.final, "distortion": self.final["heldout_distortion"]}
        return self.final if _measured(self.final, "distortion") else None


def _measured(record: dict, distortion: str) -> bool:
    return all(isinstance(record.get(key), (int, float)) for key in ("I_mc", "I_lower", "I_upper", "I_log_n", distortion))


def read_log(path: str | Path) -> list[dict]:
    """The records of a JSON-lines training log; ValueError naming the line that is not a record."""
    path = Path(path)
    records = []
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: not a training log (a .jsonl file)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a training log (not UTF-8 text)") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:  # RecursionError: arrays nested thousands deep
            raise ValueError(f"{path}:{number}: not valid JSON ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int) or "loss" not in record:
            raise ValueError(f"{path}:{number}: not a training log record (an object with a step and a loss)")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: the training log holds no records")
    return records


def _final_record(log: Path) -> dict:
    """The run's record beside its log: X.json beside X.jsonl; {} where there is none."""
    record = log.with_suffix(".json")
    if not record.is_file():
        return {}
    try:
        value = json.loads(record.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{record}: not valid JSON ({error})") from None
    return value if isinstance(value, dict) else {}


def read_runs(path: str | Path, *, label: str | None = None, group: str | None = None) -> list[RunLog]:
    """The runs at `path` (see the module's docstring), labelled by their directory, or by `label`, in `group`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory or training log")
    if path.is_file():
        logs = [path]
        names = [label or (_name(path.parent) if path.name == "metrics.jsonl" else f"{path.parent.name}/{path.stem}")]
    elif (path / "metrics.jsonl").is_file():
        logs, names = [path / "metrics.jsonl"], [label or _name(path)]
    else:  # a sweep's cell: one log per repeat
        logs = sorted([*path.glob("repeat-*.jsonl"), *path.glob("repeat-*/metrics.jsonl")], key=_repeat_number)
        names = [f"{label or path.name}/{log.stem if log.name != 'metrics.jsonl' else log.parent.name}" for log in logs]
    if not logs:
        raise ValueError(f"{path}: holds no training log (metrics.jsonl, repeat-R.jsonl or repeat-R/metrics.jsonl)")
    return [RunLog(name, read_log(log), _final_record(log), group) for name, log in zip(names, logs, strict=True)]


def _name(directory: Path) -> str:
    """A run directory's label: its name, and its cell's for a sweep's repeat-R (they repeat across cells)."""
    directory = directory.absolute()
    return f"{directory.parent.name}/{directory.name}" if directory.name.startswith("repeat-") else directory.name


def _repeat_number(log: Path) -> tuple[int, str]:
    name = log.stem if log.name != "metrics.jsonl" else log.parent.name
    number = name.removeprefix("repeat-")
    return (int(number), name) if number.isdigit() else (-1, name)


def draw_runs(figure: Figure, runs: Sequence[RunLog], *, title: str | None = None) -> None:
    """The information plane (left) and the loss curves (right) of `runs` on `figure`, under `title`. Every
    series has a gid, "<label>|<series>", that names the run and what it shows: I_mc (the path), bounds (a
    vertical segment from I_lower to I_upper at each measurement), band, start, saturated, final (a run whose
    log has no I(x; z): its final record's), loss and distortion; "log N|<value>" for each dashed line.
    A run without a group has a colour and a legend entry of its own, its first and last measurements
    numbered with their step; the runs of a group share both, and each path's end is marked with its label
    less the group's name (a sweep's runs: "β=0.1")."""
    plane, curves = figure.subplots(1, 2)
    colours = _colours(runs)
    _draw_plane(plane, runs, colours)
    _draw_curves(curves, runs, colours)
    if title is not None:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()


def _colours(runs: Sequence[RunLog]) -> list[str]:
    """Each run's colour: one per group, or per run without a group, in the order they first appear."""
    keys = [("group", run.group) if run.group is not None else ("run", index) for index, run in enumerate(runs)]
    order = list(dict.fromkeys(keys))
    return [f"C{order.index(key) % 10}" for key in keys]


def _tag(run: RunLog) -> str:
    """What marks the end of a grouped run's path: its label less its group's name."""
    return run.label.removeprefix(run.group).strip() or run.label


def _legend_entry(handles: dict, run: RunLog, colour: str, **style) -> None:
    """The run's legend entry, or its group's (once, as a line in the group's colour)."""
    if run.group is None:
        handles[("run", len(handles))] = Line2D([], [], color=colour, **style)
    else:
        handles.setdefault(("group", run.group), Line2D([], [], color=colour, label=run.group))


def _draw_plane(axes, runs: Sequence[RunLog], colours: list[str]) -> None:
    handles, log_ns, any_saturated, any_path, grouped_final = {}, set(), False, False, False
    for run, colour in zip(runs, colours, strict=True):
        path = run.trajectory()
        if len(path["step"]):
            any_path = True
            distortion, estimate = path["heldout_distortion"], path["I_mc"]
            lower, upper = path["I_lower"], path["I_upper"]
            axes.vlines(distortion, lower, upper, color=colour, linewidth=0.8, alpha=0.6, gid=f"{run.label}|bounds")
            quads = [  # the band from one measurement to the next: it follows the path where it turns back
                [(distortion[i], lower[i]), (distortion[i + 1], lower[i + 1]), (distortion[i + 1], upper[i + 1]), (distortion[i], upper[i])]
                for i in range(len(distortion) - 1)
            ]
            axes.add_collection(PolyCollection(quads, facecolors=colour, alpha=0.12, linewidths=0, gid=f"{run.label}|band"))
            (line,) = axes.plot(distortion, estimate, "-o", color=colour, markersize=3, linewidth=1.2, gid=f"{run.label}|I_mc")
            axes.plot(distortion[:1], estimate[:1], "o", color=colour, markersize=7, markerfacecolor="none", gid=f"{run.label}|start")
            saturated = path["I_saturated"]
            if saturated.any():
                any_saturated = True
                axes.plot(distortion[saturated], estimate[saturated], "x", color="black", markersize=6, gid=f"{run.label}|saturated")
            marks = [(0, f"{int(path['step'][0])}"), (-1, f"{int(path['step'][-1])}")] if run.group is None else [(-1, _tag(run))]
            for end, text in marks:
                axes.annotate(text, (distortion[end], estimate[end]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            log_ns.update(path["I_log_n"].tolist())
            _legend_entry(handles, run, colour, marker="o", markersize=3, label=run.label)
            continue
        point = run.final_point()
        if point is None:
            _legend_entry(handles, run, colour, label=f"{run.label} (no I(x; z) measured)")
            continue
        axes.vlines([point["distortion"]], [point["I_lower"]], [point["I_upper"]], color=colour, linewidth=1.2, gid=f"{run.label}|bounds")
        axes.plot([point["distortion"]], [point["I_mc"]], "s", color=colour, markersize=5, gid=f"{run.label}|final")
        log_ns.add(point["I_log_n"])
        any_saturated |= bool(point.get("I_saturated"))
        grouped_final |= run.group is not None
        _legend_entry(handles, run, colour, marker="s", linestyle="none", label=f"{run.label} (final only)")
    handles = list(handles.values())
    for log_n in sorted(log_ns):
        axes.axhline(log_n, linestyle="--", color="grey", linewidth=0.9, gid=f"log N|{log_n!r}")
        axes.annotate(
            f"log N = {log_n:.2f}", (0, log_n), xycoords=("axes fraction", "data"), fontsize=6, xytext=(2, 2), textcoords="offset points"
        )
    if not log_ns:
        axes.text(0.5, 0.5, "no I(x; z) measured:\ntrain with --monitor", ha="center", va="center", transform=axes.transAxes, fontsize=9)
    if any_path:
        handles.append(Patch(color="grey", alpha=0.3, label="between the bounds (Bhattacharyya, pairwise KL)"))
        handles.append(
            Line2D([], [], color="grey", marker="o", markersize=7, markerfacecolor="none", linestyle="none", label="first measurement")
        )
    elif log_ns:
        handles.append(Line2D([], [], color="grey", label="bounds (Bhattacharyya, pairwise KL)"))
    if grouped_final:
        handles.append(Line2D([], [], color="grey", marker="s", linestyle="none", label="final I(x; z) only (not measured while training)"))
    if log_ns:
        handles.append(Line2D([], [], color="grey", linestyle="--", label="log N: the most N points can show"))
    if any_saturated:
        handles.append(Line2D([], [], color="black", marker="x", linestyle="none", label=f"saturated (I_loo - I_mc > {SATURATION_GAP:g})"))
    axes.legend(handles=handles, fontsize=6, loc="best")
    axes.set_xlabel("held-out distortion (one sampled code per point)", fontsize=8)
    axes.set_ylabel("I(x; z) of held-out points, nats (Monte Carlo)", fontsize=8)
    marks = "beside each path's end: its run" if any(run.group is not None for run in runs) else "numbers: training step"
    axes.set_title(f"information plane ({marks})", fontsize=9)
    axes.tick_params(which="both", labelsize=7)


def _draw_curves(axes, runs: Sequence[RunLog], colours: list[str]) -> None:
    handles, positive = {}, True
    for run, colour in zip(runs, colours, strict=True):
        steps = np.array([record["step"] for record in run.records], dtype=float)
        for key, style in (("loss", "-"), ("distortion", "--")):
            values = np.array([math.nan if record.get(key) is None else record[key] for record in run.records], dtype=float)
            axes.plot(steps, values, style, color=colour, linewidth=1.1, gid=f"{run.label}|{key}")
            positive &= bool(np.all(values[np.isfinite(values)] > 0))
        _legend_entry(handles, run, colour, label=run.label)
    handles = [
        *handles.values(),
        Line2D([], [], color="grey", linestyle="-", label="loss"),
        Line2D([], [], color="grey", linestyle="--", label="distortion (training batches)"),
    ]
    if positive:
        axes.set_yscale("log")
    axes.legend(handles=handles, fontsize=6, loc="best")
    axes.set_xlabel("training step", fontsize=8)
    axes.set_ylabel("mean over the steps since the last record", fontsize=8)
    axes.set_title("loss curves", fontsize=9)
    axes.tick_params(which="both", labelsize=7)


def plot_runs(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    labels: Sequence[str] | None = None,
    groups: Sequence[str | None] | None = None,
    title: str | None = None,
) -> Figure:
    """Draw the runs at `paths` (see `read_runs`; `labels`: one for each path instead of its name; `groups`:
    one for each path, the group its runs are drawn in, or None) with `draw_runs`, under `title`, and save
    the figure as the PNG `out`, atomically. Returns the figure."""
    if not paths:
        raise ValueError("no runs to draw")
    for name, values in (("labels", labels), ("groups", groups)):
        if values is not None and len(values) != len(paths):
            raise ValueError(f"{len(values)} {name} for {len(paths)} runs")
    runs = [
        run
        for index, path in enumerate(paths)
        for run in read_runs(path, label=None if labels is None else labels[index], group=None if groups is None else groups[index])
    ]
    figure = Figure(figsize=(11, 4.4))
    draw_runs(figure, runs, title=title)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_png(figure, out)
    return figure
