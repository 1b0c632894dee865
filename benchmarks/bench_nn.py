"""Benchmark of the NumPy core against a straightforward NumPy reference and PyTorch CPU (issue 7).

Everything is measured side by side in one run (the machine is shared and noisy): the sides are
interleaved repetition by repetition, each figure is the best (or, for P3, the median) over the
repetitions, and what is judged are ratios. Not a test.

    .venv/bin/python benchmarks/bench_nn.py [--results benchmarks/results.md] [--quick]

P1  (16, 64, 8), batch 100, float32 and float64: training >= 2x reference, >= 6x PyTorch; and
    the ceiling the matrix products alone put on ours/reference.
P2  (64, 1024, 16), batch 100: training >= 80% of the same matrix products timed alone,
    >= 1.3x PyTorch; and what makes float32 differ from float64 in the reference.
P3  single-example inference of the (16, 64, 8) network: median <= 5 us, >= 8x PyTorch; and
    the floor NumPy's fixed cost per call puts under it (as many bare calls as it makes).
P5  bytes held for backward per training step = n (2h + c) values.
Scaling: training samples/s and inference latency against h and batch size, float32, NumPy
vs PyTorch; a table in the results file and a PNG plot next to it.

BLAS threads are chosen per shape (one thread while the products are small, two above;
threadpoolctl switches them before each side's timer starts, never inside it); the NumPy sides
of one comparison get the same count; PyTorch always has the machine's two threads.

OpenBLAS runs the kernel it picks for this CPU: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are dropped
from the environment before NumPy loads (a workplace may pin an older kernel for old OpenBLAS
builds; on this AVX-512 machine that is the AVX2 'Haswell' one, and the products run 1.3-2x
slower). The report names the kernel; --keep-blas-coretype measures with the pinned one.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from typing import Callable, NamedTuple, Optional


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2, help='most BLAS / torch threads')
    parser.add_argument('--results', default=None, help='write a Markdown report here')
    parser.add_argument('--plot', default=None,
                        help='scaling PNG (default: scaling.png next to --results)')
    parser.add_argument('--quick', action='store_true', help='fewer repetitions (a smoke run)')
    parser.add_argument('--keep-blas-coretype', action='store_true',
                        help='keep OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE from the environment '
                             '(default: drop them, so that OpenBLAS runs the CPU\'s own kernel)')
    return parser.parse_args()


ARGS = (_parse() if __name__ == '__main__'
        else argparse.Namespace(threads=2, results=None, plot=None, quick=True,
                                keep_blas_coretype=True))
# BLAS reads its thread count at load time: set the most before NumPy is imported.
for _var in ('OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[_var] = str(ARGS.threads)
# A kernel forced through the environment (some workplaces pin an older one for old OpenBLAS
# builds) is not this hardware's limit: OpenBLAS reads both at load time, so they go first.
FORCED_BLAS_ENV = {} if ARGS.keep_blas_coretype else {
    var: os.environ.pop(var) for var in ('OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE')
    if var in os.environ}

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import ThreadpoolController  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from reference_mlp import ReferenceMLP, ref_grad_log_loss  # noqa: E402

from obstacle_classifier.nn import MLP  # noqa: E402

BATCH = 100
DTYPES = [np.float32, np.float64]
LINES: list[str] = []


def say(text: str = '') -> None:
    """Print and keep for the results file."""
    print(text, flush=True)
    LINES.append(text)


def blas_threads_for(n: int, h: int) -> int:
    """One BLAS thread while a step's largest product is small, the machine's threads above.
    Measured here in float32, one thread against two, interleaved: the same speed up to
    n h^2 = 0.4M (OpenBLAS keeps such products on one thread anyway) and at h = 1024, n = 1;
    two threads 15-24% faster (two runs) at (h, n) = (128, 100), (256, 10) and (512, 10),
    which a bound of 4M gave one."""
    return 1 if n * h * h < 500_000 else ARGS.threads


#: Made once: building a controller scans every loaded library (about a millisecond with torch
#: loaded), which inside a timed region would add ~50 us to each of 20 small steps.
BLAS = ThreadpoolController()


def blas_description() -> str:
    """NumPy's BLAS, the kernel it runs and where that choice came from."""
    info = [lib for lib in BLAS.info() if lib['user_api'] == 'blas']
    if not info:
        return 'none found by threadpoolctl'
    lib = info[0]
    text = (f"{lib['internal_api']} {lib['version']}, kernel {lib.get('architecture') or '?'}")
    if FORCED_BLAS_ENV:
        dropped = ', '.join(f'{var}={value}' for var, value in FORCED_BLAS_ENV.items())
        return f'{text} (the CPU\'s own: {dropped} from the environment dropped for this run)'
    forced = os.environ.get('OPENBLAS_CORETYPE')
    return f'{text} (forced by OPENBLAS_CORETYPE={forced})' if forced else text


