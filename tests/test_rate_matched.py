"""The rate-matched comparison: each run paired with its repeat's VAE at its own measured rate, never
extrapolated; Holm; saturated runs left out; provenance; held-out points; a tiny sweep end to end (resumed);
runs monitored while training with the weights of unmonitored ones; one repeat's trajectories drawn from their logs."""

import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ipae.cli import main
from ipae.data.mnist import PAPER_DIGITS, PAPER_N_TRAIN, load_mnist
from ipae.data.toy import gaussian_grid
from ipae.evaluation import holm
from ipae.experiments import mnist, toy
from ipae.experiments.mnist import held_out, information_points
from ipae.experiments.rate_matched import (
    SENSITIVITY,
    Matching,
    check_provenance,
    interpolation_check,
    matched_comparison,
    matched_runs,
    metrics_of,
    model_cell,
    reference_cells,
    report,
    reproduce_rate_matched,
    trajectory_plot,
)
from ipae.experiments.runs import Run, child_seeds
from ipae.plotting import plot_runs
from ipae.rates import InformationPotential, PriorKL
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
    # the interpolation check reads every metric, secondary ones included, under every reading of the VAE curve
    checks = json.loads((tmp_path / "sweep" / "interpolation.json").read_text())
    assert {(row["metric"], row["matching"]) for row in checks} == {(m, name) for m in metrics_of("toy") for name in SENSITIVITY}
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


# monitoring while training, and the trajectories of one repeat in the information plane

MONITORED = TrainConfig(steps=20, batch_size=32, log_every=5, monitor_every=10, progress=False)
TINY_GRIDS = {"vae": (0.1, 10.0), "ip1": (0.01,), "ip8": (0.01,), "pairwise-kl": (1.0,)}


@pytest.fixture(scope="module")
def monitored_sweep(tmp_path_factory):
    """A tiny main toy sweep (2 repeats of 5 cells, 100 points) whose runs measure I(x; z) at steps 10 and 20."""
    out = tmp_path_factory.mktemp("monitored") / "sweep"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(toy, "gaussian_grid", lambda seed: gaussian_grid(n_per_component=4, seed=seed))
        result = reproduce_rate_matched(out, MONITORED, dataset="toy", grids=TINY_GRIDS, repeats=2, progress=False)
    return out, result


def _log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _without_times(record: dict) -> dict:
    return {key: value for key, value in record.items() if key not in ("seconds", "monitor_seconds", "train_seconds")}


def test_a_monitored_toy_run_of_the_study_trains_the_weights_of_an_unmonitored_one(monitored_sweep, tmp_path, small_toy_data):
    out, _ = monitored_sweep
    cell = out / "runs" / "ip-n_partners8-beta0.01" / "repeat-1"
    log = _log(cell / "metrics.jsonl")
    assert [record["step"] for record in log if "I_mc" in record] == [10, 20]  # every monitor_every steps
    assert all(record["I_points"] == 100 for record in log if "I_mc" in record)  # all 100 points: fewer than TOY_MONITOR_POINTS
    # the same repeat trained without the monitor: the study's pairing of repeat 1, stated independently
    plain = Run(InformationPotential(8), 0.01, child_seeds(0, 2)[1], MONITORED)
    toy.run_toy(plain, tmp_path / "plain", progress=False)
    monitored, unmonitored = load_file(cell / "model.safetensors"), load_file(tmp_path / "plain" / "model.safetensors")
    assert monitored.keys() == unmonitored.keys() and all(torch.equal(monitored[name], unmonitored[name]) for name in monitored)
    plain_log = _log(tmp_path / "plain" / "metrics.jsonl")
    assert [_without_times(record) for record in plain_log] == [
        {key: record[key] for key in ("step", "loss", "distortion", "rate")} for record in log
    ]
    assert _without_times(json.loads((cell / "metrics.json").read_text())) == _without_times(
        json.loads((tmp_path / "plain" / "metrics.json").read_text())
    )


