"""The brief's MLP: its verbatim class trains on our layers, end-to-end gradients against torch,
dtypes, activation memory at the floor, inference without state, and the networks of seeds 003
and 004."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from obstacle_classifier.nn import (MLP, BCEWithLogitsLoss, Bias, CrossEntropyLoss, Linear,
                                    MSELoss, ReLU, ScaledReLU, Sigmoid, cached_nbytes,
                                    check_gradient,
                                    get_grad_log_loss, log_loss, rel_error)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'benchmarks'))
from reference_mlp import ReferenceMLP  # noqa: E402


# ---- the brief's class, character for character (plus a noqa for the long comment) ----
class BriefMLP:
    def __init__(self, d, h, c):
        self.layers = [
            Linear(d, h), ScaledReLU(h),  # input_layer
            Linear(h, h), ScaledReLU(h),  # hidden_layer
            Linear(h, c), Sigmoid(c)  # output_layer
        ]

    def forward(self, X):
        """Predict classes for a batch of n examples"""
        out = X  # $\in \mathbb{R}^{n \times d}$
        for layer in self.layers:
            out = layer.forward(out)
        return out

    def sgd(self, X_train, Y_train):
        # Train each layer of the MLP with SGD
        n_train = len(X_train)
        epochs = 10
        bs = 100  # batch_size
        for _ in range(epochs):
            for b_idx in range(0, n_train, bs):
                X_batch = X_train[b_idx:b_idx + bs]
                Y_batch = Y_train[b_idx:b_idx + bs]
                # update all parameters
                self.single_step_sgd(X_batch, Y_batch)

    def single_step_sgd(self, X, Y):  # $X\in \mathbb{R}^{n\times d}$, $Y\in \mathbb{R}^{n\times c}$  # noqa: E501
        """Train the MLP with a single step of batched SGD."""
        Y_hat = self.forward(X)  # $\in \mathbb{R}^{n \times c}$
        loss_nabla_O = get_grad_log_loss(Y, Y_hat)
        for layer in self.layers[::-1]:  # backward pass reverses layers
            loss_nabla_O, *param_grads = layer.backward(loss_nabla_O)
            layer.update_params_(*param_grads, lr=0.1)


def _multilabel_data(n=2000, d=16, c=8, seed=0):
    """A learnable multi-label problem: each class fires on a random hyperplane of the input."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    directions = rng.standard_normal((d, c))
    Y = (X @ directions > 0.5).astype(np.float64)
    return X, Y


def test_briefs_verbatim_class_trains_on_our_layers():
    np.random.seed(0)
    X, Y = _multilabel_data()
    model = BriefMLP(16, 64, 8)
    before = log_loss(Y, model.forward(X))
    model.sgd(X, Y)
    after = log_loss(Y, model.forward(X))
    assert np.isfinite(after) and after < 0.5 * before


def test_our_mlp_matches_the_briefs_class_step_for_step():
    X, Y = _multilabel_data(n=300)
    np.random.seed(1)
    brief = BriefMLP(16, 32, 8)
    np.random.seed(1)
    ours = MLP(16, 32, 8)
    brief.sgd(X, Y)
    ours.sgd(X, Y)
    for a, b in zip(ours.parameters(), [p for layer in brief.layers for p in layer.params]):
        assert np.array_equal(a, b)


def _torch_mlp_grads(model, X, Y):
    """Parameter gradients of the brief's loss (mean over n of summed NLL) by torch autograd."""
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    out = torch.tensor(X)
    for i in range(3):
        out = out @ params[2 * i] + params[2 * i + 1]
        if i < 2:
            out = torch.where(out > 1, 2 * out, torch.zeros_like(out))
    P = torch.sigmoid(out)
    Y_t = torch.tensor(Y)
    # the NLL written out: torch's BCELoss clamps p(1 - p) at 1e-12 in its gradient, which is
    # wrong for saturated outputs (logits around 30), so it cannot serve as the oracle here
    loss = -(Y_t * torch.log(P) + (1 - Y_t) * torch.log(1 - P)).sum() / len(Y)
    loss.backward()
    return loss.item(), [p.grad.numpy() for p in params]


def _our_grads(model, X, Y, eps):
    Y_hat = model.forward(X)
    grad = get_grad_log_loss(Y, Y_hat, eps=eps)
    grads = []
    for layer in model.layers[::-1]:
        grad, *param_grads = layer.backward(grad)
        grads = list(param_grads) + grads
    return log_loss(Y, Y_hat), grads


