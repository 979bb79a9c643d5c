import csv
import json
import math

import pytest
import torch

from ipae.models import AutoEncoder, ModelConfig
from ipae.results import load_model, markdown_table, save_model, staged_directory, write_atomic, write_json, write_table


def test_write_atomic_leaves_nothing_when_writing_fails(tmp_path):
    def failing(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "out.txt", failing)
    assert list(tmp_path.iterdir()) == []


def test_write_json_turns_non_finite_floats_into_null(tmp_path):
    write_json(tmp_path / "m.json", {"a": math.nan, "b": [1.5, math.inf], "c": "x"})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.5, None], "c": "x"}


def test_staged_directory_appears_only_on_success(tmp_path):
    out = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(RuntimeError):
        with staged_directory(out) as stage:
            (stage / "f.txt").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # not the output, not the stage, not the parents it made
    with staged_directory(out) as stage:
        (stage / "f.txt").write_text("done")
    assert (out / "f.txt").read_text() == "done"
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]


def test_staged_directory_refuses_an_existing_output_unless_asked(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with staged_directory(tmp_path / "run"):
            pass
    assert (tmp_path / "run" / "old.txt").exists()
    with staged_directory(tmp_path / "run", overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["new.txt"]


def test_tables_in_three_formats(tmp_path):
    rows = [{"model": "vae", "E": 0.123456, "extra": 1}, {"model": "ipae", "E": math.nan}]
    assert markdown_table(rows, ("model", "E")) == "| model | E |\n|---|---|\n| vae | 0.1235 |\n| ipae |  |\n"
    write_table(tmp_path, "t", rows, ("model", "E"))
    with open(tmp_path / "t.csv") as file:
        assert list(csv.DictReader(file)) == [{"model": "vae", "E": "0.123456"}, {"model": "ipae", "E": "nan"}]
    assert json.loads((tmp_path / "t.json").read_text()) == [{"model": "vae", "E": 0.123456}, {"model": "ipae", "E": None}]
    assert (tmp_path / "t.md").read_text() == markdown_table(rows, ("model", "E"))


def test_model_round_trip_gives_identical_codes(tmp_path):
    model = AutoEncoder(ModelConfig(n_inputs=3, hidden=(8, 8), n_latent=2, rate="vae", beta=0.5), seed=7)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for got, want in zip(loaded.encode(x), model.encode(x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_loading_a_missing_or_damaged_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model(tmp_path)
    save_model(AutoEncoder(ModelConfig(hidden=(8,))), tmp_path)
    weights = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="model.pt: cannot load weights"):
        load_model(tmp_path)
    save_model(AutoEncoder(ModelConfig(hidden=(8,))), tmp_path)
    config = json.loads((tmp_path / "model.json").read_text())
    config["config"]["hidden"] = [9]  # the weights no longer fit the architecture
    (tmp_path / "model.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="cannot load weights"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid model config"):
        load_model(tmp_path)
