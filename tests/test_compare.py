import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ipae.experiments.compare import COLUMNS, compare_sweeps, main, write_comparison

DOCS = Path(__file__).resolve().parents[1] / "docs"


def make_sweep(root: Path, cells: dict[str, dict[int, float | None]]) -> Path:
    """A sweep directory as `ipae reproduce figure2` leaves it; None: a repeat that diverged."""
    for cell, repeats in cells.items():
        directory = root / "runs" / cell
        directory.mkdir(parents=True)
        (directory / "metrics.json").write_text("{}")  # files beside the repeats are not repeats
        for repeat, error in repeats.items():
            record = {"repeat": repeat, "status": "ok", "svm_error": error}
            if error is None:
                record = {"repeat": repeat, "status": "failed", "error": "loss is nan"}
            (directory / f"repeat-{repeat}.json").write_text(json.dumps(record))
            (directory / f"repeat-{repeat}.jsonl").write_text("{}\n")
            (directory / f"repeat-{repeat}-pca.npz").write_bytes(b"")
    (root / "sweep.json").write_text("{}")
    return root


@pytest.fixture
def sweeps(tmp_path):
    # Dyadic errors, so that every mean and difference below is exact in floating point.
    reference = make_sweep(
        tmp_path / "eager",
        {
            "vae-beta0.01": {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0},
            "ipae-beta1e-05-pairs8": {0: 0.5, 1: None},  # repeat 1 failed here: not compared
            "vae-beta0.1": {0: 1.0, 1: None},  # no repeat succeeded in both: no row
            "only-in-reference": {0: 1.0},
        },
    )
    other = make_sweep(
        tmp_path / "compiled",
        {
            "vae-beta0.01": {0: 1.0, 1: 2.03125, 2: 2.0, 3: 4.0, 4: 9.0},  # repeat 4 only here: not compared
            "ipae-beta1e-05-pairs8": {0: 0.5, 1: 0.75},
            "vae-beta0.1": {0: None, 1: 1.0},
            "only-in-other": {0: 1.0},
        },
    )
    return reference, other


def test_compare_sweeps_pairs_repeats_of_the_same_cell(sweeps):
    rows = compare_sweeps(*sweeps)
    assert rows == [
        {
            "cell": "ipae-beta1e-05-pairs8",
            "repeats": 1,
            "identical": 1,
            "largest_repeat_difference": 0.0,
            "mean_difference": 0.0,
            "reference_mean": 0.5,
            "other_mean": 0.5,
        },
        {
            "cell": "vae-beta0.01",
            "repeats": 4,
            "identical": 2,
            "largest_repeat_difference": 1.0,  # repeat 2: 3.0 -> 2.0
            "mean_difference": -0.2421875,  # (0.03125 - 1) / 4
            "reference_mean": 2.5,
            "other_mean": 2.2578125,
        },
    ]
    assert all(tuple(row) == COLUMNS for row in rows)


def test_compare_sweeps_is_antisymmetric(sweeps):
    reference, other = sweeps
    forward, backward = compare_sweeps(reference, other), compare_sweeps(other, reference)
    assert [row["mean_difference"] for row in backward] == [-row["mean_difference"] for row in forward]
    assert [row["identical"] for row in backward] == [row["identical"] for row in forward]


def test_a_sweep_against_itself_is_identical(sweeps):
    rows = compare_sweeps(sweeps[0], sweeps[0])
    counts = [(row["repeats"], row["identical"], row["largest_repeat_difference"], row["mean_difference"]) for row in rows]
    assert counts == [(1, 1, 0.0, 0.0), (1, 1, 0.0, 0.0), (4, 4, 0.0, 0.0), (1, 1, 0.0, 0.0)]


def test_write_comparison_writes_the_table_and_the_overall_numbers(sweeps, tmp_path):
    out = tmp_path / "tables" / "new"  # created
    rows = write_comparison(*sweeps, out)
    assert json.loads((out / "comparison.json").read_text()) == rows
    with open(out / "comparison.csv") as file:
        assert [row["cell"] for row in csv.DictReader(file)] == ["ipae-beta1e-05-pairs8", "vae-beta0.01"]
    markdown = (out / "comparison.md").read_text()
    assert "| vae-beta0.01 | 4 | 2 | 1 | -0.2422 | 2.5 | 2.258 |" in markdown
    note = markdown.strip().splitlines()[-3]  # the summary, then the table's provenance
    assert str(sweeps[0]) in note and str(sweeps[1]) in note
    assert "3 of 5 repeats in 2 cells identical" in note
    assert "largest repeat difference 1.000 points; largest cell-mean difference 0.2422 points" in note
    assert sorted(path.name for path in out.iterdir()) == ["comparison.csv", "comparison.json", "comparison.md"]  # no temporary files


