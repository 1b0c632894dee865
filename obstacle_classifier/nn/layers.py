"""Layers of the NumPy network: forward, backward and in-place parameter updates.

Every layer follows one protocol, the one the brief's ``MLP.single_step_sgd`` relies on:

- ``forward(X)`` maps a batch ``(n, d_in)`` to ``(n, d_out)``. In training mode (the default) it
  keeps exactly what ``backward`` needs and nothing else; in inference mode it keeps nothing and
  touches no state (``eval()`` drops whatever a training forward had kept). ``forward(X,
  cache=False)`` is inference whatever the mode, without touching it (safe while other threads
  use the layer); ``cache=True`` keeps what backward needs even in inference mode.
- ``backward(grad_out)`` takes dL/d(output) ``(n, d_out)`` and returns a tuple
  ``(grad_in, *param_grads)``: a 1-tuple for layers without parameters, so that
  ``grad, *param_grads = layer.backward(grad)`` always unpacks correctly. It releases the cache.
- ``update_params_(*param_grads, lr)`` applies ``p -= lr * g`` in place (a no-op without
  parameters).

Activation checkpointing. What backward needs is held once and shared, never copied:
``Linear`` keeps its input (the previous activation's output, by reference); ``ScaledReLU`` and
``ReLU`` recover their mask from their own output (``out > 0`` exactly where the mask is set), so
in a Linear -> activation -> Linear chain the activation costs no extra memory at all; ``Sigmoid``
keeps its output, which is also the prediction the caller holds. For the brief's MLP that is the
floor of ``n * (2h + c)`` values per step. An activation whose output is not kept downstream (e.g.
the last layer before a loss) can be built with ``keep='mask'`` to hold a bool mask instead.

Inputs are never modified in place: callers may pass views of their own data. Every array a
layer returns is new (never a buffer reused by a later call), so callers may keep it.

Subnormal gradients. The input gradients that ``Linear`` and ``Sigmoid`` return have their
subnormal entries (0 < |g| < finfo.tiny) set to zero, as a CPU in flush-to-zero mode would:
saturated float32 outputs make thousands of them per step, and every one that enters a matrix
product costs OpenBLAS a microcode assist (30-90x slower products; benchmarks/results.md). The
change is below 1.2e-38 (float32) or 2.2e-308 (float64) per value. Parameter gradients are
returned as computed.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from .functional import batch_sum, flush_subnormals_, select, sigmoid

RngLike = Union[None, int, np.random.Generator]


def _as_batch(X: np.ndarray, width: int, dtype: np.dtype, where: object) -> np.ndarray:
    """Check that ``X`` is a batch ``(n, width)`` and return it in ``dtype``.

    A dtype mismatch is converted (one copy) rather than silently promoting a float32 model to
    float64 through NumPy 2's type promotion. ``where`` (the layer) is formatted only for an
    error message, keeping string work off the per-batch path.
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != width:
        raise ValueError(f'{where!r} expects an array of shape (n, {width}), got {X.shape}')
    if X.dtype != dtype:
        X = X.astype(dtype)
    return X


