"""scikit-learn transformers: `IPAE` and its baseline `BetaVAE`, which differ only in the rate term.

`fit` trains an `AutoEncoder` with `ipae.train`; `transform` gives the encoder means, e.g.
`IPAE(n_components=2, random_state=0).fit_transform(X)` the (N, 2) codes of X; `inverse_transform`
gives the decoded means and `score` a held-out objective that does not depend on beta (see `score`).
`ipae.save(estimator, directory)` writes a fitted one as a model directory (see `ipae.checkpoint`) and
`ipae.load(directory)` gives it back.

The parameters are checked by the library's own validators (`ipae.models.ModelSpec`,
`ipae.TrainConfig`, the rates and the networks), which `ipae fit` uses too, not by scikit-learn's
private `_param_validation`.
"""

from __future__ import annotations

import inspect
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ipae._validation import check_positive_ints
from ipae.checkpoint import has_state, load_model, read_metadata
from ipae.diagnostics import in_chunks
from ipae.fitting import architecture_of, fit
from ipae.information import reparameterise
from ipae.models import AutoEncoder, ModelSpec
from ipae.rates import InformationPotential, PairwiseKL, PriorKL, Rate
from ipae.runtime import resolve_device
from ipae.training import TrainConfig, TrainingDiverged, TrainResult

__all__ = ["FitDiverged"]

# Rows per forward pass in transform and inverse_transform: bounds their memory whatever N is. Every
# pass has exactly this many rows (the last padded), because a matmul's result for a row depends on the
# number of rows M (MKL/oneDNN pick kernels and blocking by M): at one M a row's codes are the same bit
# for bit whatever rows it is encoded with (scikit-learn's check_methods_subset_invariance; up to 5e-7
# apart otherwise on an AVX-512 Xeon). 256 keeps the padding of a single row cheap.
INFERENCE_BATCH = 256


class FitDiverged(TrainingDiverged):
    """`TrainingDiverged` raised by an estimator's `fit`, with advice on what to change."""

    def __init__(self, estimator_name: str, error: TrainingDiverged) -> None:
        super().__init__(error.step, error.result)
        self.args = (f"{estimator_name}.fit: {error}. Try a smaller lr or a larger beta, or standardise X (e.g. with StandardScaler)",)


# The parameters IPAE and BetaVAE share, after n_components and their own (beta; IPAE's n_partners), with
# their defaults: the paper's toy model and training (ipae.models.PRESETS["toy"], ipae.TrainConfig).
SHARED_PARAMETERS = {
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


def _parameters(**own):
    """An `__init__(self, n_components=16, *, **own, **SHARED_PARAMETERS)` that only stores its
    arguments, as scikit-learn asks; its signature (which scikit-learn reads) names every parameter."""
    keywords = {**own, **SHARED_PARAMETERS}
    signature = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("n_components", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=16),
        ]
        + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value) for name, value in keywords.items()]
    )

    def __init__(self, *args, **kwargs) -> None:
        bound = signature.bind(self, *args, **kwargs)  # TypeError for an unknown parameter, as a plain __init__ gives
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    __init__.__signature__ = signature
    return __init__


