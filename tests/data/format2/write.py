"""Writes tests/data/format2: a model and an estimator saved by ipae at commit 98c7081 (model.json format 2),
with the codes they give, for test_checkpoint's test that directories of that version still load."""

import json
import sys
from pathlib import Path

import numpy as np
import torch

import ipae
from ipae.checkpoint import save_model
from ipae.models import AutoEncoder
from ipae.networks import MLP
from ipae.rates import InformationPotential

out = Path(sys.argv[1])
model = AutoEncoder.from_architecture(MLP((3,), (4,), 2), seed=5, rate=InformationPotential(2), beta=0.5, distortion_weight=0.5)
save_model(model, out / "model")
x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
estimator = ipae.IPAE(n_components=2, hidden=(4,), steps=2, batch_size=4, random_state=0, device="cpu").fit(
    np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
)
estimator.save(out / "estimator")
with torch.no_grad():
    codes = model.encode(torch.from_numpy(x))[0].double().tolist()
expected = {"commit": sys.argv[2], "x": x.tolist(), "model_codes": codes, "estimator_codes": estimator.transform(x).tolist()}
(out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
