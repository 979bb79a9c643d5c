"""Numerical edges: every case trains to a finite result, is refused with a clear ValueError, or is
recorded as failed with its step (`TrainingDiverged`); nothing else (issue #14, item 4).

Each case records its outcome for docs/reliability.md (section "numerical edges"). Wherever a
batch's loss is finite, so are its gradients, checked before and after training; the one case
whose loss is finite but whose gradient overflows float32 says so and checks that training records
it as failed instead of returning non-finite weights.
"""

import json

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ipae.cli import main
from ipae.estimators import IPAE, FitDiverged
from ipae.models import LOGVAR_LIMIT, AutoEncoder
from ipae.rates import create
from ipae.training import TrainConfig, TrainingDiverged, train
from reliability import record

STEPS = 10
FINITE = "finite"
RATES = {  # every rate term of ipae.rates.RATES, IPAE with 1, 8 and all partners
    "ip, 1 partner": ("ip", {"n_partners": 1}),
    "ip, 8 partners": ("ip", {"n_partners": 8}),
    "ip, all pairs": ("ip", {"n_partners": None}),
    "vae": ("vae", {}),
    "pairwise-kl": ("pairwise-kl", {}),
    "bhattacharyya": ("bhattacharyya", {}),
    "jensen": ("jensen", {}),
    "mc": ("mc", {}),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(rate: str = "ip", rate_options: dict | None = None, **options) -> AutoEncoder:
    return AutoEncoder.from_preset("toy", hidden=(16,), n_latent=4, rate=create(rate, **(rate_options or {})), **options)


def _points(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))  # (n, 2) float32


def _small_integers(n: int = 64) -> torch.Tensor:
    return torch.randint(0, 6, (n, 2), generator=torch.Generator().manual_seed(0))  # (n, 2) int64, exact in every dtype


def _force_raw_logvar(model: AutoEncoder, raw: float) -> AutoEncoder:
    """The encoder's raw log-variance fixed at `raw` for every input: its head's log-variance rows zero, their bias `raw`."""
    heads = model.encoder.heads
    n_latent = heads.out_features // 2
    with torch.no_grad():
        heads.weight[n_latent:].zero_()
        heads.bias[n_latent:].fill_(raw)
    return model


def _float32(data) -> torch.Tensor:
    """The float32 values that training sees of `data` (a tensor or an array)."""
    return (data if isinstance(data, torch.Tensor) else torch.from_numpy(np.asarray(data, dtype=np.float64))).to(torch.float32)


def _weights(model: AutoEncoder) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _loss_and_gradients(model: AutoEncoder, x: torch.Tensor) -> tuple[bool, list[str]]:
    """Whether the loss of batch x is finite, and the parameters whose gradient is not (when it is)."""
    model.zero_grad(set_to_none=True)
    loss = model.loss(x, generator=torch.Generator().manual_seed(1)).loss
    if not torch.isfinite(loss):
        return False, []
    loss.backward()
    bad = [name for name, parameter in model.named_parameters() if parameter.grad is not None and not parameter.grad.isfinite().all()]
    model.zero_grad(set_to_none=True)
    return True, bad


def _assert_gradients_finite_where_the_loss_is(model: AutoEncoder, data, when: str) -> None:
    _, bad = _loss_and_gradients(model, _float32(data)[:32])
    assert not bad, f"{when}: the loss is finite, the gradient of {bad} is not"


def _run(case: str, model: AutoEncoder, data, *, steps: int = STEPS, batch_size: int = 32, gradients: bool = True):
    """Train `model` on `data`; check that the run ended in one of the three accepted ways, record
    which, and return (outcome, result or None). `gradients`: check them where the loss is finite."""
    if gradients:
        _assert_gradients_finite_where_the_loss_is(model, data, "before training")
    try:
        result = train(model, data, TrainConfig(steps=steps, batch_size=batch_size, progress=False))
    except TrainingDiverged as diverged:
        losses = diverged.result.loss
        assert 0 <= diverged.step < steps and len(losses) == diverged.step + 1
        assert np.isfinite(losses[:-1]).all(), "the step recorded is not the first non-finite one"
        assert ("the loss" in str(diverged)) != bool(np.isfinite(losses[-1])), "the reason does not match the history"
        outcome, detail, result = f"recorded failed at step {diverged.step}", str(diverged), None
    except ValueError as error:
        assert str(error), "a refusal without a message"
        outcome, detail, result = f"refused: {error}", "ValueError", None
    else:
        assert len(result.loss) == steps and np.isfinite(result.loss).all()
        assert all(parameter.isfinite().all() for parameter in model.parameters()), "status ok with non-finite weights"
        if gradients:
            _assert_gradients_finite_where_the_loss_is(model, data, "after training")
        outcome, detail = FINITE, f"{steps} steps, final loss {result.loss[-1]:.3g}"
    record("numerical edges", case, tried=1, outcome=outcome, detail=detail)
    return outcome, result


