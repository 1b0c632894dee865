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

import functools
import inspect
import threading
from typing import Callable, Optional, Sequence

import numpy as np

from .functional import (FLUSH_MIN_ELEMENTS, batch_sum, flush_subnormals_, sigmoid,
                         underflow_ignored)
from .layers import (Layer, Linear, ReLU, RngLike, ScaledReLU, Sigmoid, _as_batch, _Rectifier,
                     cached_nbytes)
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
        """One step of batched SGD on the mean negative log-likelihood. X (n, d), Y (n, c).

        For the usual chain (Linear, rectifier, ..., Linear, Sigmoid, all in training mode)
        this runs :meth:`_fused_sgd_step`: the same arithmetic, bit for bit, as the layer loop
        below (a test holds it), in preallocated buffers. Anything else takes the layer loop,
        and so does a strided view of X (``X[::-1]``, ``X[:, ::2]``, rows of a Fortran-ordered
        matrix), on which np.dot and matmul may round differently.
        """
        chain = self._fused_chain()
        if chain is not None and not _strided(X):
            self._fused_sgd_step(X, Y, float(lr), *chain)
            return
        self._layerwise_sgd_step(X, Y, lr)

    def _layerwise_sgd_step(self, X: np.ndarray, Y: np.ndarray, lr: float = 0.1) -> None:
        """The brief's step: forward through the layers, then backward and update each."""
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
        """Every trainable array, in layer order (W1, b1, W2, b2, W3, b3). In a freshly built
        MLP or LinearClassifier these are views of one flat array (:meth:`_pack_parameters`);
        update them in place, as the optimisers and the model loader do."""
        return [p for layer in self.layers for p in layer.params]

    def train(self, mode: bool = True) -> 'Network':
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> 'Network':
        return self.train(False)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Inference: (n, d) -> (n, c) or (d,) -> (c,). Keeps nothing, changes no state, so it
        may run while another thread holds a different model object. The returned array is
        new on every call (the caller may keep it).

        A single vector (d,) already in the network's dtype takes the preallocated fast path
        (:meth:`predict_proba_into`), bit for bit the same result; other inputs are converted.
        """
        if type(X) is np.ndarray and X.ndim == 1:
            infer = self.__dict__.get('_inference')
            if infer is None or not infer.matches(self.layers):
                infer = self._single_inference()
            if infer is not None and X.dtype == infer.dtype and X.shape == infer.x_shape:
                out = np.empty(infer.out_shape, infer.dtype)
                if infer.run(X, out):
                    return out
        return self._predict_proba_layerwise(X)

    def predict_proba_into(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fast single-example inference: probabilities of ``x`` (d,) written into ``out`` (c,).

        ``x`` must be a (d,) array in the network's dtype and ``out`` a writeable, C-contiguous
        (c,) array of that dtype (the caller owns it; nothing else is written there). Returns
        ``out``. Bit for bit the same as ``predict_proba(x)``. Skips the per-layer validation
        (shapes and dtype are checked once here) and allocates nothing; buffers are private to
        this network object, guarded so that concurrent calls from two threads stay correct.
        """
        infer = self.__dict__.get('_inference')  # _single_inference(), minus a call
        if infer is None or not infer.matches(self.layers):
            infer = self._single_inference()
            if infer is None:
                out[...] = self._predict_proba_layerwise(x)
                return out
        dtype = infer.dtype
        flags = out.flags
        if (type(x) is not np.ndarray or x.dtype != dtype or x.shape != infer.x_shape
                or out.dtype != dtype or out.shape != infer.out_shape
                or not flags.c_contiguous or not flags.writeable):
            raise ValueError(f'predict_proba_into expects x of shape {infer.x_shape} and out of '
                             f'shape {infer.out_shape}, both {infer.dtype}; got x '
                             f'{getattr(x, "shape", None)} {getattr(x, "dtype", None)}, out '
                             f'{out.shape} {out.dtype}')
        if not infer.run(x, out):  # another thread is using the buffers, or x is strided
            out[...] = self._predict_proba_layerwise(x)
        return out

    def _predict_proba_layerwise(self, X: np.ndarray) -> np.ndarray:
        """The general inference path: the layers' own forward, in inference mode."""
        X = np.asarray(X)
        single = X.ndim == 1
        out = X[None, :] if single else X
        probs = sigmoid(self.logits(out, cache=False))
        return probs[0] if single else probs

    def logits(self, X: np.ndarray, cache: bool = True) -> np.ndarray:
        """Everything but the final Sigmoid: (n, d) -> (n, c) logits.

        ``cache=True`` keeps what :meth:`backward_logits` needs, in inference mode too (as
        ``torch``'s ``eval()`` still trains); ``cache=False`` keeps nothing and leaves the
        layers untouched (so other threads may use them meanwhile).
        """
        out = X
        for layer in self.layers[:-1]:
            if _forward_takes_cache(layer):
                out = layer.forward(out, cache=cache)
            else:  # a layer written to forward(X) alone caches by its mode: set it around
                saved, layer.training = layer.training, cache
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

    # -- fast paths: preallocated buffers, the layers' arithmetic unchanged ------------------
    def _fused_chain(self) -> Optional[tuple[list[Linear], list[_Rectifier]]]:
        """:func:`_layer_chain` of the layers if they are all in training mode, else None
        (take the layer loop). Checked on every call: a caller may swap a layer or switch
        modes at any time."""
        chain = _layer_chain(self.layers)
        if chain is None or not all(layer.training for layer in self.layers):
            return None
        return chain

    def _fused_sgd_step(self, X: np.ndarray, Y: np.ndarray, lr: float, linears: list[Linear],
                        rectifiers: list[_Rectifier]) -> None:
        """One SGD step of the brief's loss with every intermediate in a preallocated buffer.

        X (n, d), Y (n, c). The operations are those of Linear/rectifier/Sigmoid.forward,
        get_grad_log_loss and the layers' backward and update_params_, on the same operands
        and in an order that gives the same roundings, so the parameters come out bit for bit
        as from :meth:`_layerwise_sgd_step` (a test holds it). Differences that do not change
        a bit:

        - the sigmoid's output gradient and the log-loss gradient share ``(1 - P) * P``
          (computed once instead of twice);
        - the sigmoid is :func:`_sigmoid_into` (one ``np.exp`` call, no masked loop);
        - Python scalars (1, eps, 1/n, -1, 0) are (n, c) arrays of their value in the dtype:
          NumPy casts a Python float to the array's dtype anyway, and a scalar operand costs a
          conversion per call;
        - the rectifier masks are 0/1 integers of the float's width in one scratch buffer,
          so that the select is a same-type integer multiply (with a bool operand NumPy casts
          in a buffered loop, 3-4x slower); backward recomputes each from the layer's output
          (``out > 0`` exactly where ``x > knee``), as the layer's own backward does;
        - the bias gradients are :func:`batch_sum`, as in the layers, on a kept ones vector;
        - the matrix products are ``np.dot`` with ``out=``: the same BLAS call as the layers'
          ``@`` on these 2-D operands, with less overhead per call;
        - the first layer's input gradient (dL/dX of the data) is not computed: nothing uses
          it;
        - when the parameters are packed (:meth:`_pack_parameters`) all of them are updated
          at the end by two calls on the flat arrays, ``g *= lr`` then ``p -= g``, the same
          two roundings per value as each layer's update; each layer's input gradient is
          computed before any update, as in the layer loop, so the order does not matter.

        Held between forward and backward: the rectifier outputs (n, h) each and P (n, c), the
        checkpointing floor (:meth:`_TrainingWorkspace.held_nbytes`); nothing else a forward
        writes is read by the backward. At
        (16, 64, 8), batch 100 the eight matrix products are most of a step and every other
        NumPy call costs about half a microsecond, hence the care about the number of calls.
        """
        first = linears[0]
        dtype = first.W.dtype
        if type(X) is not np.ndarray or X.dtype != dtype or X.ndim != 2 \
                or X.shape[1] != first.d_in:
            X = _as_batch(X, first.d_in, dtype, first)
        n = X.shape[0]
        if type(Y) is not np.ndarray:
            Y = np.asarray(Y)
        if Y.shape != (n, linears[-1].d_out) or n == 0:
            # The layer loop's get_grad_log_loss refuses these; the same error from the same code.
            get_grad_log_loss(Y, np.empty((n, linears[-1].d_out), dtype))
        if Y.dtype != dtype:
            Y = Y.astype(dtype)
        work = self._training_workspace(n, dtype, linears)
        for layer in self.layers:
            layer.clear_cache()
        dot, add, multiply, subtract = np.dot, np.add, np.multiply, np.subtract

        # forward: Z = A @ W + b in place, then the rectifier in place (Z is not kept)
        A = X
        for linear, rectifier, Z, Z_bits, mask in zip(linears, rectifiers + [None], work.outputs,
                                                      work.output_bits, work.masks):
            dot(A, linear.W, Z)
            add(Z, linear.b, out=Z)
            if rectifier is not None:
                np.greater(Z, rectifier.knee, out=mask)  # 1 where x > knee, else 0
                multiply(Z_bits, mask, out=Z_bits)  # select: the float's bits, or +0.0
                gain = rectifier.gain
                if gain != 1.0:
                    multiply(Z, gain, out=Z)
            A = Z

        P = _sigmoid_into(A, work.exps, work.e, work.e_neg, work.minus_one, work.zero,
                          work.one, work.P)
        if work.between_passes is not None:  # (a check of what backward reads: see the tests)
            work.between_passes()

        # get_grad_log_loss then Sigmoid.backward: (1 - P) P (P - Y) / ((1 - P) P + eps) / n
        shared, denom, grad = work.shared, work.denom, work.grad_logits
        subtract(work.one, P, out=shared)
        multiply(shared, P, out=shared)
        add(shared, work.eps, out=denom)
        subtract(P, Y, out=grad)
        np.divide(grad, denom, out=grad)
        multiply(grad, work.inverse_n, out=grad)
        multiply(shared, grad, out=grad)
        flush = work.flush
        if flush[-1] is not None:
            flush_subnormals_(grad, *flush[-1])

        # backward, last layer first; updates at the end (packed) or after each layer
        packed = self._packed_parameters(linears)
        ones = work.ones
        outputs, grad_bits, masks = work.outputs, work.grad_hidden_bits, work.masks
        for index in range(len(linears) - 1, -1, -1):
            linear = linears[index]
            grad_W, grad_b = work.grad_W[index], work.grad_b[index]
            W = linear.W
            dot((outputs[index - 1] if index else X).T, grad, grad_W)
            batch_sum(grad, ones, grad_b)
            if index:
                grad_in = work.grad_hidden[index - 1]
                dot(grad, W.T, grad_in)
                if flush[index - 1] is not None:
                    flush_subnormals_(grad_in, *flush[index - 1])
            if packed is None:
                multiply(grad_W, lr, out=grad_W)
                subtract(W, grad_W, out=W)
                multiply(grad_b, lr, out=grad_b)
                b = linear.b
                subtract(b, grad_b, out=b)
            if index:
                mask = masks[index - 1]
                np.greater(outputs[index - 1], 0, out=mask)  # where the forward's x > knee
                multiply(grad_bits[index - 1], mask, out=grad_bits[index - 1])
                gain = rectifiers[index - 1].gain
                if gain != 1.0:
                    multiply(grad_in, gain, out=grad_in)
                grad = grad_in
        if packed is not None:
            flat_grad = work.flat_grad
            multiply(flat_grad, lr, out=flat_grad)
            subtract(packed, flat_grad, out=packed)

    def _pack_parameters(self) -> None:
        """Make every Linear's W and b views of one flat array, in :meth:`parameters` order.

        Called by the constructors, before anyone holds the arrays: values, shapes, dtypes and
        C order are unchanged, and in-place updates from anywhere (optimisers, loading) land in
        the flat array. The fused SGD step then updates all parameters with two NumPy calls
        instead of four per layer. A copy or unpickled network has separate arrays again, and
        so does a network whose arrays were replaced: the step then updates layer by layer.
        """
        slots = [(layer, name) for layer in self.linears for name in ('W', 'b')
                 if getattr(layer, name) is not None]
        params = [getattr(layer, name) for layer, name in slots]
        if not params or len({p.dtype for p in params}) != 1:
            return
        flat, views = _flat_views([p.shape for p in params], params[0].dtype)
        for (layer, name), param, view in zip(slots, params, views):
            view[...] = param
            setattr(layer, name, view)
        self.__dict__['_packed'] = (flat, views)

    def _packed_parameters(self, linears: list[Linear]) -> Optional[np.ndarray]:
        """The flat parameter array if every W and b of ``linears`` is still its view, in the
        layout the training workspace mirrors (W1, b1, W2, b2, ...); else None."""
        packed = self.__dict__.get('_packed')
        if packed is None:
            return None
        flat, views = packed
        if len(views) != 2 * len(linears):
            return None
        for index, linear in enumerate(linears):
            if linear.W is not views[2 * index] or linear.b is not views[2 * index + 1]:
                return None
        return flat

    def _training_workspace(self, n: int, dtype: np.dtype,
                            linears: list[Linear]) -> '_TrainingWorkspace':
        """The buffers for batches of ``n`` rows (kept for the two most recent batch sizes:
        full batches and an epoch's last, shorter one)."""
        key = (n, dtype, *[linear.W.shape for linear in linears])
        cache = self.__dict__.setdefault('_workspaces', {})
        work = cache.get(key)
        if work is None:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))
            work = cache[key] = _TrainingWorkspace(n, dtype, linears)
        return work

    def workspace_nbytes(self) -> int:
        """Bytes in the fast paths' preallocated buffers (training and single inference)."""
        total = sum(work.nbytes() for work in self.__dict__.get('_workspaces', {}).values())
        infer = self.__dict__.get('_inference')
        return total + (infer.nbytes() if infer is not None else 0)

    def _single_inference(self) -> Optional['_SingleInference']:
        """The single-example inference buffers, rebuilt if the layers or weights changed
        identity, shape or dtype; None if the layers are not the supported chain."""
        infer = self.__dict__.get('_inference')
        if infer is not None and infer.matches(self.layers):
            return infer
        chain = _layer_chain(self.layers)  # the mode does not matter: inference keeps nothing
        if chain is None:
            return None
        infer = self.__dict__['_inference'] = _SingleInference(self.layers, *chain)
        return infer

    def __getstate__(self) -> dict:
        """Copies and pickles leave the fast paths' buffers (and their lock) behind."""
        state = self.__dict__.copy()
        state.pop('_workspaces', None)
        state.pop('_inference', None)
        state.pop('_packed', None)  # the copy's arrays are separate: it updates layer by layer
        return state


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
        self._pack_parameters()

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
        self._pack_parameters()

    def __repr__(self) -> str:
        return f'LinearClassifier(d={self.d}, c={self.c}, dtype={self.dtype.name})'


