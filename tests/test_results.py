import csv
import json
import math

import pytest

from ipae.results import json_lines, markdown_table, staged_directory, write_atomic, write_json, write_table


def test_write_atomic_leaves_nothing_when_writing_fails(tmp_path):
    def failing(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "out.txt", failing)
    assert list(tmp_path.iterdir()) == []


def test_write_json_turns_non_finite_floats_into_null(tmp_path):
    write_json(tmp_path / "m.json", {"a": math.nan, "b": [1.5, math.inf], "c": "x"})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.5, None], "c": "x"}


def test_staged_directory_appears_only_on_success(tmp_path):
    out = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(RuntimeError):
        with staged_directory(out) as stage:
            (stage / "f.txt").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # not the output, not the stage, not the parents it made
    with staged_directory(out) as stage:
        (stage / "f.txt").write_text("done")
    assert (out / "f.txt").read_text() == "done"
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]


def test_staged_directory_refuses_an_existing_output_unless_asked(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with staged_directory(tmp_path / "run"):
            pass
    assert (tmp_path / "run" / "old.txt").exists()
    with staged_directory(tmp_path / "run", overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["new.txt"]


def test_tables_in_three_formats(tmp_path):
    rows = [{"model": "vae", "E": 0.123456, "extra": 1}, {"model": "ipae", "E": math.nan}]
    assert markdown_table(rows, ("model", "E")) == "| model | E |\n|---|---|\n| vae | 0.1235 |\n| ipae |  |\n"
    write_table(tmp_path, "t", rows, ("model", "E"))
    with open(tmp_path / "t.csv") as file:
        assert list(csv.DictReader(file)) == [{"model": "vae", "E": "0.123456"}, {"model": "ipae", "E": "nan"}]
    assert json.loads((tmp_path / "t.json").read_text()) == [{"model": "vae", "E": 0.123456}, {"model": "ipae", "E": None}]
    assert (tmp_path / "t.md").read_text() == markdown_table(rows, ("model", "E"))


def test_json_lines_writes_each_record_to_every_file_at_once(tmp_path):
    with json_lines(tmp_path / "a.jsonl", None, tmp_path / "b.jsonl") as write:
        write({"step": 1, "loss": 0.5})
        assert (tmp_path / "a.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'  # flushed: the log can be read as it grows
        write({"step": 2, "loss": math.inf})
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None}]
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]