def test_missing_directory(sweeps, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        compare_sweeps(sweeps[0], tmp_path / "nowhere")


def test_a_directory_that_is_not_a_sweep(sweeps, tmp_path):
    (tmp_path / "empty" / "runs" / "cell").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no figure-2 sweep"):
        compare_sweeps(tmp_path / "empty", sweeps[1])


def test_no_repeat_in_common(tmp_path):
    reference = make_sweep(tmp_path / "a", {"vae-beta0.01": {0: 1.0}, "ipae-beta1e-05-pairs8": {0: None}})
    other = make_sweep(tmp_path / "b", {"vae-beta0.1": {0: 1.0}, "ipae-beta1e-05-pairs8": {0: 1.0}})
    with pytest.raises(ValueError, match="no successful repeat of the same cell in common"):
        compare_sweeps(reference, other)


def test_damaged_repeat_records(sweeps):
    path = sweeps[1] / "runs" / "vae-beta0.01" / "repeat-0.json"
    path.write_text('{"repeat": 0, "status": "ok", "svm_')
    with pytest.raises(ValueError, match="repeat-0.json is not valid JSON"):
        compare_sweeps(*sweeps)
    path.write_text('{"repeat": 3, "status": "ok", "svm_error": 1.0}')
    with pytest.raises(ValueError, match="records repeat 3, not 0"):
        compare_sweeps(*sweeps)
    path.write_text('{"repeat": 0, "status": "ok"}')
    with pytest.raises(ValueError, match="no numeric svm_error"):
        compare_sweeps(*sweeps)


def test_main_writes_the_table(sweeps, tmp_path, capsys):
    assert main([str(sweeps[0]), str(sweeps[1]), "--out", str(tmp_path / "out")]) == 0
    assert "3 of 5 repeats" in capsys.readouterr().out
    assert (tmp_path / "out" / "comparison.md").exists()


@pytest.mark.parametrize("broken", ["missing", "not-a-sweep"])
def test_main_bad_input_is_one_line_and_exit_code_2(sweeps, tmp_path, capsys, broken):
    (tmp_path / "not-a-sweep").mkdir()
    assert main([str(sweeps[0]), str(tmp_path / broken), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and broken in error
    assert not (tmp_path / "out").exists()


def test_module_runs_as_a_command(sweeps, tmp_path):
    command = [sys.executable, "-m", "ipae.experiments.compare", str(sweeps[0]), str(tmp_path / "missing"), "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "missing is not a directory" in result.stderr
    result = subprocess.run(command[:4], capture_output=True, text=True)  # no OTHER, no --out
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_the_reproducing_doc_shows_the_generated_comparison_table():
    generated = DOCS / "compile-check" / "comparison.md"
    assert generated.read_text().strip() in (DOCS / "reproducing.md").read_text()


def test_training_time_ratio_sums_the_repeats_from_a_number_on(tmp_path):
    def sweep(root: Path, seconds: dict[int, float]) -> Path:
        make_sweep(root, {"cell": {repeat: 1.0 for repeat in seconds}})
        for repeat, value in seconds.items():
            path = root / "runs" / "cell" / f"repeat-{repeat}.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "train_seconds": value}))
        return root

    from ipae.experiments.compare import training_time_ratio

    eager, compiled = sweep(tmp_path / "a", {0: 30.0, 1: 10.0, 2: 12.0}), sweep(tmp_path / "b", {0: 5.0, 1: 5.0, 2: 6.0})
    assert training_time_ratio(eager, compiled) == (pytest.approx(52.0 / 16.0), 3)
    assert training_time_ratio(eager, compiled, from_repeat=1) == (pytest.approx(22.0 / 11.0), 2)
    assert training_time_ratio(eager, compiled, from_repeat=3) is None
