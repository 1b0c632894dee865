"""Benchmark: the package's trainer against a PyTorch training loop, same data, same network.

Both train the brief's MLP (ScaledReLU, hidden 64) on simulated sidewalk features (the default
feature config, d = len(feature names), c = 8) with Adam, lr 1e-3, batch 100, shuffled, the
stable logits loss, for a few epochs; each side's best epoch time over the repetitions gives
samples/s. Not a test.

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--ticks 6000] [--epochs 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--threads', type=int, default=2)
parser.add_argument('--ticks', type=int, default=6000)
parser.add_argument('--epochs', type=int, default=3)
parser.add_argument('--repeats', type=int, default=3)
ARGS = parser.parse_args()
for _var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[_var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from obstacle_classifier.datasets import Dataset  # noqa: E402
from obstacle_classifier.simulation import simulate_dataset  # noqa: E402
from obstacle_classifier.training import TrainConfig, train_model  # noqa: E402


def torch_epoch_seconds(X: np.ndarray, Y: np.ndarray, dtype) -> float:
    """Best epoch time of an idiomatic PyTorch loop for the same network and optimiser."""
    torch.manual_seed(0)
    tdtype = torch.float32 if dtype == 'float32' else torch.float64
    d, c = X.shape[1], Y.shape[1]
    layers = [torch.nn.Linear(d, 64, dtype=tdtype), torch.nn.Linear(64, 64, dtype=tdtype),
              torch.nn.Linear(64, c, dtype=tdtype)]
    params = [p for layer in layers for p in layer.parameters()]
    optimiser = torch.optim.Adam(params, lr=1e-3)
    Xt = torch.from_numpy(X.astype(dtype))
    Yt = torch.from_numpy(Y.astype(dtype))

    def scaled_relu(x):
        return torch.where(x > 1, 2 * x, torch.zeros_like(x))

    best = float('inf')
    generator = torch.Generator().manual_seed(1)
    for _ in range(ARGS.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(Xt), generator=generator)
        for i in range(0, len(Xt), 100):
            rows = order[i:i + 100]
            z = layers[2](scaled_relu(layers[1](scaled_relu(layers[0](Xt[rows])))))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                z, Yt[rows], reduction='sum') / len(rows)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        best = min(best, time.perf_counter() - start)
    return best


def ours_epoch_seconds(data: Dataset, dtype: str) -> float:
    config = TrainConfig(epochs=1, val_fraction=0.0, patience=0, dtype=dtype, seed=0)
    best = float('inf')
    for _ in range(ARGS.epochs):
        start = time.perf_counter()
        train_model(data, config)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    simulated = simulate_dataset(ARGS.ticks, seed=0)
    data = Dataset(X=simulated.X, Y=simulated.Y, feature_names=simulated.feature_names,
                   class_names=simulated.class_names)
    X = (data.X - data.X.mean(0)) / (data.X.std(0) + 1e-6)
    print(f'threads={ARGS.threads} examples={data.n} d={data.d} c={data.c} batch=100 '
          f'optimizer=adam network=MLP(h=64, scaled_relu)')
    print(f'{"dtype":<9}{"ours samples/s":>16}{"torch samples/s":>17}{"ours/torch":>12}')
    for dtype in ('float32', 'float64'):
        ours = min(ours_epoch_seconds(data, dtype) for _ in range(ARGS.repeats))
        theirs = min(torch_epoch_seconds(X, data.Y, dtype) for _ in range(ARGS.repeats))
        print(f'{dtype:<9}{data.n / ours:>16,.0f}{data.n / theirs:>17,.0f}{theirs / ours:>12.2f}')
    print('(ours includes model creation and normalisation per run: a slight handicap)')


if __name__ == '__main__':
    main()