def _strided(X: object) -> bool:
    """True for an ndarray (or subclass, e.g. a memmap) that is neither C- nor
    Fortran-contiguous: a strided view."""
    if not isinstance(X, np.ndarray):
        return False
    flags = X.flags
    return not (flags.c_contiguous or flags.f_contiguous)


def _forward_takes_cache(layer: object) -> bool:
    """Whether ``layer.forward`` accepts ``cache=`` (the package's layers do; a user's layer
    written to the plain ``forward(X)`` protocol may not)."""
    if 'forward' in getattr(layer, '__dict__', ()):  # set on the instance: look at it
        return _accepts_cache(layer.forward)
    return _class_forward_takes_cache(type(layer))


@functools.lru_cache(maxsize=None)
def _class_forward_takes_cache(layer_type: type) -> bool:
    return _accepts_cache(getattr(layer_type, 'forward', None))


def _accepts_cache(forward: object) -> bool:
    try:
        return 'cache' in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # not a callable, or no signature to read
        return False


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


class _TrainingWorkspace:
    """Buffers for one fused SGD step on batches of n rows (shapes in the comments)."""

    def __init__(self, n: int, dtype: np.dtype, linears: list[Linear]) -> None:
        widths = [linear.d_out for linear in linears]
        hidden = widths[:-1]
        c = widths[-1]
        bits = np.int32 if dtype == np.float32 else np.int64
        self.outputs = [np.empty((n, w), dtype) for w in widths]  # rectifier outputs; logits
        self.output_bits = [out.view(bits) for out in self.outputs]  # the same memory
        # x > knee as 0/1 in the float's integer width (the select multiplies same-type ints):
        # one scratch buffer, a C-ordered (n, w) view per hidden layer; not kept for backward
        self.mask_scratch, masks = _flat_views([(n, w) for w in hidden], bits, shared=True)
        self.masks = masks + [None]  # (None: the output layer has no rectifier)
        self.grad_hidden = [np.empty((n, w), dtype) for w in hidden]  # dL/d(rectifier output)
        self.grad_hidden_bits = [grad.view(bits) for grad in self.grad_hidden]
        # parameter gradients: views of one flat array in the order W1, b1, W2, b2, ... (the
        # layout of _pack_parameters, so that one call can update every parameter)
        self.flat_grad, views = _flat_views(
            [shape for linear in linears for shape in (linear.W.shape, linear.b.shape)], dtype)
        self.grad_W, self.grad_b = views[0::2], views[1::2]
        self.P = np.empty((n, c), dtype)  # probabilities
        self.ones = np.ones(n, dtype)  # for the bias gradients (batch_sum)
        self.exps = np.empty((2, n, c), dtype)  # exp(-|z|); exp(min(z, 0))
        self.e, self.e_neg = self.exps  # views of the two
        # the scalars of sigmoid() and get_grad_log_loss as (n, c) arrays in the dtype
        self.one, self.zero, self.minus_one, self.eps, self.inverse_n = (
            np.full((n, c), value, dtype) for value in (1.0, 0.0, -1.0, 1e-8, 1.0 / n))
        self.shared = np.empty((n, c), dtype)  # (1 - P) P
        self.denom = np.empty((n, c), dtype)
        self.grad_logits = np.empty((n, c), dtype)
        # (bits, bool) scratch for flushing subnormals, one pair per hidden width then (n, c);
        # None where the array is below FLUSH_MIN_ELEMENTS (flush_subnormals_ would return
        # at once: the rule depends only on the shape, so deciding it here changes nothing).
        self.flush = [(np.empty((n, w), bits), np.empty((n, w), np.bool_))
                      if n * w >= FLUSH_MIN_ELEMENTS else None for w in hidden + [c]]
        #: Called between the forward and the backward pass if set (tests, benchmarks).
        self.between_passes: Optional[Callable[[], None]] = None

    def held(self) -> list[np.ndarray]:
        """What a forward pass leaves for the backward pass: the rectifier outputs (n, h)
        each and P (n, c)."""
        return self.outputs[:-1] + [self.P]

    def scratch(self) -> list[np.ndarray]:
        """The buffers a step writes before it reads them: nothing in them passes from the
        forward pass to the backward pass (the rest are ``held`` and constants)."""
        return ([self.mask_scratch, self.outputs[-1], *self.grad_hidden, self.flat_grad,
                 self.exps, self.shared, self.denom, self.grad_logits]
                + [a for pair in self.flush if pair is not None for a in pair])

    def held_nbytes(self) -> int:
        return sum(array.nbytes for array in self.held())

    def nbytes(self) -> int:
        arrays = (self.outputs + [self.mask_scratch] + self.grad_hidden
                  + [self.flat_grad, self.P, self.exps, self.one, self.zero, self.minus_one,
                     self.eps, self.inverse_n, self.ones, self.shared, self.denom,
                     self.grad_logits]
                  + [a for pair in self.flush if pair is not None for a in pair])
        return sum(a.nbytes for a in arrays)