def test_a_monitored_mnist_run_of_the_study_trains_the_weights_of_an_unmonitored_one(tmp_path, monkeypatch):
    from ipae.data.mnist import MnistSplits

    images = np.random.default_rng(0).random((120, 784), dtype=np.float32)
    labels = np.repeat([1, 3, 4], 40)
    monkeypatch.setattr(mnist, "load_mnist", lambda *args, **kwargs: MnistSplits(images, labels, images, labels))
    monkeypatch.setitem(mnist.SUBSETS, "mnist134", ((1, 3, 4), 60))
    reproduce_rate_matched(tmp_path / "sweep", MONITORED, dataset="mnist134", grids={"vae": (1.0,)}, pilot=True, progress=False)
    cell = tmp_path / "sweep" / "runs" / "vae-beta1"
    log = _log(cell / "repeat-0.jsonl")
    measured = [record for record in log if "I_mc" in record]
    assert [record["step"] for record in measured] == [10, 20]
    assert all(record["I_points"] == 180 for record in measured)  # the points the record measures: 120 test and 60 unused images
    # the same repeat trained without the monitor: its weights give the same codes (their PCA), losses and record
    (tmp_path / "plain").mkdir()
    mnist.run_repeat(Run(PriorKL(), 1.0, 0, MONITORED), None, tmp_path / "plain", 0, dataset="mnist134")
    plain_log = _log(tmp_path / "plain" / "repeat-0.jsonl")
    assert [_without_times(record) for record in plain_log] == [
        {key: record[key] for key in ("step", "loss", "distortion", "rate")} for record in log
    ]
    monitored_record, plain_record = (json.loads((folder / "repeat-0.json").read_text()) for folder in (cell, tmp_path / "plain"))
    assert monitored_record["I_points"] == 180 and _without_times(monitored_record) == _without_times(plain_record)
    monitored_codes, plain_codes = np.load(cell / "repeat-0-pca.npz"), np.load(tmp_path / "plain" / "repeat-0-pca.npz")
    assert np.array_equal(monitored_codes["pca"], plain_codes["pca"])


def _series(figure) -> dict:
    return {artist.get_gid(): artist for axes in figure.axes for artist in axes.get_children() if artist.get_gid()}


