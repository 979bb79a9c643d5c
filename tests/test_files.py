"""ipae._files: atomic writes, staged directories, the temporaries of killed processes."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ipae import _files
from ipae._files import json_lines, staged_directory, write_atomic, write_json


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


def test_json_lines_writes_each_record_to_every_file_at_once(tmp_path):
    with json_lines(tmp_path / "a.jsonl", None, tmp_path / "b.jsonl") as write:
        write({"step": 1, "loss": 0.5})
        assert (tmp_path / "a.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'  # flushed: the log can be read as it grows
        write({"step": 2, "loss": math.inf})
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None}]
    assert (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]


# what killed processes leave


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()  # reaped: no process has this pid now (until the system reuses it)
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return process.pid
    pytest.skip("the pid was reused at once")


def test_staging_removes_the_temporaries_of_dead_processes_only(tmp_path):
    dead, own = _dead_pid(), os.getpid()
    start = _files._start_time(own)
    names = {
        "stale stage": f".run.{dead}-0.abababab.tmp",  # a killed process's staging directory (start time unknown)
        "stale file": f".run.{dead}-7.01234567.tmp",  # a killed process's half-written file
        "live stage": f".run.{own}-{start or 0}.cdcdcdcd.tmp",  # this process's: in use
        "other output": f".other.{dead}-0.abababab.tmp",  # a stale temporary of another output: not this staging's business
        "old format": ".run.abababab.tmp",  # no owner recorded: left alone
    }
    if start is not None:
        names["reused pid"] = f".run.{own}-{start + 1}.efefefef.tmp"  # this pid, another start time: a dead process's
    for what, name in names.items():
        if "file" in what:
            (tmp_path / name).write_text("half")
        else:
            (tmp_path / name).mkdir()
            (tmp_path / name / "f.txt").write_text("partial")
    with staged_directory(tmp_path / "run") as stage:
        (stage / "f.txt").write_text("done")
    kept = {"run", names["live stage"], names["other output"], names["old format"]}
    assert {p.name for p in tmp_path.iterdir()} == kept
    assert _files.remove_stale(tmp_path / "run") == []  # nothing stale is left, and the live one stays
    assert (tmp_path / names["live stage"] / "f.txt").exists()


def test_write_atomic_removes_the_half_written_files_of_dead_processes(tmp_path):
    stale = tmp_path / f".m.json.{_dead_pid()}-0.01234567.tmp"
    stale.write_text('{"half')
    write_json(tmp_path / "m.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2", "two renames"])
def test_overwrite_removes_the_old_output_only_after_the_new_one_is_in_place(tmp_path, monkeypatch, swap):
    """A kill while the old output is removed must not leave no output at all: the new one is in place first."""
    if not swap:
        monkeypatch.setattr(_files, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    seen = []
    remove = shutil.rmtree

    def watched_rmtree(path, *args, **kwargs):
        seen.append((Path(path).name, sorted(p.name for p in out.iterdir())))
        remove(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", watched_rmtree)
    with staged_directory(out, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert seen and all(listing == ["new.txt"] for _, listing in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (out / "new.txt").read_text() == "new"


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "1").write_text("a")
    if not _files._exchange(a, b):
        pytest.skip("no renameat2 with RENAME_EXCHANGE here")
    assert [p.name for p in a.iterdir()] == [] and [p.name for p in b.iterdir()] == ["1"]
