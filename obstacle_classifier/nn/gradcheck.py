"""Gradient checking by two-sided central differences (the helper seed 004 imports)."""
from __future__ import annotations

from typing import Callable

import numpy as np


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Relative error ``||a - b|| / (||a|| + ||b||)`` (0 when both are all zero).

    Both are divided by their largest magnitude first: the ratio is unchanged, but the squared
    norms of gradients near 1e-170 or 1e170 would otherwise underflow to 0 (and any gradient
    would pass) or overflow to inf (and a right one would fail). Arrays of different shapes are
    a ValueError: broadcast, a gradient of the wrong shape could compare equal.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f'rel_error: arrays of shapes {a.shape} and {b.shape} differ')
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float('nan')  # compares False against any tolerance
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    if scale == 0:
        return 0.0
    a, b = a / scale, b / scale
    return float(np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b)))


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray,
                       step: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of a scalar function: ``(f(x + h e_i) - f(x - h e_i)) / 2h``.

    ``x`` (any shape, float64 for a meaningful check) is perturbed on a private copy and never
    modified; ``f`` may copy its argument into a model (as seed 004's tests do).
    Returns an array of ``x``'s shape.
    """
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    flat_x = x.reshape(-1)
    flat_grad = grad.reshape(-1)
    for i in range(flat_x.size):
        original = flat_x[i]
        flat_x[i] = original + step
        f_plus = float(f(x.copy()))
        flat_x[i] = original - step
        f_minus = float(f(x.copy()))
        flat_x[i] = original
        flat_grad[i] = (f_plus - f_minus) / (2 * step)
    return grad


def check_gradient(f: Callable[[np.ndarray], float], grad_f: Callable[[np.ndarray], np.ndarray],
                   x: np.ndarray, error_tol: float = 1e-6, step: float = 1e-6) -> bool:
    """True when ``grad_f(x)`` matches central differences of ``f`` at ``x`` within
    ``error_tol`` relative error (:func:`rel_error`)."""
    x = np.array(x, dtype=np.float64)
    analytic = np.array(grad_f(x.copy()), dtype=np.float64)
    if analytic.shape != x.shape:
        raise ValueError(f'grad_f returned shape {analytic.shape}, expected {x.shape}')
    numeric = numerical_gradient(f, x, step)
    return rel_error(analytic, numeric) <= error_tol
