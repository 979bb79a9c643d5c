import json
import math
import pickle
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch.optim.optimizer import register_optimizer_step_post_hook

import ipae
from ipae.checkpoint import load_model
from ipae.cli import main
from ipae.data import arrays
from ipae.estimators import IPAE, BetaVAE, FitDiverged
from ipae.models import AutoEncoder
from ipae.networks import MLP
from ipae.rates import InformationPotential, PriorKL
from ipae.training import TrainConfig, TrainingDiverged, train

SMALL = {"n_components": 2, "hidden": (16,), "steps": 20, "batch_size": 32, "random_state": 0}
QUICK = {"n_components": 2, "hidden": (32,), "steps": 30, "batch_size": 32, "lr": 3e-3, "device": "cpu"}  # fits in a blink
CLASSES = [IPAE, BetaVAE]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation, and on a busy
    machine that makes a fit many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@parametrize_with_checks([IPAE(**SMALL, n_partners=8), BetaVAE(**SMALL)])
def test_sklearn_common_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def blobs():
    return np.random.default_rng(0).normal(size=(60, 3))


@pytest.fixture(scope="module")
def line():
    """2-D points near the line x2 = 2 x1: one latent factor explains almost all the variance."""
    rng = np.random.default_rng(1)
    t = rng.normal(size=(256, 1))
    return np.hstack([t, 2 * t]) + 0.05 * rng.normal(size=(256, 2))


def _squared_error(a, b):
    return float(((a - b) ** 2).sum(axis=1).mean())


def test_defaults_and_parameters():
    assert IPAE().get_params() == {
        "n_components": 16,
        "beta": 0.01,
        "n_partners": 1,
        "hidden": (2048,),
        "activation": "relu",
        "distortion": "mse",
        "steps": 5000,
        "batch_size": 512,
        "lr": 1e-3,
        "precision": "fp32",
        "compile": False,
        "device": None,
        "random_state": None,
        "progress": False,
        "checkpoint_dir": None,
        "checkpoint_every": None,
        "monitor_every": 500,
        "monitor_samples": 1,
    }
    vae = BetaVAE().get_params()
    assert vae["beta"] == 1.0 and "n_partners" not in vae and set(vae) == set(IPAE().get_params()) - {"n_partners"}


@pytest.mark.parametrize("cls", CLASSES)
def test_transform_gives_float64_encoder_means_and_inverse_gives_decoded_means(cls, blobs):
    estimator = cls(**QUICK, random_state=0).fit(blobs.astype(np.float32))
    codes = estimator.transform(blobs)
    assert codes.shape == (60, 2) and codes.dtype == np.float64
    assert estimator.model_.rate.name == {"IPAE": "ip", "BetaVAE": "vae"}[cls.__name__]
    assert estimator.n_features_in_ == 3
    assert list(estimator.get_feature_names_out()) == [f"{cls.__name__.lower()}0", f"{cls.__name__.lower()}1"]
    # Known answer: the documented networks (relu(x W^T + b), then the heads; mu is the first half) by hand in float64 numpy.
    weights = {name: tensor.double().numpy() for name, tensor in estimator.model_.state_dict().items()}
    hidden = np.maximum(blobs @ weights["encoder.body.0.weight"].T + weights["encoder.body.0.bias"], 0)  # (60, 32)
    mu = (hidden @ weights["encoder.heads.weight"].T + weights["encoder.heads.bias"])[:, :2]  # (60, 2)
    np.testing.assert_allclose(codes, mu, rtol=1e-4, atol=1e-5)
    reconstruction = estimator.inverse_transform(codes)
    assert reconstruction.shape == (60, 3) and reconstruction.dtype == np.float64
    hidden = np.maximum(codes @ weights["decoder.hidden.0.weight"].T + weights["decoder.hidden.0.bias"], 0)  # (60, 32)
    decoded = hidden @ weights["decoder.output.weight"].T + weights["decoder.output.bias"]  # (60, 3): "mse" decodes to the output itself
    np.testing.assert_allclose(reconstruction, decoded, rtol=1e-4, atol=1e-5)
    # The loss history is the objective distortion + beta * rate, step by step.
    history = estimator.history_
    assert estimator.loss_curve_.shape == (30,)
    np.testing.assert_allclose(history.loss, history.distortion + estimator.beta * history.rate, rtol=1e-5)


