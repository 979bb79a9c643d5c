import pytest
import torch
from torch import nn

from ipae.layers import NARROW_INPUT, Dense

REFERENCE = {"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), None: nn.Identity()}
# (in, out): a widening layer (bias folded into the matmul), a narrowing one, and a wide one
SHAPES = [(3, 7), (7, 3), (NARROW_INPUT + 6, NARROW_INPUT + 9)]


@pytest.mark.parametrize("activation", list(REFERENCE))
@pytest.mark.parametrize("shape", SHAPES)
def test_dense_matches_linear_and_activation_in_float64(activation, shape):
    generator = torch.Generator().manual_seed(0)
    dense = Dense(*shape, activation, generator=generator).double()
    linear = nn.Linear(*shape).double()
    linear.load_state_dict(dense.state_dict())
    x = torch.randn(6, shape[0], dtype=torch.float64, generator=generator, requires_grad=True)
    out, reference = dense(x), REFERENCE[activation](linear(x))
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-14)
    upstream = torch.randn(out.shape, dtype=torch.float64, generator=generator)
    grads = torch.autograd.grad(out, [x, dense.weight, dense.bias], upstream)
    expected = torch.autograd.grad(reference, [x, linear.weight, linear.bias], upstream)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_passes_gradcheck(shape):
    dense = Dense(*shape, "tanh", generator=torch.Generator().manual_seed(3)).double()
    x = torch.randn(4, shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, weight, bias: torch.func.functional_call(dense, {"weight": weight, "bias": bias}, (x,)), (x, dense.weight, dense.bias)
    )


def test_dense_under_bf16_autocast_keeps_float32_parameters_and_gradients():
    dense = Dense(3, 70, "relu", generator=torch.Generator().manual_seed(4))
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dense(x)
    assert out.dtype == torch.bfloat16
    reference = torch.relu(x @ dense.weight.T + dense.bias)
    torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2)  # bf16 keeps 8 bits of mantissa
    out.float().sum().backward()
    assert dense.weight.grad.dtype == torch.float32 and dense.bias.grad.dtype == torch.float32
    torch.testing.assert_close(dense.bias.grad, (out > 0).float().sum(0), rtol=0, atol=0)  # relu' from its own output


def test_initial_weights_come_from_the_generator_alone():
    state = torch.get_rng_state()
    first, second = (Dense(5, 4, generator=torch.Generator().manual_seed(9)) for _ in range(2))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(first.weight, second.weight, rtol=0, atol=0)
    assert first.weight.abs().max() <= 1 / 5**0.5 and first.weight.std() > 0.1  # uniform(-1/sqrt(5), 1/sqrt(5))


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        Dense(2, 3, "gelu")
