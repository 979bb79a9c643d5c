"""Tests of ipae.checkpoint: model directories (JSON + safetensors, never a pickle), networks of one's
own, the rate's options, damaged or foreign files, and continuing a run exactly."""

import json
import os
import pickle
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import ipae
from ipae.checkpoint import FORMAT, has_state, load_model, load_model_weights, load_state, read_metadata, save_model
from ipae.models import AutoEncoder, ModelSpec
from ipae.networks import MLP
from ipae.rates import Bhattacharyya, InformationPotential, Jensen, MonteCarlo, PairwiseKL, PriorKL
from ipae.training import TrainConfig, train

SMALL = MLP((3,), hidden=(8, 8), n_latent=2)


def _small(seed: int = 0, rate=None, **options) -> AutoEncoder:
    return AutoEncoder.from_architecture(SMALL, seed=seed, rate=rate or InformationPotential(2), beta=0.5, **options)


def _data(n: int = 40) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(1))


def _config(**fields) -> TrainConfig:
    return TrainConfig(**({"steps": 20, "batch_size": 16, "seed": 3, "progress": False, "log_every": 4} | fields))


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    first, second = a.state_dict(), b.state_dict()
    assert list(first) == list(second) and len(first) > 0
    for name in first:
        assert torch.equal(first[name], second[name]), name


def _assert_no_pickle(directory) -> None:
    """Every file is JSON or safetensors; none is a pickle (protocol byte 0x80 first) or torch.save's zip of one."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    assert files
    for path in files:
        data = path.read_bytes()
        assert not data.startswith(b"\x80"), f"{path.name} starts with the pickle protocol byte"
        assert not data.startswith(b"PK\x03\x04"), f"{path.name} is a zip archive (torch.save)"
        if path.suffix == ".json":
            json.loads(data)
        else:
            assert path.suffix == ".safetensors", path.name
            with safe_open(path, framework="pt") as tensors:  # an 8-byte length, a JSON header, raw tensors
                assert list(tensors.keys())


# --- networks of one's own -----------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """x (B, 2, 4, 4) -> (mu, raw logvar), each (B, 3): a convolution, a batch norm (with buffers), a linear layer."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(2, channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels * 16, 6)

    def forward(self, x):
        return self.linear(torch.relu(self.norm(self.convolution(x))).flatten(1)).chunk(2, dim=1)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 32)

    def forward(self, z):
        return self.linear(z).view(z.shape[0], 2, 4, 4)


def _own_model(seed: int = 0) -> AutoEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoEncoder(Encoder(), Decoder(), rate=MonteCarlo(4), distortion="bernoulli", beta=0.25, logvar_limit=None)
    with torch.no_grad():  # buffers that differ from a fresh module's
        model.encoder.norm.running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(seed))
        model.encoder.norm.running_var.uniform_(0.5, 2, generator=torch.Generator().manual_seed(seed + 1))
    return model.eval()


def _images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 2, 4, 4, generator=torch.Generator().manual_seed(2))


def test_a_model_of_ones_own_networks_loads_into_the_networks_given(tmp_path):
    model = _own_model(seed=1)
    ipae.save(model, tmp_path / "own")
    encoder, decoder = _own_model(seed=2).encoder, _own_model(seed=2).decoder  # built as when saved, other weights
    x = _images()
    with torch.no_grad():
        assert not torch.equal(encoder(x)[0], model.encoder(x)[0])
    loaded = ipae.load(tmp_path / "own", encoder=encoder, decoder=decoder)
    assert isinstance(loaded, AutoEncoder) and loaded.encoder is encoder and loaded.decoder is decoder and not loaded.training
    assert loaded.architecture is None
    assert (type(loaded.rate), loaded.rate.n_samples) == (MonteCarlo, 4)
    assert (loaded.distortion, loaded.beta, loaded.logvar_limit) == ("bernoulli", 0.25, None)
    _assert_same_weights(loaded, model)
    with torch.no_grad():
        for got, want in zip(loaded.encode(x), model.encode(x), strict=True):
            assert torch.equal(got, want)
        assert torch.equal(loaded.decode(model.encode(x)[0]), model.decode(model.encode(x)[0]))
        got = loaded.loss(x, generator=torch.Generator().manual_seed(3))
        want = model.loss(x, generator=torch.Generator().manual_seed(3))
        assert torch.equal(torch.stack(list(got)), torch.stack(list(want)))
    record = json.loads((tmp_path / "own" / "model.json").read_text())
    assert record["model"]["architecture"] is None and record["format"] == FORMAT == {"name": "ipae-model", "version": 2}