@pytest.mark.parametrize("cls", CLASSES)
def test_random_state_fixes_the_result(cls, blobs):
    codes = [cls(**QUICK, random_state=seed).fit_transform(blobs) for seed in (5, 5, 6)]
    np.testing.assert_array_equal(codes[0], codes[1])
    assert not np.allclose(codes[0], codes[2])
    fresh = [cls(**QUICK).fit(blobs).seed_ for _ in range(2)]  # random_state=None: fresh randomness each fit
    assert fresh[0] != fresh[1]


def test_n_partners_reaches_the_rate_term(blobs):
    one, every = (IPAE(**QUICK, n_partners=n_partners, random_state=0).fit(blobs) for n_partners in (1, None))
    np.testing.assert_array_equal(one.history_.distortion[0], every.history_.distortion[0])  # same weights and noise at step 0
    assert one.history_.rate[0] != every.history_.rate[0]
    assert one.model_.rate.n_partners == 1 and every.model_.rate.n_partners is None


def test_fit_trains_a_fresh_model_with_the_fitted_seed(blobs):
    estimator = IPAE(**QUICK, n_partners=2, beta=0.05, random_state=7).fit(blobs)
    assert estimator.seed_ == check_random_state(7).randint(np.iinfo(np.int32).max)
    # Known answer: the documented recipe, done by hand with the seed the fit drew.
    architecture = MLP(input_shape=(3,), hidden=(32,), n_latent=2)
    model = AutoEncoder.from_architecture(architecture, seed=estimator.seed_, rate=InformationPotential(n_partners=2), beta=0.05)
    config = TrainConfig(steps=30, batch_size=32, lr=3e-3, seed=estimator.seed_, progress=False)
    result = train(model, torch.from_numpy(blobs.astype(np.float32)), config)
    np.testing.assert_array_equal(estimator.loss_curve_, result.loss)
    for mine, theirs in zip(estimator.model_.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def test_training_lowers_the_reconstruction_error_of_the_untrained_model():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 6)) + 0.01 * rng.normal(size=(300, 6))  # rank 2 in 6-D
    estimator = IPAE(n_components=2, hidden=(64,), steps=300, batch_size=64, lr=3e-3, beta=1e-3, random_state=0).fit(X)
    # The untrained network the fit started from, evaluated independently in float64.
    model = estimator.model_
    untrained = AutoEncoder.from_architecture(model.architecture, seed=estimator.seed_, rate=model.rate, beta=model.beta).double()
    with torch.no_grad():
        before = _squared_error(untrained.decode(untrained.encode(torch.from_numpy(X))[0]).numpy(), X)
    after = _squared_error(estimator.inverse_transform(estimator.transform(X)), X)
    assert before > 5  # an untrained decoder predicts about 0, and X's squared norm is about 16
    assert after < 0.02 * before


@pytest.mark.parametrize("cls", CLASSES)
def test_reconstruction_of_a_line_beats_the_mean(cls, line):
    estimator = cls(n_components=1, hidden=(64,), steps=300, batch_size=64, lr=3e-3, beta=0.01, random_state=0).fit(line)
    mean_error = _squared_error(line.mean(axis=0), line)  # about 1 + 4 = 5
    assert mean_error > 4
    assert _squared_error(estimator.inverse_transform(estimator.transform(line)), line) < 0.05 * mean_error


def _collapsed(estimator, centre: np.ndarray, logvar: float):
    """`estimator` with its networks set by hand: the encoder gives mu = 0 and `logvar` for every input, the
    decoder gives `centre` for every code (all weights 0 but the output bias): the score has a closed form."""
    model = estimator.model_
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.encoder.heads.bias[model.architecture.n_latent :] = logvar  # |logvar| << LOGVAR_LIMIT: the bound is ~ the identity
        model.decoder.output.bias.copy_(torch.from_numpy(centre))
    return estimator


