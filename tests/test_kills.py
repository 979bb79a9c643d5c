"""Kills at random moments (seeded): `ipae reproduce figure2` and `ipae fit --checkpoint-every`, each
killed with SIGKILL (its whole process group) and resumed until it finishes, against a run that was
never interrupted. Slow: a few minutes each on two cores.

    python -m pytest tests/test_kills.py -m slow
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ipae.checkpoint import load_model, load_state
from mnist_files import REAL_MNIST, needs_mnist
from reliability import record

pytestmark = pytest.mark.slow


# The `ipae` command, with each repeat's I(x; z) measured on 256 codes instead of 5000: that estimate is
# O(N^2) and took 48 of a repeat's 59 seconds here. Everything a kill can interrupt (training, scoring,
# the atomic writes, the resume) is the command's own.
DRIVER = """
import sys

import ipae.experiments.mnist

ipae.experiments.mnist.INFORMATION_POINTS = 256
from ipae.cli import main

sys.exit(main(sys.argv[1:]))
"""
KILLS = 20
SWEEP = ["reproduce", "figure2", "--steps", "20", "--repeats", "2", "--jobs", "1", "--threads", "1", "--quiet"]
TIMING = {"train_seconds"}  # wall times differ between any two runs


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """The command in a session of its own, so that a kill reaches all its processes (workers too)."""
    with open(log, "ab") as output:
        return subprocess.Popen([sys.executable, "-c", DRIVER, *args], stdout=output, stderr=output, start_new_session=True)


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# A command that writes nothing under its folder for this long is hung. The bound is on a lack of progress, not on
# the whole run: on a core shared with other jobs the reference sweep took 380 s of a former 600 s limit.
STALL_SECONDS = 600


def _files(folder: Path) -> set[tuple[str, int, int]]:
    """(path, size, modification time) of each file under `folder`: any change is progress."""
    found = set()
    for path in folder.rglob("*"):
        try:
            found.add((str(path), path.stat().st_size, path.stat().st_mtime_ns))
        except FileNotFoundError:  # renamed or removed meanwhile
            pass
    return found


def _wait(process: subprocess.Popen, folder: Path, log: Path) -> int:
    """The command's exit code; fails (killing it) if it writes nothing under `folder` for STALL_SECONDS."""
    last, since = _files(folder), time.monotonic()
    while process.poll() is None:
        time.sleep(0.5)
        now = _files(folder)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > STALL_SECONDS:
            _kill(process)
            pytest.fail(f"nothing written under {folder} for {STALL_SECONDS} s: {log.read_text()[-2000:]}")
    return process.returncode


def _without_timing(record_: dict) -> dict:
    return {key: value for key, value in record_.items() if key not in TIMING}


def _check_repeats(out: Path, seen: dict) -> None:
    """Every repeat file present is whole JSON (with its codes' picture when it succeeded), and a repeat
    once written is never written again: same bytes, same mtime."""
    for path in sorted(out.glob("runs/*/repeat-*.json")):
        content = path.read_bytes()
        found = json.loads(content)  # raises on a half-written file
        if found["status"] == "ok":
            with np.load(path.with_name(f"repeat-{found['repeat']}-pca.npz")) as pca:
                assert pca["pca"].shape == (found["n_test"], 2)
        now = (path.stat().st_mtime_ns, content)
        assert seen.setdefault(path, now) == now, f"{path} was written again"