def set_blas_threads(threads: int) -> None:
    """Set the thread count of NumPy's BLAS and of PyTorch's intra-op pool alike (kept until
    the next call); done outside every timed region. Both sides get the same count per shape:
    at small shapes torch runs as fast on one thread as on two on an idle machine, and on two
    it loses a third of its speed whenever the other core is busy (this machine is shared)."""
    BLAS.limit(limits=threads, user_api='blas')
    torch.set_num_threads(threads)


#: Pause before each side's timer starts, then wait until this process is idle. Worker threads
#: keep spinning after their last work and take a core from whatever is timed next on a
#: two-core machine: PyTorch's OpenMP workers for some milliseconds (the (64, 1024, 16)
#: products' first step right after a torch epoch took 8.9 ms instead of 4.6 ms), OpenBLAS's
#: for about 0.12 s (its thread timeout). A fixed 50 ms pause left the latter running: torch's
#: (1000, 16) -> (1000, 8) inference at h = 256 right after ours on two BLAS threads took 3 ms
#: instead of 1.5 ms.
SETTLE_S = 0.05
SETTLE_SLICE_S = 0.01
SETTLE_IDLE_SHARE = 0.1  # idle: under 10% of one core (all threads) over a slice
SETTLE_MAX_S = 1.0
SETTLE_WAITS: list[float] = []  # every wait, for the report


def settle() -> float:
    """Sleep SETTLE_S, then slice by slice until the process (all its threads) is idle, at
    most SETTLE_MAX_S in all; returns the seconds waited (also kept in SETTLE_WAITS)."""
    start = time.perf_counter()
    time.sleep(SETTLE_S)
    while time.perf_counter() - start < SETTLE_MAX_S:
        cpu = time.process_time()
        time.sleep(SETTLE_SLICE_S)
        if time.process_time() - cpu < SETTLE_IDLE_SHARE * SETTLE_SLICE_S:
            break
    waited = time.perf_counter() - start
    SETTLE_WAITS.append(waited)
    return waited


class Side(NamedTuple):
    """One side of :func:`interleaved_best`: ``run`` is timed, with ``threads`` BLAS threads
    (None: as they are); ``warm`` (None: ``run`` itself), a step or call of the same work,
    runs untimed right before the timer starts."""
    run: Callable[[], object]
    threads: Optional[int] = None
    warm: Optional[Callable[[], object]] = None