def test_a_model_of_ones_own_networks_needs_them_to_load(tmp_path):
    ipae.save(_own_model(), tmp_path / "own")
    for networks in [{}, {"encoder": Encoder()}, {"decoder": Decoder()}]:
        with pytest.raises(ValueError, match="load it with encoder= and decoder="):
            ipae.load(tmp_path / "own", **networks)


def test_a_preset_model_takes_no_networks(tmp_path):
    save_model(_small(), tmp_path)
    encoder, decoder = SMALL.build(torch.Generator().manual_seed(0))
    for networks in [{"encoder": encoder, "decoder": decoder}, {"encoder": encoder}, {"decoder": decoder}]:
        with pytest.raises(ValueError, match=r"\(mlp\); pass no encoder or decoder"):
            ipae.load(tmp_path, **networks)


def test_networks_whose_weights_do_not_fit_are_refused_naming_the_weights_file(tmp_path):
    ipae.save(_own_model(), tmp_path / "own")
    with pytest.raises(ValueError, match=r"model\.safetensors: the weights do not fit"):
        ipae.load(tmp_path / "own", encoder=Encoder(channels=5), decoder=Decoder())
    with pytest.raises(ValueError, match=r"model\.safetensors: .*first difference: encoder\.norm\."):
        load_model(tmp_path / "own", encoder=_NoNorm(), decoder=Decoder())


class _NoNorm(Encoder):
    """The encoder without its batch norm: the same shapes elsewhere, fewer tensors."""

    def __init__(self) -> None:
        super().__init__()
        del self.norm


# --- the files -----------------------------------------------------------------------------------------------------


def test_a_saved_model_loads_with_identical_weights_options_and_codes(tmp_path):
    model = _small(seed=7)
    save_model(model, tmp_path / "model", metadata={"note": "hello"})
    loaded = ipae.load(tmp_path / "model")
    assert loaded.architecture == model.architecture and loaded.spec == model.spec and not loaded.training
    assert read_metadata(tmp_path / "model") == {"note": "hello"} and not has_state(tmp_path / "model")
    _assert_same_weights(loaded, model)
    x = _data(5)
    with torch.no_grad():
        for got, want in zip(loaded.encode(x), model.encode(x), strict=True):
            assert torch.equal(got, want)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json", "model.safetensors"]
    assert json.loads((tmp_path / "model" / "model.json").read_text())["ipae_version"] == ipae.__version__


