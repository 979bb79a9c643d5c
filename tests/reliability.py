"""Evidence for docs/reliability.md: reliability tests record what they tried and what happened.

    from reliability import record
    record("fuzz", "IDX loader", tried=5000, outcome="refused or loaded", detail="no other exception")

appends one JSON line to the file named by the environment variable IPAE_RELIABILITY_LOG, and does
nothing when it is unset (a plain pytest run). `benchmarks/reliability.py` sets it, runs the tests and
turns the lines into the page, so every number on the page was counted by a test that passed.
Sections: "kills", "cluster", "fuzz", "bad input", "numerical edges", "determinism", "memory".
"""

from __future__ import annotations

import json
import os

__all__ = ["record"]


def record(section: str, target: str, *, tried: int, outcome: str, detail: str = "") -> None:
    """Record that `tried` cases of `target` were run and ended as `outcome` (what the test asserted)."""
    path = os.environ.get("IPAE_RELIABILITY_LOG")
    if not path:
        return
    line = {"section": section, "target": target, "tried": int(tried), "outcome": outcome, "detail": detail}
    with open(path, "a") as file:  # one write of one line: concurrent tests append whole lines
        file.write(json.dumps(line) + "\n")
