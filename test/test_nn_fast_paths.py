"""The fast paths (fused SGD step, preallocated single-example inference, branch-free select,
subnormal flushing) against the general layer-by-layer path: bit for bit, in float32 and
float64, and safe to keep their outputs."""
import copy
import pickle
import re
import sys
import threading
import warnings

import numpy as np
import pytest

from obstacle_classifier.nn import (MLP, Layer, LinearClassifier, Linear, ReLU, ScaledReLU,
                                    Sigmoid)
from obstacle_classifier.nn.functional import (FLUSH_MIN_ELEMENTS, batch_sum, flush_subnormals_,
                                               select, underflow_ignored)

DTYPES = [np.float32, np.float64]


def _data(n, d, c, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * 2).astype(dtype)
    Y = (rng.random((n, c)) < 0.3).astype(dtype)
    return X, Y


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('activation', ['scaled_relu', 'relu'])
@pytest.mark.parametrize('shape', [(5, 7, 3), (16, 64, 8), (8, 200, 4)])
def test_fused_step_equals_the_layer_loop_bit_for_bit(dtype, activation, shape):
    d, h, c = shape
    X, Y = _data(230, d, c, dtype)
    fused = MLP(d, h, c, dtype=dtype, activation=activation, rng=1)
    layerwise = MLP(d, h, c, dtype=dtype, activation=activation, rng=1)
    for lr in (0.1, 0.5):  # lr 0.5 drives outputs into saturation: tiny gradients too
        for start in range(0, len(X), 100):  # the last batch is shorter: a second workspace
            fused.single_step_sgd(X[start:start + 100], Y[start:start + 100], lr=lr)
            layerwise._layerwise_sgd_step(X[start:start + 100], Y[start:start + 100], lr=lr)
    for ours, general in zip(fused.parameters(), layerwise.parameters()):
        assert ours.dtype == dtype
        assert np.array_equal(ours, general)
    assert fused.cached_nbytes() == 0


def poison(arrays) -> None:
    """Overwrite every byte: NaN-like bits in a float array, garbage in the others."""
    for array in arrays:
        array.view(np.uint8)[...] = 0xFF


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape', [(16, 64, 8), (8, 300, 4)])  # 300: subnormal flushing too
def test_fused_step_keeps_only_the_checkpointing_floor_for_backward(dtype, shape):
    # What forward leaves for backward is n (2h + c) values: every other buffer of the step is
    # overwritten between the passes, and the step is still bit for bit the layer loop's.
    d, h, c = shape
    n = 100
    X, Y = _data(2 * n, d, c, dtype)
    fused, layerwise = MLP(d, h, c, dtype=dtype, rng=1), MLP(d, h, c, dtype=dtype, rng=1)
    fused.single_step_sgd(X[:n], Y[:n], lr=0.5)  # makes the workspace
    layerwise._layerwise_sgd_step(X[:n], Y[:n], lr=0.5)
    (work,) = fused.__dict__['_workspaces'].values()
    work.between_passes = lambda: poison(work.scratch())
    fused.single_step_sgd(X[n:], Y[n:], lr=0.5)
    layerwise._layerwise_sgd_step(X[n:], Y[n:], lr=0.5)
    for ours, general in zip(fused.parameters(), layerwise.parameters()):
        assert np.array_equal(ours, general)
    assert work.held_nbytes() == n * (2 * h + c) * np.dtype(dtype).itemsize
    # And what the test poisons is real: poisoning a held array changes the step.
    work.between_passes = lambda: poison([work.outputs[0]])
    fused.single_step_sgd(X[n:], Y[n:], lr=0.5)
    assert not all(np.isfinite(p).all() for p in fused.parameters())


