import json
from dataclasses import replace

import pytest
import torch

import ipae
from ipae.checkpoint import has_state, load_model, load_state, read_metadata, save_model
from ipae.models import AutoEncoder, ModelConfig
from ipae.train import train

SMALL = ModelConfig(n_inputs=3, hidden=(8, 8), n_latent=2, rate="ip", beta=0.5)


def _data(n: int = 40) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(1))


def _assert_same_weights(a: AutoEncoder, b: AutoEncoder) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_a_saved_model_loads_with_identical_weights_config_and_codes(tmp_path):
    model = AutoEncoder(SMALL, seed=7)
    model.save(tmp_path / "model", metadata={"note": "hello"})
    loaded = ipae.load(tmp_path / "model")
    assert loaded.config == model.config and not loaded.training
    assert read_metadata(tmp_path / "model") == {"note": "hello"} and not has_state(tmp_path / "model")
    _assert_same_weights(loaded, model)
    x = _data(5)
    with torch.no_grad():
        for got, want in zip(loaded.encode(x), model.encode(x), strict=True):
            assert torch.equal(got, want)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json", "model.safetensors"]
    assert json.loads((tmp_path / "model" / "model.json").read_text())["ipae_version"] == ipae.__version__


def test_a_model_file_holds_no_pickle(tmp_path):
    AutoEncoder(SMALL).save(tmp_path)
    header_length = int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8 : 8 + header_length])
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F32"}


@pytest.mark.parametrize("pieces", [(20,), (8, 20), (3, 11, 20)])
def test_training_in_pieces_equals_training_in_one_bit_for_bit(tmp_path, pieces):
    settings = {"steps": 20, "batch_size": 16, "n_pairs": 2, "seed": 3, "progress": False, "log_every": 4}
    whole = AutoEncoder(SMALL, seed=0)
    expected = train(whole, _data(), **settings)
    model, state = AutoEncoder(SMALL, seed=0), None
    for stop_at in pieces:  # each piece through a checkpoint on disk
        result = train(model, _data(), **settings, resume=state, stop_at=stop_at)
        save_model(model, tmp_path / f"at{stop_at}", state=result.state)
        model, state = load_model(tmp_path / f"at{stop_at}"), load_state(tmp_path / f"at{stop_at}")
    _assert_same_weights(model, whole)
    assert state.step == 20 and torch.equal(state.history, expected.state.history)
    assert (result.loss == expected.loss).all() and len(result.loss) == 20


def test_a_finished_run_continues_to_more_steps_as_if_it_had_been_longer():
    longer = AutoEncoder(SMALL, seed=0)
    train(longer, _data(), steps=30, batch_size=16, progress=False)
    model = AutoEncoder(SMALL, seed=0)
    first = train(model, _data(), steps=12, batch_size=16, progress=False)
    train(model, _data(), steps=30, batch_size=16, progress=False, resume=first.state)
    _assert_same_weights(model, longer)


def test_continuing_with_other_settings_or_nothing_left_is_refused():
    model = AutoEncoder(SMALL, seed=0)
    state = train(model, _data(), steps=5, batch_size=16, progress=False).state
    with pytest.raises(ValueError, match="other settings: lr 0.001 then, 0.01 now"):
        train(model, _data(), steps=10, batch_size=16, lr=0.01, progress=False, resume=state)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, _data(), steps=5, batch_size=16, progress=False, resume=state)


def test_on_log_gets_the_window_means():
    records = []
    result = train(AutoEncoder(SMALL), _data(), steps=10, batch_size=16, log_every=4, progress=False, on_log=records.append)
    assert [record["step"] for record in records] == [4, 8, 10]
    assert records[1]["loss"] == pytest.approx(result.loss[4:8].mean(), rel=1e-6)
    assert records[2]["rate"] == pytest.approx(result.rate[8:10].mean(), rel=1e-6)


def test_missing_damaged_or_mismatched_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model(tmp_path / "nowhere")
    AutoEncoder(SMALL).save(tmp_path)
    weights = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="model.safetensors: damaged"):
        load_model(tmp_path)
    AutoEncoder(SMALL).save(tmp_path)
    record = json.loads((tmp_path / "model.json").read_text())
    record["config"]["hidden"] = [8, 9]
    (tmp_path / "model.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="do not fit the architecture"):
        load_model(tmp_path)
    record["config"]["activation"] = "swish"
    (tmp_path / "model.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="not a valid model config"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text('{"format": {"name": "ipae-model", "version": 99}}')
    with pytest.raises(ValueError, match="format version 99"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no training state"):
        load_state(tmp_path)


def test_ipae_load_gives_back_what_was_saved_model_or_estimator(tmp_path):
    from ipae import IPAE

    x = _data(30).numpy()
    estimator = IPAE(n_components=2, hidden=(8,), steps=3, batch_size=16, random_state=0).fit(x)
    estimator.save(tmp_path / "estimator")
    loaded = ipae.load(tmp_path / "estimator")
    assert isinstance(loaded, IPAE) and (loaded.transform(x) == estimator.transform(x)).all()
    AutoEncoder(SMALL).save(tmp_path / "model")
    assert isinstance(ipae.load(tmp_path / "model"), AutoEncoder)


@pytest.mark.parametrize("rate", ["ip", "pairwise-kl"])
def test_a_model_pickles(rate):
    import pickle

    model = AutoEncoder(replace(SMALL, rate=rate), seed=3)
    copy = pickle.loads(pickle.dumps(model))
    _assert_same_weights(copy, model)
    assert copy.config == model.config
