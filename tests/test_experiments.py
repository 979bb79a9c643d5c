import dataclasses
import json
import math
import operator
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from ipae.data.toy import gaussian_grid
from ipae.evaluation import holm
from ipae.experiments import conv_mnist, figure1, figure2, mnist, rate_distortion, toy
from ipae.experiments.figure1 import IPAE_BETAS, VAE_BETAS, figure1_runs, summary
from ipae.experiments.parallel import map_runs
from ipae.experiments.runs import Run, child_seeds
from ipae.experiments.toy import run_toy
from ipae.models import ModelSpec
from ipae.networks import MLP
from ipae.rates import InformationPotential, MonteCarlo, PairwiseKL, PriorKL, create
from ipae.training import TrainConfig
from mnist_files import REAL_MNIST, needs_mnist

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUIET = TrainConfig(progress=False)


@contextmanager
def after_every_step(action):
    """Call `action(optimizer)` after every optimiser step of any training in the block."""
    handle = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: action(optimizer))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def counted_steps():
    """A list that gets one entry per optimiser step taken in the block: trainings of s steps each add s."""
    steps = []
    with after_every_step(steps.append):
        yield steps


@torch.no_grad()
def poison(optimizer):
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.fill_(math.nan)


@pytest.fixture
def small_toy_data(monkeypatch):
    """The toy task with 4 samples per centre (100): quick runs; E is then still a distance to the centres."""
    monkeypatch.setattr(toy, "gaussian_grid", lambda seed: gaussian_grid(n_per_component=4, seed=seed))


# runs: one configuration type for every experiment


def test_a_run_names_itself_and_its_row():
    run = Run(InformationPotential(8), 1e-5, 3, TrainConfig(steps=7, precision="bf16"))
    assert run.name() == "ip-n_partners8-beta1e-05"
    assert run.row() == {
        "rate": "ip",
        "options": "n_partners=8",
        "beta": 1e-5,
        "steps": 7,
        "seed": 3,
        "precision": "bf16",
        "paper_exact": False,
    }
    mnist_model = {
        "architecture": {"kind": "mlp", "input_shape": [784], "hidden": [1024], "n_latent": 8, "activation": "sigmoid"},
        "rate": {"name": "ip", "n_partners": 8},
        "distortion": "bernoulli",
        "beta": 1e-5,
        "logvar_limit": 15.0,
        "distortion_weight": 1.0,
    }
    assert run.to_dict("mnist") == {
        "model": mnist_model,
        "seed": 3,
        "paper_exact": False,
        "training": TrainConfig(steps=7, precision="bf16").to_dict(),
    }
    assert json.loads(json.dumps(run.to_dict("mnist"))) == run.to_dict("mnist")
    paper = Run(PriorKL(), 1.0, 0, QUIET, paper_exact=True)
    assert paper.name() == "vae-beta1-paper"
    assert paper.model("toy") == ModelSpec(MLP(), "vae", distortion="mean-mse", beta=1.0, logvar_limit=None)
    assert Run(InformationPotential(8), 0.5, paper_exact=True).model("toy").distortion_weight == 0.5  # eq. 11's 1/2
    every = Run(InformationPotential(None), 0.01, 0, QUIET)
    assert every.name() == "ip-n_partnersall-beta0.01" and every.row()["options"] == "n_partners=all"
    vae = Run(PriorKL(), 1.0, 0, QUIET)
    assert vae.name() == "vae-beta1" and vae.row()["rate"] == "vae" and vae.row()["options"] == ""
    assert Run(MonteCarlo(4), 3.0).name() == "mc-n_samples4-beta3" and Run(MonteCarlo(4), 3.0).row()["options"] == "n_samples=4"
    assert Run(PairwiseKL(), 0.3).name() == "pairwise-kl-beta0.3"
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.beta = 1.0


def test_the_default_run_is_figure_1s_ipae():
    run = Run()
    assert isinstance(run.rate, InformationPotential) and run.rate.n_partners == 1 and run.beta == 0.01 and run.seed == 0
    assert run.training.steps == 5000 and run.training.batch_size == 512 and run.training.lr == 1e-3