@pytest.mark.parametrize('dtype', DTYPES)
def test_fused_step_with_separate_parameter_arrays_equals_the_layer_loop(dtype):
    """A copy (or a network whose arrays were replaced) is not packed: the step then updates
    layer by layer, bit for bit the same."""
    X, Y = _data(230, 16, 8, dtype)
    original = MLP(16, 64, 8, dtype=dtype, rng=12)
    assert original._packed_parameters(original.linears) is not None
    fused, layerwise = copy.deepcopy(original), pickle.loads(pickle.dumps(original))
    assert fused._packed_parameters(fused.linears) is None
    for start in range(0, len(X), 100):
        fused.single_step_sgd(X[start:start + 100], Y[start:start + 100], lr=0.5)
        original.single_step_sgd(X[start:start + 100], Y[start:start + 100], lr=0.5)
        layerwise._layerwise_sgd_step(X[start:start + 100], Y[start:start + 100], lr=0.5)
    for a, b, c in zip(fused.parameters(), original.parameters(), layerwise.parameters()):
        assert np.array_equal(a, c) and np.array_equal(b, c)


def test_packed_parameters_stay_the_arrays_everyone_holds():
    model = MLP(5, 7, 3, rng=13)
    held = model.parameters()
    flat, views = model.__dict__['_packed']
    assert all(p is v and np.shares_memory(p, flat) for p, v in zip(held, views))
    assert all(p.flags.c_contiguous and p.dtype == np.float64 for p in held)
    assert [p.shape for p in held] == [(5, 7), (7,), (7, 7), (7,), (7, 3), (3,)]
    fresh = MLP(5, 7, 3, rng=13)  # the same values as an unpacked construction would hold
    fresh.__dict__.pop('_packed')
    before = [p.copy() for p in held]
    X, Y = _data(20, 5, 3, np.float64)
    model.single_step_sgd(X, Y)
    assert all(p is q for p, q in zip(held, model.parameters()))  # updated in place
    assert not any(np.array_equal(p, q) for p, q in zip(before[0::2], held[0::2]))
    model.layers[0].W = model.layers[0].W.copy()  # replaced: the step goes layer by layer
    assert model._packed_parameters(model.linears) is None
    model.single_step_sgd(X, Y)
    fresh.single_step_sgd(X, Y)
    fresh.single_step_sgd(X, Y)
    assert all(np.array_equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))


def test_fused_step_matches_the_layer_loop_with_float64_inputs_to_a_float32_model():
    X, Y = _data(100, 6, 3, np.float64)
    fused, layerwise = MLP(6, 9, 3, dtype=np.float32, rng=2), MLP(6, 9, 3, dtype=np.float32, rng=2)
    fused.single_step_sgd(X, Y)
    layerwise._layerwise_sgd_step(X, Y)
    assert all(np.array_equal(a, b) for a, b in zip(fused.parameters(), layerwise.parameters()))


def test_fused_step_flushes_like_the_layers_in_a_wide_float32_network():
    """Wide enough for the (n, h) flush, pushed into saturation so subnormals really occur."""
    d, h, c = 32, 256, 16
    X, Y = _data(100, d, c, np.float32, seed=3)
    X *= 4
    fused, layerwise = (MLP(d, h, c, dtype=np.float32, rng=3) for _ in range(2))
    assert 100 * h >= FLUSH_MIN_ELEMENTS
    for _ in range(6):
        fused.single_step_sgd(X, Y, lr=0.5)
        layerwise._layerwise_sgd_step(X, Y, lr=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(fused.parameters(), layerwise.parameters()))


def test_linear_classifier_and_other_chains_take_a_correct_path():
    X, Y = _data(50, 4, 2, np.float64)
    fused, layerwise = LinearClassifier(4, 2, rng=0), LinearClassifier(4, 2, rng=0)
    fused.single_step_sgd(X, Y)
    layerwise._layerwise_sgd_step(X, Y)
    assert all(np.array_equal(a, b) for a, b in zip(fused.parameters(), layerwise.parameters()))
    odd = MLP(4, 5, 2, rng=0)
    odd.layers[1] = ReLU(5)  # a swapped layer is fine: the chain is checked on every call
    odd.single_step_sgd(X, Y)
    # a Linear without bias is not the supported chain: the layer loop runs it
    odd.layers = [Linear(4, 5, bias=False, rng=0), ReLU(5), Linear(5, 2, rng=0), Sigmoid(2)]
    assert odd._fused_chain() is None
    before = odd.layers[0].W.copy()
    odd.single_step_sgd(X, Y)
    assert not np.array_equal(before, odd.layers[0].W)