# the log-variance: bounded (the default) and unbounded (paper-exact)


@pytest.mark.parametrize("raw", [1e4, -1e4, 1e30, -1e30])
def test_a_log_variance_at_the_bound_trains_to_a_finite_result(raw):
    model = _force_raw_logvar(_model(), raw)
    _, logvar = model.encode(_points())
    assert torch.equal(logvar, torch.full_like(logvar, LOGVAR_LIMIT if raw > 0 else -LOGVAR_LIMIT))  # at the bound, not past it
    outcome, _ = _run(f"log-variance at the bound (raw {raw:g}, limit {LOGVAR_LIMIT:g})", model, _points())
    assert outcome == FINITE


@pytest.mark.parametrize("raw", [1e4, -1e4])
def test_an_unbounded_log_variance_beyond_float32_is_recorded_failed_at_step_0(raw):
    """Paper-exact mode has no bound: sigma^2 = exp(1e4) is inf (z infinite), exp(-1e4) is 0 (1 / sigma^2
    infinite), so the first loss is not finite."""
    model = _force_raw_logvar(_model(paper_exact=True), raw)
    assert model.logvar_limit is None
    outcome, _ = _run(f"log-variance unbounded (paper-exact), raw {raw:g}", model, _points())
    assert outcome == "recorded failed at step 0"


@pytest.mark.parametrize("raw", [0.0, 40.0, -40.0])
def test_an_unbounded_log_variance_within_float32_trains_to_a_finite_result(raw):
    """sigma^2 = exp(+-40) = 2.4e17 or 4.2e-18: z^2 ~ 2.4e17 and 1 / sigma^2 ~ 2.4e17 stay below float32's
    3.4e38, and so do the squared error and eq. 10 of the toy batch; the gradients are checked finite too."""
    model = _force_raw_logvar(_model(paper_exact=True), raw)
    assert _run(f"log-variance unbounded (paper-exact), raw {raw:g}", model, _points())[0] == FINITE


# the data: degenerate sets and batches, scales


def test_identical_inputs_train_to_a_finite_result():
    assert _run("identical inputs (64 copies of one point)", _model(), torch.full((64, 2), 3.0))[0] == FINITE


def test_a_constant_feature_trains_to_a_finite_result():
    data = _points()
    data[:, 1] = -2.0
    assert _run("a constant feature", _model(), data)[0] == FINITE


def test_a_batch_of_one_trains_to_a_finite_result():
    assert _run("a batch of 1", _model(), _points(), batch_size=1)[0] == FINITE


def test_a_single_sample_trains_to_a_finite_result():
    assert _run("N = 1 (one sample, batch 1)", _model(), _points(1), batch_size=1)[0] == FINITE


def test_fewer_samples_than_the_batch_size_train_on_what_there_is():
    outcome, result = _run("N = 10 < batch size 32", _model(), _points(10), batch_size=32)
    assert outcome == FINITE
    assert result.state.settings["n_data"] == 10 and result.state.settings["batch_size"] == 10  # the batch used, not the one asked


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_scaled_inputs_train_to_a_finite_result(scale):
    """1e-6: a tiny signal is no hazard, the loss is at most that of zero inputs. 1e6: the squared error,
    ~ 2 (1e6)^2 = 2e12 a sample, is far below float32's 3.4e38, and so are its gradients (checked)."""
    outcome, result = _run(f"inputs x {scale:g}", _model(), _points() * scale)
    assert outcome == FINITE
    if scale > 1:  # 10 steps cannot fit inputs of 1e6: the distortion stays of the order of their squared norm
        assert 1e11 < result.distortion[-1] < 1e14


def test_inputs_whose_squares_overflow_float32_are_recorded_failed_at_step_0():
    """(1e20)^2 = 1e40 is beyond float32 (3.4e38): the squared error is inf from the first step."""
    assert _run("inputs x 1e20 (squared error beyond float32)", _model(), _points() * 1e20)[0] == "recorded failed at step 0"


