"""Training on a .npy file larger than memory should allow: peak resident memory of `ipae fit`.

    python benchmarks/streaming.py --dir /tmp/stream          # writes a 2.2 GB array there once

It writes an (N, 784) float32 array of uniform pixels (N = 700 000 by default, 2.2 GB) unless the file
is already there, drops the page cache when it may (root), runs `ipae fit` on it for 200 steps in a
child process and prints the file's size, the child's peak resident memory (getrusage's ru_maxrss),
the wall time and the machine.
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def write_array(path: Path, rows: int, features: int = 784) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features))
    generator = np.random.default_rng(0)
    for start in range(0, rows, 50_000):
        array[start : start + 50_000] = generator.random((min(50_000, rows - start), features), dtype=np.float32)
    array.flush()
    del array


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where the array and the fitted model go")
    parser.add_argument("--rows", type=int, default=700_000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    data = args.dir / f"stream-{args.rows}.npy"
    if not data.exists():
        write_array(data, args.rows)
    try:  # a cold cache, as for a file larger than memory
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        cache = "dropped"
    except OSError:
        cache = "not dropped (not root)"
    command = ["ipae", "fit", str(data), "--steps", str(args.steps), "--hidden", "256", "--n-components", "8"]
    command += ["--distortion", "bernoulli", "--quiet", "--overwrite", "--out", str(args.dir / "model")]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(f"command: {' '.join(command)}")
    print(f"machine: {cpu_name()}, torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, page cache {cache}")
    print(f"file: {data.stat().st_size / 1e9:.2f} GB ({args.rows} x 784 float32)")
    print(f"peak resident memory of `ipae fit`: {peak:.0f} MiB; wall time {seconds:.1f} s for {args.steps} steps")


if __name__ == "__main__":
    sys.exit(main())
