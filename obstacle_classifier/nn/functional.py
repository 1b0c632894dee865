"""Numerically stable elementwise functions shared by layers and losses.

None of them exponentiates a positive number, so none can overflow for a finite input, in float32
or float64, and none emits a floating-point warning (underflow to 0 is the correct answer and is
silenced explicitly, in case a caller runs under ``np.seterr(all='raise')``).
"""
from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``, same shape and dtype as ``x``.

    Uses ``e = exp(-|x|)`` (in (0, 1], never overflows): ``1 / (1 + e)`` for ``x >= 0`` and
    ``e / (1 + e)`` for ``x < 0``. Exact 0 and 1 are reached only where the true value rounds
    to them. NaN stays NaN.
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    with np.errstate(under='ignore'):
        e = np.abs(x)
        np.negative(e, out=e)
        np.exp(e, out=e)
        out = e + 1
        np.reciprocal(out, out=out)
        np.multiply(out, e, out=out, where=x < 0)
    return out


def softplus_neg(z: np.ndarray) -> np.ndarray:
    """``log(1 + exp(-z)) = -log(sigmoid(z))``, stably: ``max(-z, 0) + log1p(exp(-|z|))``."""
    with np.errstate(under='ignore'):
        out = np.abs(z)
        np.negative(out, out=out)
        np.exp(out, out=out)
        np.log1p(out, out=out)
        out += np.maximum(-z, 0)
    return out


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``z - logsumexp(z)`` along ``axis``; shifts by the max so only ``exp(<= 0)`` is taken."""
    shifted = z - z.max(axis=axis, keepdims=True)
    with np.errstate(under='ignore'):
        lse = np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    shifted -= lse
    return shifted
