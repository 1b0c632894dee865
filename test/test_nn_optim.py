"""Optimisers against torch.optim on identical gradient sequences; dtype and argument checks."""
import numpy as np
import pytest
import torch

from obstacle_classifier.nn.optim import SGD, Adam, make_optimizer


def _run_both(ours_factory, torch_factory, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((4, 3)), rng.standard_normal(3)]
    torch_params = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = ours_factory(params)
    theirs = torch_factory(torch_params)
    for _ in range(steps):
        grads = [rng.standard_normal(p.shape) for p in params]
        ours.step(grads)
        for tp, g in zip(torch_params, grads):
            tp.grad = torch.tensor(g)
        theirs.step()
    return params, [tp.detach().numpy() for tp in torch_params]


@pytest.mark.parametrize('ours,theirs', [
    (lambda p: SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda p: SGD(p, lr=0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    (lambda p: Adam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2)),
    (lambda p: Adam(p, lr=1e-3, betas=(0.8, 0.99), eps=1e-6),
     lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.8, 0.99), eps=1e-6)),
    # weight decay on every parameter, as torch applies it
    (lambda p: SGD(p, lr=0.1, momentum=0.5, weight_decay=0.01, decay_mask=[True, True]),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, weight_decay=0.01)),
    (lambda p: Adam(p, lr=1e-2, weight_decay=0.1, decay_mask=[True, True]),
     lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1)),
])
def test_updates_match_torch_optim(ours, theirs):
    mine, reference = _run_both(ours, theirs)
    for a, b in zip(mine, reference):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_default_weight_decay_skips_biases():
    W, b = np.ones((2, 2)), np.ones(2)
    SGD([W, b], lr=1.0, weight_decay=0.5).step([np.zeros((2, 2)), np.zeros(2)])
    assert np.all(W == 0.5) and np.all(b == 1.0)


@pytest.mark.parametrize('name', ['sgd', 'momentum', 'adam'])
def test_float32_parameters_and_state_stay_float32(name):
    params = [np.ones((3, 2), np.float32), np.ones(2, np.float32)]
    optimizer = make_optimizer(name, params, weight_decay=1e-3)
    for _ in range(3):
        optimizer.step([np.full((3, 2), 0.1, np.float32), np.full(2, 0.1, np.float32)])
    assert all(p.dtype == np.float32 for p in params + optimizer.state_arrays())


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match='learning rate'):
        SGD([np.ones(2)], lr=0.0)
    with pytest.raises(ValueError, match='momentum'):
        SGD([np.ones(2)], momentum=1.0)
    # A NaN decay would turn every decayed weight into NaN at the first step.
    for make in (SGD, Adam):
        for decay in (-0.1, float('nan'), float('inf')):
            with pytest.raises(ValueError, match='weight_decay must be a finite number >= 0'):
                make([np.ones(2)], weight_decay=decay)
    for eps in (-1.0, float('nan')):
        with pytest.raises(ValueError, match='eps must be a finite number >= 0'):
            Adam([np.ones(2)], eps=eps)
    with pytest.raises(ValueError, match='optimizer must be one of'):
        make_optimizer('rmsprop', [np.ones(2)])
    with pytest.raises(ValueError, match=r'gradient 0 has shape \(3,\)'):
        SGD([np.ones(2)]).step([np.ones(3)])
    with pytest.raises(ValueError, match='expected 1 gradients, got 2'):
        Adam([np.ones(2)]).step([np.ones(2), np.ones(2)])


@pytest.mark.parametrize('factory,kinds', [(lambda p: SGD(p, lr=0.1), 0),
                                           (lambda p: SGD(p, lr=0.1, momentum=0.9), 1),
                                           (lambda p: Adam(p), 2)])
def test_state_buffers_hold_the_whole_state_in_one_array_per_kind(factory, kinds):
    params = [np.ones((4, 3)), np.ones(3)]
    optimizer = factory(params)
    optimizer.step([np.full((4, 3), 0.5), np.full(3, -2.0)])
    buffers = optimizer.state_buffers()
    assert len(buffers) == kinds and all(b.shape == (15,) for b in buffers)
    state = optimizer.state_arrays()
    assert sum(a.size for a in state) == 15 * kinds
    assert all(any(np.shares_memory(a, b) for b in buffers) for a in state)
    for buffer in buffers:
        buffer[...] = 7.0
    assert all((a == 7.0).all() for a in state)