def test_fused_step_rejects_what_the_layer_loop_rejects():
    model = MLP(3, 4, 2, rng=0)
    with pytest.raises(ValueError, match=r'\(n, 3\)'):
        model.single_step_sgd(np.zeros((5, 4)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match='targets of shape'):
        model.single_step_sgd(np.zeros((5, 3)), np.zeros((4, 2)))
    # Layers whose widths do not chain: the layer's own error, not a silent step.
    for index, layer in ((1, ReLU(5)), (5, Sigmoid(7))):
        broken = MLP(3, 4, 2, rng=0)
        broken.layers[index] = layer
        with pytest.raises(ValueError, match=re.escape(f'{layer!r} expects')):
            broken.single_step_sgd(np.zeros((5, 3)), np.zeros((5, 2)))
    model.eval()  # inference mode: backward is an error, as in the layer loop
    with pytest.raises(RuntimeError, match='training-mode forward'):
        model.single_step_sgd(np.zeros((5, 3)), np.zeros((5, 2)))


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('make', [lambda dtype: MLP(6, 9, 3, dtype=dtype, rng=2),
                                  lambda dtype: LinearClassifier(6, 1, dtype=dtype, rng=2)],
                         ids=['mlp', 'linear_c1'])
def test_every_path_agrees_on_strided_inputs(dtype, make):
    # Views with odd strides (reversed, every other column, a column of a batch) take the
    # general path: with one output, NumPy's matmul of such a view rounds differently from the
    # np.dot of the fast paths. Fortran-ordered arrays are fine for both.
    base, Y = _data(24, 12, make(dtype).c, dtype, seed=6)
    for X in (base[::-1, :6], base[:, ::2], np.asfortranarray(base[:, :6])):
        fused, layerwise = make(dtype), make(dtype)
        fused.single_step_sgd(X, Y)
        layerwise._layerwise_sgd_step(X, Y)
        assert all(np.array_equal(p, q) for p, q in zip(fused.parameters(),
                                                        layerwise.parameters()))
    model, out = make(dtype), np.empty(make(dtype).c, dtype)
    columns = np.asfortranarray(base)
    for row in range(len(base)):
        for x in (base[row, ::2], base[row, 5::-1], columns[row, :6], base[row, :6]):
            expected = model._predict_proba_layerwise(x)
            assert np.array_equal(model.predict_proba(x), expected)
            assert np.array_equal(model.predict_proba_into(x, out), expected)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('activation', ['scaled_relu', 'relu'])
def test_single_example_fast_path_equals_the_general_path_bit_for_bit(dtype, activation):
    model = MLP(16, 64, 8, dtype=dtype, activation=activation, rng=4)
    X, _ = _data(200, 16, 8, dtype, seed=4)
    X[:50] *= 30  # saturated outputs (probabilities 0 and 1) and large logits
    out = np.empty(8, dtype)
    for x in X:
        expected = model._predict_proba_layerwise(x)
        assert np.array_equal(model.predict_proba(x), expected)
        assert model.predict_proba_into(x, out) is out
        assert np.array_equal(out, expected)
        assert out.dtype == dtype


@pytest.mark.parametrize('dtype', DTYPES)
def test_single_example_sigmoid_matches_at_special_logits(dtype):
    """Logits 0, -0, +-inf, NaN, huge, tiny: the exp(min(z, 0)) form gives the same bits as
    sigmoid() (NaN stays NaN)."""
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1e4, 1e4, -100.0, 100.0,
                        -1e-30, 1e-30, -87.5, -745.0, -20.0, 20.0, -0.5], dtype)
    model = LinearClassifier(3, special.size, dtype=dtype, rng=0)
    model.layers[0].W[...] = 0
    model.layers[0].b[...] = special  # logits = 0 + b: the special values themselves
    x = np.ones(3, dtype)
    got, expected = model.predict_proba(x), model._predict_proba_layerwise(x)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint8), expected[~nan].view(np.uint8))


