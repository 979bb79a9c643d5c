"""ipae.training: one training path from any data source, exact in pieces and from checkpoints, no process-wide effects."""

import ctypes
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ipae import runtime, training
from ipae._files import staged_directory, write_atomic
from ipae.checkpoint import load_state, read_metadata, save_state
from ipae.data import arrays, sources
from ipae.data.toy import gaussian_grid
from ipae.models import AutoEncoder
from ipae.rates import InformationPotential, MonteCarlo, PriorKL
from ipae.runtime import native_bf16, resolve_precision
from ipae.training import TrainConfig, TrainingDiverged, train
from reliability import record

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(seed: int = 0, rate=None, **options) -> AutoEncoder:
    return AutoEncoder.from_preset("toy", seed=seed, hidden=(32,), n_latent=4, rate=rate or InformationPotential(n_partners=2), **options)


def _config(**options) -> TrainConfig:
    return TrainConfig(**{"steps": 20, "batch_size": 32, "log_every": 5, "progress": False, **options})


@pytest.fixture(scope="module")
def toy_x():
    return gaussian_grid(n_per_component=8).x  # (200, 2) float32


def _weights(model: AutoEncoder) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _trained(data, config: TrainConfig, **options) -> dict[str, torch.Tensor]:
    model = _model()
    train(model, data, config, **options)
    return _weights(model)