def interleaved_best(sides: dict, repeats: int) -> dict:
    """Best wall time of each side (a :class:`Side` or a bare callable), the sides taking
    turns after one full run each. Before each timer the process settles until idle
    (:func:`settle`: no side inherits another's spinning worker threads), then the side's
    warm-up wakes its own: the first call after an idle gap pays for waking BLAS or OpenMP
    workers (torch's first (1000, 16) forward at h = 128 took up to 11 ms, the third 0.4-0.6
    ms), which would swamp timers of a few steps. So each figure is the side's steady
    state, as in a training loop or a node's stream of calls."""
    sides = {name: side if isinstance(side, Side) else Side(side)
             for name, side in sides.items()}
    for side in sides.values():
        if side.threads is not None:
            set_blas_threads(side.threads)
        side.run()
    best = {name: float('inf') for name in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            if side.threads is not None:
                set_blas_threads(side.threads)
            settle()
            (side.warm or side.run)()
            start = time.perf_counter()
            side.run()
            best[name] = min(best[name], time.perf_counter() - start)
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


def _torch_dtype(dtype):
    return torch.float32 if dtype == np.float32 else torch.float64


def torch_trainer(d, h, c, dtype, X, Y, threads: int, batch=BATCH):
    model = TorchMLP(d, h, c, _torch_dtype(dtype))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy(model(xb), yb, reduction='sum')
        (loss / len(xb)).backward()
        optimiser.step()

    def run():
        for start in range(0, len(Xt), batch):
            step(Xt[start:start + batch], Yt[start:start + batch])
    return Side(run, threads, warm=lambda: step(Xt[:batch], Yt[:batch]))


def numpy_trainer(model, X, Y, threads: int, batch=BATCH):
    """One epoch of SGD steps with ``threads`` BLAS threads, a :class:`Side`."""
    def run():
        for start in range(0, len(X), batch):
            model.single_step_sgd(X[start:start + batch], Y[start:start + batch])
    return Side(run, threads, warm=lambda: model.single_step_sgd(X[:batch], Y[:batch]))


def gemms_alone(model, X, Y, threads: int):
    """The matrix products of one of our SGD steps, exactly as the step calls them: the
    (A, B, out) of every 2-D ``np.dot`` of a real ``model.single_step_sgd`` on the first batch
    of (X, Y) are recorded, and the products are replayed on those operands: forward X W1,
    A1 W2, A2 W3; backward A2^T G3, G3 W3^T, A1^T G2, G2 W2^T, X^T G1 (the data's own
    gradient G1 W1^T is not computed by the step, so not here either; nor are the bias
    gradients, ones @ G, which are sums, not matrix products). Same shapes, same strides (the
    transposed views stay transposed views of the same operand), and the values the step
    multiplied (ReLU outputs mostly zeros, small gradients), snapshotted at the call. An array
    the step reads twice is one array here; each output goes to its own buffer of the step's
    layout, so that replaying does not overwrite the inputs' values. ``model`` is used up (one
    warm-up step builds its workspace, one step is recorded)."""
    xb, yb = X[:BATCH], Y[:BATCH]
    model.single_step_sgd(xb, yb)  # builds the workspace; the next step is the recorded one
    snapshots: dict = {}

    def same_layout(a: np.ndarray, copy: bool) -> np.ndarray:
        base = a if a.flags.c_contiguous else a.T  # A^T is a view of a C-ordered A
        key = (base.__array_interface__['data'][0], base.shape, copy)
        if key not in snapshots:
            snapshots[key] = base.copy() if copy else np.empty_like(base)
        twin = snapshots[key] if base is a else snapshots[key].T
        assert twin.shape == a.shape and twin.strides == a.strides, (a.shape, a.strides)
        return twin
    products = []
    dot = np.dot

    def recording(a, b, out=None):
        if a.ndim == 2 and b.ndim == 2:
            assert out is not None, 'the step writes every product into a buffer'
            products.append((same_layout(a, True), same_layout(b, True),
                             same_layout(out, False)))
        return dot(a, b, out)
    np.dot = recording  # the step looks np.dot up on every call
    try:
        model.single_step_sgd(xb, yb)
    finally:
        np.dot = dot
    assert len(products) == 8, f'recorded {len(products)} products, expected 8'

    def step():
        for a, b, out in products:
            dot(a, b, out)

    def run(steps):
        def loop():
            for _ in range(steps):
                step()
        return Side(loop, threads, warm=step)
    return run


def verdict(ok: bool) -> str:
    return 'PASS' if ok else 'FAIL'


# ---- P1 and P2 ------------------------------------------------------------------------------
def training_targets(repeats: int) -> dict:
    say('## P1 / P2: training, batch 100 (best of interleaved repetitions)')
    say()
    say('| (d, h, c) | dtype | threads | ours samples/s | reference | torch | '
        'products alone | ours/ref | ours/torch | ours/products |')
    say('|---|---|---|---|---|---|---|---|---|---|')
    results = {}
    for (d, h, c), batches in (((16, 64, 8), 100), ((64, 1024, 16), 3)):
        for dtype in DTYPES:
            n = batches * BATCH
            X, Y = make_data(d, c, n, dtype)
            threads = blas_threads_for(BATCH, h)
            ours = MLP(d, h, c, dtype=dtype, rng=0)
            ref = ReferenceMLP(d, h, c, rng=0, dtype=dtype)
            products = gemms_alone(MLP(d, h, c, dtype=dtype, rng=0), X, Y,
                                   threads)(batches)
            best = interleaved_best({
                'ours': numpy_trainer(ours, X, Y, threads),
                'ref': numpy_trainer(ref, X, Y, threads),
                'torch': torch_trainer(d, h, c, dtype, X, Y, threads),
                'products': products,
            }, repeats)
            rate = {k: n / v for k, v in best.items()}
            results[(h, np.dtype(dtype).name)] = rate
            say(f'| {(d, h, c)} | {np.dtype(dtype).name} | {threads} | {rate["ours"]:,.0f} | '
                f'{rate["ref"]:,.0f} | {rate["torch"]:,.0f} | {rate["products"]:,.0f} | '
                f'{rate["ours"] / rate["ref"]:.2f} | {rate["ours"] / rate["torch"]:.2f} | '
                f'{rate["ours"] / rate["products"]:.0%} |')
    say()
    for dtype in ('float32', 'float64'):
        r = results[(64, dtype)]
        ok = r['ours'] >= 2 * r['ref'] and r['ours'] >= 6 * r['torch']
        say(f'- P1 {dtype}: ours/ref {r["ours"] / r["ref"]:.2f} (>= 2), ours/torch '
            f'{r["ours"] / r["torch"]:.2f} (>= 6): {verdict(ok)}')
        say(f'  - the eight matrix products alone run at {r["products"] / r["ref"]:.2f}x the '
            f'reference\'s rate: the most ours/ref could reach with every other NumPy call '
            f'free; ours runs at {r["ours"] / r["products"]:.0%} of the products\' rate.')
    for dtype in ('float32', 'float64'):
        r = results[(1024, dtype)]
        ok = r['ours'] >= 0.8 * r['products'] and r['ours'] >= 1.3 * r['torch']
        say(f'- P2 {dtype}: ours/products alone {r["ours"] / r["products"]:.0%} (>= 80%), '
            f'ours/torch {r["ours"] / r["torch"]:.2f} (>= 1.3): {verdict(ok)}')
    say()
    return results


# ---- why float32 is slower than float64 in the reference ---------------------------------
def _subnormal_count(a: np.ndarray) -> int:
    return int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)))