def test_single_example_fast_path_is_quiet_when_numpy_raises_on_underflow():
    """Underflow (exp of very negative logits) is silenced in the fast path as in sigmoid(),
    whatever error state the caller runs under."""
    assert underflow_ignored()  # NumPy's default
    model = MLP(16, 64, 8, dtype=np.float32, rng=14)
    X, _ = _data(20, 16, 8, np.float32, seed=14)
    X *= 300  # logits far below -87: exp underflows in float32
    expected = [model._predict_proba_layerwise(x) for x in X]
    with warnings.catch_warnings(), np.errstate(all='raise'):
        warnings.simplefilter('error')
        assert not underflow_ignored()
        got = [model.predict_proba(x) for x in X]
        with np.errstate(under='ignore'):
            assert underflow_ignored()
    assert underflow_ignored()
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert any(np.any(p == 0) for p in got)  # underflow did happen


def test_single_example_fast_path_follows_weights_updated_in_place_and_replaced():
    model = MLP(6, 10, 3, rng=5)
    x = np.random.default_rng(5).standard_normal(6)
    before = model.predict_proba(x)
    model.single_step_sgd(np.tile(x, (4, 1)), np.ones((4, 3)), lr=1.0)  # in-place update
    assert np.array_equal(model.predict_proba(x), model._predict_proba_layerwise(x))
    assert not np.array_equal(model.predict_proba(x), before)
    model.layers[2].W = model.layers[2].W * 2  # a replaced array rebuilds the buffers
    assert np.array_equal(model.predict_proba(x), model._predict_proba_layerwise(x))


class _LeakyReLU(ReLU):
    """A rectifier subclass that computes something else (the fast paths must not assume)."""

    def forward(self, X, cache=None):
        self._input = np.asarray(X)
        return np.where(self._input > 0, self._input, 0.1 * self._input)

    def backward(self, grad_out):
        return (np.where(self._input > 0, grad_out, 0.1 * grad_out),)


@pytest.mark.parametrize('replace', ['subclass', 'strided_W'])
def test_layers_the_fast_paths_cannot_reproduce_take_the_layer_loop(replace):
    dtype = np.float32
    model, layerwise = MLP(16, 64, 8, dtype=dtype, rng=3), MLP(16, 64, 8, dtype=dtype, rng=3)
    X, Y = _data(1, 16, 8, dtype, seed=2)
    x = X[0]
    for net in (model, layerwise):
        net.predict_proba(x)  # the single inference's buffers, built for the packed arrays
        if replace == 'subclass':
            net.layers[1] = _LeakyReLU(64)
        else:  # np.dot copies it for BLAS, @ runs its own loop: they round apart
            wide = np.zeros((16, 128), dtype)
            wide[:, ::2] = net.layers[0].W
            net.layers[0].W = wide[:, ::2]
        net.predict_proba(x)
        net.layers[0].b[...] += 0.5  # in place, as an optimiser updates it
    general = model._predict_proba_layerwise(x[None])[0]
    assert np.array_equal(model.predict_proba(x), general)
    assert np.array_equal(model.predict_proba_into(x, np.empty(8, dtype)), general)
    model.single_step_sgd(X, Y)
    layerwise._layerwise_sgd_step(X, Y)
    assert all(np.array_equal(a, b) for a, b in zip(model.parameters(), layerwise.parameters()))


def test_rectifier_constants_cannot_change_on_one_layer():
    # The single inference reads gain and knee when it builds its buffers: a gain set on one
    # layer later went unnoticed there. Another activation is another class.
    layer = ScaledReLU(4)
    assert (layer.gain, layer.knee) == (2.0, 1.0)
    with pytest.raises(AttributeError):
        layer.gain = 3.0
    with pytest.raises(AttributeError):
        layer.knee = 0.5


def test_predict_proba_returns_a_new_array_each_call():
    model = MLP(6, 10, 3, rng=6)
    rng = np.random.default_rng(6)
    x1, x2 = rng.standard_normal(6), rng.standard_normal(6)
    p1 = model.predict_proba(x1)
    kept = p1.copy()
    p2 = model.predict_proba(x2)
    assert p1 is not p2 and not np.shares_memory(p1, p2)
    assert np.array_equal(p1, kept)  # the second call did not overwrite the first result
    batch = model.predict_proba(np.stack([x1, x2]))
    assert not np.shares_memory(batch, p2)