class _AutoEncoderTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """What IPAE and BetaVAE share; a subclass names its rate term and that rate's options."""

    _rate: str  # a key of ipae.rates.RATES
    _score_rate: type[Rate]  # the rate term of `score`, the same for every beta

    def _rate_options(self) -> dict:
        """The options of the rate term, from the estimator's parameters."""
        return {}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]  # transform returns float64 whatever the input
        return tags

    @property
    def _n_features_out(self) -> int:  # for get_feature_names_out; AttributeError until fitted
        return self.model_.architecture.n_latent

    # fitting

    def fit(self, X, y=None, *, monitor=None):
        """Train a fresh autoencoder on X (N, n_features); `y` is ignored. Returns self.

        `monitor`: held-out samples (M, n_features) whose I(x; z) and distortion are measured every
        `monitor_every` steps and at the end, into `monitor_`; the weights are the same without it.
        """
        self._forget_fit()  # a second fit starts from scratch, and a failed one leaves nothing behind
        try:
            return self._fit(X, monitor)
        except BaseException:
            self._forget_fit()
            raise

    def _fit(self, X, monitor):
        spec, config = self._settings()  # the parameters first: a clear error before any work
        X = self._check_X(X, reset=True)
        if monitor is not None:
            monitor = torch.from_numpy(np.array(self._check_X(monitor, reset=False, input_name="monitor")))  # a copy: it may be read-only
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        # the monitor measures at log steps; the log itself is not kept, so only its divergence checks change
        log_every = math.gcd(config.log_every, config.monitor_every) if monitor is not None else config.log_every
        config = replace(config, seed=seed, log_every=log_every)
        data = torch.from_numpy(X if X.flags.writeable else X.copy())  # torch warns on read-only arrays
        checkpoint = self.checkpoint_dir
        resume = checkpoint if checkpoint is not None and has_state(checkpoint) else None  # a killed fit goes on
        try:
            model, result = fit(data, spec, config, seed=seed, resume=resume, checkpoint_dir=checkpoint, monitor=monitor)
        except TrainingDiverged as error:
            raise FitDiverged(type(self).__name__, error) from error
        if checkpoint is not None and has_state(checkpoint):  # done: a later fit must not continue this one
            shutil.rmtree(checkpoint)
        self.model_ = model.eval()
        self.seed_ = seed  # the seed of the initial weights, the batches, the noise and score's noise
        self.history_ = replace(result, state=None, monitor=[])  # per-step loss, distortion and rate; no optimiser state
        self.loss_curve_ = result.loss
        self.monitor_ = result.monitor  # [] without `monitor`
        return self

    def _settings(self) -> tuple[ModelSpec, TrainConfig]:
        """The model spec and training config the parameters name, checked by their own validators (seed 0:
        `fit` draws it); a ValueError that names the estimator and the parameter otherwise."""
        try:
            check_positive_ints("hidden", self.hidden)
            if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, Path)):
                raise ValueError(f"checkpoint_dir must be a path or None, got {self.checkpoint_dir!r}")
            config = TrainConfig(
                steps=_plain(self.steps),
                batch_size=_plain(self.batch_size),
                lr=_plain(self.lr),
                precision=self.precision,
                compile=_plain(self.compile),
                device=str(resolve_device(self.device)),
                progress=_plain(self.progress),
                checkpoint_every=_plain(self.checkpoint_every),
                monitor_every=_plain(self.monitor_every),
                monitor_samples=_plain(self.monitor_samples),
            )
            return self._spec(), config
        except ValueError as error:
            raise ValueError(f"{type(self).__name__}: {error}") from None

    def _spec(self, n_features: int = 1) -> ModelSpec:
        """The model the parameters describe, for samples of `n_features` (`fit` takes them from X)."""
        hidden = tuple(_plain(h) for h in self.hidden)
        architecture = architecture_of("mlp", _plain(self.n_components), hidden, self.activation, (n_features,))
        rate_options = {name: _plain(value) for name, value in self._rate_options().items()}
        return ModelSpec(architecture, self._rate, rate_options, self.distortion, _plain(self.beta))

    def _forget_fit(self) -> None:
        for name in [name for name in vars(self) if name.endswith("_") and not name.startswith("__")]:
            delattr(self, name)

    def _check_X(self, X, *, reset: bool, input_name: str = "X") -> np.ndarray:
        """X as a finite, C-ordered float32 (N, n_features) array; n_features must match fit unless `reset`."""
        if input_name == "X":
            X = validate_data(self, X, reset=reset, dtype=np.float32, order="C")
        else:  # other samples than X: checked as X is, without taking or checking X's feature names
            X = check_array(X, dtype=np.float32, order="C", input_name=input_name)
            if X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"{input_name} has {X.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} features"
                )
        if self.distortion == "bernoulli" and (X.min() < 0 or X.max() > 1):
            raise ValueError(f"distortion='bernoulli' needs {input_name} in [0, 1]; got values in [{X.min():g}, {X.max():g}]")
        return X

    # using the fitted model

    def transform(self, X) -> np.ndarray:
        """Encoder means of X: (N, n_features) -> float64 (N, n_components)."""
        check_is_fitted(self)
        X = self._check_X(X, reset=False)
        return self._map(lambda x: self.model_.encode(x)[0], X)

    def inverse_transform(self, X) -> np.ndarray:
        """Decoded means of codes X: (N, n_components) -> float64 (N, n_features), in data space."""
        check_is_fitted(self)
        Z = check_array(X, dtype=np.float32, order="C", input_name="X")
        if Z.shape[1] != self.n_components:
            raise ValueError(f"X has {Z.shape[1]} features, but inverse_transform expects {self.n_components} (n_components)")
        return self._map(self.model_.decode, Z)

    def _map(self, function, A: np.ndarray) -> np.ndarray:
        """function over A's rows in chunks of INFERENCE_BATCH, the last one padded with zero rows."""
        self.model_.eval()
        (found,) = in_chunks(function, A, like=next(self.model_.parameters()), size=INFERENCE_BATCH, padded=True)
        return found.numpy()

    @torch.no_grad()
    def score(self, X, y=None) -> float:
        """Minus the held-out distortion plus a rate at weight 1, per sample: higher is better. `y` is ignored.

        -(mean_i d(x_i, g(z_i)) + R), z_i ~ q(z|x_i) one draw each. beta is not in it, so that the models
        of different betas are measured alike: a grid search over beta picks the model with the best
        trade-off at weight 1 (not, as the training objective would, the smallest beta).
        `BetaVAE`: R is the KL to the prior and the score is the ELBO (the Bernoulli log-likelihood bound
        for "bernoulli"; for "mse", that of a Gaussian decoder of variance 1/2 up to a constant of the data).
        `IPAE`: R is the pairwise-KL upper bound on I(x; z) of each batch's code mixture (Kolchinsky &
        Tracey, 2017; computed in float64), not IPAE's own eq. 10, whose slack grows like Var(mu) / sigma^2 as beta falls.

        Limits: it ranks the trade-off at weight 1 only (for the VAE, the likelihood bound, which the
        beta = 1 model is trained for), not the codes' use for another task: score that task with its own
        scorer. Scores are comparable on the same X with the same batch_size: IPAE's R is at most log(rows
        of a batch), so codes that keep more than that are ranked by their distortion alone. Computed in
        batches of `batch_size` rows with noise from a generator seeded with `seed_`: the same X gives the
        same score.
        """
        check_is_fitted(self)
        X = self._check_X(X, reset=False)
        model = self.model_.eval()
        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(self.seed_)
        rate = self._score_rate()
        batch_size = min(int(self.batch_size), len(X))
        total = 0.0
        for i in range(0, len(X), batch_size):
            x = torch.tensor(X[i : i + batch_size], device=device)  # (B, n_features)
            mu, logvar = model.encode(x)  # (B, D) each
            z = reparameterise(mu, logvar, torch.randn(mu.shape, generator=generator, device=device, dtype=mu.dtype))  # (B, D)
            # the rate in float64: codes far apart make its pairwise terms cancel to within float32's rounding
            objective = model.distortion_per_sample(x, z).double().mean() + rate(mu.double(), logvar.double(), z.double())
            total += float(objective) * len(x)
        return -total / len(X)