def float32_investigation(training: dict) -> None:
    """Promotion, subnormals or threading: what makes float32 differ from float64 in the
    reference at (64, 1024, 16). ``training``: the P1/P2 rates, for the comparison."""
    say('## float32 against float64 in the reference at (64, 1024, 16): promotion, subnormals, '
        'threading?')
    say()
    d, h, c, n, steps = 64, 1024, 16, BATCH, 40
    say(f'Subnormal entries in the backward gradients over {steps} steps (batch {n}); '
        'dtypes of every intermediate:')
    say()
    say('| dtype | dL/dlogits | dL/dA2 (n, h) | dL/dA1 (n, h) | intermediate dtypes |')
    say('|---|---|---|---|---|')
    counts, intermediates, slowdown = {}, {}, {}
    for dtype in DTYPES:
        X, Y = make_data(d, c, steps * n, dtype)
        ref = ReferenceMLP(d, h, c, rng=0, dtype=dtype)
        totals = np.zeros(3, int)
        seen_dtypes = set()
        with BLAS.limit(limits=ARGS.threads, user_api='blas'):
            for start in range(0, len(X), n):
                out = X[start:start + n]
                for layer in ref.layers:
                    out = layer.forward(out)
                    seen_dtypes.add(out.dtype.name)
                grad = ref_grad_log_loss(Y[start:start + n], out)
                seen_dtypes.add(grad.dtype.name)
                grads_in = []
                for layer in ref.layers[::-1]:
                    grad, *param_grads = layer.backward(grad)
                    seen_dtypes.add(grad.dtype.name)
                    grads_in.append(grad)
                    layer.update_params_(*param_grads, lr=0.1)
                # after Sigmoid, after Linear3 + ScaledReLU, after Linear2 + ScaledReLU
                totals += [_subnormal_count(grads_in[0]), _subnormal_count(grads_in[2]),
                           _subnormal_count(grads_in[4])]
        counts[np.dtype(dtype).name] = totals
        intermediates[np.dtype(dtype).name] = seen_dtypes
        say(f'| {np.dtype(dtype).name} | {totals[0]:,} | {totals[1]:,} | {totals[2]:,} | '
            f'{", ".join(sorted(seen_dtypes))} |')
    say()
    say('One (h, h) product of a backward step, A1^T G (1024 x 100 x 1024), with G normal vs '
        'with a fraction of its entries subnormal (the fraction the float32 reference reaches):')
    say()
    rng = np.random.default_rng(0)
    fraction = max(counts['float32'][1] / (steps * n * h), 0.01)
    for dtype in DTYPES:
        A = rng.standard_normal((n, h)).astype(dtype)
        G = rng.standard_normal((n, h)).astype(dtype)
        G_sub = G.copy()
        pick = rng.random(G.shape) < fraction
        G_sub[pick] = np.finfo(dtype).tiny / 8
        out = np.empty((h, h), dtype)
        for threads in (1, ARGS.threads):
            with BLAS.limit(limits=threads, user_api='blas'):
                best = interleaved_best({
                    'normal': lambda: np.matmul(A.T, G, out=out),
                    'subnormal': lambda: np.matmul(A.T, G_sub, out=out),
                }, 5)
            factor = best['subnormal'] / best['normal']
            name = np.dtype(dtype).name
            slowdown[name] = max(slowdown.get(name, 0.0), factor)
            say(f'- {np.dtype(dtype).name}, {threads} BLAS thread(s), {fraction:.1%} '
                f'subnormal: normal {best["normal"] * 1e3:.2f} ms, with subnormals '
                f'{best["subnormal"] * 1e3:.2f} ms ({factor:.1f}x)')
    say()
    X, Y = make_data(d, c, 3 * n, np.float32)
    sides = {}
    for threads in (1, ARGS.threads):
        sides[f'{threads}'] = numpy_trainer(ReferenceMLP(d, h, c, rng=0, dtype=np.float32), X,
                                            Y, threads)
    best = interleaved_best(sides, 3)
    say('- BLAS threading, float32 reference (fresh network, 3 steps, few subnormals yet): '
        + ', '.join(f'{k} thread(s) {3 * n / v:,.0f} samples/s' for k, v in best.items()))
    say()
    ref32, ref64 = training[(h, 'float32')]['ref'], training[(h, 'float64')]['ref']
    say(f'Finding, from this run\'s figures: the float32 reference trained '
        f'{"slower" if ref32 < ref64 else "faster"} than float64 ({ref32:,.0f} against '
        f'{ref64:,.0f} samples/s in the P1 / P2 table).')
    say()
    if intermediates['float32'] == {'float32'}:
        say('- Promotion: none; every intermediate of the float32 reference is float32.')
    else:
        say('- Promotion: the float32 reference computes in '
            f'{", ".join(sorted(intermediates["float32"]))}.')
    say(f'- Subnormals: saturated outputs make dL/dlogits as small as P^2 / (eps n), and the '
        f'product with W3^T pushes such values below float32\'s smallest normal number: '
        f'{counts["float32"][1]:,} subnormal entries of dL/dA2 in float32 against '
        f'{counts["float64"][1]:,} in float64, whose range goes much further down. Whether '
        f'they cost time depends on the CPU: here subnormal operands changed the (h, h) '
        f'product\'s time by a factor of at most {slowdown["float32"]:.1f} in float32 '
        f'({slowdown["float64"]:.1f} in float64); on CPUs that take a microcode assist per '
        f'subnormal operand the factor is large. Ours flushes subnormal input gradients to '
        f'zero before they reach a product (what a CPU in flush-to-zero mode does; each value '
        f'changes by less than float32\'s smallest normal number), so its products never see '
        f'them on any CPU.')
    threads_best = min(best, key=best.get)
    say(f'- Threading: the float32 reference was fastest with {threads_best} BLAS thread(s) '
        f'at this shape; ours and the products alone use {blas_threads_for(BATCH, h)} here.')
    say()


