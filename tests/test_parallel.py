"""ipae.experiments.parallel: runs in order, no worker outlives its parent, and a Dask cluster gives the records of local workers.

The kill tests send SIGKILL to the main process only, as a user's `kill -9 PID` or the OOM killer does (a
kill of the whole process group would hide orphaned workers), while its workers train, and then look at
every process of the command's session: none may be alive 5 s later.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from ipae.cli import main
from ipae.experiments.parallel import map_runs, on_cluster
from ipae.experiments.rate_matched import reproduce_rate_matched
from ipae.training import TrainConfig
from mnist_files import REAL_MNIST, needs_mnist
from reliability import record

GRACE = 5.0  # seconds a worker may outlive its parent (the bound)
KILLED = f"no process of its session alive {GRACE:.0f} s later"


def test_map_runs_returns_the_results_in_order_with_and_without_workers():
    items = [3.0, -1.5, 0.25, 16.0, 2.0]
    expected = [abs(item) for item in items]
    assert map_runs(abs, items, jobs=1, progress=False) == expected
    assert map_runs(abs, items, jobs=2, progress=False) == expected


def test_map_runs_refuses_no_jobs():
    with pytest.raises(ValueError, match="jobs must be an integer >= 1, got 0"):
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


def _kill_the_main_process(command: list[str], tmp_path: Path, ready) -> str:
    """Start `command` in a session of its own, wait until `ready()`, SIGKILL its main process alone, and fail
    if any process of the session outlives it by GRACE. Returns what was measured, for docs/reliability.md."""
    log = tmp_path / "command.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True)
    try:
        assert _wait_for(lambda: ready(process.pid) or process.poll() is not None, timeout=600), "never ready"
        assert process.poll() is None, f"the command ended before its kill: {log.read_text()[-2000:]}"
        others = len(_alive_in_session(process.pid)) - 1  # the workers (and any helper process), not the main one
        os.kill(process.pid, signal.SIGKILL)
        killed = time.monotonic()
        process.wait()
        _wait_for(lambda: not _alive_in_session(process.pid), timeout=GRACE)
        gone = time.monotonic() - killed
        left = _alive_in_session(process.pid)
        assert not left, f"alive {GRACE:.0f} s after their parent's SIGKILL: {left}"
        return f"{others} other processes alive at the kill, the last gone {gone:.2f} s after it"
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
    detail = _kill_the_main_process([sys.executable, "-c", script], tmp_path, ready)
    record("kills", "map_runs(jobs=2) in a plain script: SIGKILL of its main process alone", tried=1, outcome=KILLED, detail=detail)


SWEEPS = {  # every command with --jobs, with enough steps that the kill finds its workers training
    "reproduce figure1": ["reproduce", "figure1"],
    "reproduce rate-distortion": ["reproduce", "rate-distortion"],
    "reproduce rate-matched": ["reproduce", "rate-matched", "--dataset", "toy", "--pilot"],
    "reproduce figure2": ["reproduce", "figure2", "--repeats", "1", "--data-dir", str(REAL_MNIST)],
    "reproduce conv-mnist": ["reproduce", "conv-mnist", "--repeats", "2", "--data-dir", str(REAL_MNIST)],
    "mnist": ["mnist", "--repeats", "2", "--data-dir", str(REAL_MNIST)],
}


QUICK = ("reproduce figure1",)  # in the default run; each of the others takes 25 to 45 s on a busy core


def _marks(name: str) -> list:
    return ([] if name in QUICK else [pytest.mark.slow]) + ([needs_mnist] if "--data-dir" in SWEEPS[name] else [])


@pytest.mark.parametrize("name", [pytest.param(name, marks=_marks(name)) for name in SWEEPS])
def test_no_worker_outlives_a_sigkill_of_the_commands_main_process(name, tmp_path):
    """Killed while both workers train (their logs, *.jsonl, exist)."""
    options = ["--steps", "1000000", "--jobs", "2", "--threads", "1", "--quiet", "--out", str(tmp_path / "out")]
    command = [sys.executable, "-m", "ipae.cli", *SWEEPS[name], *options]
    detail = _kill_the_main_process(command, tmp_path, lambda session: len(list(tmp_path.rglob("*.jsonl"))) >= 2)
    record("kills", f"ipae {name} --jobs 2: SIGKILL of its main process alone, workers training", tried=1, outcome=KILLED, detail=detail)


# ---------------------------------------------------------------------------------------------------------
# On a Dask cluster (`ipae[cluster]`): a LocalCluster of 2 single-thread worker processes on this machine

TIMING = {"train_seconds", "seconds", "monitor_seconds"}  # wall times differ between any two runs


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed", reason="the Dask cluster tests need ipae[cluster]")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local.scheduler_address


def _without_timing(fields: dict) -> dict:
    return {key: value for key, value in fields.items() if key not in TIMING}


def _contents(out: Path) -> dict[str, object]:
    """Every file under `out` but the lock: JSON and JSON lines without wall times, other files as bytes."""
    found = {}
    for path in sorted(out.rglob("*")):
        name = path.relative_to(out).as_posix()
        if not path.is_file() or path.name == "sweep.lock":
            continue
        if path.suffix == ".json":
            value = json.loads(path.read_text())
            found[name] = _without_timing(value) if isinstance(value, dict) else value
        elif path.suffix == ".jsonl":
            found[name] = [_without_timing(json.loads(line)) for line in path.read_text().splitlines()]
        else:
            found[name] = path.read_bytes()
    return found


def test_a_sweep_on_a_local_cluster_writes_the_records_of_jobs_2(cluster, tmp_path):
    """The same records, bit for bit but the wall times, and every other file the same, written by this process."""
    grids = {"vae": (0.1,), "ip1": (0.01,)}
    sweep = partial(reproduce_rate_matched, training=TrainConfig(steps=3), dataset="toy", pilot=True, grids=grids, repeats=1)
    sweep(tmp_path / "jobs", jobs=2, progress=False)
    with on_cluster(cluster, tmp_path / "cluster"):
        sweep(tmp_path / "cluster", progress=False)
    local, remote = _contents(tmp_path / "jobs"), _contents(tmp_path / "cluster")
    assert len([name for name in local if name.endswith("metrics.json")]) == 2  # 2 cells, one repeat each: one per worker
    assert remote.keys() == local.keys()
    for name in local:
        assert remote[name] == local[name], name
    runs = [json.loads(line) for line in (tmp_path / "cluster" / "runs.jsonl").read_text().splitlines()]
    assert all(run["status"] == "ok" and math.isfinite(run["E_sampled"]) for run in runs)
    record(
        "cluster",
        "ipae reproduce rate-matched (toy) on a LocalCluster of 2 single-thread workers against --jobs 2",
        tried=len(runs),
        outcome="every file the same, the JSON records bit for bit but their wall times",
        detail=f"{len(local)} files compared",
    )


def test_a_resumed_sweep_on_the_cluster_keeps_its_finished_runs(cluster, tmp_path):
    sweep = partial(reproduce_rate_matched, training=TrainConfig(steps=3), dataset="toy", pilot=True, grids={"vae": (0.1,)}, progress=False)
    out = tmp_path / "sweep"
    sweep(out, repeats=1)
    first = out / "runs" / "vae-beta0.1" / "repeat-0" / "metrics.json"
    before = (first.stat().st_mtime_ns, first.read_bytes())
    with on_cluster(cluster, out):
        sweep(out, repeats=2)
    assert (first.stat().st_mtime_ns, first.read_bytes()) == before  # not run again, not written again
    assert (out / "runs" / "vae-beta0.1" / "repeat-1" / "metrics.json").is_file()
    record("cluster", "a sweep resumed on the cluster", tried=1, outcome="its finished run neither run nor written again; the new one run")


def _lose_the_worker_once(folder: str) -> int:
    """Kills its own worker process on its first call; on the second, returns the number of calls."""
    attempts = len(list(Path(folder).iterdir()))
    (Path(folder) / str(attempts)).touch()
    if attempts == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return attempts + 1


def test_a_run_whose_worker_is_lost_is_run_again(cluster, tmp_path):
    (calls := tmp_path / "calls").mkdir()
    with on_cluster(cluster, tmp_path / "out"):
        assert map_runs(_lose_the_worker_once, [str(calls)], progress=False) == [2]
    attempts = len(list(calls.iterdir()))
    record(
        "cluster", "a run whose worker is SIGKILLed in it", tried=1, outcome="run again; its result returned", detail=f"{attempts} tries"
    )


def test_the_cli_refuses_a_cluster_it_cannot_use_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    try:
        import distributed  # noqa: F401

        missing = "invalid address"
    except ImportError:  # the default install: the refusal names the extra to install
        missing = "pip install 'ipae[cluster]'"
    for args, message in (
        (["--cluster", "nonsense::"], missing),
        (["--cluster", "tcp://127.0.0.1:8786", "--jobs", "2"], "choose one"),
    ):
        assert main(["reproduce", "rate-matched", "--dataset", "toy", "--steps", "2", *args, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("ipae: error: ") and message in error and error.count("\n") == 1, error
        assert not out.exists()
    record("bad input", "ipae reproduce --cluster that cannot be used", tried=2, outcome="one line, exit 2, nothing written")


def _lose_the_worker(_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_run_that_loses_every_worker_ends_in_one_error_naming_resume(tmp_path):
    distributed = pytest.importorskip("distributed", reason="the Dask cluster tests need ipae[cluster]")
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as local:
            with on_cluster(local.scheduler_address, tmp_path / "out"), pytest.raises(ConnectionError, match="rerun with --resume"):
                map_runs(_lose_the_worker, [0], progress=False)
    record("cluster", "a run that loses every worker (allowed-failures 0)", tried=1, outcome="one ConnectionError naming --resume")
