"""Losses: the brief's log-loss gradient, and loss objects with one interface.

``value = loss.forward(pred, target)`` returns a Python float and keeps what ``backward`` needs;
``grad = loss.backward()`` returns dL/d(pred), same shape and dtype as ``pred``.

Reductions follow PyTorch (``reduction='mean'`` averages over every element; for the softmax
cross-entropy an element is an example's distribution, so it averages over examples), except
where the brief defines otherwise: its mean negative log-likelihood averages over examples and
sums over classes (``log_loss``, ``get_grad_log_loss``, and ``reduction='batchmean'``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .functional import log_softmax, sigmoid, softplus_neg

# PyTorch clamps log(p) at -100 in BCELoss so that p = 0 or 1 stays finite; the same here.
LOG_FLOOR = -100.0
_REDUCTIONS = ('mean', 'batchmean', 'sum')


def _pair(pred: np.ndarray, target: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``pred`` (n, c) floats and ``target`` of the same shape, cast to pred's dtype."""
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.ndim != 2:
        raise ValueError(f'{where} expects predictions of shape (n, c), got {pred.shape}')
    if target.shape != pred.shape:
        raise ValueError(f'{where}: targets of shape {target.shape} do not match predictions '
                         f'of shape {pred.shape}')
    if not np.issubdtype(pred.dtype, np.floating):
        pred = pred.astype(np.float64)
    return pred, target.astype(pred.dtype, copy=False)


def _reduce_scale(reduction: str, shape: tuple[int, int], where: str) -> float:
    """The factor that turns a sum over elements into the requested reduction; ValueError for
    a mean over nothing (PyTorch's NaN would pass silently into a training step)."""
    if reduction == 'sum':
        return 1.0
    count = shape[0] * shape[1] if reduction == 'mean' else shape[0]
    if count == 0:
        raise ValueError(f'{where}: no mean of an empty batch (shape {shape})')
    return 1.0 / count


def _clamped_log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide='ignore'):
        return np.maximum(np.log(x), LOG_FLOOR)


def log_loss(Y: np.ndarray, Y_hat: np.ndarray) -> float:
    """Mean negative log-likelihood of multi-label targets, the brief's loss.

    ``-1/n * sum_ij [Y log Y_hat + (1 - Y) log(1 - Y_hat)]``: mean over the n examples, sum over
    the c classes. Logs are clamped at -100 (as PyTorch's BCELoss) so the value stays finite when
    a probability rounds to exactly 0 or 1.

    Args:
        Y: (n, c) targets in {0, 1} (or soft targets in [0, 1]).
        Y_hat: (n, c) predicted probabilities.
    """
    Y_hat, Y = _pair(Y_hat, Y, 'log_loss')
    _reduce_scale('batchmean', Y.shape, 'log_loss')  # refuses n = 0
    nll = Y * _clamped_log(Y_hat) + (1 - Y) * _clamped_log(1 - Y_hat)
    return float(-nll.sum() / Y.shape[0])


