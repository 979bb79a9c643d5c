"""A dense layer with its activation fused, and a backward pass written for the CPU's sake.

`Dense` computes activation(x @ W^T + b) like `nn.Linear` followed by the activation, with the same
parameters and the same gradients up to rounding, but
- the activation runs in place on the matmul's output, and its backward reads that output
  (`threshold_backward` / `sigmoid_backward` / `tanh_backward`: one pass, no temporaries);
- a widening layer (in < NARROW_INPUT < out, e.g. 2 -> 2048) folds its bias into the matmul ([x, 1] @ [W, b]^T), which saves a
  (B, out) pass in the forward and the (B, out) reduction for the bias gradient in the backward, and
  computes its weight gradient as (x^T g)^T: a (2048 x 512) @ (512 x 2) product runs several times
  slower than its transpose (2 x 512) @ (512 x 2048) with oneDNN on the CPU;
- under autocast (bf16), the matmuls and the saved activations are in the autocast dtype, while the
  parameters and their gradients stay in float32.
Under torch.compile the layer is written with plain operators instead (`F.linear` and the
activation), which the compiler can fuse with its neighbours; the hand-written backward would hide them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__: list[str] = []  # internal

# A layer that reads fewer features than this and writes more is "widening": its matmul is bound by
# writing the (B, out) result, so it folds the bias in and takes the weight gradient transposed.
NARROW_INPUT = 64

# name -> (in-place forward, backward from the activation's output); None is the identity
ACTIVATIONS = {
    "relu": (torch.relu_, lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)),
    "sigmoid": (torch.sigmoid_, torch.ops.aten.sigmoid_backward),
    "tanh": (torch.tanh_, torch.ops.aten.tanh_backward),
}


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _DenseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, activation: str | None, dtype: torch.dtype) -> Tensor:
        widening = weight.shape[1] < NARROW_INPUT < weight.shape[0]
        if widening:
            # Fold the bias into the matmul, [x, 1] @ [W, b]^T: no (B, out) pass to add it, and its
            # gradient comes out of the weight gradient's matmul instead of a (B, out) reduction.
            x_c = torch.cat([x.to(dtype), x.new_ones(x.shape[0], 1, dtype=dtype)], dim=1)  # (B, in + 1)
            weight_c = torch.cat([weight, bias[:, None]], dim=1).to(dtype)  # (out, in + 1)
            out = x_c @ weight_c.t()  # (B, out)
        else:
            x_c, weight_c = x.to(dtype), weight.to(dtype)
            out = torch.addmm(bias.to(dtype), x_c, weight_c.t())  # (B, out)
        if activation is not None:
            ACTIVATIONS[activation][0](out)
        ctx.activation, ctx.widening = activation, widening
        ctx.param_dtype, ctx.input_dtype = weight.dtype, x.dtype
        ctx.save_for_backward(x_c, weight_c, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, out = ctx.saved_tensors
        grad = grad_out.to(out.dtype)
        if ctx.activation is not None:
            grad = ACTIVATIONS[ctx.activation][1](grad, out)  # (B, out): gradient before the activation
        if ctx.widening:
            grad_x = (grad @ weight[:, :-1]).to(ctx.input_dtype) if ctx.needs_input_grad[0] else None
            grad_augmented = (x.t() @ grad).t().to(ctx.param_dtype)  # (out, in + 1), as (in + 1, B) @ (B, out)
            return grad_x, grad_augmented[:, :-1].contiguous(), grad_augmented[:, -1].contiguous(), None, None
        grad_x = (grad @ weight).to(ctx.input_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad.t() @ x).to(ctx.param_dtype)  # (out, in)
        grad_bias = grad.sum(dim=0, dtype=ctx.param_dtype)
        return grad_x, grad_weight, grad_bias, None, None


class Dense(nn.Module):
    """activation(x @ W^T + b); (B, in_features) -> (B, out_features). `activation` None is linear.

    The initial weights are drawn from `generator` (None: torch's global generator).
    """

    def __init__(
        self, in_features: int, out_features: int, activation: str | None = None, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(sorted(ACTIVATIONS))}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None) -> None:
        """PyTorch's default Linear init: uniform with bound 1/sqrt(in_features), drawn from `generator`
        (None: torch's global generator, as nn.Linear does)."""
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight.uniform_(-bound, bound, generator=generator)
        self.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            out = F.linear(x, self.weight, self.bias)
            return out if self.activation is None else getattr(torch, self.activation)(out)
        return _DenseFunction.apply(x, self.weight, self.bias, self.activation, _compute_dtype(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"