# ---- P3 -------------------------------------------------------------------------------------
def inference_target(repeats: int) -> None:
    say('## P3: single-example inference, (16, 64, 8) (median over blocks of calls)')
    say()
    d, h, c = 16, 64, 8
    blocks, inner = (15, 100) if ARGS.quick else (41, 200)
    say('| dtype | ours predict_proba us | ours predict_proba_into us | reference us | '
        'torch us | torch/predict_proba | torch/predict_proba_into |')
    say('|---|---|---|---|---|---|---|')
    verdicts = []
    for dtype in DTYPES:
        x = np.random.default_rng(1).standard_normal(d).astype(dtype)
        ours = MLP(d, h, c, dtype=dtype, rng=0)
        ref = ReferenceMLP(d, h, c, rng=0, dtype=dtype)
        tmodel = TorchMLP(d, h, c, _torch_dtype(dtype)).eval()
        xt = torch.from_numpy(x)[None, :]
        out = np.empty(c, dtype)

        def torch_infer():
            tmodel(xt)  # under no_grad for the whole measurement: not entered per call

        sides = {'proba': lambda: ours.predict_proba(x),
                 'into': lambda: ours.predict_proba_into(x, out),
                 'ref': lambda: ref.forward(x[None, :]),
                 'torch': torch_infer}
        samples = {k: [] for k in sides}
        set_blas_threads(1)  # both sides: one example is far below any threading gain
        with torch.no_grad():
            for fn in sides.values():
                fn()
            for _ in range(blocks):
                for name, fn in sides.items():
                    start = time.perf_counter()
                    for _ in range(inner):
                        fn()
                    samples[name].append((time.perf_counter() - start) / inner * 1e6)
        med = {k: statistics.median(v) for k, v in samples.items()}
        say(f'| {np.dtype(dtype).name} | {med["proba"]:.2f} | {med["into"]:.2f} | '
            f'{med["ref"]:.2f} | {med["torch"]:.2f} | {med["torch"] / med["proba"]:.1f} | '
            f'{med["torch"] / med["into"]:.1f} |')
        verdicts.append((np.dtype(dtype).name, med))
    say()
    for name, med in verdicts:
        fast = min(med['proba'], med['into'])
        ok = fast <= 5.0 and med['torch'] / fast >= 8
        say(f'- P3 {name}: median {fast:.2f} us (<= 5), torch/ours {med["torch"] / fast:.1f} '
            f'(>= 8): {verdict(ok)}')
    say()
    numpy_call_floor(d, h, c, blocks, inner,
                     {name: min(med['proba'], med['into']) for name, med in verdicts})


