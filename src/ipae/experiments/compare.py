"""Two Figure-2 sweeps on the same seeds, compared repeat by repeat (did --compile, bf16 or a new torch
change the linear-SVM errors?).

    python -m ipae.experiments.compare docs/figure2 docs/compile-check/figure2 --out docs/compile-check
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from ipae.reporting import write_table

__all__: list[str] = []  # internal

COLUMNS = ("cell", "repeats", "identical", "largest_repeat_difference", "mean_difference", "reference_mean", "other_mean")

EXIT_BAD_INPUT = 2
_REPEAT_FILE = re.compile(r"repeat-(\d+)\.json")


def compare_sweeps(reference: Path, other: Path) -> list[dict]:
    """One row per cell that both sweeps hold, sorted by cell name, over the repeats that succeeded in both:
    `repeats` compared, how many give `identical` errors, the `largest_repeat_difference` |other - reference|
    and the `mean_difference` other - reference of the cell means over those repeats, in percentage points.

    Reads `runs/<cell>/repeat-<r>.json` of each sweep (written by `ipae reproduce figure2`); repeats that
    only one sweep holds, or that failed in either, are left out. Raises FileNotFoundError for a missing
    directory and ValueError for one that holds no sweep or when no repeat succeeded in both.
    """
    reference_errors, other_errors = _errors(Path(reference)), _errors(Path(other))
    reference_errors = {cell: {r: found["svm_error"] for r, found in repeats.items()} for cell, repeats in reference_errors.items()}
    other_errors = {cell: {r: found["svm_error"] for r, found in repeats.items()} for cell, repeats in other_errors.items()}
    rows = []
    for cell in sorted(reference_errors.keys() & other_errors.keys()):
        first, second = reference_errors[cell], other_errors[cell]
        common = sorted(first.keys() & second.keys())
        if not common:
            continue
        pairs = [(first[repeat], second[repeat]) for repeat in common]
        reference_mean = statistics.fmean(a for a, _ in pairs)
        other_mean = statistics.fmean(b for _, b in pairs)
        rows.append(
            {
                "cell": cell,
                "repeats": len(pairs),
                "identical": sum(a == b for a, b in pairs),
                "largest_repeat_difference": max(abs(b - a) for a, b in pairs),
                "mean_difference": other_mean - reference_mean,
                "reference_mean": reference_mean,
                "other_mean": other_mean,
            }
        )
    if not rows:
        raise ValueError(f"{reference} and {other} have no successful repeat of the same cell in common")
    return rows


def training_time_ratio(reference: Path, other: Path, *, from_repeat: int = 0) -> tuple[float, int] | None:
    """Training seconds of `reference` over those of `other`, summed over the successful repeats
    numbered `from_repeat` or more that both hold, and how many repeats that is: how much faster
    `other` trained (e.g. with --compile). Compare only repeats that ran under the same load. None when
    no repeat of both records its training time."""
    first, second = _errors(Path(reference)), _errors(Path(other))
    pairs = [
        (first[cell][r]["train_seconds"], second[cell][r]["train_seconds"])
        for cell in first.keys() & second.keys()
        for r in first[cell].keys() & second[cell].keys()
        if r >= from_repeat
        and isinstance(first[cell][r]["train_seconds"], (int, float))
        and isinstance(second[cell][r]["train_seconds"], (int, float))
    ]
    if not pairs:
        return None
    return sum(a for a, _ in pairs) / sum(b for _, b in pairs), len(pairs)


def _errors(sweep: Path) -> dict[str, dict[int, dict]]:
    """cell -> repeat -> {"svm_error", "train_seconds"} of the sweep's successful repeats."""
    if not sweep.is_dir():
        raise FileNotFoundError(f"{sweep} is not a directory")
    errors: dict[str, dict[int, float]] = {}
    found = False
    for cell in sorted(path for path in (sweep / "runs").glob("*") if path.is_dir()):
        for path in sorted(cell.iterdir()):
            match = _REPEAT_FILE.fullmatch(path.name)
            if match is None:
                continue
            found = True
            record = _read(path)
            if record.get("repeat") != int(match[1]):
                raise ValueError(f"{path} records repeat {record.get('repeat')!r}, not {int(match[1])}")
            if record.get("status") != "ok":
                continue
            if not isinstance(record.get("svm_error"), (int, float)):
                raise ValueError(f"{path} has status ok but no numeric svm_error")
            found_seconds = record.get("train_seconds")
            errors.setdefault(cell.name, {})[int(match[1])] = {"svm_error": float(record["svm_error"]), "train_seconds": found_seconds}
    if not found:
        raise ValueError(f"{sweep} holds no figure-2 sweep (no runs/<cell>/repeat-<r>.json); `ipae reproduce figure2` writes one")
    return errors


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds {type(record).__name__}, not a repeat's record")
    return record


def summary(reference: Path, other: Path, rows: Sequence[dict]) -> str:
    """The table's note: what was compared with what, and the numbers over all cells."""
    repeats = sum(row["repeats"] for row in rows)
    identical = sum(row["identical"] for row in rows)
    largest = max(row["largest_repeat_difference"] for row in rows)
    mean = max(abs(row["mean_difference"]) for row in rows)
    return (
        f"{other} against {reference} (svm_error in percent, differences other - reference in points): "
        f"{identical} of {repeats} repeats in {len(rows)} cells identical; "
        f"largest repeat difference {largest:.3f} points; largest cell-mean difference {mean:.4f} points."
    )


def write_comparison(reference: Path, other: Path, out: Path, name: str = "comparison") -> list[dict]:
    """Compare the sweeps (`compare_sweeps`) and write `out`/`name`.{md,csv,json}, each atomically,
    the Markdown with the `summary` below the table. `out` is created if missing. Returns the rows."""
    rows = compare_sweeps(reference, other)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out, name, rows, COLUMNS, note=summary(reference, other, rows))
    return rows


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints the whole usage; one line is enough
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m ipae.experiments.compare", description="Compare two Figure-2 sweeps repeat by repeat.")
    parser.add_argument("reference", type=Path, help="a figure-2 sweep directory (the --out of `ipae reproduce figure2`)")
    parser.add_argument("other", type=Path, help="a second sweep on the same seeds")
    parser.add_argument("--out", type=Path, required=True, help="directory for the table (created if missing)")
    parser.add_argument("--name", default="comparison", help="the table's file name without suffix (default: comparison)")
    parser.add_argument(
        "--time-from-repeat", type=int, default=0, help="the training-time ratio over repeats numbered this or more (default 0: all)"
    )
    args = parser.parse_args(argv)
    try:
        rows = write_comparison(args.reference, args.other, args.out, args.name)
        timing = training_time_ratio(args.reference, args.other, from_repeat=args.time_from_repeat)
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary(args.reference, args.other, rows))
    if timing is not None:
        ratio, count = timing
        print(
            f"Training seconds of {args.reference} over {args.other}: {ratio:.3f}, "
            f"summed over the {count} repeats numbered {args.time_from_repeat} or more that succeeded in both."
        )
    print(f"-> {args.out / args.name}.{{md,csv,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