def test_whole_mlp_gradients_match_torch_autograd():
    X, Y = _multilabel_data(n=50, seed=3)
    model = MLP(16, 24, 8, rng=3)
    loss, grads = _our_grads(model, X, Y, eps=0.0)
    expected_loss, expected = _torch_mlp_grads(model, X, Y)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    for ours, theirs in zip(grads, expected):
        assert rel_error(ours, theirs) <= 1e-10


def test_fused_logit_path_matches_sigmoid_path():
    X, Y = _multilabel_data(n=40, seed=4)
    model = MLP(16, 20, 8, rng=4)
    _, expected = _our_grads(model, X, Y, eps=0.0)
    logits = model.logits(X)
    # dL/dlogits of the brief's loss is (sigmoid(z) - y) / n
    grads = model.backward_logits((model.layers[-1].forward(logits) - Y) / len(Y))
    for ours, reference in zip(grads, expected):
        assert rel_error(ours, reference) <= 1e-10


def test_whole_mlp_gradient_matches_central_differences():
    X, Y = _multilabel_data(n=20, d=5, c=3, seed=5)
    model = MLP(5, 6, 3, rng=5)
    W = model.layers[2].W

    def loss_at(value):
        W[...] = value
        return log_loss(Y, model.forward(X))

    def grad_at(value):
        W[...] = value
        return _our_grads(model, X, Y, eps=0.0)[1][2]

    assert check_gradient(loss_at, grad_at, W.copy(), error_tol=1e-6)


@pytest.mark.parametrize('activation', ['scaled_relu', 'relu'])
def test_float32_model_stays_float32_end_to_end(activation):
    X, Y = _multilabel_data(n=250)
    model = MLP(16, 32, 8, dtype=np.float32, activation=activation, rng=0)
    # float64 features and labels must not promote the model
    model.sgd(X, Y, epochs=2)
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert model.forward(X).dtype == np.float32
    assert model.predict_proba(X[0]).dtype == np.float32
    logits = model.logits(X.astype(np.float32))
    grads = model.backward_logits(np.ones_like(logits))
    assert all(g.dtype == np.float32 for g in grads)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_activation_memory_is_at_the_floor_and_about_half_the_samples(dtype):
    n, d, h, c = 100, 16, 64, 8
    X = np.random.default_rng(0).standard_normal((n, d)).astype(dtype)
    model = MLP(d, h, c, dtype=dtype, rng=0)
    itemsize = np.dtype(dtype).itemsize
    # The input is held by reference, never copied: also when it is a strided view (rows of a
    # Fortran-ordered data set, as the brief's sgd slices them; every other row).
    data = np.asfortranarray(np.concatenate([X, X]))
    for batch in (data[:n], X.repeat(2, axis=0)[::2]):
        model.forward(batch)
        assert model.cached_nbytes(exclude=(batch,)) == n * (2 * h + c) * itemsize
    model.forward(X)
    held = model.cached_nbytes(exclude=(X,))
    assert held == n * (2 * h + c) * itemsize

    reference = ReferenceMLP(d, h, c, rng=0, dtype=dtype)
    reference.forward(X)

    class Holder:
        def __init__(self, arrays):
            self._arrays = arrays

        def cached_arrays(self):
            return tuple(self._arrays)

    reference_held = cached_nbytes([Holder(reference.cached_arrays())], exclude=(X,))
    assert reference_held == n * (4 * h + c) * itemsize
    assert held / reference_held == pytest.approx((2 * h + c) / (4 * h + c))
    assert round(held / reference_held, 2) == 0.52


def test_nothing_is_held_after_backward_or_in_inference():
    X, Y = _multilabel_data(n=64)
    model = MLP(16, 32, 8, rng=0)
    model.single_step_sgd(X, Y)
    assert model.cached_nbytes() == 0
    params_before = [p.copy() for p in model.parameters()]
    probs = model.predict_proba(X)
    assert probs.shape == (64, 8) and model.cached_nbytes() == 0
    assert all(layer.training for layer in model.layers)
    assert all(np.array_equal(a, b) for a, b in zip(params_before, model.parameters()))
    model.eval()
    model.forward(X)
    assert model.cached_nbytes() == 0