@pytest.mark.parametrize("cls", CLASSES)
def test_score_of_a_collapsed_model_is_the_closed_form(cls, blobs):
    """Codes that carry nothing (mu = 0 for every x) and a decoder that ignores them: the distortion is
    mean_i |x_i - c|^2 whatever the noise. BetaVAE: plus the KL to the prior, 0.5 D (s - log s - 1) with s = e^logvar.
    IPAE: plus the pairwise-KL bound of identical Gaussians, 0."""
    estimator = cls(**QUICK, random_state=0).fit(blobs)
    centre = blobs.mean(axis=0) + 0.5
    _collapsed(estimator, centre, logvar=-1.0)
    distortion = _squared_error(centre, blobs)
    s = math.exp(estimator.model_.logvar_limit * math.tanh(-1.0 / estimator.model_.logvar_limit))
    rate = {"BetaVAE": 0.5 * 2 * (s - math.log(s) - 1), "IPAE": 0.0}[cls.__name__]
    assert estimator.score(blobs) == pytest.approx(-(distortion + rate), rel=1e-5, abs=1e-6)
    assert estimator.score(blobs) == estimator.score(blobs)  # deterministic


def test_the_ipae_score_measures_the_codes_by_the_pairwise_kl_bound(blobs):
    """Two far-apart code clusters of equal size in one batch: the pairwise-KL bound is -mean_i log(1/2) = log 2
    (KL 0 within a cluster, exp(-KL) = 0 across), and the distortion of a decoder that ignores the codes is closed-form."""
    estimator = IPAE(**{**QUICK, "batch_size": 64}, random_state=0).fit(blobs)
    centre = blobs.mean(axis=0)
    model = _collapsed(estimator, centre, logvar=-1.0).model_
    with torch.no_grad():
        model.encoder.body[0].weight[0, 0] = 1.0  # hidden_0 = relu(x_1), the other hidden units 0
        model.encoder.heads.weight[0, 0] = 1e3  # mu_1 = 1000 relu(x_1), mu_2 = 0
    X = np.concatenate([np.ones((30, 1)), -np.ones((30, 1))]) * [1, 0, 0] + [0, 1, 1] * blobs  # x_1 = 1 in one half, -1 in the other
    expected = -(_squared_error(centre, X) + math.log(2))
    assert estimator.score(X) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("cls", CLASSES)
def test_score_does_not_depend_on_beta(cls, blobs):
    """The same fitted networks, told another beta: the score is the same (the training loss would not be)."""
    estimator = cls(**QUICK, random_state=0).fit(blobs)
    score = estimator.score(blobs)
    x = torch.from_numpy(blobs.astype(np.float32))
    with torch.no_grad():
        loss = float(estimator.model_.loss(x, generator=torch.Generator().manual_seed(0)).loss)
        estimator.set_params(beta=estimator.beta * 100)
        estimator.model_.beta *= 100
        assert float(estimator.model_.loss(x, generator=torch.Generator().manual_seed(0)).loss) != pytest.approx(loss, rel=1e-3)
    assert estimator.score(blobs) == score