def test_a_finite_loss_with_an_overflowing_gradient_is_recorded_failed_not_returned():
    """Inputs of 1e13 with the log-variance near its lower bound (raw -40: -14.86, sigma^2 = 3.5e-7): the
    loss, ~ (1e13)^2 / sigma^2 ~ 1e32, is finite, but the gradient of the log-variance head is that times
    its input (~1e13), beyond float32. One step: its update makes the weights non-finite, which no loss
    sees; training must record that step as failed, not return the weights."""
    model, data = _force_raw_logvar(_model(beta=1.0), -40.0), _points() * 1e13
    loss_finite, bad = _loss_and_gradients(model, data[:32])
    assert loss_finite and "encoder.heads.weight" in bad  # why this case exists
    case = "inputs x 1e13, log-variance near the lower bound (finite loss, gradient beyond float32), 1 step"
    assert _run(case, model, data, steps=1, gradients=False)[0] == "recorded failed at step 0"


def test_weights_made_non_finite_by_the_last_update_are_recorded_at_that_step():
    """The update of the last step is seen by no loss: training checks the weights themselves."""
    steps, taken = 5, []

    @torch.no_grad()
    def poison_the_last(optimizer, args, kwargs):
        taken.append(1)
        if len(taken) == steps:
            next(iter(optimizer.param_groups[0]["params"])).fill_(float("nan"))

    handle = register_optimizer_step_post_hook(poison_the_last)
    try:
        with pytest.raises(TrainingDiverged, match=f"the weights became non-finite at step {steps - 1}") as diverged:
            train(_model(), _points(), TrainConfig(steps=steps, batch_size=32, progress=False))
    finally:
        handle.remove()
    assert diverged.value.step == steps - 1 and np.isfinite(diverged.value.result.loss).all() and len(diverged.value.result.loss) == steps
    record("numerical edges", "train: weights made NaN by the last update", tried=1, outcome=f"recorded failed at step {steps - 1}")


# data types: training converts to the model's float32, exactly where the values are exact


