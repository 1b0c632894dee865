"""Layers: shapes, initialisation, exact gradients (central differences and torch autograd),
checkpointing behaviour, dtypes and bad input."""
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from obstacle_classifier.nn import (Bias, Linear, ReLU, ScaledReLU, Sigmoid, check_gradient,
                                    numerical_gradient, rel_error)

TORCH_TOL = 1e-10


def _scalar_objective(layer, X, R):
    """L = sum(layer(X) * R): its gradient w.r.t. the output is R, so backward(R) is dL/dX."""
    return float(np.sum(layer.forward(X) * R))


def _layer_grads(layer, X, R):
    layer.forward(X)
    return layer.backward(R)


def _make(kind, width, dtype=np.float64, rng=0):
    if kind == 'linear':
        return Linear(width, width + 2, dtype=dtype, rng=rng)
    if kind == 'bias':
        layer = Bias(width, dtype=dtype)
        layer.b[:] = np.random.default_rng(rng).standard_normal(width)
        return layer
    return {'scaled_relu': ScaledReLU, 'relu': ReLU, 'sigmoid': Sigmoid}[kind](width)


def _torch_forward(kind, layer, X):
    if kind == 'linear':
        return X @ torch.tensor(layer.W) + torch.tensor(layer.b)
    if kind == 'bias':
        return X + torch.tensor(layer.b)
    if kind == 'scaled_relu':
        return torch.where(X > 1, 2 * X, torch.zeros_like(X))
    if kind == 'relu':
        return torch.relu(X)
    return torch.sigmoid(X)


KINDS = ['linear', 'bias', 'scaled_relu', 'relu', 'sigmoid']


def _inputs(kind, n, width, rng):
    X = rng.standard_normal((n, width)) * 2
    if kind in ('scaled_relu', 'relu'):
        # keep away from the kinks so central differences are meaningful
        knee = 1.0 if kind == 'scaled_relu' else 0.0
        X[np.abs(X - knee) < 1e-3] += 0.01
    return X


@pytest.mark.parametrize('kind', KINDS)
def test_input_gradient_matches_central_differences(kind):
    rng = np.random.default_rng(1)
    layer = _make(kind, 5)
    X = _inputs(kind, 4, 5, rng)
    R = rng.standard_normal(layer.forward(X).shape)
    grad_in = _layer_grads(layer, X, R)[0]
    numeric = numerical_gradient(lambda x: _scalar_objective(layer, x, R), X)
    assert rel_error(grad_in, numeric) < 1e-8


@pytest.mark.parametrize('kind', ['linear', 'bias'])
def test_parameter_gradients_match_central_differences(kind):
    rng = np.random.default_rng(2)
    layer = _make(kind, 4)
    X = rng.standard_normal((6, 4))
    R = rng.standard_normal(layer.forward(X).shape)
    _, *param_grads = _layer_grads(layer, X, R)
    for param, grad in zip(layer.params, param_grads):
        def objective(value, param=param):
            param[...] = value
            return _scalar_objective(layer, X, R)
        original = param.copy()
        assert check_gradient(objective, lambda value, g=grad: g, original, error_tol=1e-8)
        param[...] = original


@pytest.mark.parametrize('kind', KINDS)
def test_forward_and_gradients_match_torch_autograd(kind):
    rng = np.random.default_rng(3)
    layer = _make(kind, 7)
    X = _inputs(kind, 9, 7, rng)
    out = layer.forward(X)
    R = rng.standard_normal(out.shape)
    grad_in, *param_grads = layer.backward(R)

    X_t = torch.tensor(X, requires_grad=True)
    out_t = _torch_forward(kind, layer, X_t)
    (out_t * torch.tensor(R)).sum().backward()
    assert rel_error(out, out_t.detach().numpy()) <= TORCH_TOL
    assert rel_error(grad_in, X_t.grad.numpy()) <= TORCH_TOL
    if kind == 'linear':
        W_t = torch.tensor(layer.W, requires_grad=True)
        b_t = torch.tensor(layer.b, requires_grad=True)
        ((X_t.detach() @ W_t + b_t) * torch.tensor(R)).sum().backward()
        assert rel_error(param_grads[0], W_t.grad.numpy()) <= TORCH_TOL
        assert rel_error(param_grads[1], b_t.grad.numpy()) <= TORCH_TOL
    if kind == 'bias':
        assert rel_error(param_grads[0], R.sum(axis=0)) <= TORCH_TOL