def test_pipeline_equals_scaling_by_hand(blobs):
    X = blobs * [1.0, 10.0, 100.0] + 5.0
    pipeline = Pipeline([("scale", StandardScaler()), ("ae", IPAE(**QUICK, random_state=0))]).fit(X)
    by_hand = IPAE(**QUICK, random_state=0).fit(StandardScaler().fit_transform(X))
    np.testing.assert_allclose(pipeline.transform(X), by_hand.transform(StandardScaler().fit_transform(X)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", CLASSES)
def test_grid_search_over_beta_finds_the_known_best_trade_off(cls):
    """A known answer from rate-distortion theory: for a Gaussian source of variance v per dimension, the
    squared-error distortion d costs at least 0.5 log(v / d) nats per dimension, so d + I is smallest at
    I = 0 when v < 1/2 (then d + I = v at best; every nat buys less than a nat of distortion). The scores
    therefore put the model that keeps nothing (large beta) first, although its training objective is
    the largest: an objective with beta in it would pick the smallest beta."""
    X = 0.3 * np.random.default_rng(3).normal(size=(512, 4))  # v = 0.09 per dimension: d + I >= 4 * 0.09 = 0.36
    betas = [1e-3, 3.0]
    estimator = cls(n_components=4, hidden=(32,), steps=150, batch_size=128, lr=3e-3, random_state=0)
    search = GridSearchCV(estimator, param_grid={"beta": betas}, cv=2).fit(X)
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_["beta"] == 3.0
    assert scores[1] > scores[0] and -scores[1] == pytest.approx(4 * 0.09, rel=0.1)  # near the bound: nothing kept
    training_objective = [cls(**estimator.get_params() | {"beta": beta}).fit(X).loss_curve_[-50:].mean() for beta in betas]
    assert training_objective[0] < training_objective[1]  # the training loss alone would pick beta = 1e-3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"beta": -0.1}, "beta must be a finite number >= 0, got -0.1"),
        ({"beta": float("nan")}, "beta must be a finite number >= 0, got nan"),
        ({"beta": "0.1"}, "beta must be a finite number >= 0"),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"steps": 2.5}, "steps must be an integer >= 1, got 2.5"),
        ({"batch_size": True}, "batch_size must be an integer >= 1, got True"),
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"distortion": "l1"}, "unknown distortion 'l1'"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"n_components": 0}, "n_components must be an integer >= 1, got 0"),
        ({"hidden": ()}, r"hidden must be a non-empty sequence of integers >= 1, got \(\)"),
        ({"hidden": (16, 0)}, r"hidden must be a non-empty sequence of integers >= 1, got \(16, 0\)"),
        ({"hidden": 16}, "hidden must be a non-empty sequence of integers >= 1, got 16"),
        ({"n_partners": 0}, "n_partners must be an integer >= 1 or None"),
        ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1 or None, got 0"),
        ({"compile": "no"}, "compile must be True or False"),
        ({"device": "tpu9"}, "unknown device 'tpu9'"),
        ({"checkpoint_dir": 3}, "checkpoint_dir must be a path or None, got 3"),
    ],
)
def test_bad_parameters_are_refused_in_fit(params, message, blobs):
    estimator = IPAE(**{**QUICK, **params})  # __init__ only stores
    with pytest.raises(ValueError, match=f"^IPAE: {message}"):
        estimator.fit(blobs)
    assert not hasattr(estimator, "model_")


def test_numpy_scalars_are_taken_as_the_numbers_they_hold(blobs):
    """A grid search over np.arange or np.logspace hands numpy scalars to set_params."""
    params = {"steps": np.int64(5), "batch_size": np.int32(16), "lr": np.float32(3e-3), "beta": np.float64(0.5), "n_partners": np.int64(4)}
    estimator = IPAE(**{**QUICK, **params}, random_state=0).fit(blobs)
    assert len(estimator.loss_curve_) == 5 and estimator.model_.beta == 0.5 and estimator.model_.rate.n_partners == 4


def test_bad_input_is_refused(blobs):
    estimator = IPAE(**QUICK, random_state=0)
    with pytest.raises(ValueError, match="NaN"):
        estimator.fit(np.where(blobs > 1.5, np.nan, blobs))
    with pytest.raises(ValueError, match="2D array"):
        estimator.fit(blobs[:, 0])
    estimator.fit(blobs)
    with pytest.raises(ValueError, match="X has 2 features, but IPAE is expecting 3"):
        estimator.transform(blobs[:, :2])
    with pytest.raises(ValueError, match="expects 2"):
        estimator.inverse_transform(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"bernoulli.*\[0, 1\]"):
        IPAE(**QUICK, distortion="bernoulli").fit(blobs)


def test_a_second_fit_forgets_the_first(blobs):
    estimator = IPAE(**QUICK, random_state=0).fit(blobs)
    first = estimator.model_
    estimator.fit(blobs[:, :2])
    assert estimator.model_ is not first and estimator.n_features_in_ == 2
    assert estimator.transform(blobs[:, :2]).shape == (60, 2)


def test_divergence_is_a_clear_error_and_leaves_the_estimator_unfitted(blobs):
    estimator = IPAE(**QUICK, random_state=0).fit(blobs)
    estimator.set_params(lr=1e30)  # the first Adam step throws the weights to 1e30; the output overflows float32
    with pytest.raises(FitDiverged, match="smaller lr") as info:
        estimator.fit(blobs)
    assert isinstance(info.value, TrainingDiverged) and info.value.step >= 1
    assert not [name for name in vars(estimator) if name.endswith("_")]
    with pytest.raises(NotFittedError):
        estimator.transform(blobs)