def _flat_views(shapes: Sequence[tuple[int, ...]], dtype: np.dtype, shared: bool = False
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """One flat uninitialised array and C-ordered views of it with ``shapes``: back to back
    (so that one NumPy call can work on all of them), or with ``shared`` all from its start
    (one scratch buffer for arrays used one after the other)."""
    sizes = [int(np.prod(shape)) for shape in shapes]
    flat = np.empty(max(sizes, default=0) if shared else sum(sizes), dtype)
    views, offset = [], 0
    for shape, size in zip(shapes, sizes):
        views.append(flat[offset:offset + size].reshape(shape))
        offset += 0 if shared else size
    return flat, views


def _sigmoid_into(logits: np.ndarray, exps: np.ndarray, e: np.ndarray, e_neg: np.ndarray,
                  minus_one: np.ndarray, zero: np.ndarray, one: np.ndarray,
                  out: np.ndarray) -> np.ndarray:
    """:func:`~obstacle_classifier.nn.functional.sigmoid` of ``logits`` written into ``out``,
    bit for bit, in preallocated buffers, and returns ``out``.

    ``1 / (1 + exp(-|z|))`` times ``exp(min(z, 0))``: that factor is exp(-|z|) itself where
    z < 0 (``-|z|`` is then z, bit for bit) and exactly 1 elsewhere, so both exponentials are
    one ``np.exp`` call on ``exps`` (2, *logits.shape), whose two halves are ``e`` and
    ``e_neg``, and no masked loop runs. ``minus_one``, ``zero``, ``one``: arrays of those
    values in logits' shape and dtype (a scalar operand costs a conversion per call).
    """
    np.copysign(logits, minus_one, out=e)
    np.minimum(logits, zero, out=e_neg)
    # exp and the last product may underflow (to 0 or a subnormal, the right answer): silenced
    # as in sigmoid(), but without an errstate when NumPy already ignores it (it costs a call)
    quiet = None if underflow_ignored() else np.errstate(under='ignore')
    if quiet is not None:
        quiet.__enter__()
    try:
        np.exp(exps, out=exps)
        np.add(e, one, out=out)
        np.reciprocal(out, out=out)
        np.multiply(out, e_neg, out=out)
    finally:
        if quiet is not None:
            quiet.__exit__(None, None, None)
    return out


def _layer_chain(layers: list[Layer]) -> Optional[tuple[list[Linear], list[_Rectifier]]]:
    """(linears, rectifiers) if ``layers`` are Linear, (rectifier, Linear)*, Sigmoid, every
    Linear with a bias, all in one float dtype and of widths that chain: the chain the fast
    paths support; else None.

    The types are exact: a subclass may compute something else, so it takes the layer loop.
    So does a weight matrix that is neither C- nor Fortran-contiguous (a strided view):
    ``np.dot`` copies it for BLAS where ``@`` runs its own loop, and the two round apart.
    """
    if len(layers) < 2 or len(layers) % 2 or type(layers[-1]) is not Sigmoid:
        return None
    linears, rectifiers = layers[0:-1:2], layers[1:-1:2]
    if any(type(linear) is not Linear or linear.b is None for linear in linears):
        return None
    if any(type(rectifier) not in (ReLU, ScaledReLU) for rectifier in rectifiers):
        return None
    dtype = linears[0].W.dtype
    if dtype not in (np.float32, np.float64):
        return None
    for linear in linears:
        W, b = linear.W, linear.b
        if (W.dtype != dtype or b.dtype != dtype
                or not (W.flags.c_contiguous or W.flags.f_contiguous)):
            return None
    # Widths that do not chain: the layer loop raises the layer's own error.
    widths = [linear.d_out for linear in linears]
    if ([rectifier.h for rectifier in rectifiers] != widths[:-1]
            or [linear.d_in for linear in linears[1:]] != widths[:-1]
            or layers[-1].c != widths[-1]):
        return None
    return linears, rectifiers


class _SingleInference:
    """Preallocated single-example forward pass, (d,) -> (c,), with the general path's ops.

    The general path runs (1, d) @ W (a one-row matrix product; a (d,) @ W vector product may
    round differently), adds b, applies the rectifier (select, then gain) and the sigmoid; so
    does this, into (1, width) buffers. Weights are read from the layers on every call (they
    are updated in place by training), so nothing here goes stale; the buffers are rebuilt
    only if a layer or a weight array is replaced.

    Every NumPy call on these 8-64 element rows costs about as much as its whole arithmetic
    (a fraction of a microsecond each), so the pass is written to make as few calls as
    possible; each shortcut is exact: ``np.dot`` with ``out=`` on the (1, k) row runs the same
    BLAS product as ``@`` at half the call cost (a test compares them); the select multiplies
    the float's bits by the 0/1 mask (as :func:`select`); and the sigmoid is
    :func:`_sigmoid_into`.
    """

    def __init__(self, layers: list[Layer], linears: list[Linear],
                 rectifiers: list[_Rectifier]) -> None:
        self.layers = list(layers)
        self.linears = list(linears)
        self.weights = [(linear.W, linear.b) for linear in linears]
        self.dtype = linears[0].W.dtype
        bits = np.int32 if self.dtype == np.float32 else np.int64
        self.x_shape = (linears[0].d_in,)
        self.out_shape = (linears[-1].d_out,)
        self.buffers = [np.empty((1, linear.d_out), self.dtype) for linear in linears]
        # x > knee. On one row a bool mask is cheaper than an integer one: the comparison's
        # cast to int costs more than the select's cast of 64 bools (the other way round
        # on training batches)
        self.masks = [np.empty((1, rectifier.h), np.bool_) for rectifier in rectifiers]
        # Scalars as rows of the operand's shape: a Python or NumPy scalar operand costs a
        # scalar conversion per call, about as much as the arithmetic; the values are the same.
        self.steps = [(linear.W, linear.b.reshape(1, -1), buffer, buffer.view(bits), mask,
                       self._row(rectifier.knee, rectifier.h),
                       None if rectifier.gain == 1.0 else self._row(rectifier.gain, rectifier.h))
                      for linear, buffer, mask, rectifier in zip(linears, self.buffers,
                                                                 self.masks, rectifiers)]
        self.last_W, self.last_b = linears[-1].W, linears[-1].b.reshape(1, -1)
        c = self.out_shape[0]
        # row 0: -|z| then exp(-|z|); row 1: min(z, 0) then exp(min(z, 0))
        self.exps = np.empty((2, 1, c), self.dtype)
        self.e, self.e_neg = self.exps  # views of the two rows
        self.minus_one, self.zero, self.one = (self._row(v, c) for v in (-1.0, 0.0, 1.0))
        self.lock = threading.Lock()

    def _row(self, value: float, width: int) -> np.ndarray:
        """A (1, width) row of ``value`` in the network's dtype."""
        return np.full((1, width), value, self.dtype)

    def matches(self, layers: list[Layer]) -> bool:
        """True while the network still has the same layer and weight objects."""
        if layers != self.layers:  # list equality: identity first, in C
            return False
        for linear, (W, b) in zip(self.linears, self.weights):
            if linear.W is not W or linear.b is not b:
                return False
        return True

    def run(self, x: np.ndarray, out: np.ndarray) -> bool:
        """Write sigmoid(logits(x)) into ``out`` (c,); False (nothing done) if another thread
        holds the buffers or x is not C-contiguous (the caller then takes the general path)."""
        # A strided view of x goes the general way (np.dot and matmul may round it apart).
        if not x.flags.c_contiguous or not self.lock.acquire(False):
            return False
        try:
            dot, add, multiply = np.dot, np.add, np.multiply
            row = x[None]  # (1, d)
            for W, b, buffer, bits, mask, knee, gain in self.steps:
                dot(row, W, buffer)
                add(buffer, b, buffer)
                np.greater(buffer, knee, mask)
                multiply(bits, mask, bits)  # select: the float's bits, or +0.0
                if gain is not None:
                    multiply(buffer, gain, buffer)
                row = buffer
            logits = self.buffers[-1]
            dot(row, self.last_W, logits)
            add(logits, self.last_b, logits)
            _sigmoid_into(logits, self.exps, self.e, self.e_neg, self.minus_one, self.zero,
                          self.one, out[None])  # (1, c), the caller's memory
            return True
        finally:
            self.lock.release()

    def nbytes(self) -> int:
        arrays = self.buffers + self.masks + [self.exps, self.minus_one, self.zero, self.one]
        return sum(a.nbytes for a in arrays)
