"""Losses: values and gradients against torch and central differences, stability at extreme
logits, the brief's log-loss pair, and shape errors."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from obstacle_classifier.nn import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, MSELoss,
                                    get_grad_log_loss, log_loss, numerical_gradient, rel_error,
                                    sigmoid)

TORCH_TOL = 1e-10


def _data(seed=0, n=7, c=4):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, c)) * 3
    Y = (rng.random((n, c)) < 0.4).astype(np.float64)
    return Z, Y


def _torch_pair(loss_name, Z, Y, reduction='mean', pos_weight=None):
    """Loss value and dL/dpred from torch autograd, with the same conventions."""
    Z_t = torch.tensor(Z, requires_grad=True)
    Y_t = torch.tensor(Y)
    if loss_name == 'bce':
        value = torch.nn.functional.binary_cross_entropy(Z_t, Y_t, reduction='sum')
    elif loss_name == 'bce_logits':
        pw = None if pos_weight is None else torch.tensor(pos_weight)
        value = torch.nn.functional.binary_cross_entropy_with_logits(
            Z_t, Y_t, pos_weight=pw, reduction='sum')
    elif loss_name == 'mse':
        value = torch.nn.functional.mse_loss(Z_t, Y_t, reduction='sum')
    elif reduction == 'mean':  # torch's own 'mean' of the cross-entropy: per example
        value = torch.nn.functional.cross_entropy(Z_t, Y_t, reduction='mean')
    else:
        value = torch.nn.functional.cross_entropy(Z_t, Y_t, reduction='sum')
    scale = {'mean': 1 / Z.size, 'batchmean': 1 / Z.shape[0], 'sum': 1.0}[reduction]
    if loss_name == 'ce' and reduction == 'mean':
        scale = 1.0
    value = value * scale
    value.backward()
    return value.item(), Z_t.grad.numpy()


CASES = [
    ('bce', lambda r: BCELoss(r), True),
    ('bce_logits', lambda r: BCEWithLogitsLoss(r), False),
    ('mse', lambda r: MSELoss(r), False),
]


@pytest.mark.parametrize('reduction', ['mean', 'batchmean', 'sum'])
@pytest.mark.parametrize('name,make,on_probabilities', CASES)
def test_binary_and_regression_losses_match_torch(name, make, on_probabilities, reduction):
    Z, Y = _data(1)
    pred = sigmoid(Z) if on_probabilities else Z
    loss = make(reduction)
    value = loss.forward(pred, Y)
    grad = loss.backward()
    expected_value, expected_grad = _torch_pair(name, pred, Y, reduction)
    assert value == pytest.approx(expected_value, rel=TORCH_TOL)
    assert rel_error(grad, expected_grad) <= TORCH_TOL


def test_bce_with_logits_pos_weight_matches_torch():
    Z, Y = _data(2)
    weights = np.array([1.0, 3.0, 0.5, 10.0])
    loss = BCEWithLogitsLoss('mean', pos_weight=weights)
    value = loss.forward(Z, Y)
    grad = loss.backward()
    expected_value, expected_grad = _torch_pair('bce_logits', Z, Y, 'mean', weights)
    assert value == pytest.approx(expected_value, rel=TORCH_TOL)
    assert rel_error(grad, expected_grad) <= TORCH_TOL


def test_cross_entropy_matches_torch_with_one_hot_targets():
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((10, 5)) * 4
    Y = np.eye(5)[rng.integers(0, 5, 10)]
    for reduction in ('batchmean', 'mean', 'sum'):  # 'mean' is per example, as in torch
        loss = CrossEntropyLoss(reduction)
        value = loss.forward(Z, Y)
        grad = loss.backward()
        expected_value, expected_grad = _torch_pair('ce', Z, Y, reduction)
        assert value == pytest.approx(expected_value, rel=TORCH_TOL), reduction
        assert rel_error(grad, expected_grad) <= TORCH_TOL, reduction
    value = CrossEntropyLoss().forward(Z, Y)
    # the slow loop of seed 004, as an independent check of the formula
    slow = np.mean([-z[y > 0][0] + np.log(np.sum(np.exp(z))) for z, y in zip(Z, Y)])
    assert value == pytest.approx(slow, rel=1e-12)


def test_cross_entropy_is_finite_where_a_class_without_target_weight_has_no_probability():
    # 0 * log(0) counts as 0: a logit of -inf, or a finite one far below the row's max, on a
    # class the target does not name used to make the loss NaN (torch with a class index: 5.0067).
    Z = np.array([[0.0, -np.inf, 5.0]])
    Y = np.array([[1.0, 0.0, 0.0]])
    expected = float(torch.nn.functional.cross_entropy(torch.tensor(Z), torch.tensor([0])))
    assert CrossEntropyLoss().forward(Z, Y) == pytest.approx(expected, rel=1e-12)
    with np.errstate(all='raise'):  # finite float32 logits 6e38 apart: no overflow warning
        huge = CrossEntropyLoss()
        assert huge.forward(np.array([[3e38, -3e38, 0.0]], np.float32),
                            np.array([[1.0, 0.0, 0.0]], np.float32)) == 0.0
        assert np.array_equal(huge.backward(), np.zeros((1, 3), np.float32))
    # A class the target does name, with probability 0: the loss is +inf, as in torch.
    assert CrossEntropyLoss().forward(Z, np.array([[0.0, 1.0, 0.0]])) == np.inf


@pytest.mark.parametrize('make,on_probabilities', [
    (lambda: BCELoss(), True), (lambda: BCEWithLogitsLoss(), False),
    (lambda: BCEWithLogitsLoss(pos_weight=np.array([2.0, 1.0, 0.5, 4.0])), False),
    (lambda: MSELoss(), False), (lambda: CrossEntropyLoss(), False)])
def test_gradients_match_central_differences(make, on_probabilities):
    Z, Y = _data(4)
    pred = sigmoid(Z) if on_probabilities else Z
    if isinstance(make(), CrossEntropyLoss):
        Y = np.eye(4)[np.arange(len(Z)) % 4]
    loss = make()
    loss.forward(pred, Y)
    grad = loss.backward()
    numeric = numerical_gradient(lambda p: make().forward(p, Y), pred)
    # probabilities near 0 or 1 make BCE strongly curved: truncation error ~1e-7 at step 1e-6
    assert rel_error(grad, numeric) < 1e-6


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_every_loss_is_finite_and_warning_free_at_logits_of_1e4(dtype):
    Z = np.array([[-1e4, 1e4, 0.0, -1e4], [1e4, -1e4, 50.0, 1e4]], dtype=dtype)
    Y = np.array([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=dtype)
    one_hot = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(all='raise'):
        warnings.simplefilter('error')
        P = sigmoid(Z)
        results = []
        for loss, pred, target in [(BCEWithLogitsLoss(), Z, Y), (BCELoss(), P, Y),
                                   (CrossEntropyLoss(), Z, one_hot), (MSELoss(), Z, Y)]:
            results.append((loss.forward(pred, target), loss.backward()))
        results.append((log_loss(Y, P), get_grad_log_loss(Y, P)))
    for value, grad in results:
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        assert grad.dtype == dtype
    # with logits a confidently wrong 1e4 costs exactly 1e4 (four such elements), z = 0 costs
    # log 2 and a wrong z = 50 costs 50 + log1p(e^-50); right ones cost ~0. Mean over 8.
    expected = (4 * 1e4 + np.log(2) + 50 + np.log1p(np.exp(-50.0))) / 8
    assert results[0][0] == pytest.approx(expected, rel=1e-6)


def test_log_loss_is_mean_over_examples_of_summed_binary_nll():
    Z, Y = _data(5)
    P = sigmoid(Z)
    expected = torch.nn.functional.binary_cross_entropy(
        torch.tensor(P), torch.tensor(Y), reduction='sum').item() / len(Y)
    assert log_loss(Y, P) == pytest.approx(expected, rel=1e-12)


def test_get_grad_log_loss_is_the_briefs_formula_and_the_gradient_of_log_loss():
    Z, Y = _data(6)
    P = sigmoid(Z)
    grad = get_grad_log_loss(Y, P)
    brief = 1 / len(Y) * (P - Y) / ((P * (1 - P)) + 1e-8)
    assert rel_error(grad, brief) < 1e-15
    exact = get_grad_log_loss(Y, P, eps=0.0)
    numeric = numerical_gradient(lambda p: log_loss(Y, p), P, step=1e-7)
    assert rel_error(exact, numeric) < 1e-7


def test_get_grad_log_loss_keeps_float32_with_integer_or_float64_labels():
    P = np.full((3, 2), 0.25, dtype=np.float32)
    for Y in (np.ones((3, 2), dtype=np.uint8), np.ones((3, 2), dtype=np.float64)):
        assert get_grad_log_loss(Y, P).dtype == np.float32


@pytest.mark.parametrize('make', [BCELoss, BCEWithLogitsLoss, MSELoss, CrossEntropyLoss])
def test_shape_mismatch_and_backward_before_forward(make):
    with pytest.raises(ValueError, match=r'\(3, 2\).*\(3, 4\)'):
        make().forward(np.full((3, 4), 0.5), np.zeros((3, 2)))
    with pytest.raises(RuntimeError, match='before forward'):
        make().backward()


@pytest.mark.parametrize('make', [BCELoss, BCEWithLogitsLoss, MSELoss, CrossEntropyLoss])
def test_a_mean_over_an_empty_batch_is_refused_and_a_sum_is_zero(make):
    # torch's NaN (and before, a ZeroDivisionError) would only surface steps later.
    empty = np.zeros((0, 3))
    for reduction in ('mean', 'batchmean'):
        with pytest.raises(ValueError, match=f'{make.__name__}: no mean of an empty batch'):
            make(reduction).forward(empty, empty)
    loss = make('sum')
    assert loss.forward(empty, empty) == 0.0 and loss.backward().shape == (0, 3)
    for function in (log_loss, get_grad_log_loss):
        with pytest.raises(ValueError, match=f'{function.__name__}: no mean of an empty'):
            function(empty, empty)


def test_bce_rejects_logits_and_bad_pos_weight():
    with pytest.raises(ValueError, match='BCEWithLogitsLoss'):
        BCELoss().forward(np.array([[2.0]]), np.array([[1.0]]))
    with pytest.raises(ValueError, match='pos_weight'):
        BCEWithLogitsLoss(pos_weight=np.array([1.0, -1.0]))
    with pytest.raises(ValueError, match=r'pos_weight has shape \(2,\)'):
        BCEWithLogitsLoss(pos_weight=np.array([1.0, 2.0])).forward(
            np.zeros((1, 3)), np.zeros((1, 3)))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), c=st.integers(1, 6), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1.0, 30.0, 1e3]))
def test_property_logit_losses_match_torch_over_shapes_and_scales(n, c, seed, scale):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, c)) * scale
    Y = (rng.random((n, c)) < 0.5).astype(np.float64)
    loss = BCEWithLogitsLoss()
    value = loss.forward(Z, Y)
    grad = loss.backward()
    expected_value, expected_grad = _torch_pair('bce_logits', Z, Y)
    assert value == pytest.approx(expected_value, rel=1e-10, abs=1e-300)
    assert np.allclose(grad, expected_grad, rtol=1e-10, atol=1e-15)
    one_hot = np.eye(c)[rng.integers(0, c, n)]
    ce = CrossEntropyLoss()
    value = ce.forward(Z, one_hot)
    expected_value, expected_grad = _torch_pair('ce', Z, one_hot, 'batchmean')
    assert value == pytest.approx(expected_value, rel=1e-10, abs=1e-300)
    assert np.allclose(ce.backward(), expected_grad, rtol=1e-10, atol=1e-15)
