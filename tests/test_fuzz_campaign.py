"""The long fuzzing campaign of the file loaders (issue #14, item 3): 147 000 inputs across eight targets, with the
generators and the check of tests/test_fuzz.py (read its docstring for what each input must do). About 6 minutes
on 2 cores; excluded by default:

    pytest -m slow tests/test_fuzz_campaign.py -p no:cacheprovider

Input i of a target comes from random.Random(f"{SEED}:{target name}:{i}"), so a failure names the one input to
replay: `test_fuzz.TARGETS[k].make(random.Random(that string), folder, test_fuzz.make_seeds(folder))`. An input
that hangs inside C code ends the run after a minute; the test's temporary hang.txt then holds it and its stack.
"""

from __future__ import annotations

import faulthandler
import random

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


def test_the_campaign_covers_every_target_of_test_fuzz():
    assert sorted(COUNTS) == sorted(target.name for target in TARGETS)


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
def test_campaign(target, seeds, tmp_path, capsys):
    tally = Tally()
    (work := tmp_path / "work").mkdir()
    with fuzzing(target.traced, tally), open(tmp_path / "hang.txt", "w") as hang:
        for index in range(COUNTS[target.name]):
            rnd = random.Random(where := f"{SEED}:{target.name}:{index}")
            hang.seek(0)
            hang.write(f"input {where}: no answer in {6 * HANG_SECONDS:.0f} s\n")
            hang.flush()
            faulthandler.dump_traceback_later(6 * HANG_SECONDS, exit=True, file=hang)  # a hang in C code: its stack, and the run ends
            try:
                attempt(target, target.make(rnd, work, seeds), tally, f"campaign input {where}")
            finally:
                faulthandler.cancel_dump_traceback_later()
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