def test_every_run_of_every_grid_has_its_own_name():
    grids = {
        "figure1": figure1_runs(QUIET),
        "figure2": figure2.figure2_runs(QUIET),
        "rate-distortion": rate_distortion.rate_distortion_runs(QUIET),
    }
    for grid, runs in grids.items():
        assert len({run.name() for run in runs}) == len(runs), grid
    seeds = conv_mnist.conv_runs(QUIET, seeds=3)
    assert len({(run.name(), run.seed) for run in seeds}) == 6


def test_child_seeds_are_reproducible_and_distinct():
    assert child_seeds(5, 3) == child_seeds(5, 3)
    assert len(set(child_seeds(5, 3))) == 3 and child_seeds(5, 3) != child_seeds(6, 3)
    assert child_seeds(5, 4)[:3] == child_seeds(5, 3)  # one more seed leaves the others as they were


def test_unknown_rate_is_refused():
    with pytest.raises(ValueError, match="unknown rate 'gan'"):
        create("gan")


# the toy experiment


def test_a_short_toy_run_writes_its_metrics_panel_and_model(tmp_path):
    outcome = run_toy(Run(InformationPotential(1), 0.01, 0, TrainConfig(steps=20)), tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["config"]["training"]["steps"] == 20
    assert metrics["config"]["model"]["rate"] == {"name": "ip", "n_partners": 1} and metrics["config"]["model"]["beta"] == 0.01
    architecture = {"kind": "mlp", "input_shape": [2], "hidden": [2048], "n_latent": 16, "activation": "relu"}
    assert metrics["config"]["model"]["architecture"] == architecture
    assert metrics["config"]["model"] == json.loads((tmp_path / "run" / "model.json").read_text())["model"]  # the model saved
    assert metrics["E_identity"] == pytest.approx(math.sqrt(0.1 * math.pi / 2), abs=0.01)
    assert 0 < metrics["E"] < 10 and 0 < metrics["E_sampled"] < 10 and metrics["train_seconds"] > 0
    assert outcome.metrics["E"] == metrics["E"] and outcome.reconstruction.shape == (5000, 2)
    assert (tmp_path / "run" / "reconstruction.png").read_bytes().startswith(PNG_MAGIC)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [20] and {"loss", "distortion", "rate", "seconds"} <= log[0].keys()
    assert (tmp_path / "run" / "model.safetensors").exists() and (tmp_path / "run" / "model.json").exists()


def test_a_toy_run_is_reproducible_from_its_seed(tmp_path, small_toy_data):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run_toy(Run(PriorKL(), 1.0, seed, TrainConfig(steps=3)), tmp_path / name, device="cpu", progress=False)
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in "abc"}
    assert all(torch.equal(weights["a"][key], weights["b"][key]) for key in weights["a"])
    assert not all(torch.equal(weights["a"][key], weights["c"][key]) for key in weights["a"])