def count_numpy_calls(fn) -> int:
    """NumPy ufunc and np.dot calls made by one call of ``fn`` (counted by wrapping them on
    the numpy module for the duration; the fast path looks them up there on every call)."""
    names = [name for name in dir(np) if isinstance(getattr(np, name), np.ufunc)] + ['dot']
    saved = {name: getattr(np, name) for name in names}
    count = 0

    def counting(original):
        def wrapper(*args, **kwargs):
            nonlocal count
            count += 1
            return original(*args, **kwargs)
        return wrapper
    try:
        for name, original in saved.items():
            setattr(np, name, counting(original))
        fn()
    finally:
        for name, original in saved.items():
            setattr(np, name, original)
    return count


def numpy_call_floor(d: int, h: int, c: int, blocks: int, inner: int, fast: dict) -> None:
    """What NumPy's per-call overhead alone costs the single-example path on this machine.
    ``fast``: the P3 median of the fast path per dtype name, for comparison."""
    say('The floor: every NumPy call has a fixed cost, whatever its size. A bare '
        f'`np.add(a, b, out=o)` on {h}-element rows, timed in a sequence of as many calls as '
        'the fast path makes (median over blocks):')
    say()
    for dtype in DTYPES:
        model = MLP(d, h, c, dtype=dtype, rng=0)
        x = np.random.default_rng(1).standard_normal(d).astype(dtype)
        out = np.empty(c, dtype)
        model.predict_proba_into(x, out)
        calls = count_numpy_calls(lambda: model.predict_proba_into(x, out))
        a, b, o = (np.ones(h, dtype) for _ in range(3))
        add = np.add

        def bare():
            for _ in range(calls):
                add(a, b, out=o)
        samples = []
        bare()
        for _ in range(blocks):
            start = time.perf_counter()
            for _ in range(inner):
                bare()
            samples.append((time.perf_counter() - start) / inner * 1e6)
        floor = statistics.median(samples)
        name = np.dtype(dtype).name
        say(f'- {name}: the fast path makes {calls} NumPy calls; {calls} bare calls take '
            f'{floor:.2f} us ({floor / calls * 1e3:.0f} ns each), before any Python work '
            f'between them; the fast path itself took {fast[name]:.2f} us above.')
    say()