@pytest.mark.parametrize("cls", CLASSES)
def test_save_and_load_give_the_same_transform(cls, blobs, tmp_path):
    estimator = cls(**QUICK, random_state=np.random.RandomState(3)).fit(blobs)
    with pytest.raises(NotFittedError):
        ipae.save(clone(estimator), tmp_path / "unfitted")
    assert not (tmp_path / "unfitted").exists()
    ipae.save(estimator, tmp_path / "fitted")
    loaded = ipae.load(tmp_path / "fitted")
    assert type(loaded) is cls
    assert loaded.get_params() == {**estimator.get_params(), "random_state": None}  # a RandomState has no JSON form
    np.testing.assert_array_equal(loaded.transform(blobs), estimator.transform(blobs))
    np.testing.assert_array_equal(loaded.inverse_transform(np.ones((3, 2))), estimator.inverse_transform(np.ones((3, 2))))
    np.testing.assert_array_equal(loaded.loss_curve_, estimator.loss_curve_)
    assert loaded.score(blobs) == estimator.score(blobs) and loaded.n_features_in_ == 3


def test_ipae_load_gives_a_plain_model_as_a_model_and_refuses_other_objects_to_save(blobs, tmp_path):
    estimator = IPAE(**QUICK, random_state=0).fit(blobs)
    ipae.save(estimator.model_, tmp_path / "plain")
    loaded = ipae.load(tmp_path / "plain")
    assert isinstance(loaded, AutoEncoder) and loaded.spec == estimator.model_.spec
    with pytest.raises(TypeError, match="ipae.save takes an AutoEncoder or a fitted IPAE or BetaVAE, got dict"):
        ipae.save({"model": estimator.model_}, tmp_path / "other")
    ipae.save(estimator, tmp_path / "estimator")
    with pytest.raises(ValueError, match="holds a fitted estimator, which builds its own model; pass no encoder"):
        ipae.load(tmp_path / "estimator", rate=InformationPotential())


def test_a_saved_device_that_is_not_here_loads_on_the_cpu_and_one_that_is_no_device_is_damaged_metadata(blobs, tmp_path):
    estimator = IPAE(**QUICK, random_state=0).fit(blobs)
    ipae.save(estimator, tmp_path / "saved")
    path = tmp_path / "saved" / "model.json"
    record = json.loads(path.read_text())
    if not torch.cuda.is_available():  # saved on a GPU machine, loaded here
        record["metadata"]["estimator"]["params"]["device"] = "cuda:0"
        path.write_text(json.dumps(record))
        loaded = ipae.load(tmp_path / "saved")
        assert next(loaded.model_.parameters()).device.type == "cpu"
        np.testing.assert_array_equal(loaded.transform(blobs), estimator.transform(blobs))
    for device in ([True, 1.0], "not-a-device", 3):  # what the fuzz campaign wrote (a list gave a TypeError from torch)
        record["metadata"]["estimator"]["params"]["device"] = device
        path.write_text(json.dumps(record))
        with pytest.raises(ValueError, match="damaged estimator metadata.*device"):
            ipae.load(tmp_path / "saved")


def test_pickle_round_trip(blobs):
    estimator = BetaVAE(**QUICK, random_state=0).fit(blobs)
    unpickled = pickle.loads(pickle.dumps(estimator))
    np.testing.assert_array_equal(unpickled.transform(blobs), estimator.transform(blobs))
    assert unpickled.seed_ == estimator.seed_


# checkpoints: a killed fit goes on where it stopped