class Pairs(Dataset):
    """A map-style Dataset of (x, y) pairs, read one item at a time (no __getitems__)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], index


# the basics: seeds, history, pieces, divergence


def test_same_seed_same_weights_and_another_seed_differs(toy_x):
    runs = []
    for seed in (3, 3, 4):
        model = _model()
        result = train(model, toy_x, _config(seed=seed))
        runs.append((result, _weights(model)))
    np.testing.assert_array_equal(runs[0][0].loss, runs[1][0].loss)
    _assert_same_weights(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0].loss, runs[2][0].loss)
    assert not torch.equal(runs[0][1]["encoder.heads.weight"], runs[2][1]["encoder.heads.weight"])


@pytest.mark.parametrize("rate", [InformationPotential(n_partners=None), PriorKL()], ids=["ip-all", "vae"])
def test_history_is_consistent_and_training_lowers_the_loss(toy_x, rate):
    beta = 0.05
    model = AutoEncoder.from_preset("toy", hidden=(64,), n_latent=4, rate=rate, beta=beta)
    result = train(model, toy_x, _config(steps=200, batch_size=100, lr=3e-3, log_every=50))
    assert result.loss.shape == result.distortion.shape == result.rate.shape == (200,)
    np.testing.assert_allclose(result.loss, result.distortion + beta * result.rate, rtol=1e-5)
    # The inputs' variance is about 8 per axis, so an untrained decoder's squared error is about 16+.
    assert result.distortion[:10].mean() > 10
    assert result.loss[-20:].mean() < 0.5 * result.loss[:10].mean()
    assert result.seconds > 0
    assert result.state.step == 200 and result.state.history.shape == (200, 3)


@pytest.mark.parametrize(
    "rate, n_samples",
    [(InformationPotential(n_partners=2), 1), (InformationPotential(n_partners=None), 2), (PriorKL(), 1), (MonteCarlo(n_samples=2), 1)],
    ids=["ip-2", "ip-all-K2", "vae", "mc"],
)
def test_training_in_pieces_equals_one_piece_bit_for_bit(toy_x, rate, n_samples):
    config = _config(steps=24, n_samples=n_samples)
    whole = AutoEncoder.from_preset("toy", hidden=(32,), n_latent=4, rate=rate)
    expected = train(whole, toy_x, config)
    pieces = AutoEncoder.from_preset("toy", hidden=(32,), n_latent=4, rate=rate)
    result = None
    for stop in (7, 15, 24):  # pieces that end between log steps too
        result = train(pieces, toy_x, config, resume=None if result is None else result.state, stop_at=stop)
    _assert_same_weights(_weights(pieces), _weights(whole))
    np.testing.assert_array_equal(result.loss, expected.loss)
    assert torch.equal(result.state.generator, expected.state.generator)


def test_a_run_cannot_continue_with_other_settings(toy_x):
    model = _model()
    first = train(model, toy_x, _config(), stop_at=10)
    with pytest.raises(ValueError, match="lr 0.001 then, 0.002 now"):
        train(model, toy_x, _config(lr=2e-3), resume=first.state)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, toy_x, _config(), resume=first.state, stop_at=10)
    with pytest.raises(ValueError, match="nothing to train"):
        train(model, toy_x, _config(), stop_at=21)


def test_divergence_is_reported_at_the_first_non_finite_step(toy_x):
    model = _model()
    calls = {"n": 0}

    def loss_turning_nan(*args, **kwargs):
        terms = type(model).objective(model, *args, **kwargs)
        calls["n"] += 1
        return terms._replace(loss=terms.loss * math.nan) if calls["n"] > 150 else terms

    model.forward = loss_turning_nan  # what the training loop calls (in one process)
    with pytest.raises(TrainingDiverged, match="step 150") as caught:
        train(model, toy_x, _config(steps=400, log_every=100))
    assert caught.value.step == 150
    assert caught.value.result.loss.shape == (151,)
    assert np.isfinite(caught.value.result.loss[:150]).all() and np.isnan(caught.value.result.loss[150])


def test_a_huge_learning_rate_diverges_at_the_first_non_finite_step_not_at_the_check(toy_x):
    # Adam moves every weight by about lr in the first update, so with lr = 1e30 the second loss overflows.
    with pytest.raises(TrainingDiverged) as caught:
        train(_model(), toy_x, _config(lr=1e30, log_every=10))
    loss = caught.value.result.loss
    assert caught.value.step == 1 and f"step {caught.value.step}" in str(caught.value)
    assert loss.shape == (2,) and np.isfinite(loss[0]) and not np.isfinite(loss[1])


# input checks


def test_a_batch_larger_than_the_data_is_cut_to_it():
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    result = train(_model(), x, _config(steps=5, batch_size=512))
    assert np.isfinite(result.loss).all() and result.state.settings["batch_size"] == 10


@pytest.mark.parametrize(
    "data, message",
    [
        (torch.zeros(5, 3), r"samples of shape \(2,\)"),
        (torch.zeros(5), r"shape \(N, ...\)"),
        (torch.zeros(0, 2), "empty"),
        (torch.zeros(5, 2, dtype=torch.bool), "numeric"),
        (torch.tensor([[0.0, math.nan]]), "NaN"),
        (np.array([[0.0, math.inf]]), "NaN or infinite"),
        ("x.npy", "must be a tensor, an array"),
        (42, "must be a tensor, an array"),
    ],
)
def test_bad_data_is_refused(data, message):
    with pytest.raises(ValueError, match=message):
        train(_model(), data, _config(steps=1))


def test_only_an_autoencoder_is_trained(toy_x):
    with pytest.raises(ValueError, match="ipae.AutoEncoder"):
        train(torch.nn.Linear(2, 2), toy_x, _config())


@pytest.mark.parametrize(
    "options",
    [
        {"steps": 0},
        {"steps": 2.0},
        {"steps": True},
        {"batch_size": 0},
        {"batch_size": False},
        {"n_samples": 0},
        {"log_every": 0},
        {"lr": 0.0},
        {"lr": -1e-3},
        {"lr": math.inf},
        {"lr": math.nan},
        {"lr": True},
        {"lr": "0.001"},
        {"precision": "fp16"},
        {"precision": "FP32"},
        {"checkpoint_every": 0},
        {"checkpoint_every": True},
        {"checkpoint_every": 1.5},
        {"seed": True},
        {"seed": 1.5},
        {"seed": "3"},
        {"seed": 2**64},
        {"compile": "no"},
        {"compile": 1},
        {"progress": "yes"},
        {"monitor_every": 0},
        {"monitor_every": 1.5},
        {"monitor_samples": 0},
        {"monitor_samples": True},
    ],
)
def test_bad_config_values_are_refused(options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        TrainConfig(**options)


def test_good_config_values_are_accepted():
    for options in ({"seed": -1}, {"seed": 2**64 - 1}, {"lr": 1}, {"checkpoint_every": None}, {"progress": None}, {"compile": True}):
        assert TrainConfig(**options).to_dict().items() >= options.items()


def test_a_config_is_frozen_and_its_defaults_are_the_papers():
    config = TrainConfig()
    assert (config.steps, config.batch_size, config.lr, config.precision, config.checkpoint_every) == (5000, 512, 1e-3, "fp32", None)
    with pytest.raises(AttributeError):
        config.steps = 1
    assert TrainConfig(**config.to_dict()) == config


# data sources


@pytest.mark.parametrize(
    "source",
    ["float64 array", "float32 array", "memory-mapped .npy", "memory-mapped Fortran-order .npy", "Dataset of (x, y)", "TensorDataset"],
)
def test_every_indexed_source_trains_to_the_weights_of_the_tensor(toy_x, tmp_path, source):
    config = _config(steps=12, batch_size=48)  # 200 samples: the schedule crosses a pass
    expected = _trained(toy_x, config)
    if source == "float64 array":
        data = toy_x.double().numpy()
    elif source == "float32 array":
        data = toy_x.numpy().copy()
    elif source == "memory-mapped .npy":
        np.save(tmp_path / "x.npy", toy_x.numpy())
        data = np.load(tmp_path / "x.npy", mmap_mode="r")
        assert isinstance(data, np.memmap)
    elif source == "memory-mapped Fortran-order .npy":  # not C-contiguous: rows are taken from the mapping, not read with pread
        np.save(tmp_path / "x.npy", np.asfortranarray(toy_x.numpy()))
        data = np.load(tmp_path / "x.npy", mmap_mode="r")
        assert isinstance(data, np.memmap) and not data.flags.c_contiguous
    elif source == "Dataset of (x, y)":
        data = Pairs(toy_x)
    else:
        data = TensorDataset(toy_x, torch.arange(len(toy_x)))  # has __getitems__
    _assert_same_weights(_trained(data, config), expected)


def test_a_memory_mapped_array_in_its_own_dtype_trains_as_the_tensor(toy_x, tmp_path):
    np.save(tmp_path / "x.npy", toy_x.double().numpy())
    data = np.load(tmp_path / "x.npy", mmap_mode="r")
    _assert_same_weights(_trained(data, _config()), _trained(toy_x, _config()))


def test_a_memory_mapped_array_not_in_c_order_is_copied_up_to_mmap_bytes(toy_x, tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.asfortranarray(toy_x.numpy()))
    data = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert not data.flags.c_contiguous
    monkeypatch.setattr(arrays, "MMAP_BYTES", data.nbytes)
    _assert_same_weights(_trained(data, _config()), _trained(toy_x, _config()))
    monkeypatch.setattr(arrays, "MMAP_BYTES", data.nbytes - 1)
    with pytest.raises(ValueError, match=f"a memory-mapped array of {data.nbytes} bytes that is not C-ordered"):
        train(_model(), data, _config())


@pytest.mark.parametrize("where", ["memmap", "Dataset", "DataLoader", "list"])
def test_a_non_finite_batch_is_refused(toy_x, tmp_path, where):
    x = toy_x.clone()
    x[17, 1] = math.nan
    if where == "memmap":
        np.save(tmp_path / "x.npy", x.numpy())
        data = np.load(tmp_path / "x.npy", mmap_mode="r")
    elif where == "Dataset":
        data = Pairs(x)
    elif where == "DataLoader":
        data = DataLoader(TensorDataset(x), batch_size=50)
    else:
        data = list(x.split(50))
    with pytest.raises(ValueError, match="NaN or infinite"):
        train(_model(), data, _config(steps=20, batch_size=50))  # 4 passes: every sample is used


def _loader(x: torch.Tensor, seed: int = 0) -> DataLoader:
    return DataLoader(
        TensorDataset(x, torch.arange(len(x))), batch_size=32, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )


def test_a_shuffling_dataloader_trains_and_resumes_exactly_with_a_fresh_identical_loader(toy_x):
    config = _config(steps=15)  # 6 batches an epoch: resuming at 8 replays into the second epoch
    whole = _model()
    expected = train(whole, _loader(toy_x), config)
    assert np.isfinite(expected.loss).all() and expected.state.settings["batch_size"] == 32
    pieces = _model()
    first = train(pieces, _loader(toy_x), config, stop_at=8)
    result = train(pieces, _loader(toy_x), config, resume=first.state)
    _assert_same_weights(_weights(pieces), _weights(whole))
    np.testing.assert_array_equal(result.loss, expected.loss)
    # the loader's own shuffle is what it trained on: another seed gives other weights
    assert not torch.equal(_trained(_loader(toy_x, seed=1), config)["encoder.heads.weight"], _weights(whole)["encoder.heads.weight"])


def test_a_list_of_batches_is_iterated_again_each_epoch(toy_x):
    batches = list(toy_x[:64].split(32))  # 2 batches
    result = train(_model(), batches, _config(steps=5))
    assert np.isfinite(result.loss).all()
    _assert_same_weights(_trained(batches, _config(steps=5)), _trained(batches * 3, _config(steps=5)))
    pairs = [(batch, torch.zeros(len(batch))) for batch in batches]  # (x, y): trains on x
    _assert_same_weights(_trained(pairs, _config(steps=5)), _trained(batches, _config(steps=5)))


def test_a_one_shot_iterator_must_last_the_run(toy_x):
    batches = list(toy_x[:96].split(32))  # 3 batches
    result = train(_model(), iter(batches), _config(steps=3))
    assert result.loss.shape == (3,)
    with pytest.raises(ValueError, match="ran out after 3 batches"):
        train(_model(), (batch for batch in batches), _config(steps=5))
    with pytest.raises(ValueError, match="ran out after 0 batches"):
        train(_model(), [], _config(steps=5))


# the schedule: the passes drawn as before, one at a time


def _batch_indices_up_front(n: int, batch_size: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """The schedule as train drew it whole before the first step (ipae 3366ffa): (steps, batch_size)."""
    epochs = -(-steps * batch_size // n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(epochs)])
    return order[: steps * batch_size].view(steps, batch_size)


@pytest.mark.parametrize("n, batch_size, steps", [(200, 48, 12), (10, 3, 40), (7, 7, 5), (1, 1, 4), (100, 32, 50), (1000, 512, 9)])
def test_the_schedule_is_the_one_drawn_up_front_before(n, batch_size, steps):
    expected = _batch_indices_up_front(n, batch_size, steps, torch.Generator().manual_seed(5))
    schedule = sources._Schedule(n, batch_size, 5, CPU)
    assert torch.equal(torch.stack([schedule(step) for step in range(steps)]), expected)
    for step in np.random.default_rng(n).permutation(steps).tolist():  # as a resumed run asks: ahead, then behind
        assert torch.equal(schedule(step), expected[step]), step


class _UpFront:
    """The schedule drawn whole before the first step, as train did: to compare the weights it gives."""

    steps = None

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.indices = _batch_indices_up_front(n, batch_size, self.steps, torch.Generator().manual_seed(seed)).to(device)

    def __call__(self, step: int) -> torch.Tensor:
        return self.indices[step]


@pytest.mark.parametrize("source", ["tensor", "memory-mapped .npy", "Dataset"])
def test_training_gives_the_weights_of_the_schedule_drawn_up_front(toy_x, tmp_path, monkeypatch, source):
    config = _config(steps=23, batch_size=48, seed=4)  # 200 samples: 5 passes and a half
    np.save(tmp_path / "x.npy", toy_x.numpy())
    data = {"tensor": toy_x, "memory-mapped .npy": np.load(tmp_path / "x.npy", mmap_mode="r"), "Dataset": Pairs(toy_x)}[source]
    lazy, pieces = _model(), _model()
    train(lazy, data, config)
    train(pieces, data, config, resume=train(pieces, data, config, stop_at=9).state)  # resumed in the third pass
    monkeypatch.setattr(_UpFront, "steps", config.steps)
    monkeypatch.setattr(sources, "_Schedule", _UpFront)
    _assert_same_weights(_weights(lazy), _trained(data, config))
    _assert_same_weights(_weights(pieces), _trained(data, config))
    record(
        "determinism",
        f"the schedule drawn pass by pass against the one drawn up front ({config.steps} steps of {config.batch_size} over "
        f"{len(toy_x)} samples, seed {config.seed})",
        tried=2,
        outcome="bit-identical weights",
        detail=f"{source}; straight and resumed at step 9",
    )


def test_a_step_near_ten_million_is_found_without_building_the_schedule():
    """Drawn up front, the schedule of 10^7 steps of 4 would be 320 MB; found lazily, no allocation is
    larger than a pass (8 bytes a sample), so memory does not grow with the steps."""
    n, batch_size, step = 1 << 18, 4, 10**7 - 1  # the step is in pass 152
    schedule = sources._Schedule(n, batch_size, 0, CPU)
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as profile:  # kineto takes seconds to start
        found = schedule(step)
    largest = max(event.cpu_memory_usage for event in profile.function_events)
    assert 8 * n <= largest <= 2 * 8 * n  # a pass is seen (the profiler counts allocations), and nothing larger
    record(
        "memory",
        f"training schedule: step 10^7 - 1 of batches of {batch_size} over {n} samples",
        tried=1,
        outcome="found without building the schedule: no allocation larger than one pass",
        detail=f"largest allocation {largest / 2**20:.1f} MiB; the whole schedule would be {(step + 1) * batch_size * 8 / 2**20:.0f} MiB",
    )
    passes, offset = divmod(step * batch_size, n)
    generator = torch.Generator().manual_seed(0)
    for _ in range(passes + 1):  # the passes up to the step's, drawn as the whole schedule drew them
        order = torch.randperm(n, generator=generator)
    assert torch.equal(found, order[offset : offset + batch_size])


# checkpoints


def test_checkpoints_hold_the_last_multiple_and_resume_into_a_fresh_model_exactly(toy_x, tmp_path):
    config = _config(steps=25, checkpoint_every=10)
    whole = _model()
    expected = train(whole, toy_x, config)
    logs = []
    checkpoint = tmp_path / "run.checkpoint"
    interrupted = _model()
    train(interrupted, toy_x, config, checkpoint_dir=checkpoint, metadata={"note": "hi"}, stop_at=23, on_log=logs.append)
    assert sorted(path.name for path in checkpoint.iterdir()) == [
        "model.json",
        "model.safetensors",
        "training.json",
        "training.safetensors",
    ]
    assert json.loads((checkpoint / "training.json").read_text())["step"] == 20
    assert read_metadata(checkpoint) == {"note": "hi"}
    assert [log["step"] for log in logs] == [5, 10, 15, 20, 23]
    assert load_state(checkpoint).history.shape == (20, 3)
    assert not list(tmp_path.glob(".*"))  # no staging directory left beside it

    fresh = _model(seed=5)  # other initial weights: the checkpoint's replace them
    result = train(fresh, toy_x, config, resume=checkpoint)
    _assert_same_weights(_weights(fresh), _weights(whole))
    np.testing.assert_array_equal(result.loss, expected.loss)


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"config": {"lr": 2e-3}}, "other settings: lr 0.001 then, 0.002 now"),
        ({"data": "reversed"}, "on other data: its 200 samples differ"),
        ({"config": {"seed": 1}}, "other settings: seed 0 then, 1 now"),
    ],
)
def test_a_refused_continuation_leaves_the_model_as_it_was(toy_x, tmp_path, change, fragment):
    train(_model(), toy_x, _config(checkpoint_every=10), checkpoint_dir=tmp_path / "run", stop_at=15)
    model = _model(seed=3)
    before = _weights(model)
    data = toy_x.flip(0) if change.get("data") == "reversed" else toy_x
    config = _config(checkpoint_every=10, **change.get("config", {}))
    with pytest.raises(ValueError, match=fragment):
        train(model, data, config, resume=tmp_path / "run")
    _assert_same_weights(_weights(model), before)
    record(
        "bad input", "train(resume=...) with other settings or data", tried=1, outcome="refused; the model left unchanged", detail=fragment
    )


def test_a_continuation_on_other_data_is_refused_for_every_fingerprinted_source(toy_x, tmp_path):
    first = train(_model(), toy_x, _config(), stop_at=10)
    assert first.state.settings["data_sha256"] == sources._fingerprint(toy_x)
    other = toy_x.clone()
    other[17, 1] += 1e-3  # one value of 400
    np.save(tmp_path / "other.npy", other.numpy())
    others = (other, other.numpy(), np.load(tmp_path / "other.npy", mmap_mode="r"))
    for data in others:
        with pytest.raises(ValueError, match="on other data"):
            train(_model(), data, _config(), resume=first.state)
    record(
        "bad input",
        "train(resume=...) on data that differ in one value of 400",
        tried=len(others),
        outcome="refused: the data's fingerprint differs",
        detail="tensor, array, memory-mapped .npy",
    )


def test_a_state_saved_before_fingerprints_continues(toy_x, tmp_path):
    """Checkpoints written before the data were fingerprinted go on (unchecked), as they did."""
    whole = _model()
    train(whole, toy_x, _config())
    pieces = _model()
    state = train(pieces, toy_x, _config(), stop_at=10).state
    del state.settings["data_sha256"]
    save_state(state, tmp_path)
    train(pieces, toy_x, _config(), resume=load_state(tmp_path))
    _assert_same_weights(_weights(pieces), _weights(whole))


def test_without_checkpoint_every_nothing_is_written(toy_x, tmp_path):
    train(_model(), toy_x, _config(), checkpoint_dir=tmp_path / "run.checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_model_is_refused(toy_x, tmp_path):
    train(_model(), toy_x, _config(checkpoint_every=10), checkpoint_dir=tmp_path / "run")
    other = AutoEncoder.from_preset("toy", hidden=(16,), n_latent=4, rate=InformationPotential(n_partners=2))
    with pytest.raises(ValueError, match="another model"):
        train(other, toy_x, _config(checkpoint_every=10), resume=tmp_path / "run")


def test_a_directory_that_is_not_a_model_is_refused_as_checkpoint_dir_and_left_untouched(toy_x, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    model = _model()
    before = _weights(model)
    with pytest.raises(ValueError, match="not a model directory"):
        train(model, toy_x, _config(checkpoint_every=5), checkpoint_dir=target)
    assert [path.name for path in target.iterdir()] == ["notes.txt"] and (target / "notes.txt").read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine"]
    _assert_same_weights(_weights(model), before)  # refused before a step was taken
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a model directory"):
        train(_model(), toy_x, _config(checkpoint_every=5), checkpoint_dir=tmp_path / "file")
    train(_model(), toy_x, _config(checkpoint_every=5), checkpoint_dir=tmp_path / "empty")  # an empty or new one is fine
    (tmp_path / "empty2").mkdir()
    train(_model(), toy_x, _config(checkpoint_every=5), checkpoint_dir=tmp_path / "empty2")
    assert (tmp_path / "empty2" / "model.json").is_file()


# precision


def test_auto_precision_is_bf16_exactly_where_it_is_native():
    assert resolve_precision("auto", CPU) == ("bf16" if native_bf16(CPU) else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp16", CPU)


def test_emulated_bf16_warns_once_and_auto_falls_back_to_fp32(toy_x, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: False)
    runtime._warn_emulated_bf16.cache_clear()  # the warning is once per process: forget any earlier one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16 = train(_model(), toy_x, _config(steps=3, precision="bf16"))
        assert resolve_precision("bf16", CPU) == "bf16"
        auto = train(_model(), toy_x, _config(steps=3, precision="auto"))
    emulated = [warning for warning in caught if issubclass(warning.category, RuntimeWarning) and "native" in str(warning.message)]
    assert len(emulated) == 1, [str(warning.message) for warning in caught]
    assert bf16.state.settings["precision"] == "bf16" and auto.state.settings["precision"] == "fp32"
    fp32 = train(_model(), toy_x, _config(steps=3))
    np.testing.assert_array_equal(auto.loss, fp32.loss)


def test_auto_precision_trains_in_bf16_where_it_is_native(toy_x, monkeypatch):
    monkeypatch.setattr(runtime, "native_bf16", lambda device: True)
    auto, bf16, fp32 = (_model() for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "native" here: no warning
        result = train(auto, toy_x, _config(steps=5, precision="auto"))
        train(bf16, toy_x, _config(steps=5, precision="bf16"))
    train(fp32, toy_x, _config(steps=5))
    assert resolve_precision("auto", CPU) == "bf16" and result.state.settings["precision"] == "bf16"
    _assert_same_weights(_weights(auto), _weights(bf16))
    assert not torch.equal(_weights(auto)["encoder.heads.weight"], _weights(fp32)["encoder.heads.weight"])


# no process-wide side effects (STYLE rule 14)


def test_training_changes_no_process_wide_state(toy_x, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("train changed process-wide state")

    monkeypatch.setattr(runtime, "keep_freed_memory", forbidden)
    monkeypatch.setattr(ctypes, "CDLL", forbidden)
    monkeypatch.setattr(os, "umask", forbidden)
    monkeypatch.setattr(torch, "manual_seed", forbidden)
    monkeypatch.setattr(torch, "set_num_threads", forbidden)
    rng, numpy_rng, threads = torch.get_rng_state(), np.random.get_state(), torch.get_num_threads()
    train(_model(), toy_x, _config(checkpoint_every=5), checkpoint_dir=tmp_path / "run")
    train(_model(), _loader(toy_x), _config(steps=5))
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_rng, strict=True))
    assert (tmp_path / "run" / "model.json").is_file()


def test_atomic_writes_leave_the_umask_alone_and_apply_it(tmp_path, monkeypatch):
    umask = os.umask(0o027)  # the test's own setting, restored below
    try:
        monkeypatch.setattr(os, "umask", lambda *args: pytest.fail("os.umask was called"))
        write_atomic(tmp_path / "file.txt", lambda tmp: tmp.write_text("hello"))
        with staged_directory(tmp_path / "out") as stage:
            (stage / "inner.txt").write_text("x")
        monkeypatch.undo()
    finally:
        os.umask(umask)
    assert (tmp_path / "file.txt").read_text() == "hello"
    assert (tmp_path / "file.txt").stat().st_mode & 0o777 == 0o640  # 0o666 less the umask, not mkstemp's 0o600
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750  # 0o777 less the umask, not mkdtemp's 0o700
    assert (tmp_path / "out" / "inner.txt").read_text() == "x"


# torch.compile


def test_compile_is_refused_under_torch_distributed(toy_x, monkeypatch):
    monkeypatch.setattr(training.distributed, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="compile=True is not supported under torch.distributed"):
        train(_model(), toy_x, _config(compile=True))


# torch.compile changes the rounding, not the computation: same noise, partners and batches.
@pytest.mark.slow
@pytest.mark.parametrize("precision, rtol, atol", [("fp32", 1e-5, 1e-6), ("bf16", 1e-3, 1e-3)])
@pytest.mark.parametrize("rate", [InformationPotential(n_partners=2), PriorKL()], ids=["ip-2", "vae"])
def test_compiled_training_matches_eager_training(toy_x, precision, rtol, atol, rate):
    from torch._dynamo.utils import counters  # imports the compiler: only here

    config = _config(steps=30, batch_size=64, precision=precision)
    eager = AutoEncoder.from_preset("toy", hidden=(32,), n_latent=4, rate=rate)
    compiled = AutoEncoder.from_preset("toy", hidden=(32,), n_latent=4, rate=rate)
    expected = train(eager, toy_x, config)
    torch._dynamo.reset()  # so that this test compiles afresh, whatever ran before it
    graphs = counters["stats"]["unique_graphs"]
    result = train(compiled, toy_x, TrainConfig(**{**config.to_dict(), "compile": True}))
    assert counters["stats"]["unique_graphs"] > graphs  # the objective did go through the compiler
    np.testing.assert_allclose(result.loss, expected.loss, rtol=rtol)
    for name, weight in _weights(compiled).items():
        torch.testing.assert_close(weight, _weights(eager)[name], rtol=0, atol=atol)


def test_bf16_training_runs_the_layers_in_bf16_and_fp32_does_not(toy_x):
    """The precision reaches the matmuls: every layer's output dtype, observed by hooks in the training steps."""
    seen = {}
    for precision in ("fp32", "bf16"):
        model = _model()
        calls = []
        for name, module in model.named_modules():
            if type(module).__name__ == "Dense":
                module.register_forward_hook(lambda module, inputs, output, name=name, calls=calls: calls.append((name, output.dtype)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # emulated bf16 on CPUs without it
            train(model, toy_x, _config(steps=3, precision=precision))
        seen[precision] = calls
    assert {dtype for _, dtype in seen["fp32"]} == {torch.float32}
    # the decoder runs only in the steps; the encoder also once, outside them, for the codes' shape
    assert [dtype for name, dtype in seen["bf16"] if name.startswith("decoder.output")] == [torch.bfloat16] * 3
    assert [dtype for name, dtype in seen["bf16"] if name == "encoder.heads"].count(torch.bfloat16) == 3


# monitoring I(x; z) on held-out points


def _without_times(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in ("seconds", "monitor_seconds")} for record in records]


def _mnist_data(n: int, seed: int) -> torch.Tensor:
    return torch.rand((n, 784), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", ["toy", "mnist"])
def test_monitoring_leaves_the_weights_and_the_losses_bit_identical(toy_x, preset):
    if preset == "toy":
        data, held_out, options = toy_x, gaussian_grid(n_per_component=4, seed=9).x, {}
    else:
        data, held_out, options = _mnist_data(256, 0), _mnist_data(64, 1), {"rate": PriorKL()}
    config = _config(steps=12, batch_size=64, log_every=3, monitor_every=6)
    runs = []
    for monitor in (None, held_out):
        model = AutoEncoder.from_preset(preset, seed=2, **options)
        logs = []
        result = train(model, data, config, monitor=monitor, on_log=logs.append)
        runs.append((_weights(model), result, logs, model.training))
    (plain, plain_result, plain_logs, _), (watched, watched_result, watched_logs, still_training) = runs
    _assert_same_weights(watched, plain)
    np.testing.assert_array_equal(watched_result.loss, plain_result.loss)
    assert torch.equal(watched_result.state.generator, plain_result.state.generator)
    assert still_training  # the monitor's eval mode is undone
    # the loss, distortion and rate of every record are those of the unmonitored run; the monitor adds its keys at 6 and 12
    assert [{key: record[key] for key in ("step", "loss", "distortion", "rate")} for record in watched_logs] == _without_times(plain_logs)
    assert [record["step"] for record in watched_logs if "I_mc" in record] == [6, 12]
    assert plain_result.monitor == [] and [record["step"] for record in watched_result.monitor] == [6, 12]


def test_monitoring_a_net_with_dropout_and_batchnorm_changes_neither_weights_nor_running_statistics(toy_x):
    def model() -> AutoEncoder:
        torch.manual_seed(0)  # the layers' initial weights, and dropout draws from the global generator
        encoder = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Dropout(0.3))
        head = torch.nn.Linear(16, 4)

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body, self.head = encoder, head

            def forward(self, x):
                return self.head(self.body(x)).chunk(2, dim=1)

        return AutoEncoder(Encoder(), torch.nn.Linear(2, 2), rate=PriorKL())

    states = []
    for monitor in (None, toy_x[:50]):
        trained = model()
        torch.manual_seed(1)
        train(trained, toy_x, _config(steps=10, log_every=5), monitor=monitor)
        states.append(trained.state_dict())  # the BatchNorm's running mean and variance too
    _assert_same_weights(states[0], states[1])
    assert not torch.equal(states[0]["encoder.body.1.running_mean"], torch.zeros(16))  # training did move them


def test_the_monitor_records_information_and_distortion_of_the_codes_at_their_steps(toy_x):
    from ipae.diagnostics import SATURATION_GAP, information

    held_out = gaussian_grid(n_per_component=4, seed=9).x  # (100, 2)
    config = _config(steps=25, log_every=5, monitor_every=10, monitor_samples=3)
    logs = []
    result = train(_model(), toy_x, config, monitor=held_out, on_log=logs.append)
    assert [record["step"] for record in result.monitor] == [10, 20, 25]  # every 10 steps and at the end
    assert [record for record in logs if "I_mc" in record] == [
        next(log for log in logs if log["step"] == record["step"]) for record in result.monitor
    ]
    model, state = _model(), None
    for measured in result.monitor:  # the model at each measured step, and the measurement again, by hand
        state = train(model, toy_x, config, resume=state, stop_at=measured["step"]).state
        generator = torch.Generator().manual_seed(training._monitor_seed(config.seed, measured["step"]))
        with torch.no_grad():
            mu, logvar = (t.double() for t in model.eval().encode(held_out))
            expected = information(mu, logvar, generator=generator, n_samples=3)
            z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=generator, dtype=torch.float64)
            distortion = ((model.decoder(z.float()) - held_out) ** 2).sum(dim=1).double().mean()
        model.train()
        assert {key: measured[key] for key in expected} == expected
        assert measured["heldout_distortion"] == pytest.approx(float(distortion), rel=1e-6)
        assert measured["I_points"] == 100 and measured["I_log_n"] == pytest.approx(math.log(100))
        assert measured["I_lower"] <= measured["I_upper"] and measured["I_mc"] <= measured["I_log_n"] + 1e-9
        assert measured["I_saturated"] == (measured["I_loo"] - measured["I_mc"] > SATURATION_GAP)
        assert measured["monitor_seconds"] > 0