def _select_new(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A new array ``where(mask, values, 0)``: the branch-free select for float32/float64."""
    if values.dtype not in (np.float32, np.float64):
        return np.where(mask, values, values.dtype.type(0))
    return select(values, mask, np.empty(values.shape, values.dtype))


def _check_grad(grad_out: np.ndarray, shape: tuple, dtype: np.dtype,
                where: object) -> np.ndarray:
    grad_out = np.asarray(grad_out)
    if grad_out.shape != shape:
        raise ValueError(f'{where!r}.backward expects grad_out of shape {shape} (the shape of the '
                         f'last forward output), got {grad_out.shape}')
    if grad_out.dtype != dtype:
        grad_out = grad_out.astype(dtype)
    return grad_out


class Layer:
    """Base class: training/inference mode, the parameter list and the no-op update."""

    #: Trainable arrays, updated in place. Order matches the ``param_grads`` of ``backward``.
    params: tuple[np.ndarray, ...] = ()

    def __init__(self) -> None:
        self.training = True

    def train(self, mode: bool = True) -> 'Layer':
        """Training mode: ``forward`` keeps what ``backward`` needs."""
        self.training = bool(mode)
        if not mode:
            self.clear_cache()
        return self

    def eval(self) -> 'Layer':
        """Inference mode: ``forward`` keeps nothing (``backward`` is then an error)."""
        return self.train(False)

    def update_params_(self, *param_grads: np.ndarray, lr: float) -> None:
        """In-place SGD step ``p -= lr * g`` for each parameter (dtype preserved)."""
        if len(param_grads) != len(self.params):
            raise ValueError(f'{self!r}.update_params_ expects {len(self.params)} gradient(s), '
                             f'got {len(param_grads)}')
        for param, grad in zip(self.params, param_grads):
            if grad.shape != param.shape:
                raise ValueError(f'{self!r}: gradient of shape {grad.shape} for a parameter of '
                                 f'shape {param.shape}')
            # A Python float is a weak scalar under NEP 50, so float32 stays float32.
            param -= float(lr) * grad

    def cached_arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays this layer holds for ``backward`` (for memory accounting)."""
        return ()

    def clear_cache(self) -> None:
        """Drop everything held for ``backward``."""

    def _missing_cache(self) -> RuntimeError:
        return RuntimeError(f'{self!r}.backward called without a training-mode forward '
                            f'(call forward in training mode first; backward releases the cache)')


class Linear(Layer):
    """Affine layer ``X @ W + b`` with Kaiming-normal ``W`` and zero ``b``.

    Args:
        d_in, d_out: input and output widths.
        bias: include the bias ``b`` (seed 004 builds affine maps as Linear without bias + Bias).
        dtype: parameter dtype; inputs of another dtype are converted to it.
        rng: ``None`` draws from NumPy's global random state (so ``np.random.seed`` makes the
            brief's ``MLP(d, h, c)`` reproducible), an int seeds a fresh Generator, or a Generator.

    Shapes: ``W`` (d_in, d_out), ``b`` (d_out,); forward (n, d_in) -> (n, d_out).
    Caches the input X (by reference) for ``grad_W = X.T @ grad_out``.
    """

    def __init__(self, d_in: int, d_out: int, *, bias: bool = True,
                 dtype: np.dtype | type = np.float64, rng: RngLike = None) -> None:
        super().__init__()
        if d_in < 1 or d_out < 1:
            raise ValueError(f'Linear widths must be positive, got ({d_in}, {d_out})')
        self.d_in, self.d_out = int(d_in), int(d_out)
        # Kaiming (He) normal for ReLU-like activations: Var[W] = 2 / fan_in. Drawn in float64
        # and rounded, so a float32 and a float64 model from one seed hold the same weights.
        std = np.sqrt(2.0 / self.d_in)
        if rng is None:
            draw = np.random.standard_normal((self.d_in, self.d_out))
        else:
            draw = np.random.default_rng(rng).standard_normal((self.d_in, self.d_out))
        self.W = (draw * std).astype(dtype)
        self.b: Optional[np.ndarray] = np.zeros(self.d_out, dtype=dtype) if bias else None
        #: The first layer of a network may skip dL/dX (it is the data); the brief's MLP asks
        #: for it, so it is on by default. matmul_flops counts what this flag makes happen.
        self.needs_input_grad = True
        self._X: Optional[np.ndarray] = None

    @property
    def params(self) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        return (self.W,) if self.b is None else (self.W, self.b)

    @property
    def dtype(self) -> np.dtype:
        return self.W.dtype

    def __repr__(self) -> str:
        return f'Linear({self.d_in}, {self.d_out})'

    def forward(self, X: np.ndarray, cache: Optional[bool] = None) -> np.ndarray:
        """(n, d_in) -> (n, d_out). ``cache``: keep X for backward (None: in training mode)."""
        X = _as_batch(X, self.d_in, self.W.dtype, self)
        out = X @ self.W
        if self.b is not None:
            out += self.b
        if (self.training if cache is None else cache):
            self._X = X
        return out

    def backward(self, grad_out: np.ndarray) -> tuple[np.ndarray, ...]:
        """(n, d_out) -> (grad_in (n, d_in) or None, grad_W (d_in, d_out)[, grad_b (d_out,)])."""
        X = self._X
        if X is None:
            raise self._missing_cache()
        grad_out = _check_grad(grad_out, (X.shape[0], self.d_out), self.W.dtype, self)
        grad_W = X.T @ grad_out
        grad_in = None
        if self.needs_input_grad:
            grad_in = grad_out @ self.W.T
            flush_subnormals_(grad_in)
        self._X = None
        if self.b is None:
            return grad_in, grad_W
        return grad_in, grad_W, batch_sum(grad_out)

    def cached_arrays(self) -> tuple[np.ndarray, ...]:
        return () if self._X is None else (self._X,)

    def clear_cache(self) -> None:
        self._X = None


class _Rectifier(Layer):
    """Shared machinery of ReLU and ScaledReLU: ``out = gain * x`` where ``x > knee``, else 0.

    The mask ``x > knee`` equals ``out > 0`` because ``gain * knee >= 0``, so backward needs
    only the output, which the next Linear holds anyway (shared by reference, zero extra bytes).
    With ``keep='mask'`` a bool mask (1 byte per value) is kept instead, for when nothing
    downstream holds the output.

    ``gain`` and ``knee`` are constants of the class (read-only on an instance): the single
    inference of :class:`~obstacle_classifier.nn.mlp.Network` copies them into its buffers
    once, so a value changed on one layer would go unnoticed there. Another activation is
    another class.
    """

    _GAIN = 1.0
    _KNEE = 0.0

    @property
    def gain(self) -> float:
        return self._GAIN

    @property
    def knee(self) -> float:
        return self._KNEE

    def __init__(self, h: int, *, keep: str = 'output') -> None:
        super().__init__()
        if keep not in ('output', 'mask'):
            raise ValueError(f"keep must be 'output' or 'mask', got {keep!r}")
        self.h = int(h)
        self.keep = keep
        self._kept: Optional[np.ndarray] = None

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.h})'

    def forward(self, X: np.ndarray, cache: Optional[bool] = None) -> np.ndarray:
        """(n, h) -> (n, h). ``cache``: keep the output or mask (None: in training mode)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.h:
            raise ValueError(f'{self!r} expects an array of shape (n, {self.h}), got {X.shape}')
        mask = X > self.knee
        # Select, do not multiply by the mask: -inf * False would be NaN (NaN inputs give 0).
        out = self._scaled(_select_new(X, mask))
        if (self.training if cache is None else cache):
            self._kept = out if self.keep == 'output' else mask
        return out

    def backward(self, grad_out: np.ndarray) -> tuple[np.ndarray]:
        """(n, h) -> (grad_in (n, h),)."""
        kept = self._kept
        if kept is None:
            raise self._missing_cache()
        grad_out = _check_grad(grad_out, kept.shape, grad_out.dtype, self)
        mask = kept if kept.dtype == np.bool_ else kept > 0
        grad_in = self._scaled(_select_new(grad_out, mask))
        self._kept = None
        return (grad_in,)

    def _scaled(self, values: np.ndarray) -> np.ndarray:
        """``values * gain``, in place for a float array (a new float64 one for integers)."""
        if self.gain == 1.0:
            return values
        if values.dtype.kind != 'f':
            return values * self.gain
        values *= self.gain
        return values

    def cached_arrays(self) -> tuple[np.ndarray, ...]:
        return () if self._kept is None else (self._kept,)

    def clear_cache(self) -> None:
        self._kept = None


class ScaledReLU(_Rectifier):
    """The brief's activation: ``2x`` where ``x > 1``, else ``0``; derivative 2 / 0 likewise
    (0 at exactly x = 1, where the function jumps)."""

    _GAIN = 2.0
    _KNEE = 1.0


class ReLU(_Rectifier):
    """``max(x, 0)``; derivative 1 where ``x > 0``, else 0 (torch's convention at 0)."""

    _GAIN = 1.0
    _KNEE = 0.0


class Sigmoid(Layer):
    """Logistic sigmoid, computed without overflow for any finite input in float32 or float64.

    Keeps its output ``P`` (n, c), the prediction itself, for ``grad_in = g * P * (1 - P)``.
    The output array is shared with the caller: do not modify it between forward and backward.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = int(c)
        self._out: Optional[np.ndarray] = None

    def __repr__(self) -> str:
        return f'Sigmoid({self.c})'

    def forward(self, X: np.ndarray, cache: Optional[bool] = None) -> np.ndarray:
        """(n, c) logits -> (n, c) probabilities. ``cache``: keep them (None: training mode)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.c:
            raise ValueError(f'{self!r} expects an array of shape (n, {self.c}), got {X.shape}')
        out = sigmoid(X)
        if (self.training if cache is None else cache):
            self._out = out
        return out

    def backward(self, grad_out: np.ndarray) -> tuple[np.ndarray]:
        """(n, c) -> (grad_in (n, c),)."""
        P = self._out
        if P is None:
            raise self._missing_cache()
        grad_out = _check_grad(grad_out, P.shape, P.dtype, self)
        grad_in = 1 - P
        grad_in *= P
        grad_in *= grad_out
        flush_subnormals_(grad_in)
        self._out = None
        return (grad_in,)

    def cached_arrays(self) -> tuple[np.ndarray, ...]:
        return () if self._out is None else (self._out,)

    def clear_cache(self) -> None:
        self._out = None


class Bias(Layer):
    """Trainable additive layer (seed 004): ``X + b`` with ``b`` (h,), initialised to zero.

    Backward needs nothing from the forward pass: ``grad_b = sum_n grad_out``, and the input
    gradient is ``grad_out`` itself (returned as is, not copied).
    """

    def __init__(self, h: int, *, dtype: np.dtype | type = np.float64) -> None:
        super().__init__()
        self.h = int(h)
        self.b = np.zeros(self.h, dtype=dtype)
        self._batch: Optional[int] = None

    @property
    def params(self) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        return (self.b,)

    def __repr__(self) -> str:
        return f'Bias({self.h})'

    def forward(self, X: np.ndarray, cache: Optional[bool] = None) -> np.ndarray:
        """(n, h) -> (n, h). ``cache``: keep the batch size (None: in training mode)."""
        X = _as_batch(X, self.h, self.b.dtype, self)
        if (self.training if cache is None else cache):  # only the batch size, to check the grad
            self._batch = X.shape[0]
        return X + self.b

    def backward(self, grad_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, h) -> (grad_in (n, h), grad_b (h,))."""
        if self._batch is None:
            raise self._missing_cache()
        grad_out = _check_grad(grad_out, (self._batch, self.h), self.b.dtype, self)
        self._batch = None
        return grad_out, batch_sum(grad_out)

    def clear_cache(self) -> None:
        self._batch = None


def cached_nbytes(layers, exclude: tuple[np.ndarray, ...] = ()) -> int:
    """Bytes held for backward across ``layers``, counting each shared buffer once.

    Arrays sharing memory with any array in ``exclude`` (typically the caller's input batch,
    which is referenced, not copied) are not counted.
    """
    seen: list[np.ndarray] = []
    total = 0
    for layer in layers:
        for arr in layer.cached_arrays():
            if any(np.shares_memory(arr, other) for other in seen):
                continue
            if any(np.shares_memory(arr, other) for other in exclude):
                continue
            seen.append(arr)
            total += arr.nbytes
    return total