def test_kaiming_normal_statistics_and_zero_bias():
    layer = Linear(800, 600, rng=0)
    assert layer.W.shape == (800, 600) and layer.b.shape == (600,)
    assert np.all(layer.b == 0)
    # 480k draws: the sample variance is within ~0.4% of 2/fan_in; 3% is a loose but real bound
    assert layer.W.var() == pytest.approx(2 / 800, rel=0.03)
    assert abs(layer.W.mean()) < 4 * np.sqrt(2 / 800 / layer.W.size)


def test_global_seed_reproduces_default_initialisation():
    np.random.seed(0)
    first = Linear(3, 4).W.copy()
    np.random.seed(0)
    assert np.array_equal(first, Linear(3, 4).W)


def test_float32_and_float64_share_initial_weights_from_one_seed():
    w64 = Linear(5, 3, rng=7, dtype=np.float64).W
    w32 = Linear(5, 3, rng=7, dtype=np.float32).W
    assert w32.dtype == np.float32
    assert np.array_equal(w64.astype(np.float32), w32)


def test_scaled_relu_at_and_around_one():
    layer = ScaledReLU(6)
    x = np.array([[-3.0, 0.5, np.nextafter(1.0, 0), 1.0, np.nextafter(1.0, 2), 2.5]])
    out = layer.forward(x)
    expected = np.array([[0, 0, 0, 0, 2 * np.nextafter(1.0, 2), 5.0]])
    assert np.array_equal(out, expected)
    (grad,) = layer.backward(np.ones_like(x))
    assert np.array_equal(grad, np.array([[0, 0, 0, 0, 2, 2]], dtype=float))


def test_relu_gradient_is_zero_at_zero_like_torch():
    layer = ReLU(3)
    layer.forward(np.array([[-1.0, 0.0, 2.0]]))
    (grad,) = layer.backward(np.ones((1, 3)))
    assert np.array_equal(grad, [[0.0, 0.0, 1.0]])


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_sigmoid_is_finite_and_warning_free_at_extreme_logits(dtype):
    x = np.array([[-1e4, -800.0, -88.8, -20.0, 0.0, 20.0, 88.8, 800.0, 1e4]], dtype=dtype)
    layer = Sigmoid(x.shape[1])
    with warnings.catch_warnings(), np.errstate(all='raise'):
        warnings.simplefilter('error')
        out = layer.forward(x)
        (grad,) = layer.backward(np.ones_like(x))
    assert out.dtype == dtype and grad.dtype == dtype
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
    expected = torch.sigmoid(torch.tensor(x, dtype=torch.float64)).numpy()
    assert np.allclose(out, expected, rtol=np.finfo(dtype).eps * 4, atol=0)
    assert out[0, 0] == 0 and out[0, -1] == 1 and out[0, 4] == 0.5


def test_sigmoid_keeps_nan_as_nan():
    out = Sigmoid(2).forward(np.array([[np.nan, 1.0]]))
    assert np.isnan(out[0, 0]) and np.isfinite(out[0, 1])


@pytest.mark.parametrize('kind', KINDS)
def test_forward_never_modifies_its_input(kind):
    layer = _make(kind, 4)
    X = np.random.default_rng(4).standard_normal((3, 4)) * 3
    before = X.copy()
    R = np.ones_like(layer.forward(X))
    layer.backward(R)
    assert np.array_equal(X, before)


@pytest.mark.parametrize('kind', KINDS)
def test_bad_shapes_name_expected_and_actual(kind):
    layer = _make(kind, 4)
    with pytest.raises(ValueError, match=r'\(n, 4\).*\(3, 5\)'):
        layer.forward(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r'\(n, 4\).*\(4,\)'):
        layer.forward(np.zeros(4))
    out = layer.forward(np.zeros((3, 4)))
    bad = (2, out.shape[1])
    with pytest.raises(ValueError, match=re.escape(f'{out.shape}') + '.*' + re.escape(f'{bad}')):
        layer.backward(np.zeros(bad))


@pytest.mark.parametrize('kind', KINDS)
def test_inference_mode_keeps_nothing_and_backward_then_fails(kind):
    layer = _make(kind, 4).eval()
    layer.forward(np.ones((5, 4)))
    assert layer.cached_arrays() == ()
    with pytest.raises(RuntimeError, match='training-mode forward'):
        layer.backward(np.ones((5, layer.forward(np.ones((5, 4))).shape[1])))