def test_predict_proba_other_inputs_take_the_general_path():
    model = MLP(6, 10, 3, dtype=np.float32, rng=7)
    x = np.random.default_rng(7).standard_normal(6)  # float64 into a float32 model
    assert model.predict_proba(x).dtype == np.float32
    assert np.array_equal(model.predict_proba(x), model.predict_proba(x.astype(np.float32)))
    assert model.predict_proba(list(x)).shape == (3,)
    with pytest.raises(ValueError):
        model.predict_proba(np.zeros(5))


def test_predict_proba_into_checks_its_arguments():
    model = MLP(6, 10, 3, rng=8)
    x = np.zeros(6)
    with pytest.raises(ValueError, match='predict_proba_into'):
        model.predict_proba_into(x.astype(np.float32), np.empty(3))
    with pytest.raises(ValueError, match='predict_proba_into'):
        model.predict_proba_into(x, np.empty(4))
    with pytest.raises(ValueError, match='predict_proba_into'):
        model.predict_proba_into(x, np.empty(6)[::2])  # not contiguous


def test_copies_leave_the_buffers_behind_and_stay_independent():
    model = MLP(6, 10, 3, rng=9)
    X, Y = _data(100, 6, 3, np.float64, seed=9)
    model.single_step_sgd(X, Y)
    model.predict_proba(X[0])
    assert model.workspace_nbytes() > 0
    clone = copy.deepcopy(model)
    assert clone.workspace_nbytes() == 0
    clone.single_step_sgd(X, Y)
    assert not np.array_equal(clone.layers[0].W, model.layers[0].W)
    assert np.array_equal(model.predict_proba(X[0]), model._predict_proba_layerwise(X[0]))


def test_a_layer_written_to_the_plain_forward_protocol_still_predicts():
    class Tanh(Layer):  # a user's layer: forward(X) and backward(grad) only
        modes: list = []

        def forward(self, X):
            self.modes.append(self.training)
            return np.tanh(X)

        def backward(self, grad):
            raise NotImplementedError

    class Wrapped:  # duck-typed, its forward set on the instance
        training = True

        def __init__(self):
            self.forward = np.tanh

    X = np.random.default_rng(0).standard_normal((3, 4))
    for layer in (Tanh(), Wrapped()):
        model = MLP(4, 6, 2, rng=0)
        model.layers[1] = layer
        assert model.predict_proba(X).shape == (3, 2)
        assert layer.training  # switched to inference for the call only
        layer.training = False
        model.logits(X)  # cache=True: switched to training for the call only
        assert not layer.training
    assert Tanh.modes == [False, True]


