"""The long fuzzing campaign of the file loaders (issue #14, item 3): 147 000 inputs across eight targets, with the
generators and the check of tests/test_fuzz.py (read its docstring for what each input must do). About 6 minutes
on 2 cores; excluded by default:

    pytest -m slow tests/test_fuzz_campaign.py -p no:cacheprovider

Input i of a target comes from random.Random(f"{SEED}:{target name}:{i}"), so a failure names the one input to
replay: `test_fuzz.TARGETS[k].make(random.Random(that string), folder, test_fuzz.make_seeds(folder))`.

Each target runs in a process of its own (`python tests/test_fuzz_campaign.py TARGET FOLDER COUNT`), which writes
the input it is on to FOLDER/hang.txt. A process that crashes (SIGSEGV, SIGBUS, ...) fails its test with that
input and the stack that faulthandler wrote to FOLDER/crash.txt; one that makes no progress for a minute (a hang
in C code) is sent SIGABRT, which writes its stack there too, and fails the same way. The watch is this process's,
not a watchdog thread in the fuzzed one: CPython 3.11 swaps the raw allocator in tracemalloc.start() and stop()
while another thread may be in PyMem_RawFree without the GIL, and faulthandler's watchdog thread does exactly
that as it starts (python/cpython#128679, fixed in 3.12.9 and 3.13.2 only); one watchdog per input gave a
campaign 45 000 chances to crash.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from reliability import record
from test_fuzz import HANG_SECONDS, TARGETS, Tally, attempt, fuzzing, make_seeds

SEED = 14  # the number; any fixed value keeps CI's inputs the same from run to run
COUNTS = {  # inputs per target, about a minute each on a 2-core Xeon with another job running
    "IDX loader (read_idx)": 25_000,
    "array loader, .npy": 20_000,
    "array loader, .npz": 16_000,
    "array loader, .csv": 20_000,
    "TOML config (read_options, merged_options)": 16_000,
    "model.json (ipae.load, fit --resume options)": 18_000,
    "model.safetensors (ipae.load)": 16_000,
    "training state (load_state)": 16_000,
}
STALL_SECONDS = 6 * HANG_SECONDS  # no new input for this long: a hang
CRASH_AT = "IPAE_FUZZ_CRASH_AT"  # the index of an input at which the fuzzed process dereferences NULL (the test of the watch)


def test_the_campaign_covers_every_target_of_test_fuzz():
    assert sorted(COUNTS) == sorted(target.name for target in TARGETS)


def fuzz(name: str, folder: Path, count: int) -> Tally:
    """Inputs 0 .. count - 1 of the target `name`, in this process, each named in folder/hang.txt while it runs."""
    target = next(target for target in TARGETS if target.name == name)
    seeds = make_seeds(folder / "seeds")
    crash_at = int(os.environ.get(CRASH_AT, -1))
    tally = Tally()
    (work := folder / "work").mkdir()
    with fuzzing(target.traced, tally), open(folder / "hang.txt", "w") as hang:
        for index in range(count):
            where = f"{SEED}:{target.name}:{index}"
            hang.seek(0)
            hang.write(f"input {where}\n")
            hang.truncate()
            hang.flush()
            if index == crash_at:
                ctypes.string_at(0)
            attempt(target, target.make(random.Random(where), work, seeds), tally, f"campaign input {where}")
    return tally


def run_in_a_process(name: str, folder: Path, count: int, *, env: dict | None = None) -> Tally:
    """`fuzz` in a process of its own, watched from here; fails naming the input on a crash, a hang or a failed check."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, __file__, name, str(folder), str(count)], stdout=subprocess.DEVNULL, stderr=stderr, env=env
        )
    current, since, stalled = None, time.monotonic(), False
    try:
        while process.poll() is None:
            time.sleep(1.0)
            try:
                found = (folder / "hang.txt").read_text()
            except FileNotFoundError:  # not started yet: the seeds are trained first
                found = None
            if found != current:
                current, since = found, time.monotonic()
            elif found is not None and time.monotonic() - since > STALL_SECONDS:
                stalled = True
                process.send_signal(signal.SIGABRT)  # faulthandler writes the stack to crash.txt
                process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    on = (folder / "hang.txt").read_text().strip() if (folder / "hang.txt").exists() else "the set-up"
    stack = (folder / "crash.txt").read_text() if (folder / "crash.txt").exists() else ""
    if stalled:
        pytest.fail(f"{name}: {on}: no answer in {STALL_SECONDS:.0f} s; its stack:\n{stack}")
    if process.returncode < 0:
        pytest.fail(f"{name}: {on}: the process died of {signal.Signals(-process.returncode).name}; its stack:\n{stack}")
    if process.returncode != 0:
        pytest.fail(f"{name}: {on}: failed:\n{(folder / 'stderr.txt').read_text()[-4000:]}")
    return Tally(**json.loads((folder / "tally.json").read_text()))


def test_a_crash_fails_with_the_input_it_crashed_on_and_its_stack(tmp_path):
    tally = run_in_a_process(TARGETS[0].name, tmp_path / "whole", 20)
    assert tally.tried == 20
    with pytest.raises(pytest.fail.Exception) as failure:
        run_in_a_process(TARGETS[0].name, tmp_path / "crashed", 20, env={**os.environ, CRASH_AT: "13"})
    message = str(failure.value)
    assert f"input {SEED}:{TARGETS[0].name}:13" in message and "SIGSEGV" in message
    assert "Fatal Python error: Segmentation fault" in message and "in fuzz" in message


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return make_seeds(tmp_path_factory.mktemp("seeds"))


def _made_files(target, index: int, folder, seeds) -> dict[str, bytes]:
    """The files that campaign input `index` of `target` writes into the new folder `folder`."""
    folder.mkdir()
    target.make(random.Random(f"{SEED}:{target.name}:{index}"), folder, seeds)
    paths = [path for path in sorted(folder.rglob("*")) if path.is_file() and not path.is_symlink()]
    return {str(path.relative_to(folder)): path.read_bytes() for path in paths}


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.name.split(" (")[0])
def test_a_campaign_input_is_made_again_from_the_string_a_failure_names(target, seeds, tmp_path):
    """What the docstring promises a failure's replay: input i made again from its string writes the same
    files; and the inputs differ from one index to the next (the campaign does not try one input many times)."""
    first = [_made_files(target, index, tmp_path / f"first-{index}", seeds) for index in range(4)]
    again = [_made_files(target, index, tmp_path / f"again-{index}", seeds) for index in range(4)]
    assert first == again
    assert len({tuple(files.items()) for files in first}) > 1


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.name.split(" (")[0])
def test_campaign(target, tmp_path, capsys):
    tally = run_in_a_process(target.name, tmp_path, COUNTS[target.name])
    assert tally.tried == COUNTS[target.name] and tally.loaded and tally.refused, tally
    with capsys.disabled():
        print(f"\n{target.name}: {tally.tried} inputs, {tally.detail()}")
    record(
        "fuzz",
        f"{target.name}, campaign",
        tried=tally.tried,
        outcome="loaded, or refused with ipae's one-line error naming the file",
        detail=f"seed {SEED}; {tally.detail()}",
    )


if __name__ == "__main__":  # one target's inputs: see run_in_a_process
    name, folder, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    with open(folder / "crash.txt", "w") as crash:
        faulthandler.enable(file=crash, all_threads=True)
        tally = fuzz(name, folder, count)
    (folder / "tally.json.tmp").write_text(json.dumps(asdict(tally)))
    os.replace(folder / "tally.json.tmp", folder / "tally.json")