@contextmanager
def killed_after_step(n: int):
    """KeyboardInterrupt right after the n-th optimiser step of any training in the block (a kill at a known step)."""
    count = 0

    def hook(optimizer, args, kwargs):
        nonlocal count
        count += 1
        if count == n:
            raise KeyboardInterrupt

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _same_parameters(a: AutoEncoder, b: AutoEncoder) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("cls", CLASSES)
def test_a_fit_with_a_checkpoint_dir_writes_checkpoints(cls, blobs, tmp_path):
    steps_seen = []
    with killed_after_step(11), pytest.raises(KeyboardInterrupt):  # stop in step 11: the checkpoint of step 10 is there
        cls(**{**QUICK, "steps": 12}, random_state=0, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=5).fit(blobs)
    steps_seen.append(json.loads((tmp_path / "ckpt" / "training.json").read_text())["step"])
    assert steps_seen == [10]
    saved = load_model(tmp_path / "ckpt")
    estimator = cls(**{**QUICK, "steps": 12}, random_state=0, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=5).fit(blobs)
    assert saved.rate.name == estimator.model_.rate.name and saved.architecture == estimator.model_.architecture
    assert not _same_parameters(saved, estimator.model_)  # step 10, not 12
    assert not (tmp_path / "ckpt").exists()  # a finished fit removes its checkpoint
    without = cls(**{**QUICK, "steps": 12}, random_state=0).fit(blobs)  # checkpointing changes nothing in the fit
    assert _same_parameters(without.model_, estimator.model_)
    np.testing.assert_array_equal(without.loss_curve_, estimator.loss_curve_)


def test_checkpoint_every_without_a_directory_writes_nothing(blobs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    IPAE(**QUICK, random_state=0, checkpoint_every=5).fit(blobs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cls", CLASSES)
def test_a_killed_fit_continues_from_its_checkpoint_as_if_never_stopped(cls, blobs, tmp_path):
    params = {**QUICK, "steps": 12, "random_state": 3, "checkpoint_every": 5}
    whole = cls(**params).fit(blobs)
    killed = cls(**params, checkpoint_dir=tmp_path / "ckpt")
    with killed_after_step(12), pytest.raises(KeyboardInterrupt):  # in the last step, after the checkpoint of step 10
        killed.fit(blobs)
    assert not hasattr(killed, "model_")
    assert json.loads((tmp_path / "ckpt" / "training.json").read_text())["step"] == 10
    with killed_after_step(3):  # a continued fit takes only the 2 steps left
        continued = cls(**params, checkpoint_dir=tmp_path / "ckpt").fit(blobs)
    assert _same_parameters(continued.model_, whole.model_)
    np.testing.assert_array_equal(continued.loss_curve_, whole.loss_curve_)  # the history from step 0
    np.testing.assert_array_equal(continued.transform(blobs), whole.transform(blobs))


def test_a_second_fit_with_a_checkpoint_dir_forgets_the_first(blobs, tmp_path):
    params = {**QUICK, "steps": 12, "checkpoint_every": 5, "checkpoint_dir": tmp_path / "ckpt"}
    IPAE(**params, random_state=0).fit(blobs)
    other = blobs[::-1].copy()  # other data of the same shape
    refit = IPAE(**params, random_state=0).fit(other)
    fresh = IPAE(**{**params, "checkpoint_dir": None}, random_state=0).fit(other)
    assert _same_parameters(refit.model_, fresh.model_)


# the estimator and `ipae fit` are one fit


def test_the_estimator_and_ipae_fit_give_the_same_model(blobs, tmp_path, monkeypatch):
    monkeypatch.setattr(arrays, "MMAP_BYTES", 0, raising=False)  # the command reads the file memory-mapped, batch by batch
    X = blobs.astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    options = {"n_components": 2, "steps": 25, "batch_size": 16, "lr": 3e-3, "device": "cpu"}
    estimator = IPAE(**options, hidden=(16, 8), activation="tanh", random_state=11).fit(X)
    # The estimator draws its seed from random_state; `ipae fit --seed S` uses S for the weights and the training stream.
    seed = check_random_state(11).randint(np.iinfo(np.int32).max)
    assert estimator.seed_ == seed
    args = ["fit", str(tmp_path / "x.npy"), "--n-components", "2", "--hidden", "16,8", "--activation", "tanh", "--steps", "25"]
    args += ["--batch-size", "16", "--lr", "0.003", "--seed", str(seed), "--device", "cpu", "--quiet", "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    model = load_model(tmp_path / "cli")
    assert model.architecture == estimator.model_.architecture and model.beta == estimator.beta
    assert _same_parameters(model, estimator.model_)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] == pytest.approx(float(estimator.loss_curve_[-25:].mean()), rel=1e-6)  # the log's mean of the 25 steps
    # BetaVAE is `ipae fit --rate vae` with its beta
    vae = BetaVAE(n_components=2, hidden=(16,), steps=10, batch_size=16, beta=0.5, device="cpu", random_state=11).fit(X)
    args = ["fit", str(tmp_path / "x.npy"), "--rate", "vae", "--beta", "0.5", "--n-components", "2", "--hidden", "16", "--steps", "10"]
    assert main([*args, "--batch-size", "16", "--seed", str(seed), "--device", "cpu", "--quiet", "--out", str(tmp_path / "vae")]) == 0
    assert _same_parameters(load_model(tmp_path / "vae"), vae.model_)
    other_seed = BetaVAE(n_components=2, hidden=(16,), steps=10, batch_size=16, beta=0.5, device="cpu", random_state=12).fit(X)
    assert not _same_parameters(load_model(tmp_path / "vae"), other_seed.model_)


def test_rates_of_the_estimators(blobs):
    assert isinstance(IPAE(**QUICK, n_partners=8, random_state=0).fit(blobs).model_.rate, InformationPotential)
    assert isinstance(BetaVAE(**QUICK, random_state=0).fit(blobs).model_.rate, PriorKL)


# a row's result does not depend on the rows it is transformed with


@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=pytest.mark.slow)])  # 2: slow on a busy machine
def test_transform_and_inverse_transform_of_a_row_do_not_depend_on_the_other_rows(threads):
    """Row by row equals the whole array bit for bit, for sizes below, at and across the inference chunk
    (a matmul's rounding depends on its number of rows: up to 5e-7 apart before transform padded its chunks)."""
    X = np.random.default_rng(0).normal(size=(300, 10))
    estimator = IPAE(n_components=4, hidden=(256,), steps=3, batch_size=32, device="cpu", random_state=0).fit(X)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        codes = np.concatenate([estimator.transform(X[i : i + 1]) for i in range(len(X))])  # (300, 4), one row at a time
        rebuilt = np.concatenate([estimator.inverse_transform(codes[i : i + 1]) for i in range(len(X))])
        for n in (1, 7, 255, 256, 257, 300):
            assert np.array_equal(estimator.transform(X[:n]), codes[:n]), n
            assert np.array_equal(estimator.inverse_transform(codes[:n]), rebuilt[:n]), n
        shuffled = np.random.default_rng(1).permutation(len(X))
        assert np.array_equal(estimator.transform(X[shuffled]), codes[shuffled])
    finally:
        torch.set_num_threads(before)


