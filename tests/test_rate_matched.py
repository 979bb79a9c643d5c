"""The rate-matched comparison: each run paired with its repeat's VAE at its own measured rate, never
extrapolated; Holm; saturated runs left out; provenance; held-out points; a tiny sweep end to end (resumed)."""

import hashlib
import json
import math

import numpy as np
import pytest

from ipae.data.mnist import PAPER_DIGITS, PAPER_N_TRAIN, load_mnist
from ipae.data.toy import gaussian_grid
from ipae.evaluation import holm
from ipae.experiments import toy
from ipae.experiments.mnist import held_out, information_points
from ipae.experiments.rate_matched import (
    Matching,
    check_provenance,
    interpolation_check,
    matched_comparison,
    matched_runs,
    reference_cells,
    reproduce_rate_matched,
)
from ipae.training import TrainConfig
from mnist_files import REAL_MNIST, needs_mnist

OFFSETS = {"vae": 0.0, "ip1": -1.0, "ip8": 0.5, "pairwise-kl": 0.0}


def _records(rates_by_model, *, repeats=3, saturated=()):
    """Synthetic runs: I_mc and I_loo 0.1 below and above `rate` (so it is the matched rate), and
    E = offset(model) + 2 I + repeat, exactly linear in I."""
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
                        "I_mc": rate - 0.1,
                        "I_loo": rate + 0.1,
                        "I_lower": rate - 0.2,
                        "I_upper": rate + 0.2,
                        "I_saturated": (model, beta) in saturated,
                        "I_points": 100,
                        "E": OFFSETS[model] + 2.0 * rate + repeat,
                        "code": "same",
                        "commit": "commit abc",
                    }
                )
    return records


RATES = {"vae": (1.0, 2.0, 4.0), "ip1": (0.5, 3.0, 5.0), "ip8": (1.5, 2.5, 3.5), "pairwise-kl": (1.2, 6.0)}


def test_each_run_is_paired_with_its_repeats_vae_at_its_own_rate_and_never_extrapolated():
    rows = matched_runs(_records(RATES), "E")
    # ip1's 0.5 and 5.0 nats and pairwise-kl's 6.0 lie outside the VAE's 1 to 4 nats: left out
    assert sorted({(row["model"], row["I"]) for row in rows}) == sorted(
        [("ip1", 3.0), ("ip8", 1.5), ("ip8", 2.5), ("ip8", 3.5), ("pairwise-kl", 1.2)]
    )
    for row in rows:  # the VAE's line at the run's rate, in the run's own repeat
        assert row["vae"] == pytest.approx(2.0 * row["I"] + row["repeat"])
        assert row["value"] - row["vae"] == pytest.approx(OFFSETS[row["model"]])


def test_the_comparison_reports_n_the_pairs_range_and_its_cells_and_holm_for_the_primary_metric():
    records = _records(RATES)
    for record in records:  # noise in the differences, so that the t-test has a statistic
        record["E"] += 0.01 * ((record["repeat"] * 7 + int(record["beta"]) * 3) % 5)
    rows = {(row["metric"], row["model"]): row for row in matched_comparison(records, {"E": True}, "E")}
    ip1, ip8 = rows[("E", "ip1")], rows[("E", "ip8")]
    assert ip1["n"] == 3 and ip1["runs"] == 3 and ip8["runs"] == 9
    assert (ip1["I_low"], ip1["I_high"]) == pytest.approx((1.0, 4.0))  # the overlap of 0.5-5 and 1-4
    assert (ip1["model_cells"], ip1["vae_cells"], ip1["max_gap"]) == (1, 3, pytest.approx(2.0))
    assert ip1["difference"] == pytest.approx(-1.0, abs=0.05) and ip1["better"] == 3 and ip1["role"] == "primary"
    expected = holm([rows[("E", m)]["p_t"] for m in ("ip1", "ip8", "pairwise-kl")])
    assert [rows[("E", m)]["p_holm"] for m in ("ip1", "ip8", "pairwise-kl")] == expected
    secondary = matched_comparison(records, {"E": True, "nmi": False}, "nmi")
    assert all("p_holm" not in row for row in secondary if row["metric"] == "E")


def test_holm_adjusts_step_down_and_keeps_missing_tests():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, None, 0.01]) == [pytest.approx(0.4), None, pytest.approx(0.03)]
    assert holm([0.9, 0.8]) == [1.0, 1.0] and holm([0.04, 0.3]) == pytest.approx([0.08, 0.3])


def test_saturated_runs_do_not_enter_the_matching():
    rows = matched_runs(_records(RATES, saturated={("ip8", 1.0), ("vae", 2.0)}), "E")
    assert ("ip8", 2.5) not in {(row["model"], row["I"]) for row in rows}
    assert ("ip8", 3.5) not in {(row["model"], row["I"]) for row in rows}  # the VAE's curve now ends at 2 nats


def test_records_of_different_code_are_not_mixed():
    records = _records(RATES)
    assert check_provenance(records) == {"commits": ["commit abc"], "code": "same"}
    records[0] |= {"code": "other", "commit": "commit def"}
    with pytest.raises(ValueError, match="different training or diagnostics code"):
        check_provenance(records)


