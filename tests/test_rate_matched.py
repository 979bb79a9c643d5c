"""The rate-matched comparison: interpolation along each model's curve, the shared range, pairing,
and a tiny sweep end to end (resumed)."""

import json

import pytest

from ipae.data.toy import gaussian_grid
from ipae.experiments import toy
from ipae.experiments.rate_matched import matched_rates, reproduce_rate_matched, shared_range
from ipae.train import TrainConfig

OFFSETS = {"vae": 0.0, "ip1": -1.0, "ip8": 0.5, "pairwise-kl": 0.0}


def _records(rates_by_model, *, repeats=3, saturated=()):
    """Synthetic runs: E = offset(model) + 2 I + repeat, exactly linear in I, the same I in every repeat."""
    records = []
    for model, rates in rates_by_model.items():
        for beta, rate in enumerate(rates):
            for repeat in range(repeats):
                records.append(
                    {
                        "model": model,
                        "beta": float(beta),
                        "repeat": repeat,
                        "status": "ok",
                        "I_mc": rate,
                        "I_lower": rate - 0.1,
                        "I_upper": rate + 0.1,
                        "I_saturated": (model, beta) in saturated,
                        "I_points": 100,
                        "E": OFFSETS[model] + 2.0 * rate + repeat,
                    }
                )
    return records


RATES = {"vae": (1.0, 2.0, 4.0), "ip1": (0.5, 3.0, 5.0), "ip8": (1.5, 2.5, 3.5), "pairwise-kl": (1.2, 6.0)}


def test_the_shared_range_is_where_every_models_unsaturated_cells_overlap():
    assert shared_range(_records(RATES)) == (1.5, 3.5)
    # a saturated cell does not count: pairwise-kl's 6 nats and ip8's 3.5 are left out
    assert shared_range(_records(RATES, saturated={("ip8", 2.0)})) == (1.5, 2.5)
    assert shared_range(_records({"vae": (1.0, 2.0), "ip1": (3.0, 4.0)})) is None


def test_matched_rates_interpolate_each_repeat_and_pair_them():
    rows, shared = matched_rates(_records(RATES), {"E": True}, targets=3)
    assert shared == (1.5, 3.5)
    assert [row["I_target"] for row in rows if row["model"] == "ip1"] == [1.5, 2.5, 3.5]
    for row in rows:  # linear curves: the difference is the offset, the same in every repeat
        assert row["n"] == 3 and row["difference"] == pytest.approx(OFFSETS[row["model"]])
        assert row["vae_mean"] == pytest.approx(2.0 * row["I_target"] + 1.0)  # mean over repeats 0, 1, 2
        better, worse = (3, 0) if OFFSETS[row["model"]] < 0 else (0, 3) if OFFSETS[row["model"]] > 0 else (0, 0)
        assert (row["better"], row["worse"], row["tied"]) == (better, worse, 3 - better - worse)
        assert row["p_t"] is None  # identical differences: no t statistic


def test_a_repeat_whose_curve_misses_the_target_is_left_out():
    records = _records(RATES)
    records = [r for r in records if not (r["model"] == "ip1" and r["repeat"] == 2 and r["beta"] == 0.0)]  # repeat 2 starts at 3 nats
    rows, _ = matched_rates(records, {"E": True}, targets=3)
    n = {row["I_target"]: row["n"] for row in rows if row["model"] == "ip1"}
    assert n == {1.5: 2, 2.5: 2, 3.5: 3}


@pytest.fixture
def small_toy_data(monkeypatch):
    monkeypatch.setattr(toy, "gaussian_grid", lambda seed: gaussian_grid(n_per_component=4, seed=seed))


def test_a_tiny_toy_sweep_writes_its_tables_pairs_its_repeats_and_resumes(tmp_path, small_toy_data):
    grids = {"vae": (0.1, 10.0), "ip1": (0.01, 1.0), "ip8": (0.01, 1.0), "pairwise-kl": (0.1, 10.0)}
    training = TrainConfig(steps=3, batch_size=32, progress=False)
    result = reproduce_rate_matched(tmp_path / "sweep", training, dataset="toy", grids=grids, repeats=2, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "sweep" / "runs.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and {line["model"] for line in lines} == set(grids)
    assert all(
        {"I_mc", "I_lower", "I_upper", "I_saturated", "E", "E_sampled", "nmi", "distortion", "beta", "repeat"} <= set(line)
        for line in lines
    )
    # paired: repeat r trains every model on the same data (E_identity depends only on the data)
    for repeat in (0, 1):
        assert len({line["E_identity"] for line in lines if line["repeat"] == repeat}) == 1
    assert lines[0]["E_identity"] != next(line["E_identity"] for line in lines if line["repeat"] == 1)
    for name in ("cells.md", "cells.json", "matched.md", "matched.json", "rate_matched.png", "sweep.json"):
        assert (tmp_path / "sweep" / name).exists(), name
    assert len(result["cells"]) == 8
    record = next((tmp_path / "sweep" / "runs").glob("vae-beta0.1/repeat-0/metrics.json"))
    before = record.stat().st_mtime_ns
    again = reproduce_rate_matched(tmp_path / "sweep", training, dataset="toy", grids=grids, repeats=2, progress=False)
    assert record.stat().st_mtime_ns == before and again["cells"] == result["cells"]
    with pytest.raises(ValueError, match="other settings"):
        reproduce_rate_matched(tmp_path / "sweep", TrainConfig(steps=4, progress=False), dataset="toy", grids=grids, repeats=1)
