"""Numerically stable elementwise functions shared by layers and losses.

None of them exponentiates a positive number, so none can overflow for a finite input, in float32
or float64, and none emits a floating-point warning (underflow to 0 is the correct answer and is
silenced explicitly, in case a caller runs under ``np.seterr(all='raise')``).
"""
from __future__ import annotations

from typing import Optional

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
    out = np.empty_like(x)
    e = np.empty_like(x)
    with np.errstate(under='ignore'):
        np.copysign(x, -1, out=e)  # -|x|, bit for bit
        np.exp(e, out=e)
        np.add(e, 1, out=out)
        np.reciprocal(out, out=out)
        np.multiply(out, e, out=out, where=x < 0)
    return out


def select(values: np.ndarray, mask: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = where(mask, values, +0)`` without branches, exactly (infinities and NaN included).

    ``np.where`` branches per element and mispredicts on a random mask (about 5x slower than
    this on a (100, 1024) ReLU mask). Here the float bits, read as integers of the same width,
    are multiplied by the 0/1 mask: the bits are either kept or become +0.0, so no float
    arithmetic happens (``-inf * 0`` would be NaN). ``values``, ``out``: same shape, float32 or
    float64, C-contiguous; ``mask``: bool, same shape. ``out`` may be ``values``.
    """
    bits = _INT_OF[values.dtype]
    np.multiply(values.view(bits), mask, out=out.view(bits))
    return out


def flush_subnormals_(a: np.ndarray, bits_scratch: Optional[np.ndarray] = None,
                      mask_scratch: Optional[np.ndarray] = None) -> np.ndarray:
    """Set every subnormal entry of ``a`` (0 < |a| < finfo.tiny) to +0.0, in place.

    This is what a CPU in flush-to-zero mode does to every result; NumPy cannot switch that
    mode on, so gradients are flushed explicitly before they enter a matrix product. The
    change to any value is below finfo.tiny (1.2e-38 in float32, 2.2e-308 in float64), far
    under any tolerance, but a subnormal operand makes OpenBLAS 30-90x slower (see
    benchmarks/results.md): float32 training of wide networks produces thousands of them per
    step from saturated outputs. NaN and infinities are kept. ``a``: float32/float64,
    C-contiguous; the scratch arrays (a's shape; its same-width integer type, and bool) are
    optional.
    """
    bits = _INT_OF.get(a.dtype)
    if bits is None or a.size < FLUSH_MIN_ELEMENTS:
        # float16 and friends: nothing to gain. Small arrays: a few assists cost less than
        # the three passes of the flush (the rule depends only on the shape, so every code
        # path makes the same choice and results stay bit for bit equal).
        return a
    a_bits = a.view(bits)
    magnitude = np.empty(a.shape, bits) if bits_scratch is None else bits_scratch
    keep = np.empty(a.shape, np.bool_) if mask_scratch is None else mask_scratch
    # |a| in bits: the sign cleared. Subnormals and zeros have an all-zero exponent field,
    # i.e. magnitude bits below those of the smallest normal number; NaN and inf are above.
    np.bitwise_and(a_bits, _ABS_BITS[a.dtype], out=magnitude)
    np.greater_equal(magnitude, _TINY_BITS[a.dtype], out=keep)
    np.multiply(a_bits, keep, out=a_bits)
    return a


def underflow_ignored() -> bool:
    """True if NumPy's current error state ignores floating-point underflow (its default).

    The fast paths then skip ``np.errstate(under='ignore')``, which costs more than a whole
    ufunc call on a short row. The error state is a context variable whose value is replaced
    (never modified) by ``np.seterr`` and ``np.errstate``, so the value last found to ignore
    underflow is remembered and compared by identity; anything else is looked up with
    ``np.geterr``. Without the (private) context variable the answer is always False, and
    callers keep their ``errstate``: never a wrong answer, only a slower one.
    """
    if _ERROR_STATE is None:
        return False
    state = _ERROR_STATE.get()
    if state is _UNDERFLOW_IGNORED[0]:
        return True
    if np.geterr()['under'] != 'ignore':
        return False
    _UNDERFLOW_IGNORED[0] = state  # one reference swap: atomic, so safe from any thread
    return True


try:  # NumPy 2's error-state context variable (private; see underflow_ignored)
    from numpy._core._ufunc_config import _extobj_contextvar as _ERROR_STATE
except ImportError:  # pragma: no cover - other NumPy versions
    _ERROR_STATE = None
_UNDERFLOW_IGNORED: list = [None]

#: Arrays smaller than this are left as computed (see flush_subnormals_).
FLUSH_MIN_ELEMENTS = 16384
_INT_OF = {np.dtype(np.float32): np.dtype(np.int32), np.dtype(np.float64): np.dtype(np.int64)}
_ABS_BITS = {np.dtype(np.float32): np.int32(0x7FFFFFFF),
             np.dtype(np.float64): np.int64(0x7FFFFFFFFFFFFFFF)}
_TINY_BITS = {dtype: np.array(np.finfo(dtype).tiny, dtype).view(_INT_OF[dtype])[()]
              for dtype in _INT_OF}


def batch_sum(grad: np.ndarray, ones: Optional[np.ndarray] = None,
              out: Optional[np.ndarray] = None) -> np.ndarray:
    """Sum over the batch, (n, k) -> (k,): a bias's gradient.

    Computed as the BLAS product ``ones(n) @ grad`` (one matrix-vector call), not with
    ``grad.sum(axis=0)``: NumPy reduces axis 0 of a C-ordered array row by row, one short inner
    loop per row, 3-5x slower at (100, 8) to (100, 64) and still 1.6x at (100, 1024); the
    product's blocked sums also come out more accurate. ``ones``: an (n,) array of ones in
    grad's dtype, if the caller keeps one (else one is made); ``out``: (k,) C-contiguous, of
    grad's dtype. Every caller goes through here, so that the layers and the fused training
    step add in the same order and agree bit for bit.
    """
    if ones is None:
        ones = np.ones(grad.shape[0], grad.dtype)
    return np.dot(ones, grad, out)


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
    # Finite logits more than the dtype's range apart overflow to -inf here: the right answer
    # (their probability is 0), so the overflow is silenced like the underflow below.
    with np.errstate(over='ignore'):
        shifted = z - z.max(axis=axis, keepdims=True)
    with np.errstate(under='ignore'):
        lse = np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    shifted -= lse
    return shifted