@pytest.mark.parametrize(
    "rate, options",
    [
        (InformationPotential(8), {"n_partners": 8}),
        (InformationPotential(None), {"n_partners": None}),
        (InformationPotential(), {"n_partners": 1}),
        (MonteCarlo(4), {"n_samples": 4}),
        (PriorKL(), {}),
        (Jensen(), {}),
        (PairwiseKL(), {}),
        (Bhattacharyya(), {}),
    ],
    ids=lambda value: repr(value) if not isinstance(value, dict) else "",
)
def test_the_rate_and_its_options_survive_the_round_trip(tmp_path, rate, options):
    save_model(_small(rate=rate, distortion="bernoulli", logvar_limit=4.0), tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["model"]["rate"] == {"name": rate.name, **options}
    loaded = load_model(tmp_path)
    assert type(loaded.rate) is type(rate)
    assert {name: getattr(loaded.rate, name) for name in options} == options
    assert (loaded.distortion, loaded.beta, loaded.logvar_limit) == ("bernoulli", 0.5, 4.0)


def test_the_saved_files_hold_no_pickle(tmp_path):
    model = _small()
    state = train(model, _data(), _config(steps=3)).state
    save_model(model, tmp_path / "preset", state=state, metadata={"a": [1, 2]})
    names = sorted(p.name for p in (tmp_path / "preset").iterdir())
    assert names == ["model.json", "model.safetensors", "training.json", "training.safetensors"]
    _assert_no_pickle(tmp_path / "preset")
    ipae.save(_own_model(), tmp_path / "own")
    _assert_no_pickle(tmp_path / "own")
    # the check sees a pickle, and torch.save's zip of one
    (tmp_path / "pickled" / "model.safetensors").parent.mkdir()
    (tmp_path / "pickled" / "model.safetensors").write_bytes(pickle.dumps(model.state_dict()))
    with pytest.raises(AssertionError, match="pickle protocol byte"):
        _assert_no_pickle(tmp_path / "pickled")
    torch.save(model.state_dict(), tmp_path / "pickled" / "model.safetensors")
    with pytest.raises(AssertionError, match="zip archive"):
        _assert_no_pickle(tmp_path / "pickled")
    header_length = int.from_bytes((tmp_path / "preset" / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "preset" / "model.safetensors").read_bytes()[8 : 8 + header_length])
    assert {entry["dtype"] for name, entry in header.items() if name != "__metadata__"} == {"F32"}


def test_a_format_version_1_model_is_refused_with_its_version(tmp_path):
    # what ipae wrote before the redesign: the paper's MLPs only, described by a flat "config"
    config = {"n_inputs": 3, "hidden": [8, 8], "n_latent": 2, "activation": "relu", "distortion": "mse", "rate": "ip", "beta": 0.5}
    record = {"format": {"name": "ipae-model", "version": 1}, "ipae_version": "0.1.0", "config": config, "metadata": {}}
    save_model(_small(), tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(record))
    for read in (load_model, ipae.load, read_metadata):
        with pytest.raises(ValueError, match="model format version 1 is not 2 .*older ipae"):
            read(tmp_path)


def test_missing_damaged_or_mismatched_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_model(tmp_path / "nowhere")
    save_model(_small(), tmp_path)
    weights = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ValueError, match="model.safetensors: damaged"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors: no such file"):
        load_model(tmp_path)
    save_model(_small(), tmp_path)
    record = json.loads((tmp_path / "model.json").read_text())
    record["model"]["architecture"]["hidden"] = [8, 9]
    (tmp_path / "model.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"model\.safetensors: the weights do not fit the architecture"):
        load_model(tmp_path)
    for key, value in [("activation", "swish"), ("kind", "resnet")]:
        (tmp_path / "model.json").write_text(
            json.dumps(record | {"model": record["model"] | {"architecture": record["model"]["architecture"] | {key: value}}})
        )
        with pytest.raises(ValueError, match="not a valid model description"):
            load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(record | {"model": record["model"] | {"rate": {"name": "gan"}}}))
    with pytest.raises(ValueError, match=r"model\.json: the rate \{'name': 'gan'\} is not one of ipae's \(ip, vae, .*rate="):
        load_model(tmp_path)
    for field, value in [("rate", {"name": "ip", "n_pairs": 2}), ("rate", ["ip"]), ("distortion", "l1"), ("beta", -1)]:
        (tmp_path / "model.json").write_text(json.dumps(record | {"model": record["model"] | {field: value}}))
        with pytest.raises(ValueError, match="not a valid model description"):
            load_model(tmp_path)
    (tmp_path / "model.json").write_text('{"format": {"name": "ipae-model", "version": 99}}')
    with pytest.raises(ValueError, match="format version 99 is not 2 .*upgrade ipae"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text('{"format": {"name": "something-else", "version": 2}}')
    with pytest.raises(ValueError, match="not an ipae model file"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no training state"):
        load_state(tmp_path)


def test_weights_load_only_into_the_same_model(tmp_path):
    model = _small(seed=5)
    save_model(model, tmp_path)
    same = _small(seed=6)
    load_model_weights(same, tmp_path)
    _assert_same_weights(same, model)
    others = _small(rate=InformationPotential(3)), _small(rate=PriorKL()), _small(logvar_limit=None), _small(distortion="bernoulli")
    for other in (*others, AutoEncoder.from_architecture(SMALL, beta=0.4, rate=InformationPotential(2))):
        with pytest.raises(ValueError, match="holds another model"):
            load_model_weights(other, tmp_path)


# --- continuing a run ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [(20,), (8, 20), (3, 11, 20)])
def test_training_in_pieces_equals_training_in_one_bit_for_bit(tmp_path, pieces):
    whole = _small()
    expected = train(whole, _data(), _config())
    model, state = _small(), None
    for stop_at in pieces:  # each piece through a checkpoint on disk
        result = train(model, _data(), _config(), resume=state, stop_at=stop_at)
        save_model(model, tmp_path / f"at{stop_at}", state=result.state)
        model, state = load_model(tmp_path / f"at{stop_at}"), load_state(tmp_path / f"at{stop_at}")
    _assert_same_weights(model, whole)
    assert state.step == 20 and torch.equal(state.history, expected.state.history)
    assert (result.loss == expected.loss).all() and len(result.loss) == 20


def test_a_run_continues_from_a_checkpoint_directory(tmp_path):
    whole = _small()
    train(whole, _data(), _config())
    first = _small()
    save_model(first, tmp_path, state=train(first, _data(), _config(), stop_at=9).state)
    model = _small(seed=11)  # the same model; its weights come from the directory
    result = train(model, _data(), _config(), resume=tmp_path)
    _assert_same_weights(model, whole)
    assert len(result.loss) == 20


def test_a_run_of_ones_own_networks_continues_exactly(tmp_path):
    x = _images(24)
    whole = _own_model().train()
    train(whole, x, _config(steps=6, batch_size=8))
    model = _own_model().train()
    result = train(model, x, _config(steps=6, batch_size=8), stop_at=4)
    save_model(model, tmp_path, state=result.state)
    again = load_model(tmp_path, encoder=Encoder(), decoder=Decoder()).train()
    train(again, x, _config(steps=6, batch_size=8), resume=load_state(tmp_path))
    _assert_same_weights(again, whole)


def test_a_finished_run_continues_to_more_steps_as_if_it_had_been_longer():
    longer = _small()
    train(longer, _data(), _config(steps=30))
    model = _small()
    first = train(model, _data(), _config(steps=12))
    train(model, _data(), _config(steps=30), resume=first.state)
    _assert_same_weights(model, longer)


def test_continuing_with_other_settings_or_nothing_left_is_refused():
    model = _small()
    state = train(model, _data(), _config(steps=5)).state
    with pytest.raises(ValueError, match="other settings: lr 0.001 then, 0.01 now"):
        train(model, _data(), _config(steps=10, lr=0.01), resume=state)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, _data(), _config(steps=5), resume=state)


def test_on_log_gets_the_window_means():
    records = []
    result = train(_small(), _data(), _config(steps=10), on_log=records.append)
    assert [record["step"] for record in records] == [4, 8, 10]
    assert records[1]["loss"] == pytest.approx(result.loss[4:8].mean(), rel=1e-6)
    assert records[2]["rate"] == pytest.approx(result.rate[8:10].mean(), rel=1e-6)


def test_ipae_load_gives_back_what_was_saved_model_or_estimator(tmp_path):
    from ipae import IPAE

    x = _data(30).numpy()
    estimator = IPAE(n_components=2, hidden=(8,), steps=3, batch_size=16, random_state=0).fit(x)
    ipae.save(estimator, tmp_path / "estimator")
    loaded = ipae.load(tmp_path / "estimator")
    assert isinstance(loaded, IPAE) and (loaded.transform(x) == estimator.transform(x)).all()
    save_model(_small(), tmp_path / "model")
    assert isinstance(ipae.load(tmp_path / "model"), AutoEncoder)


@pytest.mark.parametrize("rate", [InformationPotential(2), PairwiseKL(), MonteCarlo(3)], ids=repr)
def test_a_model_pickles(rate):
    model = _small(seed=3, rate=rate)
    copy = pickle.loads(pickle.dumps(model))
    _assert_same_weights(copy, model)
    assert copy.spec == model.spec
    own = _own_model()
    _assert_same_weights(pickle.loads(pickle.dumps(own)), own)


def test_the_monitor_records_survive_the_round_trip_and_damaged_ones_are_refused(tmp_path):
    model = _small()
    state = train(model, _data(), _config(), monitor=_data()[:30], stop_at=10).state
    assert [record["step"] for record in state.monitor] == [10]
    save_model(model, tmp_path, state=state)
    assert load_state(tmp_path).monitor == state.monitor
    record = json.loads((tmp_path / "training.json").read_text())
    for damaged in ({"I_mc": 1.0}, [{"step": "10"}], [{"step": True}], [3]):
        (tmp_path / "training.json").write_text(json.dumps(record | {"monitor": damaged}))
        with pytest.raises(ValueError, match="monitor must be a list of objects with an integer step"):
            load_state(tmp_path)
    del record["monitor"]  # a state written before the monitor existed
    (tmp_path / "training.json").write_text(json.dumps(record))
    assert load_state(tmp_path).monitor == []


# --- one way to save and load: ipae.save and ipae.load -------------------------------------------------------------

FORMAT_2 = Path(__file__).parent / "data" / "format2"  # written by ipae at 98c7081 (tests/data/format2/write.py)


def test_directories_of_format_2_written_by_earlier_code_still_load():
    expected = json.loads((FORMAT_2 / "expected.json").read_text())
    x = torch.tensor(expected["x"])
    model = ipae.load(FORMAT_2 / "model")
    assert model.spec == ModelSpec(MLP((3,), (4,), 2), "ip", {"n_partners": 2}, beta=0.5, distortion_weight=0.5)
    with torch.no_grad():
        np.testing.assert_allclose(model.encode(x)[0].double().numpy(), expected["model_codes"], rtol=1e-6, atol=1e-7)
    estimator = ipae.load(FORMAT_2 / "estimator")
    assert isinstance(estimator, ipae.IPAE) and (estimator.n_components, estimator.hidden, estimator.n_features_in_) == (2, (4,), 3)
    np.testing.assert_allclose(estimator.transform(x.numpy()), expected["estimator_codes"], rtol=1e-6, atol=1e-7)


def test_a_model_json_without_the_distortion_weight_loads_with_weight_1(tmp_path):
    shutil.copytree(FORMAT_2 / "model", tmp_path / "older")
    record = json.loads((tmp_path / "older" / "model.json").read_text())
    del record["model"]["distortion_weight"]  # as ipae wrote it before the weight existed
    (tmp_path / "older" / "model.json").write_text(json.dumps(record))
    assert ipae.load(tmp_path / "older").distortion_weight == 1.0


def test_model_json_holds_the_models_description(tmp_path):
    model = _small(rate=MonteCarlo(3), distortion="bernoulli", logvar_limit=4.0)
    ipae.save(model, tmp_path / "m")
    record = json.loads((tmp_path / "m" / "model.json").read_text())["model"]
    assert record == model.spec.to_dict() and ModelSpec.from_dict(record) == model.spec
    assert record["rate"] == {"name": "mc", "n_samples": 3} and record["architecture"] == SMALL.to_dict()


def test_save_refuses_an_existing_directory_unless_told_to_overwrite(tmp_path):
    first, second = _small(seed=1), _small(seed=2)
    target = tmp_path / "m"
    ipae.save(first, target)
    (target / "note.txt").write_text("mine")
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    with pytest.raises(FileExistsError, match=f"^{re.escape(str(target))} already exists; pass overwrite=True to replace it$"):
        ipae.save(second, target)
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before  # untouched
    ipae.save(second, target, overwrite=True)
    assert sorted(path.name for path in target.iterdir()) == ["model.json", "model.safetensors"]  # replaced as a whole
    _assert_same_weights(ipae.load(target), second)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileExistsError, match="empty already exists"):  # as the command line: an empty directory too
        ipae.save(first, tmp_path / "empty")
    ipae.save(first, tmp_path / "new" / "deeper")  # missing parents are made
    _assert_same_weights(ipae.load(tmp_path / "new" / "deeper"), first)


def test_an_estimator_saves_and_loads_through_ipae_save_and_load_and_is_not_overwritten(tmp_path):
    x = _data(30).numpy()
    estimator = ipae.IPAE(n_components=2, hidden=(8,), steps=3, batch_size=16, random_state=0).fit(x)
    ipae.save(estimator, tmp_path / "estimator")
    with pytest.raises(FileExistsError, match="estimator already exists"):
        ipae.save(estimator, tmp_path / "estimator")
    other = ipae.BetaVAE(n_components=2, hidden=(8,), steps=3, batch_size=16, random_state=1).fit(x)
    ipae.save(other, tmp_path / "estimator", overwrite=True)
    loaded = ipae.load(tmp_path / "estimator")
    assert type(loaded) is ipae.BetaVAE and (loaded.transform(x) == other.transform(x)).all()
    assert read_metadata(tmp_path / "estimator")["estimator"]["class"] == "BetaVAE"


def test_the_one_way_to_save_and_load_is_the_only_one():
    import ipae.checkpoint
    import ipae.estimators

    assert "load_estimator" not in ipae.__all__ and not hasattr(ipae.estimators, "load_estimator")
    assert not hasattr(ipae.checkpoint, "save") and not hasattr(ipae.estimators.IPAE, "save")
    assert ipae.save.__module__ == ipae.load.__module__


def _modes(directory: Path) -> dict[str, int]:
    return {str(path.relative_to(directory)): stat.S_IMODE(path.stat().st_mode) for path in [directory, *directory.rglob("*")]}


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_every_file_written_has_the_permissions_of_a_file_made_as_usual(tmp_path, umask):
    model = _small()
    state = train(model, _data(), _config(steps=3)).state
    estimator = ipae.IPAE(n_components=2, hidden=(8,), steps=2, batch_size=16, random_state=0).fit(_data(30).numpy())
    old = os.umask(umask)
    try:
        ipae.save(model, tmp_path / "model")
        ipae.save(estimator, tmp_path / "estimator")
        save_model(model, tmp_path / "checkpoint", state=state)  # what the training loop writes
        ipae.save(model, tmp_path / "model", overwrite=True)
    finally:
        os.umask(old)
    for name, names in [
        ("model", ["model.json", "model.safetensors"]),
        ("estimator", ["model.json", "model.safetensors"]),
        ("checkpoint", ["model.json", "model.safetensors", "training.json", "training.safetensors"]),
    ]:
        modes = _modes(tmp_path / name)
        assert sorted(modes) == [".", *names]
        assert modes == {".": 0o777 & ~umask} | dict.fromkeys(names, 0o666 & ~umask), name
