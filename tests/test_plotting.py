"""The figures of training runs (ipae.plotting), looked at as a user would: the files exist, have the
figure's size, and every series drawn is the logged records'."""

import json
import math
import struct

import numpy as np
import pytest
import torch

from ipae.cli import main
from ipae.plotting import plot_runs, read_log, read_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DPI = 120  # ipae.reporting.save_png's


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's header."""
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_figure_size(path, figure) -> None:
    """The PNG shows the whole figure: at least 80 % and at most 105 % of its size (saved with a tight box)."""
    width, height = png_size(path)
    expected_width, expected_height = figure.get_figwidth() * DPI, figure.get_figheight() * DPI
    assert 0.8 * expected_width <= width <= 1.05 * expected_width
    assert 0.8 * expected_height <= height <= 1.05 * expected_height


def series(figure) -> dict:
    """Every artist of the figure that has a gid, by gid."""
    return {artist.get_gid(): artist for axes in figure.axes for artist in axes.get_children() if artist.get_gid()}


def records_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def legend_texts(axes) -> list[str]:
    return [text.get_text() for text in axes.get_legend().get_texts()]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A monitored `ipae fit` run: I(x; z) every 10 steps, logs every 5."""
    folder = tmp_path_factory.mktemp("plot")
    rng = np.random.default_rng(0)
    np.save(folder / "x.npy", rng.normal(size=(200, 3)).astype(np.float32))
    np.save(folder / "held_out.npy", rng.normal(size=(60, 3)).astype(np.float32))
    torch.set_num_threads(1)
    args = ["fit", str(folder / "x.npy"), "--hidden", "16", "--n-components", "2", "--batch-size", "32", "--steps", "40"]
    args += ["--log-every", "5", "--monitor", str(folder / "held_out.npy"), "--monitor-every", "10", "--quiet"]
    assert main([*args, "--out", str(folder / "run")]) == 0
    return folder / "run"


def test_the_figure_of_a_fit_shows_its_logged_records(fitted, tmp_path):
    records = records_of(fitted / "metrics.jsonl")
    measured = [record for record in records if "I_mc" in record]
    assert [record["step"] for record in measured] == [10, 20, 30, 40]
    figure = plot_runs([fitted], tmp_path / "figure.png")
    assert_figure_size(tmp_path / "figure.png", figure)
    drawn = series(figure)
    path = drawn["run|I_mc"]
    np.testing.assert_array_equal(path.get_xdata(), [record["heldout_distortion"] for record in measured])
    np.testing.assert_array_equal(path.get_ydata(), [record["I_mc"] for record in measured])
    segments = drawn["run|bounds"].get_segments()  # one vertical segment from I_lower to I_upper per measurement
    expected = [[[r["heldout_distortion"], r["I_lower"]], [r["heldout_distortion"], r["I_upper"]]] for r in measured]
    np.testing.assert_allclose(np.array(segments), np.array(expected), rtol=1e-12)
    assert len(drawn["run|band"].get_paths()) == len(measured) - 1
    assert drawn["run|start"].get_xdata()[0] == measured[0]["heldout_distortion"]
    log_n = drawn[f"log N|{math.log(60)!r}"]
    assert log_n.get_linestyle() == "--" and set(log_n.get_ydata()) == {math.log(60)}
    for key in ("loss", "distortion"):
        np.testing.assert_array_equal(drawn[f"run|{key}"].get_xdata(), [record["step"] for record in records])
        np.testing.assert_array_equal(drawn[f"run|{key}"].get_ydata(), [record[key] for record in records])
    plane, curves = figure.axes
    assert "run" in legend_texts(plane) and "log N: the most N points can show" in legend_texts(plane)
    assert {"run", "loss"} <= set(legend_texts(curves))


def test_ipae_fit_writes_training_png_the_figure_of_its_run(fitted, tmp_path):
    figure = plot_runs([fitted], tmp_path / "figure.png")  # labelled "run", as fit labels it by its --out
    assert_figure_size(fitted / "training.png", figure)
    assert (fitted / "training.png").read_bytes() == (tmp_path / "figure.png").read_bytes()


def _write(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def _log(steps, **extra) -> list[dict]:
    return [{"step": step, "loss": 1.0 / step, "distortion": 0.5 / step, "rate": 2.0, "seconds": 0.1, **extra} for step in steps]


FINAL = {"I_mc": 2.5, "I_loo": 2.6, "I_lower": 2.0, "I_upper": 3.0, "I_points": 5000, "I_log_n": math.log(5000), "distortion": 0.3}


def test_a_sweep_cell_is_one_run_per_repeat_drawn_at_its_final_measurement(tmp_path):
    cell = tmp_path / "ip-n_partners1-beta0.01"
    _write(cell / "repeat-1.jsonl", _log([100, 200]))  # an MNIST sweep's repeat: repeat-R.jsonl beside repeat-R.json
    (cell / "repeat-1.json").write_text(json.dumps({**FINAL, "I_saturated": True, "status": "ok"}))
    _write(cell / "repeat-0.jsonl", _log([100, 200, 300]))  # no record beside it: nothing for the plane
    runs = read_runs(cell)
    assert [run.label for run in runs] == ["ip-n_partners1-beta0.01/repeat-0", "ip-n_partners1-beta0.01/repeat-1"]
    assert [len(run.records) for run in runs] == [3, 2]
    figure = plot_runs([cell], tmp_path / "cell.png")
    assert_figure_size(tmp_path / "cell.png", figure)
    drawn = series(figure)
    final = drawn["ip-n_partners1-beta0.01/repeat-1|final"]
    assert (list(final.get_xdata()), list(final.get_ydata())) == ([FINAL["distortion"]], [FINAL["I_mc"]])
    bounds = drawn["ip-n_partners1-beta0.01/repeat-1|bounds"].get_segments()
    np.testing.assert_array_equal(bounds, [[[FINAL["distortion"], FINAL["I_lower"]], [FINAL["distortion"], FINAL["I_upper"]]]])
    assert "ip-n_partners1-beta0.01/repeat-0|final" not in drawn
    np.testing.assert_array_equal(drawn["ip-n_partners1-beta0.01/repeat-0|loss"].get_ydata(), [1 / 100, 1 / 200, 1 / 300])
    texts = legend_texts(figure.axes[0])
    assert "ip-n_partners1-beta0.01/repeat-0 (no I(x; z) measured)" in texts and "saturated (I_loo - I_mc > 0.5)" in texts


def test_a_toy_sweep_cell_and_a_log_file_are_read_as_runs(tmp_path):
    cell = tmp_path / "vae-beta1"
    for repeat in (0, 1, 2, 10):
        _write(cell / f"repeat-{repeat}" / "metrics.jsonl", _log([100]))
        (cell / f"repeat-{repeat}" / "metrics.json").write_text(json.dumps(FINAL))
    assert [run.label for run in read_runs(cell)] == [f"vae-beta1/repeat-{r}" for r in (0, 1, 2, 10)]  # numbered order
    assert read_runs(cell)[0].final_point()["distortion"] == FINAL["distortion"]
    (run,) = read_runs(cell / "repeat-2" / "metrics.jsonl")
    assert run.label == "vae-beta1/repeat-2" and run.records == _log([100])
    assert [run.label for run in read_runs(cell / "repeat-10")] == ["vae-beta1/repeat-10"]
    (run,) = read_runs(cell / "repeat-2", label="mine")
    assert run.label == "mine"


def test_a_fit_without_a_monitor_has_no_point_in_the_plane(tmp_path):
    # a fit's metrics.json holds the training distortion: without heldout_distortion it is no point of the plane
    _write(tmp_path / "fit" / "metrics.jsonl", _log([5, 10]))
    (tmp_path / "fit" / "metrics.json").write_text(json.dumps({"steps": 10, "loss": 0.1, "distortion": 0.05, "rate": 2.0}))
    figure = plot_runs([tmp_path / "fit"], tmp_path / "fit.png")
    assert not any(gid.endswith(("|final", "|I_mc")) for gid in series(figure))
    assert "fit (no I(x; z) measured)" in legend_texts(figure.axes[0])


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no records"),
        ("{not json\n", ":1: not valid JSON"),
        ('{"step": 5, "loss": 1}\n[1, 2]\n', ":2: not a training log record"),
        ('{"loss": 1}\n', ":1: not a training log record"),
    ],
)
def test_a_damaged_log_is_refused_naming_its_line(tmp_path, content, message):
    (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_log(tmp_path / "metrics.jsonl")


def test_plot_runs_is_ipae_plot_runs_and_importing_ipae_loads_no_matplotlib():
    import subprocess
    import sys

    import ipae
    from ipae import plotting

    assert ipae.plot_runs is plotting.plot_runs
    code = "import sys, ipae; print(any(m.split('.')[0] == 'matplotlib' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_what_is_no_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run"):
        read_runs(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no training log"):
        read_runs(tmp_path)
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(ValueError, match="not a training log"):
        read_runs(tmp_path / "x.npy")
    with pytest.raises(ValueError, match="no runs"):
        plot_runs([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_runs_of_a_group_share_a_colour_and_a_legend_entry_and_other_runs_have_their_own(tmp_path):
    measured = {"I_mc": 1.0, "I_lower": 0.5, "I_upper": 1.5, "I_log_n": math.log(50), "I_saturated": False, "heldout_distortion": 0.3}
    for name in "abcd":
        _write(tmp_path / name / "metrics.jsonl", _log([100, 200], **measured))
    labels, groups = ["x β=1", "x β=2", "same", "same"], ["x", "x", None, None]
    figure = plot_runs([tmp_path / name for name in "abcd"], tmp_path / "groups.png", labels=labels, groups=groups, title="four runs")
    assert_figure_size(tmp_path / "groups.png", figure)
    assert figure.get_suptitle() == "four runs"
    plane, curves = figure.axes
    paths = [line for line in plane.get_lines() if line.get_gid() and line.get_gid().endswith("|I_mc")]
    assert [line.get_color() for line in paths] == ["C0", "C0", "C1", "C2"]  # the two "same" runs are two runs
    for axes in (plane, curves):
        assert legend_texts(axes)[:3] == ["x", "same", "same"]
    marks = [text.get_text() for text in plane.texts if not text.get_text().startswith("log N")]
    assert marks == ["β=1", "β=2", "100", "200", "100", "200"]  # a grouped path's end: its run; another's: its first and last step
    with pytest.raises(ValueError, match="3 groups for 4 runs"):
        plot_runs([tmp_path / name for name in "abcd"], tmp_path / "bad.png", groups=groups[:3])
