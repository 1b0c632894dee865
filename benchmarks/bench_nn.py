"""Benchmark of the NumPy core against a straightforward NumPy reference and PyTorch CPU.

Everything is measured side by side in one run (the machine is shared and noisy): each figure
is the best of several repetitions, and what is printed are ratios. Not a test.

    .venv/bin/python benchmarks/bench_nn.py [--threads 2] [--repeats 7]

Measures, for the brief's MLP (Linear, ScaledReLU, Linear, ScaledReLU, Linear, Sigmoid; mean
NLL; SGD lr 0.1) at (d, h, c) = (16, 64, 8) and (64, 1024, 16), batch 100, float32 and float64:
training samples/s of obstacle_classifier.nn.MLP, of benchmarks/reference_mlp.py and of the same
network in PyTorch with the same thread count; and single-example inference latency.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2, help='BLAS / torch threads')
    parser.add_argument('--repeats', type=int, default=7, help='repetitions (best is kept)')
    parser.add_argument('--batches', type=int, default=20, help='batches per repetition')
    return parser.parse_args()


ARGS = (_parse() if __name__ == '__main__'
        else argparse.Namespace(threads=2, repeats=7, batches=20))
# BLAS reads its thread count at load time: set it before NumPy is imported.
for _var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[_var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reference_mlp import ReferenceMLP  # noqa: E402

from obstacle_classifier.nn import MLP  # noqa: E402

SHAPES = [(16, 64, 8), (64, 1024, 16)]
DTYPES = [np.float32, np.float64]
BATCH = 100


def best_time(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def make_data(d: int, c: int, n: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(dtype)
    Y = (rng.random((n, c)) < 0.3).astype(dtype)
    return X, Y


class TorchMLP(torch.nn.Module):
    """The brief's network in PyTorch: the peer the NumPy core is measured against."""

    def __init__(self, d: int, h: int, c: int, dtype) -> None:
        super().__init__()
        self.l1 = torch.nn.Linear(d, h, dtype=dtype)
        self.l2 = torch.nn.Linear(h, h, dtype=dtype)
        self.l3 = torch.nn.Linear(h, c, dtype=dtype)

    @staticmethod
    def scaled_relu(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 1, 2 * x, torch.zeros_like(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scaled_relu(self.l1(x))
        x = self.scaled_relu(self.l2(x))
        return torch.sigmoid(self.l3(x))


def torch_trainer(d, h, c, dtype, X, Y):
    torch_dtype = torch.float32 if dtype == np.float32 else torch.float64
    model = TorchMLP(d, h, c, torch_dtype)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def run():
        for start in range(0, len(Xt), BATCH):
            xb, yb = Xt[start:start + BATCH], Yt[start:start + BATCH]
            optimiser.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy(model(xb), yb, reduction='sum')
            (loss / len(xb)).backward()
            optimiser.step()
    return run, model


def numpy_trainer(model, X, Y):
    def run():
        for start in range(0, len(X), BATCH):
            model.single_step_sgd(X[start:start + BATCH], Y[start:start + BATCH])
    return run


def latency(fn, repeats: int, inner: int = 2000) -> float:
    """Median-free best-of latency of one call, in microseconds."""
    def loop():
        for _ in range(inner):
            fn()
    return best_time(loop, repeats) / inner * 1e6


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    n = ARGS.batches * BATCH
    print(f'threads={ARGS.threads} repeats={ARGS.repeats} batch={BATCH} '
          f'samples/repetition={n} numpy={np.__version__} torch={torch.__version__}')
    print()
    print(f'{"(d, h, c)":<16}{"dtype":<9}{"ours samples/s":>16}{"reference":>12}'
          f'{"torch":>12}{"ours/ref":>10}{"ours/torch":>12}')
    for d, h, c in SHAPES:
        for dtype in DTYPES:
            X, Y = make_data(d, c, n, dtype)
            ours = MLP(d, h, c, dtype=dtype, rng=0)
            ref = ReferenceMLP(d, h, c, rng=0, dtype=dtype)
            torch_run, _ = torch_trainer(d, h, c, dtype, X, Y)
            t_ours = best_time(numpy_trainer(ours, X, Y), ARGS.repeats)
            t_ref = best_time(numpy_trainer(ref, X, Y), ARGS.repeats)
            t_torch = best_time(torch_run, ARGS.repeats)
            print(f'{str((d, h, c)):<16}{np.dtype(dtype).name:<9}{n / t_ours:>16,.0f}'
                  f'{n / t_ref:>12,.0f}{n / t_torch:>12,.0f}{t_ref / t_ours:>10.2f}'
                  f'{t_torch / t_ours:>12.2f}')

    print()
    print('single-example inference, (16, 64, 8) float64, microseconds per call')
    d, h, c = SHAPES[0]
    x = np.random.default_rng(1).standard_normal(d)
    ours = MLP(d, h, c, rng=0)
    ref = ReferenceMLP(d, h, c, rng=0)
    tmodel = TorchMLP(d, h, c, torch.float64).eval()
    xt = torch.from_numpy(x)[None, :]

    def torch_infer():
        with torch.no_grad():
            tmodel(xt)

    t_ours = latency(lambda: ours.predict_proba(x), ARGS.repeats)
    t_ref = latency(lambda: ref.forward(x[None, :]), ARGS.repeats)
    t_torch = latency(torch_infer, ARGS.repeats)
    print(f'ours {t_ours:.1f} us   reference {t_ref:.1f} us   torch {t_torch:.1f} us   '
          f'torch/ours {t_torch / t_ours:.2f}x   ref/ours {t_ref / t_ours:.2f}x')


if __name__ == '__main__':
    main()
