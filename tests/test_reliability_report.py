"""benchmarks/reliability.py, the generator of docs/reliability.md: its aggregation, tables and refusals
on small synthetic logs and pytest reports (no pytest inside pytest)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reliability.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("reliability_report", SCRIPT)  # not `reliability`: tests/reliability.py is that
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _line(section, target, tried, outcome, detail=""):
    return {"section": section, "target": target, "tried": tried, "outcome": outcome, "detail": detail}


LOG = [
    _line("fuzz", "IDX loader", 300, "refused or loaded", "no other exception"),
    _line("determinism", "toy, 1 thread twice", 1, "bit-identical"),
    _line("fuzz", "IDX loader", 200, "refused or loaded", "no other exception"),
    _line("fuzz", "npz loader", 50, "refused or loaded"),
    _line("numerical edges", "beta = 0", 1, "finite", "loss 2.1"),
    _line("fuzz", "IDX loader", 7, "crashed | caught", "seed 3"),
    _line("someone's new section", "thing", 2, "fine"),
    _line("fuzz", "IDX loader", 100, "refused or loaded", "also truncated files"),
]


def test_tried_is_summed_over_the_lines_of_one_section_target_and_outcome(report):
    sections = report.aggregate(LOG)
    fuzz = {(row["target"], row["outcome"]): row for row in sections["fuzz"]}
    assert fuzz["IDX loader", "refused or loaded"]["tried"] == 300 + 200 + 100
    assert fuzz["IDX loader", "crashed | caught"]["tried"] == 7  # another outcome of the same target: its own row
    assert fuzz["npz loader", "refused or loaded"]["tried"] == 50
    assert fuzz["IDX loader", "refused or loaded"]["detail"] == "no other exception; also truncated files"  # distinct details, once each
    assert [row["target"] for row in sections["fuzz"]] == ["IDX loader", "npz loader", "IDX loader"]  # first-recorded order
    assert sum(row["tried"] for rows in sections.values() for row in rows) == sum(line["tried"] for line in LOG)


def test_sections_come_in_the_pages_order_then_the_others(report):
    assert list(report.aggregate(LOG)) == ["fuzz", "numerical edges", "determinism", "someone's new section"]


def test_many_distinct_details_are_counted_not_all_shown(report):
    lines = [_line("fuzz", "csv", 1, "refused", f"case {i}") for i in range(report.MAX_DETAILS + 4)]
    (row,) = report.aggregate(lines)["fuzz"]
    assert row["tried"] == report.MAX_DETAILS + 4 and row["detail"].endswith("; and 4 more")
    assert row["detail"].count("case") == report.MAX_DETAILS


def test_the_tables_have_every_section_and_escape_cells(report):
    text = report.tables(report.aggregate(LOG))
    for title in report.SECTIONS.values():
        assert f"## {title}\n" in text
    assert "## someone's new section\n" in text
    assert 'No test recorded section "kills" in this run.' in text and 'No test recorded section "bad input"' in text
    assert "| IDX loader | 600 | refused or loaded | no other exception; also truncated files |" in text
    assert "| IDX loader | 7 | crashed \\| caught | seed 3 |" in text  # a | inside a cell does not split the row
    assert "657 cases tried, in 3 rows." in text  # 600 + 7 + 50


def test_the_log_is_read_line_by_line_and_a_damaged_line_is_an_error(report, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in LOG[:2]) + "\n")
    assert report.read_log(log) == LOG[:2]
    log.write_text(json.dumps(LOG[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        report.read_log(log)


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="3.2">
<testcase classname="tests.test_edges" name="test_a[1]" time="0.1"/>
<testcase classname="tests.test_edges" name="test_a[2]" time="0.1"/>
<testcase classname="tests.test_kills" name="test_kill" time="0.1"><failure message="assert 1 == 2">...</failure></testcase>
<testcase classname="tests.test_fuzz" name="test_idx" time="0.1"><error message="fixture broke">...</error></testcase>
<testcase classname="tests.test_cli" name="test_mnist" time="0.0"><skipped message="no MNIST files">...</skipped></testcase>
</testsuite></testsuites>"""


def test_a_run_with_a_failed_test_is_not_published_and_says_which(report):
    summary = report.junit_summary(JUNIT, returncode=1, seconds=3.5)
    assert summary.passed == 2 and summary.skipped == ["tests.test_cli::test_mnist: no MNIST files"]
    assert summary.failed == ["tests.test_kills::test_kill", "tests.test_fuzz::test_idx"]
    assert report.problems(summary) == ["failed: tests.test_kills::test_kill", "failed: tests.test_fuzz::test_idx"]


def test_only_a_run_where_everything_passed_is_published(report):
    passing = JUNIT.replace('<failure message="assert 1 == 2">...</failure>', "").replace('<error message="fixture broke">...</error>', "")
    assert report.problems(report.junit_summary(passing, returncode=0, seconds=1.0)) == []
    assert report.problems(report.junit_summary(passing, returncode=2, seconds=1.0))  # pytest stopped: a collection error
    assert report.problems(report.Summary(returncode=5))  # nothing ran


def test_the_files_run_are_the_reliability_files_that_exist_and_those_that_record(report, tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_edges.py").write_text("")
    (tmp_path / "tests" / "test_cli.py").write_text("from reliability import record\n")
    (tmp_path / "tests" / "test_other.py").write_text("import reliability_free\n")
    assert report.reliability_files(tmp_path) == ["tests/test_edges.py", "tests/test_cli.py"]
