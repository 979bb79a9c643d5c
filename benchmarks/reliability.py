"""docs/reliability.md in one command: run the reliability tests, then tabulate what they recorded.

    python benchmarks/reliability.py            # all of them, the slow campaigns too
    python benchmarks/reliability.py --quick    # without the slow ones, to try the script

It runs pytest on the reliability test files that exist (fuzzing, kills, numerical edges,
determinism) and on every other test file that records evidence (`from reliability import record`,
e.g. the bad-input tests), with `-m "slow or not slow"` and IPAE_RELIABILITY_LOG naming a temporary
file that the tests append JSON lines {section, target, tried, outcome, detail} to (tests/reliability.py).
If any test fails, it prints which and writes nothing: the page never reports a failing run.
Otherwise it writes the page atomically: the command, date, commit, CPU, torch and the pytest
summary, then one table per section, `tried` summed over the lines of one (section, target, outcome).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ipae._files import write_atomic
from ipae.reporting import cpu_name, revision

ROOT = Path(__file__).resolve().parents[1]
# the files written for the reliability report; those that do not exist yet are left out
RELIABILITY_FILES = (
    "tests/test_fuzz.py",
    "tests/test_fuzz_campaign.py",
    "tests/test_kills.py",
    "tests/test_edges.py",
    "tests/test_determinism.py",
)
RECORDS = re.compile(r"^from reliability import .*\brecord\b", re.MULTILINE)  # another test file that imports it records too
# section -> the heading of its table, in the page's order; a section not named here follows them
SECTIONS = {
    "kills": "Kills survived (fit and sweep)",
    "cluster": "Sweeps on a Dask cluster",
    "fuzz": "Fuzz inputs tried per loader",
    "bad input": "Bad inputs refused",
    "numerical edges": "Numerical edge cases",
    "determinism": "Determinism checks",
    "memory": "Memory that does not grow with the run",
}
# section -> what a reader needs to read its table
NOTES = {
    "cluster": "A LocalCluster of single-thread worker processes on this machine: the same client code as a cluster of machines.",
    "determinism": "Across thread counts PyTorch promises no bit-identity (a matmul or a reduction may split its sums "
    "differently): there the difference is measured and shown, not asserted away.",
}
COLUMNS = ("target", "tried", "outcome", "detail")
MAX_DETAILS = 3  # distinct details shown for one row; the rest are counted


@dataclass
class Summary:
    """What a pytest run gave: the counts, the ids of the tests that failed, the skipped with their reasons."""

    returncode: int
    passed: int = 0
    failed: list[str] = field(default_factory=list)  # failures and errors
    skipped: list[str] = field(default_factory=list)  # "test id: reason"
    seconds: float = 0.0  # wall time of the whole pytest process


def reliability_files(root: Path = ROOT) -> list[str]:
    """The reliability files that exist, then the other test files that record evidence."""
    files = [name for name in RELIABILITY_FILES if (root / name).is_file()]
    for path in sorted((root / "tests").glob("test_*.py")):
        name = path.relative_to(root).as_posix()
        if name not in files and RECORDS.search(path.read_text()):
            files.append(name)
    return files


def junit_summary(xml: str, returncode: int, seconds: float) -> Summary:
    """The counts and names of a pytest --junitxml report."""
    summary = Summary(returncode, seconds=seconds)
    for case in ElementTree.fromstring(xml).iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcomes = {child.tag: child for child in case}
        if "failure" in outcomes or "error" in outcomes:
            summary.failed.append(name)
        elif "skipped" in outcomes:
            summary.skipped.append(f"{name}: {outcomes['skipped'].get('message', '')}")
        else:
            summary.passed += 1
    return summary


def problems(summary: Summary) -> list[str]:
    """Why the run cannot be published: failed tests, no tests, or pytest stopping on its own."""
    found = [f"failed: {name}" for name in summary.failed]
    if summary.passed == 0:
        found.append("no test passed")
    if summary.returncode != 0 and not summary.failed:
        found.append(f"pytest exited with code {summary.returncode} (a collection error or an interruption)")
    return found


def read_log(path: Path) -> list[dict]:
    """The JSON lines that the tests recorded."""
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if text.strip():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
    return lines


def aggregate(lines: list[dict]) -> dict[str, list[dict]]:
    """section -> rows {target, tried, outcome, detail}: one per (target, outcome) in the order first
    recorded, `tried` summed over its lines, its distinct details joined. Sections in SECTIONS order, then others."""
    rows: dict[str, dict[tuple[str, str], dict]] = {}
    for line in lines:
        section, key = line["section"], (line["target"], line["outcome"])
        row = rows.setdefault(section, {}).setdefault(key, {"target": key[0], "tried": 0, "outcome": key[1], "details": []})
        row["tried"] += int(line["tried"])
        if line.get("detail") and line["detail"] not in row["details"]:
            row["details"].append(line["detail"])
    order = [section for section in SECTIONS if section in rows] + [section for section in rows if section not in SECTIONS]
    return {section: [_with_detail(row) for row in rows[section].values()] for section in order}


def _with_detail(row: dict) -> dict:
    details = row.pop("details")
    shown = "; ".join(details[:MAX_DETAILS]) + (f"; and {len(details) - MAX_DETAILS} more" if len(details) > MAX_DETAILS else "")
    return {**row, "detail": shown}


def _cell(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def tables(sections: dict[str, list[dict]]) -> str:
    """One Markdown table per section; a section of SECTIONS that nobody recorded says so."""
    parts = []
    for section in [*SECTIONS, *(name for name in sections if name not in SECTIONS)]:
        parts.append(f"## {SECTIONS.get(section, section)}\n")
        rows = sections.get(section)
        if not rows:
            parts.append(f'No test recorded section "{section}" in this run.\n')
            continue
        total = sum(row["tried"] for row in rows)
        note = f" {NOTES[section]}" if section in NOTES else ""
        parts.append(f"{_count(total, 'case')} tried, in {_count(len(rows), 'row')}.{note}\n")
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cell(row[column]) for column in COLUMNS) + " |" for row in rows]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def header(command: str, date: str, commit: str, summary: Summary, files: list[str], quick: bool) -> str:
    import torch

    skipped = "".join(f"\n  - {line}" for line in summary.skipped)
    missing = [name for name in RELIABILITY_FILES if name not in files]
    selection = '`-m "not slow"` (--quick: the slow tests left out)' if quick else '`-m "slow or not slow"` (the slow campaigns included)'
    return (
        "# Reliability\n\n"
        "Generated by code, never by hand: every number below was counted by a test that passed in this run\n"
        "(tests/reliability.py records it; a run with a failing test writes no page).\n\n"
        f"- command: `{command}`\n"
        f"- date: {date}\n"
        f"- {commit}\n"
        f"- CPU: {cpu_name()} (torch CPU capability {torch.backends.cpu.get_cpu_capability()})\n"
        f"- torch {torch.__version__}, Python {platform.python_version()}\n"
        f"- tests: {', '.join(files)}, {selection}\n"
        + (f"- reliability files not in this checkout: {', '.join(missing)}\n" if missing else "")
        + f"- pytest: {summary.passed} passed, {len(summary.skipped)} skipped, in {summary.seconds:.0f} s wall time{skipped}\n"
    )


def run_pytest(files: list[str], *, quick: bool, log: Path, junit: Path) -> Summary:
    marks = "not slow" if quick else "slow or not slow"
    command = [sys.executable, "-m", "pytest", *files, "-m", marks, "-p", "no:cacheprovider", "-q", f"--junitxml={junit}"]
    start = time.perf_counter()
    returncode = subprocess.run(command, cwd=ROOT, env={**os.environ, "IPAE_RELIABILITY_LOG": str(log)}).returncode
    seconds = time.perf_counter() - start
    if not junit.is_file():
        return Summary(returncode, seconds=seconds)
    return junit_summary(junit.read_text(), returncode, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="leave out the slow tests (to try the script)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md", help="the page (default docs/reliability.md)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/reliability.py", *(sys.argv[1:] if argv is None else argv)])
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = revision(ROOT)  # before the run: the page it writes is a change of its own
    files = reliability_files()
    print(f"running {', '.join(files)}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        log, junit = Path(scratch) / "reliability.jsonl", Path(scratch) / "junit.xml"
        log.touch()
        summary = run_pytest(files, quick=args.quick, log=log, junit=junit)
        reasons = problems(summary)
        if reasons:
            print(f"not writing {args.out}:", *reasons, sep="\n  ", file=sys.stderr)
            return 1
        sections = aggregate(read_log(log))
    page = header(command, date, commit, summary, files, args.quick) + "\n" + tables(sections)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, lambda tmp: tmp.write_text(page))  # a reader never sees half a page
    print(f"{summary.passed} passed, {len(summary.skipped)} skipped in {summary.seconds:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
