"""ipae.experiments.parallel: runs in order, and no worker outlives its parent.

The kill tests send SIGKILL to the main process only, as a user's `kill -9 PID` or the OOM killer does (a
kill of the whole process group would hide orphaned workers), while its workers train, and then look at
every process of the command's session: none may be alive 5 s later.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipae.experiments.parallel import map_runs

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"the real MNIST files are not at {SHARED_MNIST}")
GRACE = 5.0  # seconds a worker may outlive its parent (the bound)


def test_map_runs_returns_the_results_in_order_with_and_without_workers():
    items = [3.0, -1.5, 0.25, 16.0, 2.0]
    expected = [abs(item) for item in items]
    assert map_runs(abs, items, jobs=1, progress=False) == expected
    assert map_runs(abs, items, jobs=2, progress=False) == expected


def test_map_runs_refuses_no_jobs():
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        map_runs(abs, [1], jobs=0)


def _alive_in_session(session: int) -> dict[int, str]:
    """pid -> command line of the processes of `session` that are alive (zombies hold nothing and are left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # ended meanwhile
            continue
        state, _, _, sid = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(sid) == session and state != "Z":
            found[int(entry.name)] = command
    return found


def _wait_for(condition, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_the_main_process(command: list[str], tmp_path: Path, ready) -> None:
    """Start `command` in a session of its own, wait until `ready()`, SIGKILL its main process alone, and fail
    if any process of the session outlives it by GRACE."""
    log = tmp_path / "command.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True)
    try:
        assert _wait_for(lambda: ready(process.pid) or process.poll() is not None, timeout=600), "never ready"
        assert process.poll() is None, f"the command ended before its kill: {log.read_text()[-2000:]}"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        _wait_for(lambda: not _alive_in_session(process.pid), timeout=GRACE)
        left = _alive_in_session(process.pid)
        assert not left, f"alive {GRACE:.0f} s after their parent's SIGKILL: {left}"
    finally:  # whatever the outcome, nothing of ours stays behind
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


SLEEPER = """
import pathlib, time


def sleep(path):
    pathlib.Path(path).touch()  # past its start-up: the kill finds the worker in its task
    time.sleep(600)
"""


def test_the_workers_of_map_runs_end_with_their_parent(tmp_path):
    """map_runs itself, in a process that is not ipae's command: two workers asleep in their task, the parent killed."""
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    script = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
import sleeper
from ipae.experiments.parallel import map_runs
map_runs(sleeper.sleep, [{str(tmp_path / "a")!r}, {str(tmp_path / "b")!r}], jobs=2, progress=False)
"""
    ready = lambda session: (tmp_path / "a").exists() and (tmp_path / "b").exists()  # noqa: E731
    _kill_the_main_process([sys.executable, "-c", script], tmp_path, ready)


SWEEPS = {  # every command with --jobs, with enough steps that the kill finds its workers training
    "reproduce figure1": ["reproduce", "figure1"],
    "reproduce rate-distortion": ["reproduce", "rate-distortion"],
    "reproduce rate-matched": ["reproduce", "rate-matched", "--dataset", "toy", "--pilot"],
    "reproduce figure2": ["reproduce", "figure2", "--repeats", "1", "--data-dir", str(SHARED_MNIST)],
    "reproduce conv-mnist": ["reproduce", "conv-mnist", "--repeats", "2", "--data-dir", str(SHARED_MNIST)],
    "mnist": ["mnist", "--repeats", "2", "--data-dir", str(SHARED_MNIST)],
}


QUICK = ("reproduce figure1",)  # in the default run; each of the others takes 25 to 45 s on a busy core


def _marks(name: str) -> list:
    return ([] if name in QUICK else [pytest.mark.slow]) + ([needs_mnist] if "--data-dir" in SWEEPS[name] else [])


@pytest.mark.parametrize("name", [pytest.param(name, marks=_marks(name)) for name in SWEEPS])
def test_no_worker_outlives_a_sigkill_of_the_commands_main_process(name, tmp_path):
    """Killed while both workers train (their logs, *.jsonl, exist)."""
    options = ["--steps", "1000000", "--jobs", "2", "--threads", "1", "--quiet", "--out", str(tmp_path / "out")]
    command = [sys.executable, "-m", "ipae.cli", *SWEEPS[name], *options]
    _kill_the_main_process(command, tmp_path, lambda session: len(list(tmp_path.rglob("*.jsonl"))) >= 2)
