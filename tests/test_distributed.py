"""Two processes under torchrun train as one process with their two batches together."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ipae.cli import main
from ipae.distributed import average_over_processes, gather_batch, is_main_process, rank, world_size

PARTNERS = ("all", "3")  # every pair, and 3 partners drawn per sample from the global batch


def test_without_torch_distributed_there_is_one_process():
    local = torch.arange(6.0).view(3, 2)
    assert world_size() == 1 and rank() == 0 and is_main_process()
    assert gather_batch(local) is local and average_over_processes(local) is local


def _fit_options(data, n_partners: str) -> list[str]:
    common = ["fit", str(data), "--hidden", "16", "--n-components", "2", "--steps", "12", "--log-every", "3"]
    return common + ["--rate", "ip", "--n-partners", n_partners, "--beta", "0.1", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`ipae fit` of each of PARTNERS: by two processes under torchrun with batches of 20 (one launch
    for all: starting the processes is most of the time), and by this process with a batch of 40."""
    directory = tmp_path_factory.mktemp("distributed")
    x = np.random.default_rng(0).normal(size=(120, 3)).astype(np.float32)
    np.save(directory / "x.npy", x)
    script = directory / "two.py"
    lines = ["import sys", "from ipae.cli import main"]
    for n_partners in PARTNERS:
        argv = [*_fit_options(directory / "x.npy", n_partners), "--batch-size", "20", "--out", str(directory / f"two-{n_partners}")]
        lines.append(f"code = main({argv!r})")
        lines.append("if code:\n    sys.exit(code)")
    script.write_text("\n".join(lines) + "\n")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", str(script)]
    two = subprocess.run(launcher, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun sets its workers; a tiny model gains nothing from threads
    try:
        for n_partners in PARTNERS:
            assert (
                main([*_fit_options(directory / "x.npy", n_partners), "--batch-size", "40", "--out", str(directory / f"one-{n_partners}")])
                == 0
            )
    finally:
        torch.set_num_threads(threads)
    return directory, two.stdout


def test_only_the_main_process_reports(runs):
    _, stdout = runs
    assert stdout.count("12 steps") == len(PARTNERS)  # one line per run, not one per process


@pytest.mark.parametrize("n_partners", PARTNERS)
def test_two_processes_match_one_with_twice_the_batch(runs, n_partners):
    directory, _ = runs
    one, two = directory / f"one-{n_partners}", directory / f"two-{n_partners}"

    def curve(run):
        return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert len(curve(two)) == 4  # logs at steps 3, 6, 9, 12
    np.testing.assert_allclose(curve(two), curve(one), rtol=1e-5)
    one_weights, two_weights = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert one_weights.keys() == two_weights.keys()
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=1e-4, atol=1e-5)
    assert "batch_size = 20" in (two / "config.toml").read_text()
    assert json.loads((two / "training.json").read_text())["settings"]["batch_size"] == 40  # the global batch