def test_logits_with_cache_trains_in_inference_mode_too():
    # As torch's eval(): the mode says what forward keeps by default, cache=True overrides it.
    X, Y = _multilabel_data(n=32)
    trained, evaluated = MLP(16, 8, 8, rng=0), MLP(16, 8, 8, rng=0)
    evaluated.eval()
    grads = []
    for model in (trained, evaluated):
        loss = BCEWithLogitsLoss()
        loss.forward(model.logits(X), Y)
        grads.append(model.backward_logits(loss.backward()))
    assert all(np.array_equal(a, b) for a, b in zip(*grads))
    assert not any(layer.training for layer in evaluated.layers)


def test_predict_proba_single_vector_equals_batch_row():
    X, _ = _multilabel_data(n=5)
    model = MLP(16, 32, 8, rng=0)
    # a matrix-vector and a matrix-matrix product may round differently in the last bit
    assert np.allclose(model.predict_proba(X[2]), model.predict_proba(X)[2], rtol=1e-14, atol=0)


def test_constructor_and_input_errors():
    with pytest.raises(ValueError, match='activation'):
        MLP(2, 3, 4, activation='tanh')
    with pytest.raises(ValueError, match='float32 or float64'):
        MLP(2, 3, 4, dtype=np.int32)
    with pytest.raises(ValueError, match=r'\(n, 2\).*\(5, 3\)'):
        MLP(2, 3, 4).forward(np.zeros((5, 3)))
    with pytest.raises(ValueError, match='3 rows but Y_train has 2'):
        MLP(2, 3, 4).sgd(np.zeros((3, 2)), np.zeros((2, 4)))
    model = MLP(2, 3, 4)
    for step in (model.single_step_sgd, model._layerwise_sgd_step):  # fused and layer loop
        with pytest.raises(ValueError, match='no mean of an empty batch'):
            step(np.zeros((0, 2)), np.zeros((0, 4)))
        with pytest.raises(ValueError, match=r'targets of shape \(2, 4\) do not match'):
            step(np.zeros((3, 2)), np.zeros((2, 4)))


def test_seed_003_regression_task_reaches_mse_below_1e_3():
    """Seed 003: N=20, D=5, C=3, a ReLU MLP fits a linear map to MSE < 1e-3."""
    rng = np.random.default_rng(0)
    N, D, C = 20, 5, 3
    X = rng.standard_normal((N, D))
    Y = X @ rng.standard_normal((C, D)).T
    layers = [Linear(D, 32, rng=rng), ReLU(32), Linear(32, C, rng=rng)]
    loss = MSELoss()
    for _ in range(2000):
        out = X
        for layer in layers:
            out = layer.forward(out)
        loss.forward(out, Y)
        grad = loss.backward()
        for layer in layers[::-1]:
            grad, *param_grads = layer.backward(grad)
            layer.update_params_(*param_grads, lr=0.05)
    out = X
    for layer in layers:
        out = layer.eval().forward(out)
    assert ((out - Y) ** 2).mean() < 1e-3


def _seed_004_net(rng):
    """Seed 004's final network: (Linear, Bias, ReLU) x 2, Linear, Bias, softmax CE."""
    return [Linear(3, 5, bias=False, rng=rng), Bias(5), ReLU(5),
            Linear(5, 8, bias=False, rng=rng), Bias(8), ReLU(8),
            Linear(8, 5, bias=False, rng=rng), Bias(5)]


def test_seed_004_network_passes_check_gradient_and_is_stable_at_weights_times_1000():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 3))
    Y = np.eye(5)[rng.integers(0, 5, 10)]
    layers = _seed_004_net(rng)
    for layer in layers:
        if isinstance(layer, Bias):
            layer.b[:] = rng.standard_normal(layer.h)
    loss = CrossEntropyLoss()

    def forward_loss():
        out = X
        for layer in layers:
            out = layer.forward(out)
        return loss.forward(out, Y)

    def grads():
        forward_loss()
        grad = loss.backward()
        collected = {}
        for layer in layers[::-1]:
            grad, *param_grads = layer.backward(grad)
            collected[id(layer)] = param_grads
        return collected

    for layer in (layers[0], layers[1], layers[3], layers[4]):
        param = layer.params[0]

        def network_loss(value, param=param):
            param[...] = value
            return forward_loss()

        def network_grad(value, param=param, layer=layer):
            param[...] = value
            return grads()[id(layer)][0]

        assert check_gradient(network_loss, network_grad, param.copy())

    layers[0].W[...] = rng.standard_normal(layers[0].W.shape) * 1000
    value = forward_loss()
    assert np.isfinite(value) and np.all(np.isfinite(loss.backward()))