TENSOR_DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8]
TENSOR_DTYPES += [torch.uint16, torch.uint32, torch.uint64]
ARRAY_DTYPES = [np.float16, np.float64, np.longdouble, np.int8, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


def _dtype_name(dtype) -> str:
    return str(dtype) if isinstance(dtype, torch.dtype) else f"numpy.{np.dtype(dtype).name}"


@pytest.mark.parametrize("dtype", TENSOR_DTYPES + ARRAY_DTYPES, ids=_dtype_name)
def test_data_of_any_numeric_dtype_trains_as_its_float32_values(dtype):
    values = _small_integers()
    data = values.to(dtype) if isinstance(dtype, torch.dtype) else values.numpy().astype(dtype)
    model = _model()
    outcome, _ = _run(f"data of {_dtype_name(dtype)}", model, data)
    assert outcome == FINITE
    reference = _model()
    train(reference, values.to(torch.float32), TrainConfig(steps=STEPS, batch_size=32, progress=False))
    assert all(torch.equal(a, b) for a, b in zip(_weights(model).values(), _weights(reference).values(), strict=True))


@pytest.mark.parametrize(
    "data, message",
    [
        (torch.zeros(8, 2, dtype=torch.bool), "numeric"),
        (torch.zeros(8, 2, dtype=torch.complex64), "numeric"),
        (np.zeros((8, 2), dtype=np.complex128), "numeric"),
        (np.array([[1.0, 2.0]] * 8, dtype=object), "numeric"),
        (np.array([["1", "2"]] * 8), "numeric"),
    ],
    ids=["bool tensor", "complex tensor", "complex array", "object array", "string array"],
)
def test_data_that_is_not_numbers_is_refused_with_a_clear_error(data, message):
    kind = str(data.dtype) if isinstance(data, torch.Tensor) else f"numpy.{data.dtype}"
    outcome, _ = _run(f"data of {kind}", _model(), data, gradients=False)
    assert outcome.startswith("refused") and message in outcome


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint16], ids=_dtype_name)
def test_ipae_fit_and_the_estimator_take_every_numeric_dtype(tmp_path, dtype, capsys):
    values = _small_integers().numpy()
    data = values.astype(dtype)
    np.save(tmp_path / "x.npy", data)
    options = ["--hidden", "16", "--n-components", "2", "--steps", str(STEPS), "--batch-size", "32", "--quiet"]
    code = main(["fit", str(tmp_path / "x.npy"), *options, "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(np.isfinite(metrics[key]) for key in ("loss", "distortion", "rate"))
    record(
        "numerical edges", f"ipae fit on a .npy of {np.dtype(dtype)}", tried=1, outcome=FINITE, detail=f"final loss {metrics['loss']:.3g}"
    )

    estimator = IPAE(n_components=2, hidden=(16,), steps=STEPS, batch_size=32, random_state=0)
    codes = estimator.fit_transform(data)
    reference = IPAE(n_components=2, hidden=(16,), steps=STEPS, batch_size=32, random_state=0).fit_transform(values.astype(np.float32))
    assert np.isfinite(codes).all() and np.array_equal(codes, reference)
    record(
        "numerical edges",
        f"IPAE.fit on an array of {np.dtype(dtype)}",
        tried=1,
        outcome=FINITE,
        detail="codes equal those of its float32 values",
    )


def test_ipae_fit_and_the_estimator_record_a_run_whose_weights_turn_non_finite(tmp_path, capsys):
    """The last update poisons the weights: `ipae fit` exits 1 and writes no model; the estimator raises FitDiverged."""
    np.save(tmp_path / "x.npy", _points().numpy())
    state = {"steps": 0}

    @torch.no_grad()
    def poison_at_3(optimizer, args, kwargs):
        state["steps"] += 1
        if state["steps"] == 3:
            next(iter(optimizer.param_groups[0]["params"])).fill_(float("nan"))

    handle = register_optimizer_step_post_hook(poison_at_3)
    try:
        options = ["--hidden", "16", "--n-components", "2", "--steps", "3", "--batch-size", "32", "--quiet"]
        code = main(["fit", str(tmp_path / "x.npy"), *options, "--out", str(tmp_path / "run")])
        error = capsys.readouterr().err
        state["steps"] = 0
        with pytest.raises(FitDiverged, match="the weights became non-finite at step 2") as diverged:
            IPAE(n_components=2, hidden=(16,), steps=3, batch_size=32, random_state=0).fit(_points().numpy())
    finally:
        handle.remove()
    assert code == 1 and "the weights became non-finite at step 2" in error and error.count("\n") == 1
    assert not (tmp_path / "run").exists()
    assert diverged.value.step == 2
    record("numerical edges", "ipae fit / IPAE.fit, weights made NaN by the last update", tried=2, outcome="recorded failed at step 2")


# beta


@pytest.mark.parametrize("beta", [0.0, 1e12])
def test_beta_zero_and_a_huge_beta_train_to_a_finite_result(beta):
    """0: a plain autoencoder. 1e12: times eq. 10 of the toy batch (a few nats) the loss is ~1e12 to 1e13,
    far below float32's 3.4e38, and Adam's steps do not grow with the gradient's scale."""
    assert _run(f"beta = {beta:g}", _model(beta=beta), _points())[0] == FINITE


# every rate term under the stresses above


RATE_CASES = {
    "plain data": lambda model: (model, _points(), 32),
    "a batch of 1": lambda model: (model, _points(), 1),
    "identical inputs": lambda model: (model, torch.full((64, 2), 3.0), 32),
    "log-variance at the upper bound": lambda model: (_force_raw_logvar(model, 1e4), _points(), 32),
    "log-variance at the lower bound": lambda model: (_force_raw_logvar(model, -1e4), _points(), 32),
}


@pytest.mark.parametrize("case", [case if case == "plain data" else pytest.param(case, marks=pytest.mark.slow) for case in RATE_CASES])
@pytest.mark.parametrize("rate", list(RATES))
def test_every_rate_term_trains_to_a_finite_result(rate, case):
    name, options = RATES[rate]
    model, data, batch_size = RATE_CASES[case](_model(name, options))
    assert _run(f"rate {rate}: {case}", model, data, batch_size=batch_size)[0] == FINITE


@pytest.mark.slow
@pytest.mark.parametrize("rate", list(RATES))
def test_every_rate_term_with_a_huge_beta_trains_to_a_finite_result(rate):
    """beta = 1e12 times a rate of at most ~1e2 nats at the start (~1e14) is far below float32's 3.4e38, and Adam's
    steps do not grow with the gradient's scale: the run stays finite."""
    name, options = RATES[rate]
    assert _run(f"rate {rate}: beta = 1e12", _model(name, options, beta=1e12), _points())[0] == FINITE


@pytest.mark.slow
@pytest.mark.parametrize("rate", list(RATES))
def test_every_rate_term_with_an_unbounded_log_variance_beyond_float32_is_recorded_failed(rate):
    name, options = RATES[rate]
    model = _force_raw_logvar(_model(name, options, paper_exact=True), 1e4)
    assert _run(f"rate {rate}: log-variance unbounded, raw 1e4", model, _points())[0] == "recorded failed at step 0"
