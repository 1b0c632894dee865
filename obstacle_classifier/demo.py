"""``make demo``: train the brief's MLP on a small built-in multi-label problem and report.

The built-in problem: 16 sensor-like inputs, 8 classes, each class present when a noisy linear
combination of a few inputs crosses a threshold, so several classes co-occur. The brief's MLP
(16, 64, 8) is trained with the brief's own ``sgd`` (10 epochs, batch 100, lr 0.1) on 4,000
examples and scored on 1,000 held-out ones.
"""
from __future__ import annotations

import time

import numpy as np

from .nn import MLP, flops_report, log_loss

CLASS_NAMES = ('pedestrian', 'bicycle', 'trash_can', 'pole', 'dog', 'scooter', 'barrier',
               'curb')


def builtin_dataset(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (n, 16) standardised inputs, Y (n, 8) multi-hot labels (float64)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(1234).standard_normal((16, 8))
    X = rng.standard_normal((n, 16))
    scores = np.tanh(X @ mixing) + 0.1 * rng.standard_normal((n, 8))
    return X, (scores > 0.6).astype(np.float64)


def f1_per_class(Y: np.ndarray, Y_pred: np.ndarray) -> np.ndarray:
    """(c,) F1 of each class for {0,1} arrays (n, c); 0 where undefined."""
    tp = (Y * Y_pred).sum(axis=0)
    denom = Y.sum(axis=0) + Y_pred.sum(axis=0)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def main() -> None:
    X_train, Y_train = builtin_dataset(4000, seed=0)
    X_test, Y_test = builtin_dataset(1000, seed=1)
    model = MLP(16, 64, 8, rng=0)
    print('Training the brief\'s MLP (16 -> 64 -> 64 -> 8) with its own sgd: 10 epochs, '
          'batch 100, lr 0.1')
    before = log_loss(Y_test, model.predict_proba(X_test))
    start = time.perf_counter()
    model.sgd(X_train, Y_train)
    seconds = time.perf_counter() - start
    probabilities = model.predict_proba(X_test)
    after = log_loss(Y_test, probabilities)
    f1 = f1_per_class(Y_test, (probabilities >= 0.5).astype(np.float64))
    print(f'held-out log loss {before:.3f} -> {after:.3f} '
          f'({len(X_train) * 10 / seconds:,.0f} training samples/s)')
    print('held-out F1 per class:')
    for name, value, support in zip(CLASS_NAMES, f1, Y_test.sum(axis=0)):
        print(f'  {name:<11} {value:5.3f}  (support {int(support)})')
    print(f'  macro F1     {f1.mean():5.3f}')
    print()
    print(flops_report(model, 10_000))


if __name__ == '__main__':
    main()