def test_a_bf16_toy_run_trains_in_bf16_and_reports_float_metrics(tmp_path, small_toy_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 without native support here is slow, and says so
        outcome = run_toy(Run(PriorKL(), 1.0, 0, TrainConfig(steps=30, precision="bf16")), tmp_path / "run", progress=False)
    assert outcome.metrics["status"] == "ok" and outcome.metrics["config"]["training"]["precision"] == "bf16"
    assert outcome.reconstruction.dtype == torch.float32 and 0 < outcome.metrics["E"] < 10


def test_a_diverged_toy_run_is_recorded_as_failed(tmp_path, small_toy_data):
    with after_every_step(poison):
        outcome = run_toy(Run(PriorKL(), 1.0, 0, TrainConfig(steps=5)), tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["failed_step"] == 1 and "E" not in metrics and "diverged" in metrics["error"]
    assert outcome.reconstruction is None and not (tmp_path / "run" / "model.json").exists()


def test_the_figure1_grid_covers_both_models_fairly():
    runs = figure1_runs(TrainConfig(steps=7), seed=4)
    assert [run.beta for run in runs if run.rate.name == "vae"] == list(VAE_BETAS)
    assert [run.beta for run in runs if run.rate.name == "ip"] == list(IPAE_BETAS)
    assert min(VAE_BETAS) <= 0.01 and max(VAE_BETAS) >= 3 and len(IPAE_BETAS) >= 3
    assert all(run.training.steps == 7 and run.seed == 4 for run in runs)
    assert all(run.rate.n_partners == 1 for run in runs if run.rate.name == "ip")


def test_reproduce_figure1_writes_one_cell_per_run(tmp_path, small_toy_data, monkeypatch):
    every = figure1.figure1_runs
    monkeypatch.setattr(
        figure1,
        "figure1_runs",
        lambda training, seed=0, paper_exact=False: [
            run for run in every(training, seed=seed, paper_exact=paper_exact) if run.beta in (0.1, 3.0)
        ],
    )
    with counted_steps() as steps:
        rows = figure1.reproduce_figure1(tmp_path, TrainConfig(steps=2, progress=False), jobs=1, progress=False)
    names = ["vae-beta0.1", "vae-beta3", "ip-n_partners1-beta0.1"]
    assert len(steps) == 2 * len(names)
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert list(cells) == names and sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(names)
    for name, cell in cells.items():
        assert cell == json.loads((tmp_path / "runs" / name / "metrics.json").read_text()) and cell["status"] == "ok"
    assert [(row["rate"], row["options"], row["beta"]) for row in rows] == [("vae", "", 0.1), ("vae", "", 3.0), ("ip", "n_partners=1", 0.1)]
    assert json.loads((tmp_path / "figure1.json").read_text())[0]["E"] == cells["vae-beta0.1"]["E"]
    assert (tmp_path / "figure1.md").read_text().startswith("| rate | options | beta |")
    assert (tmp_path / "figure1.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("jobs", [1, 2])
def test_map_runs_keeps_the_order(jobs):
    assert map_runs(operator.neg, [3, 1, 2], jobs=jobs, progress=False) == [-3, -1, -2]


def test_summary_names_each_models_best_and_the_ratio():
    rows = [
        {"rate": "vae", "beta": 1.0, "status": "ok", "E": 0.4},
        {"rate": "vae", "beta": 0.1, "status": "failed"},
        {"rate": "ip", "beta": 0.01, "status": "ok", "E": 0.3},
        {"rate": "ip", "beta": 0.1, "status": "ok", "E": 0.35},
    ]
    assert summary(rows) == "Best E: vae 0.400 at β = 1; ip 0.300 at β = 0.01; ratio ip / vae = 0.750."
    assert summary(rows[1:2]) == "Best E: no run succeeded."


# MNIST


@needs_mnist
def test_a_tiny_mnist_run_on_the_real_files_and_its_resumption(tmp_path):
    run = Run(InformationPotential(1), 1e-5, 0, TrainConfig(steps=3))
    metrics = mnist.run_mnist(run, tmp_path, repeats=1, data_dir=REAL_MNIST, progress=False)
    record = json.loads((tmp_path / "repeat-0.json").read_text())
    assert record["status"] == "ok" and record["n_train"] == 18000 and record["n_test"] == 3127
    assert metrics["svm_errors"] == [record["svm_error"]] and 0 <= metrics["svm_error"] < 100 and metrics["failed_repeats"] == 0
    assert metrics["config"] == run.to_dict("mnist")
    assert (tmp_path / "codes.png").read_bytes().startswith(PNG_MAGIC)
    pca = np.load(tmp_path / "repeat-0-pca.npz")
    assert pca["pca"].shape == (3127, 2) and sorted(set(pca["labels"].tolist())) == [1, 3, 4]
    with counted_steps() as steps:  # a finished repeat is not trained again
        assert mnist.run_mnist(run, tmp_path, repeats=1, data_dir=REAL_MNIST, progress=False) == metrics
    assert steps == []


def _fake_mnist(n: int = 30):
    from ipae.data.mnist import MnistSplits

    generator = np.random.default_rng(0)
    images = generator.random((n, 784), dtype=np.float32)
    labels = np.repeat([1, 3, 4], n // 3)
    return MnistSplits(images, labels, images, labels)


def test_a_failed_mnist_repeat_is_counted_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "load_mnist", lambda *args, **kwargs: _fake_mnist())
    monkeypatch.setitem(mnist.SUBSETS, "mnist134", ((1, 3, 4), 20))
    with after_every_step(poison):
        metrics = mnist.run_mnist(Run(PriorKL(), 1e-5, 0, TrainConfig(steps=3)), tmp_path, repeats=2, progress=False)
    assert metrics["failed_repeats"] == 2 and metrics["svm_error"] is None and metrics["svm_errors"] == []
    record = json.loads((tmp_path / "repeat-1.json").read_text())
    assert record["status"] == "failed" and record["failed_step"] == 1
    assert not (tmp_path / "codes.png").exists()


def test_the_figure2_grid_is_the_papers():
    training = TrainConfig(steps=7, precision="bf16")
    runs = figure2.figure2_runs(training)
    cells = {(run.rate.name, run.beta, getattr(run.rate, "n_partners", "-")) for run in runs}
    assert cells == {("vae", beta, "-") for beta in (1e-5, 1e-4, 1e-3, 1e-2)} | {
        ("ip", 1e-5, 1),
        ("ip", 1e-4, 1),
        ("ip", 1e-3, 1),
        ("ip", 1e-5, 8),
        ("ip", 1e-5, 64),
        ("ip", 1e-5, None),
    }
    assert len(runs) == 10 and len({run.name() for run in runs}) == 10
    assert all(run.training == training and run.training.batch_size == 512 and run.training.lr == 1e-3 for run in runs)


def test_the_figure2_sweep_writes_one_cell_each_keeps_finished_repeats_and_refuses_other_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "load_mnist", lambda *args, **kwargs: _fake_mnist(n=600))
    monkeypatch.setitem(mnist.SUBSETS, "mnist134", ((1, 3, 4), 500))
    training = TrainConfig(steps=2, progress=False)
    with counted_steps() as steps:
        rows = figure2.reproduce_figure2(tmp_path / "sweep", training, repeats=1, progress=False)
    assert len(steps) == 10 * 2 and len(rows) == 10 and all(row["repeats"] == 1 for row in rows)
    names = [run.name() for run in figure2.figure2_runs(training)]
    cells = json.loads((tmp_path / "sweep" / "cells.json").read_text())
    assert list(cells) == names
    for name, cell in cells.items():
        assert cell == json.loads((tmp_path / "sweep" / "runs" / name / "metrics.json").read_text()) and cell["repeats"] == 1
    assert json.loads((tmp_path / "sweep" / "figure2.json").read_text())[0]["svm_error"] == rows[0]["svm_error"]
    assert (tmp_path / "sweep" / "figure2.png").read_bytes().startswith(PNG_MAGIC)
    assert "Lowest mean test error: vae" in (tmp_path / "sweep" / "figure2.md").read_text()

    with counted_steps() as steps:
        more = figure2.reproduce_figure2(tmp_path / "sweep", training, repeats=2, progress=False)
    # the pre-registered primary table: the six IPAE cells against the VAE at beta = 1e-3, Holm-adjusted
    primary = json.loads((tmp_path / "sweep" / "figure2-primary.json").read_text())
    assert [(row["rate"], row["beta"]) for row in primary] == [("ip", b) for b in (1e-5, 1e-4, 1e-3, 1e-5, 1e-5, 1e-5)]
    assert [row["p_holm"] for row in primary] == holm([row["p_t"] for row in primary])
    after = json.loads((tmp_path / "sweep" / "cells.json").read_text())
    ip, vae = (np.array(after[name]["svm_errors"]) for name in ("ip-n_partners1-beta1e-05", "vae-beta0.001"))
    assert primary[0]["n"] == 2 and primary[0]["difference"] == pytest.approx(float((ip - vae).mean()))
    assert len(steps) == 10 * 2  # only the new repeat of each cell
    assert [row["svm_errors"][0] for row in more] == [row["svm_errors"][0] for row in rows]
    assert all(cell["repeats"] == 2 for cell in json.loads((tmp_path / "sweep" / "cells.json").read_text()).values())
    with pytest.raises(ValueError, match="steps 2 there, 3 now"):
        figure2.reproduce_figure2(tmp_path / "sweep", TrainConfig(steps=3, progress=False), repeats=1, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not hold a figure-2 sweep"):
        figure2.reproduce_figure2(tmp_path / "other", training, repeats=1, progress=False)


def test_figure2_cells_pick_named_cells_and_refuse_unknown_ones():
    training = TrainConfig(steps=2)
    runs = figure2.figure2_runs(training, paper_exact=True, cells=("ip-n_partners8-beta1e-05", "vae-beta0.001"))
    assert [run.name() for run in runs] == ["vae-beta0.001-paper", "ip-n_partners8-beta1e-05-paper"]
    with pytest.raises(ValueError, match="no cell ip-beta1"):
        figure2.figure2_runs(training, cells=("ip-beta1",))


def test_figure2_summary_makes_the_papers_comparison():
    def row(rate, beta, options, error, failed=0):
        return {"rate": rate, "beta": beta, "options": options, "svm_error": error, "repeats": 10, "failed_repeats": failed}

    rows = [
        row("vae", 1e-5, "", None, failed=10),
        row("vae", 1e-3, "", 3.0),
        row("ip", 1e-5, "n_partners=8", 2.5),
        row("ip", 1e-5, "n_partners=all", 2.0),
    ]
    assert figure2.summary(rows) == (
        "Lowest mean test error: vae 3.00 % (β = 0.001); ip 2.00 % (β = 1e-05, n_partners=all)."
        " IPAE with β = 1e-5, N_j = 8: 2.50 %, below the best VAE. Failed repeats (non-finite loss): 10 of 40."
    )


# the convolutional preset on MNIST


def test_reproduce_conv_mnist_writes_one_cell_per_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(conv_mnist, "load_mnist", lambda *args, **kwargs: _fake_mnist(n=60))
    training = TrainConfig(steps=2, batch_size=16, progress=False)
    rows = conv_mnist.reproduce_conv_mnist(tmp_path, training, seeds=1, progress=False)
    names = ["ip-n_partners8-beta1e-05", "vae-beta1"]
    cells = json.loads((tmp_path / "cells.json").read_text())
    assert list(cells) == names and all(len(records) == 1 and records[0]["status"] == "ok" for records in cells.values())
    assert [(row["rate"], row["options"], row["seeds"], row["failed"]) for row in rows] == [("ip", "n_partners=8", 1, 0), ("vae", "", 1, 0)]
    for row, records in zip(rows, cells.values(), strict=True):
        assert row["svm_error"] == records[0]["svm_error"] and row["I_lower"] <= row["I_upper"] + 1e-9
        assert row["I_upper"] <= math.log(60) + 1e-9  # a mixture of 60 components carries at most log 60 nats
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == [f"{name}-seed0" for name in names]
    assert all((tmp_path / "runs" / f"{name}-seed0" / "model.safetensors").exists() for name in names)
    with counted_steps() as steps:  # finished runs are kept
        assert conv_mnist.reproduce_conv_mnist(tmp_path, training, seeds=1, progress=False) == rows
    assert steps == []


def test_a_killed_conv_run_continues_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(conv_mnist, "load_mnist", lambda *args, **kwargs: _fake_mnist(n=60))
    run = Run(PriorKL(), 1.0, 0, TrainConfig(steps=4, batch_size=16, checkpoint_every=2, progress=False))
    whole = conv_mnist.run_conv(run, None, tmp_path / "whole")

    taken = []

    def kill_at_step_3(optimizer):
        taken.append(optimizer)
        if len(taken) == 3:
            raise KeyboardInterrupt

    with after_every_step(kill_at_step_3), pytest.raises(KeyboardInterrupt):
        conv_mnist.run_conv(run, None, tmp_path / "killed")
    assert json.loads((tmp_path / "killed.checkpoint" / "training.json").read_text())["step"] == 2
    assert not (tmp_path / "killed" / "metrics.json").exists()
    with counted_steps() as steps:
        continued = conv_mnist.run_conv(run, None, tmp_path / "killed")
    assert len(steps) == 2 and not (tmp_path / "killed.checkpoint").exists()
    first, second = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert continued["svm_error"] == whole["svm_error"] and continued["I_mc"] == whole["I_mc"]


def _saved_figures(monkeypatch, module) -> dict:
    """The figures `module` saves, by file name, saved as it would save them."""
    saved, save = {}, module.save_png

    def keep(figure, path):
        saved[Path(path).name] = figure
        save(figure, path)

    monkeypatch.setattr(module, "save_png", keep)
    return saved


def _legend_colours(legend) -> dict[str, tuple]:
    """Each entry's label and the colour of its marker's edge (RGBA)."""
    return {
        text.get_text(): tuple(handle.get_edgecolor()[0]) for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)
    }


RED, BLUE = (1.0, 0.0, 0.0, 1.0), (0.0, 0.0, 1.0, 1.0)


def test_the_figure1_grid_keeps_its_titles_ticks_and_legend_apart():
    """Drawn as saved: no panel's title or tick labels cross another panel's, and the legend sits above every panel."""
    x = torch.as_tensor(gaussian_grid(n_per_component=20, seed=0).x)
    runs = [Run(PriorKL(), beta) for beta in VAE_BETAS] + [Run(InformationPotential(), beta) for beta in IPAE_BETAS]
    outcomes = [toy.ToyOutcome({"E": 0.3}, x, 0.9 * x) for _ in runs]
    grid = figure1._grid_figure(runs, outcomes)
    renderer = FigureCanvasAgg(grid).get_renderer()
    grid.draw(renderer)
    panels = [panel for panel in grid.axes if panel.axison]
    assert len(panels) == len(runs)
    boxes = [panel.get_tightbbox(renderer) for panel in panels]  # the panel with its title and tick labels
    for i, first in enumerate(boxes):
        for second in boxes[i + 1 :]:
            assert not first.overlaps(second)
    (legend,) = grid.legends
    top = legend.get_window_extent(renderer)
    assert all(top.y0 >= box.y1 for box in boxes)


def test_the_reconstruction_figures_say_which_colour_is_the_input(tmp_path, small_toy_data, monkeypatch):
    saved = _saved_figures(monkeypatch, toy)
    run_toy(Run(PriorKL(), 1.0, 0, TrainConfig(steps=2)), tmp_path / "run", progress=False)
    (axes,) = saved["reconstruction.png"].axes
    (legend,) = saved["reconstruction.png"].legends  # the figure's, below the panel: it hides none of the points
    assert _legend_colours(legend) == {"input (red circles)": RED, "reconstruction (blue dots)": BLUE}
    renderer = FigureCanvasAgg(saved["reconstruction.png"]).get_renderer()
    saved["reconstruction.png"].draw(renderer)
    assert legend.get_window_extent(renderer).y1 <= axes.get_tightbbox(renderer).y0
    inputs, reconstructions = axes.collections
    assert tuple(inputs.get_edgecolor()[0]) == RED and tuple(reconstructions.get_facecolor()[0]) == BLUE

    saved = _saved_figures(monkeypatch, figure1)
    monkeypatch.setattr(figure1, "figure1_runs", lambda training, seed=0, paper_exact=False: [Run(PriorKL(), 1.0, 0, training)])
    (tmp_path / "grid").mkdir()
    figure1.reproduce_figure1(tmp_path / "grid", TrainConfig(steps=2, progress=False), jobs=1, progress=False)
    (legend,) = saved["figure1.png"].legends  # one legend for the grid
    assert _legend_colours(legend) == {"input (red circles)": RED, "reconstruction (blue dots)": BLUE}