# ---- P5 -------------------------------------------------------------------------------------
def memory_target() -> None:
    say('## P5: bytes held for backward per training step')
    say()
    say('Both ways a step runs: the layer loop (what the layers cache in forward) and the '
        'fused step that P1 and P2 time (the buffers its forward leaves for backward; checked '
        'by overwriting every other buffer of the step between the two passes, after which the '
        'step must still equal the layer loop\'s bit for bit).')
    say()
    for dtype in DTYPES:
        n, d, h, c = BATCH, 16, 64, 8
        X, Y = make_data(d, c, 2 * n, dtype)
        layers = MLP(d, h, c, dtype=dtype, rng=0)
        layers.forward(X[:n])
        layers_held = layers.cached_nbytes(exclude=(X,))
        fused, layerwise = MLP(d, h, c, dtype=dtype, rng=0), MLP(d, h, c, dtype=dtype, rng=0)
        fused.single_step_sgd(X[:n], Y[:n])
        layerwise._layerwise_sgd_step(X[:n], Y[:n])
        (workspace,) = fused.__dict__['_workspaces'].values()

        def overwrite_the_rest(arrays=workspace.scratch()):
            for array in arrays:
                array.view(np.uint8)[...] = 0xFF
        workspace.between_passes = overwrite_the_rest
        fused.single_step_sgd(X[n:], Y[n:])
        layerwise._layerwise_sgd_step(X[n:], Y[n:])
        workspace.between_passes = None
        exact = all(np.array_equal(a, b)
                    for a, b in zip(fused.parameters(), layerwise.parameters()))
        fused_held = workspace.held_nbytes()
        floor = n * (2 * h + c) * np.dtype(dtype).itemsize
        say(f'- P5 {np.dtype(dtype).name}: layer loop {layers_held:,} bytes, fused step '
            f'{fused_held:,} bytes (the rest overwritten between the passes: step '
            f'{"unchanged" if exact else "CHANGED"}), floor n(2h+c) = {floor:,} bytes: '
            f'{verdict(exact and layers_held == floor and fused_held == floor)}')
    say()


# ---- scaling --------------------------------------------------------------------------------
HIDDEN = [64, 128, 256, 512, 1024, 2048]
BATCHES = [1, 10, 100, 1000]