def test_a_continued_monitored_run_logs_as_one_that_never_stopped(toy_x, tmp_path):
    held_out = toy_x[::2]
    config = _config(steps=25, log_every=5, monitor_every=10, checkpoint_every=10)
    whole_logs = []
    whole = train(_model(), toy_x, config, monitor=held_out, on_log=whole_logs.append)
    checkpoint = tmp_path / "run.checkpoint"
    train(_model(), toy_x, config, monitor=held_out, checkpoint_dir=checkpoint, stop_at=23)  # killed after step 23; saved at 20
    assert [record["step"] for record in load_state(checkpoint).monitor] == [10, 20]
    logs = []
    continued = train(_model(), toy_x, config, monitor=held_out, resume=checkpoint, on_log=logs.append)
    assert _without_times(logs) == _without_times(whole_logs)
    assert _without_times(continued.monitor) == _without_times(whole.monitor)


@pytest.mark.parametrize(
    "monitor, options, message",
    [
        (torch.randn(10, 3), {}, "shape"),
        (torch.randn(1, 2), {}, "at least 2"),
        (torch.full((10, 2), math.nan), {}, "NaN"),
        ([[0.0, 1.0], [1.0, 0.0]], {}, "tensor or an array"),
        (torch.randn(10, 2), {"monitor_every": 7}, "multiple of log_every"),
    ],
)
def test_bad_monitor_points_are_refused_before_training(toy_x, monitor, options, message):
    model = _model()
    before = _weights(model)
    with pytest.raises(ValueError, match=message):
        train(model, toy_x, _config(**options), monitor=monitor)
    _assert_same_weights(_weights(model), before)