@needs_mnist
def test_no_evaluation_point_of_a_run_is_in_its_training_subset():
    data, unused = held_out("mnist134", REAL_MNIST, seed=123)
    assert np.array_equal(data.x_train, load_mnist(REAL_MNIST, digits=PAPER_DIGITS, n_train=PAPER_N_TRAIN, seed=123).x_train)
    points = information_points(data.x_test, unused, np.random.default_rng(4))
    assert len(points) == len(data.x_test) + len(unused) == 3127 + 715
    digest = {hashlib.sha256(row.tobytes()).digest() for row in data.x_train}
    assert not any(hashlib.sha256(row.tobytes()).digest() in digest for row in points)


@pytest.fixture
def small_toy_data(monkeypatch):
    monkeypatch.setattr(toy, "gaussian_grid", lambda seed: gaussian_grid(n_per_component=4, seed=seed))


def test_a_tiny_toy_sweep_writes_its_tables_pairs_its_repeats_and_resumes(tmp_path, small_toy_data):
    grids = {"vae": (0.1, 10.0), "ip1": (0.01, 1.0), "ip8": (0.01, 1.0), "pairwise-kl": (0.1, 10.0)}
    training = TrainConfig(steps=3, batch_size=32, progress=False)
    result = reproduce_rate_matched(tmp_path / "sweep", training, dataset="toy", grids=grids, repeats=2, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "sweep" / "runs.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and {line["model"] for line in lines} == set(grids)
    keys = {"I_mc", "I_loo", "I_lower", "I_upper", "I_saturated", "E", "E_sampled", "nmi", "distortion", "beta", "repeat", "commit", "code"}
    assert all(keys <= set(line) for line in lines)
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


def test_a_repeat_without_usable_runs_of_a_model_does_not_empty_the_pairs_range():
    records = [r for r in _records(RATES) if not (r["model"] == "vae" and r["repeat"] == 2)]
    rows = {row["model"]: row for row in matched_comparison(records, {"E": True}, "E")}
    assert (rows["ip1"]["I_low"], rows["ip1"]["I_high"]) == pytest.approx((1.0, 4.0)) and rows["ip1"]["n"] == 2


def _convex_records(vae_rates, model_rates, repeats=3):
    """Runs on one convex curve, E = exp(-I) + repeat / 100, for the VAE and the other models alike:
    no model differs from the VAE at any rate, so a matched difference is the interpolation's alone."""
    records = []
    for model, rates in {"vae": vae_rates, **dict.fromkeys(("ip1", "ip8", "pairwise-kl"), model_rates)}.items():
        for beta, rate in enumerate(rates):
            for repeat in range(repeats):
                noise = 1e-4 * ((repeat * 5 + beta * 3) % 7)  # so that the t-test has a variance
                records.append(
                    {"model": model, "beta": float(beta), "repeat": repeat, "status": "ok", "I_mc": rate - 0.05, "I_loo": rate + 0.05}
                    | {"I_saturated": False, "I_points": 100, "E": math.exp(-rate) + repeat / 100 + noise, "code": "same", "commit": "c"}
                )
    return records


def test_linear_matching_along_a_convex_reference_reads_the_chord_and_the_check_shows_it():
    records = _convex_records((1.0, 2.0, 3.0, 4.0, 5.0), (1.5, 2.5, 3.5, 4.5))
    chord = np.mean([math.exp(-m) * (math.cosh(0.5) - 1) for m in (1.5, 2.5, 3.5, 4.5)])  # closed form: the chord's excess
    rows = {(row["model"], row["matching"]): row for row in interpolation_check(records, "E", lower_is_better=True)}
    linear, cubic = rows[("ip1", "linear")], rows[("ip1", "pchip")]
    assert linear["n"] == 3 and linear["runs"] == 12 and linear["vae_cells"] == 5
    assert linear["difference"] == pytest.approx(-chord, abs=2e-4)  # the model looks better: an artefact
    assert abs(cubic["difference"]) < chord / 4
    wide = rows[("ip1", "linear, every other VAE cell")]  # cells 1, 3, 5: runs a quarter into gaps of 2 nats, 3x the excess
    assert wide["vae_cells"] == 3 and wide["difference"] < 2.5 * linear["difference"]


def test_the_primary_matching_reads_only_the_named_vae_cells():
    records = _convex_records((1.0, 2.0, 3.0, 4.0, 5.0), (1.5, 2.5, 3.5, 4.5))
    kept = reference_cells(records, Matching("linear", vae_betas=(0.0, 2.0, 4.0)))  # betas 0, 2, 4: rates 1, 3, 5
    assert sorted({r["beta"] for r in kept if r["model"] == "vae"}) == [0.0, 2.0, 4.0]
    assert len([r for r in kept if r["model"] != "vae"]) == len([r for r in records if r["model"] != "vae"])
    rows = matched_comparison(records, {"E": True}, "E", Matching("linear", vae_betas=(0.0, 2.0, 4.0)))
    wide = {
        row["model"]: row for row in interpolation_check(records, "E", lower_is_better=True) if row["matching"].startswith("linear, every")
    }
    assert rows[0]["difference"] == pytest.approx(wide[rows[0]["model"]]["difference"])