class IPAE(_AutoEncoderTransformer):
    """Information Potential Auto-Encoder: rate = the information potential bound on I(x; z), eq. 10.

    `n_partners` is the paper's N_j, the partners drawn per sample in each batch (None: all pairs).
    The other parameters are those of `ipae.fitting.ModelSpec` and `ipae.TrainConfig`;
    `device` None means CUDA when present, else the CPU; `random_state` fixes the initial weights,
    the batches and the noise, so that the same int gives the same result twice on a device.

    Fitted attributes: `model_` (the `AutoEncoder`), `n_features_in_`, `seed_`, `history_`
    (a `TrainResult` of per-step loss, distortion and rate), `loss_curve_` (= `history_.loss`) and
    `monitor_`: with `fit(X, monitor=X_heldout)`, the measurements of I(x; z) and the distortion of
    X_heldout every `monitor_every` steps and at the end (`ipae.train`'s monitor records; each
    costs seconds at 5000 points, with `monitor_samples` Monte Carlo draws per point); [] without.
    With `checkpoint_dir` and `checkpoint_every` = N, the fit so far is saved there every N steps, and
    a fit that was killed continues from it when run again with the same parameters; the checkpoint
    is removed when the fit ends.
    """

    _rate = "ip"
    _score_rate = PairwiseKL

    __init__ = _parameters(beta=InformationPotential.default_beta, n_partners=1)

    def _rate_options(self) -> dict:
        return {"n_partners": self.n_partners}


