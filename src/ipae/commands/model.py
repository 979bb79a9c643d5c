"""`ipae encode`, `ipae decode` and `ipae info`: a trained model (a model directory) applied to an array file."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch


def _load(args, name: str):
    """The model in model_dir and the array `name` checked against what it takes."""
    from ipae.checkpoint import load_model
    from ipae.data.arrays import load_array

    if getattr(args, "out", None) is not None:
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
        if args.out.suffix != ".npy":
            raise ValueError(f"--out must end in .npy, got {args.out}")
    model = load_model(args.model_dir)
    array = load_array(getattr(args, name), key=args.key, max_ndim=4)
    if name == "codes" and array.shape[1:] != (model.architecture.n_latent,):
        raise ValueError(f"{args.codes}: expected codes of dimension {model.architecture.n_latent}, got shape {array.shape}")
    if name == "data":
        model.architecture.check_input(array.shape[1:])
    return model, torch.from_numpy(array)


def _save_npy(array: np.ndarray, path: Path) -> None:
    with path.open("wb") as file:  # a file object: np.save would append ".npy" to a temporary name
        np.save(file, array, allow_pickle=False)


@torch.no_grad()
def transform(args) -> int:
    """`encode` (the means, or sampled codes) and `decode` (the decoded means), into a .npy file."""
    from ipae._files import write_atomic
    from ipae.information import reparameterise

    model, array = _load(args, "data" if args.command == "encode" else "codes")
    if args.command == "decode":
        result, what = model.decode(array), "reconstructions"
    else:
        mu, logvar = model.encode(array)
        noise = torch.randn(mu.shape, generator=torch.Generator().manual_seed(args.seed))
        result, what = (reparameterise(mu, logvar, noise) if args.sampled else mu), "codes"
    write_atomic(args.out, partial(_save_npy, result.numpy()))
    print(f"{result.shape[0]} {what} of shape {tuple(result.shape[1:])} -> {args.out}")
    return 0


@torch.no_grad()
def info(args) -> int:
    """Bounds and Monte Carlo estimates of I(x; z) of the model's codes of the data, in nats (float64)."""
    from ipae.diagnostics import ESTIMATE_KEYS, SATURATION_GAP, information
    from ipae.mixture import DRAWING, REPORTED

    model, x = _load(args, "data")
    mu, logvar = model.double().encode(x.double())
    found = information(mu, logvar, generator=torch.Generator().manual_seed(args.seed), n_samples=args.samples)
    print(f"I(x; z) in nats of {args.model_dir} on {mu.shape[0]} points of {args.data} (codes of dimension {mu.shape[1]}):")
    for method, label in REPORTED.items():
        print(f"  {label + (f' ({args.samples} draws per point)' if method in DRAWING else ''):<64}{found[ESTIMATE_KEYS[method]]:.4f}")
    print(f"  log N, the most a mixture of N components can carry: {found['I_log_n']:.4f}")
    if found["I_saturated"]:
        print(
            f"  saturated: the two Monte Carlo estimates differ by more than {SATURATION_GAP} nats; I(x; z) is at least {found['I_mc']:.4f}"
        )
    return 0