def get_grad_log_loss(Y: np.ndarray, Y_hat: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Gradient of :func:`log_loss` with respect to ``Y_hat``, as the brief defines it.

    ``(Y_hat - Y) / (Y_hat * (1 - Y_hat) + eps) / n``; ``eps`` keeps it finite at Y_hat in
    {0, 1}. This is the only place the batch mean is taken. Shapes (n, c) -> (n, c), in
    ``Y_hat``'s dtype.
    """
    Y_hat, Y = _pair(Y_hat, Y, 'get_grad_log_loss')
    inverse_n = _reduce_scale('batchmean', Y.shape, 'get_grad_log_loss')
    denom = 1 - Y_hat
    denom *= Y_hat
    denom += eps
    grad = Y_hat - Y
    grad /= denom
    grad *= inverse_n
    return grad


class Loss:
    """Base: ``forward(pred, target) -> float`` then ``backward() -> dL/dpred``."""

    def __init__(self, reduction: str = 'mean') -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f'reduction must be one of {_REDUCTIONS}, got {reduction!r}')
        self.reduction = reduction
        self._saved: Optional[tuple] = None

    def _take_saved(self) -> tuple:
        if self._saved is None:
            raise RuntimeError(f'{type(self).__name__}.backward called before forward')
        saved, self._saved = self._saved, None
        return saved


class BCELoss(Loss):
    """Binary cross-entropy on probabilities ``P`` (n, c) with targets ``Y`` (n, c).

    Matches ``torch.nn.BCELoss``: logs clamped at -100, gradient
    ``(P - Y) / max(P (1 - P), 1e-12)`` times the reduction factor.
    """

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        P, Y = _pair(pred, target, 'BCELoss')
        if np.any((P < 0) | (P > 1)):
            raise ValueError('BCELoss expects probabilities in [0, 1]; use BCEWithLogitsLoss '
                             'for logits')
        scale = _reduce_scale(self.reduction, P.shape, 'BCELoss')
        self._saved = (P, Y, scale)
        nll = Y * _clamped_log(P) + (1 - Y) * _clamped_log(1 - P)
        return float(-nll.sum() * scale)

    def backward(self) -> np.ndarray:
        P, Y, scale = self._take_saved()
        denom = np.maximum(P * (1 - P), 1e-12)
        grad = P - Y
        grad /= denom
        grad *= scale
        return grad


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits ``Z`` (n, c), finite for any finite logit (seed 002).

    ``l = (1 - y) z + (1 + (w - 1) y) log(1 + exp(-z))`` with per-class positive weight ``w``
    (``pos_weight`` (c,), as ``torch.nn.BCEWithLogitsLoss``; 1 when None), computed without ever
    exponentiating a positive number. Gradient: ``sigmoid(z) (1 + (w - 1) y) - w y``.
    """

    def __init__(self, reduction: str = 'mean', pos_weight: Optional[np.ndarray] = None) -> None:
        super().__init__(reduction)
        self.pos_weight = None if pos_weight is None else np.asarray(pos_weight)
        if self.pos_weight is not None and (self.pos_weight.ndim != 1
                                            or not np.all(self.pos_weight > 0)):
            raise ValueError('pos_weight must be a 1-D array of positive class weights, got '
                             f'{self.pos_weight!r}')

    def _weights(self, Z: np.ndarray, Y: np.ndarray) -> Optional[np.ndarray]:
        """Per-element factor ``1 + (w - 1) y`` (n, c), or None without pos_weight."""
        if self.pos_weight is None:
            return None
        if self.pos_weight.shape != (Z.shape[1],):
            raise ValueError(f'pos_weight has shape {self.pos_weight.shape}, expected '
                             f'({Z.shape[1]},) for logits of shape {Z.shape}')
        w = self.pos_weight.astype(Z.dtype)
        return 1 + (w - 1) * Y

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        Z, Y = _pair(pred, target, 'BCEWithLogitsLoss')
        scale = _reduce_scale(self.reduction, Z.shape, 'BCEWithLogitsLoss')
        weights = self._weights(Z, Y)
        self._saved = (Z, Y, weights, scale)
        log_term = softplus_neg(Z)
        if weights is not None:
            log_term *= weights
        loss = (1 - Y) * Z
        loss += log_term
        return float(loss.sum() * scale)

    def backward(self) -> np.ndarray:
        Z, Y, weights, scale = self._take_saved()
        grad = sigmoid(Z)
        if weights is None:
            grad -= Y
        else:
            grad *= weights
            grad -= self.pos_weight.astype(Z.dtype) * Y
        grad *= scale
        return grad


class MSELoss(Loss):
    """Mean squared error, the ``torch.nn.MSELoss`` convention: ``mean((pred - target)**2)``
    over every element; gradient ``2 (pred - target) / N``."""

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        P, Y = _pair(pred, target, 'MSELoss')
        diff = P - Y
        scale = _reduce_scale(self.reduction, P.shape, 'MSELoss')
        self._saved = (diff, scale)
        return float(np.vdot(diff, diff) * scale)

    def backward(self) -> np.ndarray:
        diff, scale = self._take_saved()
        diff *= 2 * scale
        return diff


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy over logits ``Z`` (n, k) with one-hot (or probability) targets.

    ``-1/n sum_i sum_j Y_ij log softmax(Z_i)_j`` via a max-shifted log-sum-exp, so it never
    exponentiates a positive number (seed 004). Gradient ``(softmax(Z) - Y) / n`` (for targets
    whose rows sum to 1). The default reduction is the mean over examples.
    """

    def __init__(self, reduction: str = 'batchmean') -> None:
        super().__init__(reduction)

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        Z, Y = _pair(pred, target, 'CrossEntropyLoss')
        logp = log_softmax(Z, axis=1)
        # torch's 'mean' averages over the examples here (a row's k logits are one element)
        scale = _reduce_scale('batchmean' if self.reduction == 'mean' else self.reduction,
                              Z.shape, 'CrossEntropyLoss')
        self._saved = (logp, Y, scale)
        # Only the classes a row has weight on count: a target of 0 times a log-probability of
        # -inf (a logit of -inf, or a finite one 1e38 below the row's max) is 0, not NaN.
        terms = np.zeros_like(logp)
        np.multiply(Y, logp, out=terms, where=Y != 0)
        return float(-terms.sum() * scale)

    def backward(self) -> np.ndarray:
        logp, Y, scale = self._take_saved()
        with np.errstate(under='ignore'):
            grad = np.exp(logp)
        # d/dz of -sum_j y_j log softmax_j = softmax * sum_j y_j - y (sum_j y_j = 1 when one-hot)
        grad *= Y.sum(axis=1, keepdims=True)
        grad -= Y
        grad *= scale
        return grad