@needs_mnist
def test_a_figure2_sweep_killed_at_random_moments_redoes_nothing_and_ends_as_an_uninterrupted_one(tmp_path):
    sweep = [*SWEEP, "--data-dir", str(REAL_MNIST)]
    reference = tmp_path / "reference"
    started = time.time()
    process = _start([*sweep, "--out", str(reference)], tmp_path / "reference.log")
    assert _wait(process, reference, tmp_path / "reference.log") == 0, (tmp_path / "reference.log").read_text()[-2000:]
    # The kills fall anywhere from the start-up to a few repeats in: measured on the uninterrupted run.
    written = sorted(path.stat().st_mtime for path in reference.glob("runs/*/repeat-*.json"))
    first_repeat = written[0] - started
    per_repeat = (written[-1] - written[0]) / (len(written) - 1)
    latest = first_repeat + 2.5 * per_repeat

    out, log, rng = tmp_path / "killed", tmp_path / "killed.log", random.Random(14)
    seen: dict = {}
    kills, runs, finished, advanced = 0, 0, False, 0
    while kills < KILLS or not finished:
        process = _start([*sweep, *(["--resume"] if runs else []), "--out", str(out)], log)
        runs += 1
        if kills < KILLS:
            try:
                finished = process.wait(timeout=rng.uniform(0.5, latest)) == 0
                assert finished, log.read_text()[-2000:]
            except subprocess.TimeoutExpired:
                _kill(process)
                kills += 1
        else:
            finished = _wait(process, out, log) == 0
            assert finished, log.read_text()[-2000:]
        before = len(seen)
        _check_repeats(out, seen)
        advanced += not finished and len(seen) > before

    assert len(seen) == len(list(reference.glob("runs/*/repeat-*.json"))) == 20
    for path in seen:  # each repeat as the uninterrupted sweep has it
        expected = json.loads((reference / path.relative_to(out)).read_text())
        assert _without_timing(json.loads(path.read_text())) == _without_timing(expected), path
    table = [_without_timing(row) for row in json.loads((out / "figure2.json").read_text())]
    assert table == [_without_timing(row) for row in json.loads((reference / "figure2.json").read_text())]
    assert not [path for path in out.rglob("*") if path.name.endswith(".tmp")]  # the killed runs' temporaries are gone
    assert sorted(path.name for path in tmp_path.iterdir()) == ["killed", "killed.log", "reference", "reference.log"]
    record(
        "kills",
        "ipae reproduce figure2 (--jobs 1, 20 repeats)",
        tried=kills,
        outcome="survived: nothing redone, nothing half-written, identical table",
        detail=f"{runs} runs, SIGKILL to the process group after uniform(0.5, {latest:.0f}) s; {advanced} kills came after their run "
        "had finished a repeat",
    )


def _checkpoint_step(checkpoint: Path) -> int:
    try:
        return json.loads((checkpoint / "training.json").read_text())["step"]
    except FileNotFoundError:
        return 0


def _wait_for(condition, *, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _log(directory: Path) -> list[dict]:
    """metrics.jsonl without "seconds", the wall time of whichever run wrote a line."""
    return [
        {key: value for key, value in json.loads(line).items() if key != "seconds"}
        for line in (directory / "metrics.jsonl").read_text().splitlines()
    ]


def test_a_fit_killed_after_its_resume_ends_as_an_uninterrupted_one(tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32))
    fit = ["fit", str(data), "--hidden", "128", "--n-components", "4", "--steps", "4000", "--batch-size", "128"]
    fit += ["--log-every", "20", "--checkpoint-every", "50", "--threads", "1", "--quiet"]
    runs = tmp_path / "runs"
    runs.mkdir()
    process = _start([*fit, "--out", str(runs / "whole")], tmp_path / "whole.log")
    assert _wait(process, runs, tmp_path / "whole.log") == 0, (tmp_path / "whole.log").read_text()

    out, checkpoint, log, rng = runs / "killed", runs / "killed.checkpoint", tmp_path / "killed.log", random.Random(6)
    resume = ["fit", "--resume", str(checkpoint), "--out", str(out)]
    process = _start([*fit, "--out", str(out)], log)
    _wait_for(lambda: _checkpoint_step(checkpoint) > 0)
    time.sleep(rng.uniform(0, 1.5))
    _kill(process)
    steps = [_checkpoint_step(checkpoint)]
    for _ in range(2):  # killed at a random moment after the resumed run has saved a checkpoint of its own
        process = _start(resume, log)
        _wait_for(lambda process=process: _checkpoint_step(checkpoint) > steps[-1] or process.poll() is not None)
        time.sleep(rng.uniform(0, 1.0))
        assert process.poll() is None, "finished before its kill: give it more steps"
        _kill(process)
        steps.append(_checkpoint_step(checkpoint))
        load_model(checkpoint), load_state(checkpoint)  # the checkpoint that a kill leaves is whole
    process = _start(resume, log)
    assert _wait(process, runs, log) == 0, log.read_text()[-2000:]

    assert steps[0] < steps[1] < steps[2] < 4000
    whole, killed = load_file(runs / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert whole.keys() == killed.keys() and all(torch.equal(whole[name], killed[name]) for name in whole)
    assert torch.equal(load_state(out).history, load_state(runs / "whole").history)
    assert _log(out) == _log(runs / "whole") and len(_log(out)) == 200  # every line, from step 20
    assert (out / "config.toml").read_text() == (runs / "whole" / "config.toml").read_text()
    assert sorted(path.name for path in runs.iterdir()) == ["killed", "whole"]  # no checkpoint, no staging folder
    record(
        "kills",
        "ipae fit --checkpoint-every",
        tried=3,
        outcome="survived: bit-identical weights, the whole log, no staging folder left",
        detail=f"killed at steps after checkpoints {steps}",
    )