def scaling() -> list[dict]:
    say('## Scaling: float32, (d, c) = (16, 8), h and batch size varied')
    say()
    say('Training: samples/s of SGD steps at that batch size. Inference: microseconds per '
        'call of predict_proba (ours; batch 1 is a (d,) vector) and of the no-grad forward '
        '(torch). Best of interleaved repetitions.')
    say()
    say('| h | batch | threads | train ours | train torch | ours/torch | infer ours us | '
        'infer torch us | torch/ours |')
    say('|---|---|---|---|---|---|---|---|---|')
    d, c = 16, 8
    rows = []
    for h in HIDDEN:
        for batch in BATCHES:
            flops = 6 * batch * (d * h + h * h + h * c)
            steps = int(min(50, max(1, 3e8 / flops)))
            if batch == 1:
                steps = min(steps, 20)
            repeats = 2 if ARGS.quick or flops * steps > 2e9 else 3
            n = steps * batch
            X, Y = make_data(d, c, n, np.float32)
            threads = blas_threads_for(batch, h)
            ours = MLP(d, h, c, dtype=np.float32, rng=0)
            best = interleaved_best({
                'ours': numpy_trainer(ours, X, Y, threads, batch=batch),
                'torch': torch_trainer(d, h, c, np.float32, X, Y, threads, batch=batch),
            }, repeats)
            x = X[0] if batch == 1 else X[:batch]
            tmodel = TorchMLP(d, h, c, torch.float32).eval()
            xt = torch.from_numpy(X[:batch])
            calls = int(min(200, max(2, 1e8 / (flops / 3))))

            def ours_infer(times: int) -> None:
                for _ in range(times):
                    ours.predict_proba(x)

            def torch_infer(times: int) -> None:
                with torch.no_grad():
                    for _ in range(times):
                        tmodel(xt)
            infer = interleaved_best({
                'ours': Side(partial(ours_infer, calls), threads, warm=partial(ours_infer, 1)),
                'torch': Side(partial(torch_infer, calls), threads,
                              warm=partial(torch_infer, 1))},
                repeats)
            row = {'h': h, 'batch': batch, 'threads': threads,
                   'train_ours': n / best['ours'], 'train_torch': n / best['torch'],
                   'infer_ours': infer['ours'] / calls * 1e6,
                   'infer_torch': infer['torch'] / calls * 1e6}
            rows.append(row)
            say(f'| {h} | {batch} | {threads} | {row["train_ours"]:,.0f} | '
                f'{row["train_torch"]:,.0f} | {row["train_ours"] / row["train_torch"]:.2f} | '
                f'{row["infer_ours"]:,.1f} | {row["infer_torch"]:,.1f} | '
                f'{row["infer_torch"] / row["infer_ours"]:.2f} |')
    say()
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (train_ax, infer_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for index, batch in enumerate(BATCHES):
        colour = f'C{index}'
        sel = [r for r in rows if r['batch'] == batch]
        hs = [r['h'] for r in sel]
        train_ax.plot(hs, [r['train_ours'] for r in sel], '-o', color=colour,
                      label=f'NumPy, batch {batch}')
        train_ax.plot(hs, [r['train_torch'] for r in sel], '--x', color=colour,
                      label=f'PyTorch, batch {batch}')
        infer_ax.plot(hs, [r['infer_ours'] for r in sel], '-o', color=colour,
                      label=f'NumPy, batch {batch}')
        infer_ax.plot(hs, [r['infer_torch'] for r in sel], '--x', color=colour,
                      label=f'PyTorch, batch {batch}')
    for ax, title, unit in ((train_ax, 'training throughput', 'samples/s'),
                            (infer_ax, 'inference latency per call', 'microseconds')):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('hidden width h')
        ax.set_ylabel(unit)
        ax.set_title(f'{title}, float32, (d, c) = (16, 8)')
        ax.grid(True, which='both', alpha=0.3)
    infer_ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    started = time.perf_counter()
    repeats = 3 if ARGS.quick else 7
    say('# NumPy core benchmarks (issue 7)')
    say()
    say(f'numpy {np.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs; threads '
        f'per shape as listed (at most {ARGS.threads}), the same for NumPy\'s BLAS and for '
        f'torch; load average at start '
        f'{os.getloadavg()[0]:.2f} (the machine is shared: figures are ratios measured side by '
        'side).')
    say()
    say(f'BLAS: {blas_description()}.')
    say()
    training = training_targets(repeats)
    float32_investigation(training)
    inference_target(repeats)
    memory_target()
    rows = scaling()
    if SETTLE_WAITS:
        say(f'Each side\'s timer started once this process had been idle for '
            f'{SETTLE_SLICE_S * 1e3:.0f} ms (no spinning worker threads left): waits of '
            f'{min(SETTLE_WAITS) * 1e3:.0f}-{max(SETTLE_WAITS) * 1e3:.0f} ms, median '
            f'{statistics.median(SETTLE_WAITS) * 1e3:.0f} ms, over {len(SETTLE_WAITS)} timings.')
        say()
    say(f'Total benchmark time {time.perf_counter() - started:.0f} s; load average at end '
        f'{os.getloadavg()[0]:.2f}.')
    if ARGS.results:
        with open(ARGS.results, 'w', encoding='utf-8') as handle:
            handle.write('\n'.join(LINES) + '\n')
        path = ARGS.plot or os.path.join(os.path.dirname(ARGS.results) or '.', 'scaling.png')
        plot(rows, path)
        print(f'wrote {ARGS.results} and {path}')


if __name__ == '__main__':
    main()