def test_the_default_beta_is_the_rates_own():
    assert IPAE().beta == InformationPotential.default_beta == 0.01
    assert BetaVAE().beta == PriorKL.default_beta == 1.0


@pytest.mark.parametrize("cls", CLASSES)
def test_fit_with_monitor_measures_information_and_trains_the_same_model(cls, blobs, tmp_path):
    held_out = np.random.default_rng(5).normal(size=(25, 3))
    options = {**QUICK, "random_state": 0, "monitor_every": 10, "monitor_samples": 2}
    plain = cls(**options).fit(blobs)
    watched = cls(**options).fit(blobs, monitor=held_out)
    assert plain.monitor_ == []
    np.testing.assert_array_equal(watched.transform(blobs), plain.transform(blobs))
    np.testing.assert_array_equal(watched.loss_curve_, plain.loss_curve_)
    assert [record["step"] for record in watched.monitor_] == [10, 20, 30]
    assert all(record["I_points"] == 25 and record["I_lower"] <= record["I_upper"] for record in watched.monitor_)
    ipae.save(watched, tmp_path / "saved")
    assert ipae.load(tmp_path / "saved").monitor_ == watched.monitor_
    assert cls(**{**options, "monitor_every": 7}).fit(blobs, monitor=held_out).monitor_[-1]["step"] == 30  # any N: the end is measured
    with pytest.raises(ValueError, match="monitor has 2 features, but .* is expecting 3"):
        cls(**options).fit(blobs, monitor=held_out[:, :2])
    with pytest.raises(ValueError, match="monitor"):
        cls(**options).fit(blobs, monitor=np.full((4, 3), np.nan))