def test_concurrent_inference_leaves_the_layers_as_they_were():
    # Three threads on one network in training mode: the third finds the fast path's buffers
    # busy and takes the general path, which must not switch the layers' mode meanwhile (a
    # switched layer would keep stale caches for the next training step).
    x = np.random.default_rng(0).standard_normal(8)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows at once
    try:
        for _ in range(10):
            model = MLP(8, 16, 3, rng=0)

            def worker():
                out = np.empty(3)
                for _ in range(2000):
                    model.predict_proba_into(x, out)
                    model.predict_proba(np.stack([x, x]))

            threads = [threading.Thread(target=worker) for _ in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert all(layer.training for layer in model.layers)
            assert model.cached_nbytes() == 0
    finally:
        sys.setswitchinterval(interval)


def test_two_threads_on_one_network_get_correct_results():
    model = MLP(8, 32, 4, rng=10)
    X = np.random.default_rng(10).standard_normal((300, 8))
    expected = [model._predict_proba_layerwise(x) for x in X]
    failures = []

    def worker():
        for x, want in zip(X, expected):
            if not np.array_equal(model.predict_proba(x), want):
                failures.append(x)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


@pytest.mark.parametrize('dtype', DTYPES)
def test_select_is_where_bit_for_bit_including_infinities_and_nan(dtype):
    values = np.array([[-np.inf, np.inf, np.nan, -0.0, 3.0, -2.5, 1e-40, 7.0]], dtype)
    mask = np.array([[True, True, True, True, False, True, False, True]])
    expected = np.where(mask, values, dtype(0))
    got = select(values, mask, np.empty_like(values))
    assert np.array_equal(got.view(np.uint8), expected.view(np.uint8))
    rng = np.random.default_rng(0)
    values = rng.standard_normal((50, 40)).astype(dtype)
    mask = values > 0.3
    assert np.array_equal(select(values, mask, values.copy()), np.where(mask, values, 0))


@pytest.mark.parametrize('dtype', DTYPES)
def test_flush_zeroes_subnormals_only(dtype):
    tiny = np.finfo(dtype).tiny
    special = np.array([tiny / 4, -tiny / 2, tiny, -tiny, 1.0, np.nan, -np.inf, 0.0], dtype)
    a = np.resize(special, FLUSH_MIN_ELEMENTS)
    flushed = flush_subnormals_(a.copy())
    subnormal = (a != 0) & (np.abs(a) < tiny)
    assert np.all(flushed[subnormal] == 0)
    kept = ~subnormal
    assert np.array_equal(flushed[kept], a[kept], equal_nan=True)
    small = special.copy()
    assert flush_subnormals_(small) is small and np.array_equal(small, special, equal_nan=True)


def test_layers_return_new_arrays_that_later_calls_do_not_touch():
    rng = np.random.default_rng(11)
    for layer in (Linear(4, 4, rng=0), ScaledReLU(4), ReLU(4), Sigmoid(4)):
        X1, X2 = rng.standard_normal((3, 4)) + 1, rng.standard_normal((3, 4)) + 1
        out1 = layer.eval().forward(X1)
        kept = out1.copy()
        out2 = layer.forward(X2)
        assert not np.shares_memory(out1, out2) and np.array_equal(out1, kept)


@pytest.mark.parametrize('dtype', DTYPES)
def test_dot_with_out_equals_matmul_on_one_row(dtype):
    """The single-example path uses np.dot(row, W, out) where the layers use row @ W."""
    rng = np.random.default_rng(15)
    for k, m in ((16, 64), (64, 64), (64, 8), (7, 3)):
        W = rng.standard_normal((k, m)).astype(dtype)
        out = np.empty((1, m), dtype)
        for scale in (1e-3, 1.0, 30.0):
            for _ in range(200):
                row = (rng.standard_normal((1, k)) * scale).astype(dtype)
                assert np.array_equal(np.dot(row, W, out), row @ W)


@pytest.mark.parametrize('dtype', DTYPES)
def test_dot_with_out_equals_matmul_on_batches_and_transposed_operands(dtype):
    """The fused step uses np.dot(A, B, out) where the layers use A @ B: forward A W, and the
    backward's A^T G and G W^T (transposed views, no copies)."""
    rng = np.random.default_rng(16)
    for n, k, m in ((100, 16, 64), (100, 64, 64), (100, 64, 8), (37, 200, 5), (1, 9, 4)):
        A = rng.standard_normal((n, k)).astype(dtype)
        W = rng.standard_normal((k, m)).astype(dtype)
        G = rng.standard_normal((n, m)).astype(dtype)
        assert np.array_equal(np.dot(A, W, np.empty((n, m), dtype)), A @ W)
        assert np.array_equal(np.dot(A.T, G, np.empty((k, m), dtype)), A.T @ G)
        assert np.array_equal(np.dot(G, W.T, np.empty((n, k), dtype)), G @ W.T)


@pytest.mark.parametrize('dtype', DTYPES)
def test_batch_sum_is_the_column_sum_into_out_or_new(dtype):
    rng = np.random.default_rng(17)
    for n, k in ((100, 8), (100, 64), (3, 1024), (1, 5), (0, 4)):
        grad = (rng.standard_normal((n, k)) * 10).astype(dtype)
        exact = grad.astype(np.float64).sum(axis=0)
        got = batch_sum(grad)
        assert got.dtype == dtype and got.shape == (k,)
        tolerance = 4 * n * np.finfo(dtype).eps * np.abs(grad).sum(axis=0).max(initial=0)
        np.testing.assert_allclose(got, exact, rtol=0, atol=tolerance)
        out = np.full(k, np.nan, dtype)
        assert batch_sum(grad, np.ones(n, dtype), out) is out
        assert np.array_equal(out, got)  # a kept ones vector changes nothing
    with np.errstate(invalid='ignore'):  # inf - inf warns here as in grad.sum(axis=0)
        assert np.isnan(batch_sum(np.array([[np.inf], [-np.inf]], dtype))[0])