class BetaVAE(_AutoEncoderTransformer):
    """beta-VAE, the baseline: rate = KL(q(z|x) || N(0, I)) (eq. 5). Parameters and fitted attributes as `IPAE`'s,
    without `n_partners`; beta = 1 is the plain VAE."""

    _rate = "vae"
    _score_rate = PriorKL

    __init__ = _parameters(beta=PriorKL.default_beta)


ESTIMATORS: dict[str, type[_AutoEncoderTransformer]] = {"IPAE": IPAE, "BetaVAE": BetaVAE}


def _plain(value):
    """A numpy scalar (as a grid search's values may be) as the Python number the validators take; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def _json_params(params: dict) -> dict:
    """get_params() in JSON: tuples as lists, a device as its name; a RandomState instance, which has
    no JSON form, as None (the fitted `seed_` is saved beside it)."""

    def convert(value):
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        if isinstance(value, torch.device):
            return str(value)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.random.RandomState | np.random.Generator):
            return None
        return value

    return {name: convert(value) for name, value in params.items()}


def checkpoint_of(estimator) -> tuple[AutoEncoder, dict]:
    """What `ipae.save` writes of a fitted estimator: its model, and model.json's metadata that holds the
    rest (the class, the parameters, the fitted attributes)."""
    if not isinstance(estimator, _AutoEncoderTransformer):
        raise TypeError(f"ipae.save takes an AutoEncoder or a fitted IPAE or BetaVAE, got {type(estimator).__name__}")
    check_is_fitted(estimator)
    record = {
        "class": type(estimator).__name__,
        "params": _json_params(estimator.get_params(deep=False)),
        "n_features_in_": int(estimator.n_features_in_),
        "seed_": estimator.seed_,
        "history_": {name: getattr(estimator.history_, name).tolist() for name in ("loss", "distortion", "rate")},
        "seconds": estimator.history_.seconds,
        "monitor_": estimator.monitor_,
    }
    if hasattr(estimator, "feature_names_in_"):
        record["feature_names_in_"] = estimator.feature_names_in_.tolist()
    return estimator.model_, {"estimator": record}


def from_checkpoint(directory: str | Path) -> IPAE | BetaVAE:
    """The fitted estimator that `ipae.save` wrote into `directory`, its model on `device` (the CPU where
    that is absent); `ipae.load` calls it for a directory whose metadata holds an estimator."""
    directory = Path(directory)
    record = read_metadata(directory).get("estimator")
    try:
        cls = ESTIMATORS[record["class"]]
        params = dict(record["params"])
        params["hidden"] = tuple(params["hidden"])
        estimator = cls(**params)
        history = TrainResult(
            **{name: np.asarray(values, dtype=np.float64) for name, values in record["history_"].items()}, seconds=record["seconds"]
        )
        n_features_in, seed = int(record["n_features_in_"]), int(record["seed_"])
        monitor = list(record.get("monitor_", []))  # absent from estimators saved by earlier versions
        expected = estimator._spec(n_features_in)
        device = resolve_device(estimator.device, or_cpu=True)  # where the model runs: the CPU where `device` is not here
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(f"{directory / 'model.json'}: damaged estimator metadata ({type(error).__name__}: {reason})") from None
    model = load_model(directory)
    if model.spec != expected:
        raise ValueError(f"{directory}: the model {model.spec.to_dict()} does not match the estimator's parameters {params}")
    estimator.model_ = model.to(device).eval()
    estimator.n_features_in_ = n_features_in
    if "feature_names_in_" in record:
        estimator.feature_names_in_ = np.asarray(record["feature_names_in_"], dtype=object)
    estimator.seed_ = seed
    estimator.history_ = history
    estimator.loss_curve_ = history.loss
    estimator.monitor_ = monitor
    return estimator
