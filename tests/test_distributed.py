"""Two processes under torchrun train as one process with their two batches together."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ipae.cli import main
from ipae.distributed import average_over_processes, gather_batch, is_main_process, world_size


def test_without_torch_distributed_there_is_one_process():
    local = torch.arange(6.0).view(3, 2)
    assert world_size() == 1 and is_main_process()
    assert gather_batch(local) is local and average_over_processes(local) is local


@pytest.mark.parametrize("n_pairs", ["all", "3"])
def test_two_processes_match_one_with_twice_the_batch(tmp_path, n_pairs):
    x = np.random.default_rng(0).normal(size=(120, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    common = ["fit", str(tmp_path / "x.npy"), "--hidden", "16", "--n-components", "2", "--steps", "12", "--log-every", "3"]
    common += ["--n-pairs", n_pairs, "--beta", "0.1", "--quiet"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m", "ipae.cli"]
    two = subprocess.run([*launcher, *common, "--batch-size", "20", "--out", str(tmp_path / "two")], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("12 steps") == 1  # only the main process reports
    assert main([*common, "--batch-size", "40", "--out", str(tmp_path / "one")]) == 0

    def curve(run):
        return [json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    np.testing.assert_allclose(curve("two"), curve("one"), rtol=1e-5)
    one, two_weights = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name in one:
        torch.testing.assert_close(two_weights[name], one[name], rtol=1e-4, atol=1e-5)
    assert "batch_size = 20" in (tmp_path / "two" / "config.toml").read_text()
