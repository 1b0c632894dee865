"""Networks: the brief's multi-label MLP, and a linear baseline, on one generic base.

The brief's MLP, with the attributes and methods its text uses:

    input (d) -> Linear -> ScaledReLU -> (h) -> Linear -> ScaledReLU -> (h) -> Linear -> (c)
              -> Sigmoid -> probabilities (c)

``layers``, ``forward``, ``sgd`` and ``single_step_sgd`` behave exactly as in the brief (its class
text also runs unchanged on these layers; a test proves it). Additions for the product: dtype,
seeded initialisation, a ReLU variant, inference without caching, and the split into logits and
sigmoid that the offline trainer uses for a stable loss.

:class:`LinearClassifier` (a single Linear + Sigmoid) is the baseline the MLP must beat.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .functional import sigmoid
from .layers import Layer, Linear, ReLU, RngLike, ScaledReLU, Sigmoid, cached_nbytes
from .losses import get_grad_log_loss

ACTIVATIONS = {'scaled_relu': ScaledReLU, 'relu': ReLU}


class Network:
    """A stack of layers ending in a Sigmoid: (n, d) -> (n, c) probabilities.

    Subclasses set ``layers``, ``d``, ``c``, ``h`` (0 without hidden layer) and ``activation``.
    """

    layers: list[Layer]
    d: int
    h: int
    c: int
    activation: str
    kind = 'network'

    # -- the brief's interface (shared by every network) --------------------------------------
    def forward(self, X: np.ndarray) -> np.ndarray:
        """Predict class probabilities for a batch: (n, d) -> (n, c). Caches for backward in
        training mode (the default)."""
        out = X
        for layer in self.layers:
            out = layer.forward(out)
        return out

    def sgd(self, X_train: np.ndarray, Y_train: np.ndarray, epochs: int = 10, bs: int = 100,
            lr: float = 0.1) -> None:
        """Plain mini-batch SGD in data order, as the brief's ``sgd`` (10 epochs, batch 100)."""
        n_train = len(X_train)
        if len(Y_train) != n_train:
            raise ValueError(f'X_train has {n_train} rows but Y_train has {len(Y_train)}')
        for _ in range(epochs):
            for b_idx in range(0, n_train, bs):
                self.single_step_sgd(X_train[b_idx:b_idx + bs], Y_train[b_idx:b_idx + bs], lr=lr)

    def single_step_sgd(self, X: np.ndarray, Y: np.ndarray, lr: float = 0.1) -> None:
        """One step of batched SGD on the mean negative log-likelihood. X (n, d), Y (n, c)."""
        Y_hat = self.forward(X)
        loss_nabla_O = get_grad_log_loss(Y, Y_hat)
        for layer in self.layers[::-1]:  # backward pass reverses layers
            loss_nabla_O, *param_grads = layer.backward(loss_nabla_O)
            layer.update_params_(*param_grads, lr=lr)

    # -- product additions -----------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self.layers[0].W.dtype

    @property
    def linears(self) -> list[Linear]:
        return [layer for layer in self.layers if isinstance(layer, Linear)]

    def parameters(self) -> list[np.ndarray]:
        """Every trainable array, in layer order (W1, b1, W2, b2, W3, b3)."""
        return [p for layer in self.layers for p in layer.params]

    def train(self, mode: bool = True) -> 'Network':
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> 'Network':
        return self.train(False)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Inference: (n, d) -> (n, c) or (d,) -> (c,). Keeps nothing, changes no state, so it
        may run while another thread holds a different model object."""
        X = np.asarray(X)
        single = X.ndim == 1
        out = X[None, :] if single else X
        probs = sigmoid(self.logits(out, cache=False))
        return probs[0] if single else probs

    def logits(self, X: np.ndarray, cache: bool = True) -> np.ndarray:
        """Everything but the final Sigmoid: (n, d) -> (n, c) logits. ``cache=False`` runs in
        inference mode without touching the layers' mode."""
        out = X
        for layer in self.layers[:-1]:
            if cache:
                out = layer.forward(out)
            else:
                saved, layer.training = layer.training, False
                try:
                    out = layer.forward(out)
                finally:
                    layer.training = saved
        return out

    def backward_logits(self, grad_logits: np.ndarray) -> list[np.ndarray]:
        """Backpropagate dL/dlogits (n, c) through all layers but the Sigmoid.

        Returns the parameter gradients aligned with :meth:`parameters`. The first layer's
        input gradient (dL/dX of the data) is not needed here and is skipped.
        """
        grads: list[list[np.ndarray]] = []
        grad = grad_logits
        first = self.layers[0]
        for layer in self.layers[-2::-1]:
            if layer is first:
                saved, first.needs_input_grad = first.needs_input_grad, False
                try:
                    grad, *param_grads = layer.backward(grad)
                finally:
                    first.needs_input_grad = saved
            else:
                grad, *param_grads = layer.backward(grad)
            grads.append(param_grads)
        return [g for param_grads in reversed(grads) for g in param_grads]

    def cached_nbytes(self, exclude: Sequence[np.ndarray] = ()) -> int:
        """Bytes currently held for backward, shared buffers counted once; arrays sharing memory
        with ``exclude`` (e.g. the input batch, referenced not copied) are not counted."""
        return cached_nbytes(self.layers, tuple(exclude))


class MLP(Network):
    """Multi-label classifier ``(n, d) -> (n, c)`` probabilities.

    Args:
        d, h, c: input, hidden and output widths.
        dtype: float32 or float64 for parameters and every activation.
        activation: ``'scaled_relu'`` (the brief's) or ``'relu'``.
        rng: seed or Generator for the Kaiming initialisation (None: NumPy's global state).
    """

    kind = 'mlp'

    def __init__(self, d: int, h: int, c: int, *, dtype: np.dtype | type = np.float64,
                 activation: str = 'scaled_relu', rng: RngLike = None) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f'activation must be one of {sorted(ACTIVATIONS)}, '
                             f'got {activation!r}')
        dtype = _check_dtype(dtype)
        rng = _as_generator(rng)
        act = ACTIVATIONS[activation]
        self.d, self.h, self.c = int(d), int(h), int(c)
        self.activation = activation
        self.layers: list[Layer] = [
            Linear(d, h, dtype=dtype, rng=rng), act(h),  # input_layer
            Linear(h, h, dtype=dtype, rng=rng), act(h),  # hidden_layer
            Linear(h, c, dtype=dtype, rng=rng), Sigmoid(c),  # output_layer
        ]

    def __repr__(self) -> str:
        return (f'MLP(d={self.d}, h={self.h}, c={self.c}, dtype={self.dtype.name}, '
                f'activation={self.activation!r})')


class LinearClassifier(Network):
    """The linear baseline: ``sigmoid(X @ W + b)``, (n, d) -> (n, c)."""

    kind = 'linear'

    def __init__(self, d: int, c: int, *, dtype: np.dtype | type = np.float64,
                 rng: RngLike = None) -> None:
        dtype = _check_dtype(dtype)
        rng = _as_generator(rng)
        self.d, self.h, self.c = int(d), 0, int(c)
        self.activation = 'none'
        self.layers = [Linear(d, c, dtype=dtype, rng=rng), Sigmoid(c)]

    def __repr__(self) -> str:
        return f'LinearClassifier(d={self.d}, c={self.c}, dtype={self.dtype.name})'


def _as_generator(rng: RngLike) -> Optional[np.random.Generator]:
    """One Generator shared by all layers (None keeps NumPy's global state)."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f'dtype must be float32 or float64, got {dtype}')
    return dtype
