"""Optimisers over lists of parameter arrays, updated in place (PyTorch's update rules).

``step(grads)`` takes gradients aligned with the parameter list given at construction. State
(momentum buffers, Adam moments) is allocated once, in each parameter's dtype, and updated in
place; only Python floats meet the arrays, so float32 parameters stay float32.

Weight decay is an L2 penalty added to the gradient (``g + wd * p``), applied to the parameters
flagged in ``decay_mask`` (by default every parameter with ndim >= 2, i.e. weights, not biases).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


class Optimizer:
    """Base: holds the parameters, the decay mask and the step count."""

    def __init__(self, params: Sequence[np.ndarray], lr: float, weight_decay: float = 0.0,
                 decay_mask: Optional[Sequence[bool]] = None) -> None:
        if lr <= 0 or not math.isfinite(lr):
            raise ValueError(f'learning rate must be a positive finite number, got {lr}')
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):  # NaN fails both
            raise ValueError(f'weight_decay must be a finite number >= 0, got {weight_decay}')
        self.params = list(params)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.decay_mask = ([p.ndim >= 2 for p in self.params] if decay_mask is None
                           else [bool(flag) for flag in decay_mask])
        if len(self.decay_mask) != len(self.params):
            raise ValueError('decay_mask must have one flag per parameter')
        self.steps = 0
        self._state_buffers: list[np.ndarray] = []

    def _zeros_like_params(self) -> list[np.ndarray]:
        """Zero state arrays shaped like the parameters; when the parameters share a dtype,
        views of one flat array (kept in :meth:`state_buffers`), so that saving or checking
        the whole state takes one NumPy call per kind of state."""
        if len({p.dtype for p in self.params}) != 1:
            arrays = [np.zeros_like(p) for p in self.params]
            self._state_buffers += arrays
            return arrays
        flat = np.zeros(sum(p.size for p in self.params), self.params[0].dtype)
        views, offset = [], 0
        for param in self.params:
            views.append(flat[offset:offset + param.size].reshape(param.shape))
            offset += param.size
        self._state_buffers.append(flat)
        return views

    def _effective_grad(self, index: int, grad: np.ndarray) -> np.ndarray:
        param = self.params[index]
        if grad.shape != param.shape:
            raise ValueError(f'gradient {index} has shape {grad.shape}, parameter has '
                             f'{param.shape}')
        if self.weight_decay and self.decay_mask[index]:
            return grad + self.weight_decay * param
        return grad

    def step(self, grads: Sequence[np.ndarray]) -> None:
        if len(grads) != len(self.params):
            raise ValueError(f'expected {len(self.params)} gradients, got {len(grads)}')
        self.steps += 1
        for index, grad in enumerate(grads):
            self._update(index, self._effective_grad(index, grad))

    def _update(self, index: int, grad: np.ndarray) -> None:
        raise NotImplementedError

    def state_arrays(self) -> list[np.ndarray]:
        """Internal state (for checkpoint-free copies and tests)."""
        return []

    def state_buffers(self) -> list[np.ndarray]:
        """The same state as :meth:`state_arrays` in as few arrays as possible (each state
        array is a view of one of them): what a caller saves and restores around a step."""
        return list(self._state_buffers)


class SGD(Optimizer):
    """SGD with optional (heavy-ball) momentum, as ``torch.optim.SGD``:
    ``b = mu * b + g`` (``b = g`` on the first step), ``p -= lr * b``."""

    def __init__(self, params: Sequence[np.ndarray], lr: float = 0.1, momentum: float = 0.0,
                 weight_decay: float = 0.0,
                 decay_mask: Optional[Sequence[bool]] = None) -> None:
        super().__init__(params, lr, weight_decay, decay_mask)
        if not 0 <= momentum < 1:
            raise ValueError(f'momentum must be in [0, 1), got {momentum}')
        self.momentum = float(momentum)
        self._buffers = self._zeros_like_params() if momentum else []

    def _update(self, index: int, grad: np.ndarray) -> None:
        param = self.params[index]
        if not self.momentum:
            param -= self.lr * grad
            return
        buffer = self._buffers[index]
        if self.steps == 1:
            buffer[...] = grad
        else:
            buffer *= self.momentum
            buffer += grad
        param -= self.lr * buffer

    def state_arrays(self) -> list[np.ndarray]:
        return list(self._buffers)


class Adam(Optimizer):
    """Adam (Kingma & Ba), as ``torch.optim.Adam`` with L2 weight decay:
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``."""

    def __init__(self, params: Sequence[np.ndarray], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0,
                 decay_mask: Optional[Sequence[bool]] = None) -> None:
        super().__init__(params, lr, weight_decay, decay_mask)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f'betas must be in [0, 1), got {betas}')
        self.eps = float(eps)
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f'eps must be a finite number >= 0, got {eps}')
        self._m = self._zeros_like_params()
        self._v = self._zeros_like_params()

    def _update(self, index: int, grad: np.ndarray) -> None:
        m, v, param = self._m[index], self._v[index], self.params[index]
        m *= self.beta1
        m += (1 - self.beta1) * grad
        v *= self.beta2
        v += (1 - self.beta2) * (grad * grad)
        bias1 = 1 - self.beta1 ** self.steps
        bias2 = 1 - self.beta2 ** self.steps
        denom = np.sqrt(v)
        denom *= 1 / math.sqrt(bias2)
        denom += self.eps
        update = m / denom
        update *= self.lr / bias1
        param -= update

    def state_arrays(self) -> list[np.ndarray]:
        return self._m + self._v


OPTIMIZERS = ('sgd', 'momentum', 'adam')
DEFAULT_LR = {'sgd': 0.1, 'momentum': 0.05, 'adam': 1e-3}


def make_optimizer(name: str, params: Sequence[np.ndarray], lr: Optional[float] = None,
                   weight_decay: float = 0.0, momentum: float = 0.9) -> Optimizer:
    """Build an optimiser by name: 'sgd', 'momentum' (SGD with ``momentum``) or 'adam'."""
    if name not in OPTIMIZERS:
        raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got {name!r}')
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == 'adam':
        return Adam(params, lr=lr, weight_decay=weight_decay)
    return SGD(params, lr=lr, momentum=momentum if name == 'momentum' else 0.0,
               weight_decay=weight_decay)