@pytest.mark.parametrize('kind', KINDS)
def test_backward_releases_the_cache(kind):
    layer = _make(kind, 4)
    out = layer.forward(np.ones((5, 4)))
    layer.backward(np.ones_like(out))
    assert layer.cached_arrays() == ()


@pytest.mark.parametrize('X', [np.array([[0, 1, 2, 3]]), np.array([[True, False, True, True]])])
def test_scaled_relu_takes_integer_and_bool_input(X):
    # The gain 2.0 cannot scale an integer array in place; the answer is the float one.
    layer = ScaledReLU(4)
    out = layer.forward(X)
    assert np.array_equal(out, layer.forward(X.astype(np.float64))) and out.dtype == np.float64
    layer.forward(X)
    grad = layer.backward(np.ones((1, 4), dtype=np.int64))[0]
    assert np.array_equal(grad, 2.0 * (X > 1))


def test_parameter_free_layers_return_one_tuple_and_ignore_updates():
    for layer in (ScaledReLU(3), ReLU(3), Sigmoid(3)):
        layer.forward(np.ones((2, 3)))
        result = layer.backward(np.ones((2, 3)))
        assert isinstance(result, tuple) and len(result) == 1
        layer.update_params_(lr=0.1)
        with pytest.raises(ValueError, match='expects 0 gradient'):
            layer.update_params_(np.ones(3), lr=0.1)


def test_update_params_is_in_place_sgd():
    layer = Linear(3, 2, rng=0)
    W_before, b_before = layer.W.copy(), layer.b.copy()
    W_ref, b_ref = layer.W, layer.b
    gW, gb = np.ones((3, 2)), np.full(2, 2.0)
    layer.update_params_(gW, gb, lr=0.5)
    assert layer.W is W_ref and layer.b is b_ref
    assert np.array_equal(layer.W, W_before - 0.5) and np.array_equal(layer.b, b_before - 1.0)


def test_rectifier_output_is_shared_with_next_linear_not_copied():
    act, nxt = ScaledReLU(4), Linear(4, 2, rng=0)
    out = act.forward(np.random.default_rng(0).standard_normal((3, 4)) + 1)
    nxt.forward(out)
    assert act.cached_arrays()[0] is nxt.cached_arrays()[0]


def test_mask_mode_keeps_a_bool_mask_with_identical_gradients():
    X = np.random.default_rng(5).standard_normal((4, 6)) * 2
    R = np.random.default_rng(6).standard_normal((4, 6))
    shared, masked = ScaledReLU(6), ScaledReLU(6, keep='mask')
    shared.forward(X)
    masked.forward(X)
    (kept,) = masked.cached_arrays()
    assert kept.dtype == np.bool_
    assert np.array_equal(shared.backward(R)[0], masked.backward(R)[0])


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), n=st.integers(1, 6), width=st.integers(1, 6),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_property_dtype_preserved_and_gradients_exact(kind, n, width, dtype, seed):
    rng = np.random.default_rng(seed)
    layer = _make(kind, width, dtype=dtype, rng=seed)
    X = _inputs(kind, n, width, rng).astype(dtype)
    out = layer.forward(X)
    R = rng.standard_normal(out.shape).astype(dtype)
    grads = layer.backward(R)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    if dtype == np.float64:
        numeric = numerical_gradient(lambda x: _scalar_objective(layer, x, R), X)
        assert rel_error(grads[0], numeric) < 1e-7


@pytest.mark.parametrize('layer', [ScaledReLU(4), ReLU(4)])
def test_rectifiers_handle_infinities_and_nan_without_warnings(layer):
    x = np.array([[-np.inf, np.inf, np.nan, 3.0]])
    out = layer.forward(x)
    assert out[0, 0] == 0 and out[0, 1] == np.inf and out[0, 2] == 0
    (grad,) = layer.backward(np.array([[np.inf, 1.0, 1.0, 1.0]]))
    assert grad[0, 0] == 0 and np.all(np.isfinite(grad))


def test_an_inference_forward_does_not_disturb_a_pending_training_cache():
    layer = Linear(3, 2, rng=0)
    X = np.ones((4, 3))
    layer.forward(X)
    layer.train(True)
    saved, layer.training = layer.training, False
    layer.forward(np.zeros((1, 3)))
    layer.training = saved
    assert layer.cached_arrays()[0] is X