def test_the_trajectories_of_one_repeat_are_drawn_one_colour_per_model_from_the_logged_records(monitored_sweep, tmp_path):
    out, result = monitored_sweep
    assert (
        result["trajectories"]
        == "trajectories.png: the information-plane trajectories of repeat 0: 5 of its 5 runs measured I(x; z) while training."
    )
    assert report(result).endswith(result["trajectories"])
    repeat_0 = sorted((out / "runs").glob("*/repeat-0"), reverse=True)  # any order: drawn in the study's
    figure = plot_runs(**trajectory_plot(repeat_0), out=tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == (out / "trajectories.png").read_bytes()
    assert main(["plot", *map(str, repeat_0), "--out", str(tmp_path / "plot.png")]) == 0  # `ipae plot` draws the same figure
    assert (tmp_path / "plot.png").read_bytes() == (out / "trajectories.png").read_bytes()
    drawn = _series(figure)
    colours = {}
    for model, betas in TINY_GRIDS.items():
        for beta in betas:
            label = f"{model} β={beta:g}"
            cell = next(path for path in repeat_0 if model_cell(path.parent.name) == (model, beta))
            measured = [record for record in _log(cell / "metrics.jsonl") if "I_mc" in record]
            path = drawn[f"{label}|I_mc"]
            np.testing.assert_array_equal(path.get_xdata(), [record["heldout_distortion"] for record in measured])
            np.testing.assert_array_equal(path.get_ydata(), [record["I_mc"] for record in measured])
            bounds = [[[r["heldout_distortion"], r["I_lower"]], [r["heldout_distortion"], r["I_upper"]]] for r in measured]
            np.testing.assert_allclose(np.array(drawn[f"{label}|bounds"].get_segments()), np.array(bounds), rtol=1e-12)
            colours.setdefault(model, set()).add(path.get_color())
    assert len([gid for gid in drawn if gid.endswith("|I_mc")]) == 5  # repeat 0 only
    assert all(len(found) == 1 for found in colours.values()) and len(set().union(*colours.values())) == 4  # one colour per model
    plane, curves = figure.axes
    for axes in (plane, curves):
        legend = axes.get_legend()
        entries = dict(zip([text.get_text() for text in legend.get_texts()], legend.legend_handles, strict=True))
        assert {model: {entries[model].get_color()} for model in TINY_GRIDS} == colours  # one legend entry per model, in its colour
    assert "vae β=0.1" not in [text.get_text() for text in plane.get_legend().get_texts()]


def test_records_of_code_that_did_not_monitor_are_summarised_without_trajectories(monitored_sweep, tmp_path):
    out, result = monitored_sweep
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "trajectories.png").unlink()
    for log in (old / "runs").glob("*/repeat-*/metrics.jsonl"):  # the logs of older code: no I(x; z)
        log.write_text(
            "".join(
                json.dumps({key: record[key] for key in ("step", "loss", "distortion", "rate", "seconds")}) + "\n" for record in _log(log)
            )
        )
    again = reproduce_rate_matched(old, MONITORED, dataset="toy", grids=TINY_GRIDS, repeats=2, progress=False)
    skipped = (
        "No run's training log holds I(x; z) measured while training (records of code that did not monitor, or logs not kept): "
        "no trajectories.png."
    )
    assert again["trajectories"] == skipped and report(again).endswith(skipped)
    assert not (old / "trajectories.png").exists()
    assert again["cells"] == result["cells"] and again["matched"] == result["matched"]
    # drawn, one colour per model, at their records' final I(x; z)
    figure = plot_runs(**trajectory_plot(sorted((old / "runs").glob("*/repeat-0"))), out=tmp_path / "old.png")
    record = json.loads((old / "runs" / "vae-beta0.1" / "repeat-0" / "metrics.json").read_text())
    final = _series(figure)["vae β=0.1|final"]
    assert (list(final.get_xdata()), list(final.get_ydata())) == ([record["distortion"]], [record["I_mc"]])
    texts = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert texts[:4] == list(TINY_GRIDS) and "final I(x; z) only (not measured while training)" in texts
    for log in (old / "runs").glob("*/repeat-*/metrics.jsonl"):  # committed records: no log at all
        log.unlink()
    assert reproduce_rate_matched(old, MONITORED, dataset="toy", grids=TINY_GRIDS, repeats=2, progress=False)["trajectories"] == skipped


def test_only_runs_of_one_repeat_of_a_rate_matched_sweep_are_drawn_as_the_study_draws_them(monitored_sweep, tmp_path):
    out, _ = monitored_sweep
    assert model_cell("ip-n_partners8-beta0.01") == ("ip8", 0.01) and model_cell("pairwise-kl-beta1") == ("pairwise-kl", 1.0)
    assert model_cell("ip-n_partners2-beta0.01") is None and model_cell("vae-beta0.1-paper") is None and model_cell("vae") is None
    one = out / "runs" / "vae-beta0.1"
    assert trajectory_plot([one / "repeat-0" / "metrics.jsonl"])["labels"] == ["vae β=0.1"]
    assert trajectory_plot([one / "repeat-0", one / "repeat-1"]) is None  # two repeats
    assert trajectory_plot([one]) is None  # a cell: all its repeats
    other = tmp_path / "figure2"  # a sweep of another study: its sweep.json names no dataset
    shutil.copytree(out, other)
    (other / "sweep.json").write_text(json.dumps({"steps": 20, "seed": 0}))
    assert trajectory_plot([other / "runs" / "vae-beta0.1" / "repeat-0"]) is None
