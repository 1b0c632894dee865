"""A straightforward NumPy implementation of the brief's MLP, kept as a yardstick.

It is the brief's sample solution made to run (parameter-free layers return 1-tuples so that
``grad, *param_grads = layer.backward(grad)`` unpacks; the sample returns a bare array there and
training stops with a TypeError): float masks, a fresh array for every intermediate, the naive
sigmoid. Benchmarks compare the package against it for speed, and the tests for memory held per
training step. Not used by the package.
"""
import numpy as np


class RefLinear:
    def __init__(self, d, h, rng, dtype=np.float64):
        self.W = (rng.standard_normal((d, h)) * np.sqrt(2 / d)).astype(dtype)
        self.b = np.zeros(h, dtype=dtype)

    def forward(self, X):
        self.X = X
        return X @ self.W + self.b

    def backward(self, grad):
        return grad @ self.W.T, self.X.T @ grad, grad.sum(axis=0)

    def update_params_(self, grad_W, grad_b, lr):
        self.W -= lr * grad_W
        self.b -= lr * grad_b


class RefScaledReLU:
    def forward(self, X):
        self.mask = (X > 1).astype(X.dtype) * 2
        return self.mask * X

    def backward(self, grad):
        return (grad * self.mask,)

    def update_params_(self, lr):
        pass


class RefSigmoid:
    def forward(self, X):
        with np.errstate(over='ignore'):
            self.out = 1 / (1 + np.exp(-X))
        return self.out

    def backward(self, grad):
        return (grad * self.out * (1 - self.out),)

    def update_params_(self, lr):
        pass


def ref_grad_log_loss(Y, Y_hat, eps=1e-8):
    return 1 / len(Y) * (Y_hat - Y) / ((Y_hat * (1 - Y_hat)) + eps)


class ReferenceMLP:
    """The brief's architecture and training step on the reference layers."""

    def __init__(self, d, h, c, rng=0, dtype=np.float64):
        rng = np.random.default_rng(rng)
        self.layers = [RefLinear(d, h, rng, dtype), RefScaledReLU(),
                       RefLinear(h, h, rng, dtype), RefScaledReLU(),
                       RefLinear(h, c, rng, dtype), RefSigmoid()]

    def forward(self, X):
        out = X
        for layer in self.layers:
            out = layer.forward(out)
        return out

    def single_step_sgd(self, X, Y, lr=0.1):
        grad = ref_grad_log_loss(Y, self.forward(X))
        for layer in self.layers[::-1]:
            grad, *param_grads = layer.backward(grad)
            layer.update_params_(*param_grads, lr=lr)

    def cached_arrays(self):
        """Every array the layers hold between forward and backward."""
        held = []
        for layer in self.layers:
            for name in ('X', 'mask', 'out'):
                if hasattr(layer, name):
                    held.append(getattr(layer, name))
        return held
