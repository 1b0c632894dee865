"""The trainer: the brief's regime bit for bit, determinism, early stopping, guards, options."""
import math

import numpy as np
import pytest

from obstacle_classifier.datasets import Dataset
from obstacle_classifier.model import ObstacleModel
from obstacle_classifier.nn import MLP
from obstacle_classifier.training import (BRIEF_REGIME, TrainConfig, Trainer,
                                          balanced_pos_weight, constant_features,
                                          fit_normalisation, plot_history, split_indices,
                                          train_model)

FEATURES = tuple(f'f{i}' for i in range(16))
CLASS_NAMES = ('pedestrian', 'bicycle', 'trash_can', 'pole', 'dog', 'scooter', 'barrier',
               'curb')


def builtin_dataset(n, seed=0):
    """X (n, 16), Y (n, 8): each class fires when a noisy squashed linear score crosses 0.6,
    so several classes co-occur; learnable, not trivially separable."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(1234).standard_normal((16, 8))
    X = rng.standard_normal((n, 16))
    scores = np.tanh(X @ mixing) + 0.1 * rng.standard_normal((n, 8))
    return X, (scores > 0.6).astype(np.float64)


def _dataset(n=1500, seed=0):
    X, Y = builtin_dataset(n, seed=seed)
    return Dataset(X=X * 3 + 5, Y=Y.astype(np.uint8), feature_names=FEATURES,
                   class_names=CLASS_NAMES)


def test_brief_regime_reproduces_the_briefs_sgd_bit_for_bit():
    data = _dataset()
    result = train_model(data, TrainConfig(**BRIEF_REGIME, seed=0))
    reference = MLP(16, 64, 8, rng=0)
    reference.sgd(data.X, data.Y.astype(np.float64))
    for ours, theirs in zip(result.model.network.parameters(), reference.parameters()):
        assert np.array_equal(ours, theirs)
    assert len(result.history) == 10


def test_same_seed_and_data_give_identical_model_bytes(tmp_path):
    data = _dataset(600)
    config = TrainConfig(epochs=3, seed=5, dtype='float32')
    train_model(data, config).model.save(tmp_path / 'a.npz')
    train_model(data, config).model.save(tmp_path / 'b.npz')
    assert (tmp_path / 'a.npz').read_bytes() == (tmp_path / 'b.npz').read_bytes()
    train_model(data, TrainConfig(epochs=3, seed=6, dtype='float32')).model.save(
        tmp_path / 'c.npz')
    assert (tmp_path / 'a.npz').read_bytes() != (tmp_path / 'c.npz').read_bytes()


@pytest.mark.parametrize('optimizer', ['sgd', 'momentum', 'adam'])
def test_every_optimizer_learns(optimizer):
    result = train_model(_dataset(), TrainConfig(optimizer=optimizer, epochs=15, patience=0))
    losses = [r.val_loss for r in result.history]
    assert losses[-1] < 0.8 * losses[0]
    # predicting every class everywhere scores micro F1 ~0.6 on this data
    assert result.history[-1].val_micro_f1 > 0.7


def test_normalisation_is_fitted_on_the_training_split_and_stored():
    data = _dataset(1000)
    result = train_model(data, TrainConfig(epochs=1, val_fraction=0.25, seed=3))
    train_idx, _ = split_indices(1000, 0.25, 3)
    mean, std = fit_normalisation(data.X[train_idx])
    assert np.array_equal(result.model.input_mean, mean)
    assert np.array_equal(result.model.input_std, std)
    assert result.model.metadata['train_examples'] == len(train_idx)
    assert result.model.metadata['val_examples'] == 1000 - len(train_idx)


def test_validation_split_takes_whole_contiguous_blocks():
    train_idx, val_idx = split_indices(2000, 0.2, seed=1, block=200)
    assert len(val_idx) == 400 and len(train_idx) == 1600
    assert np.array_equal(np.union1d(train_idx, val_idx), np.arange(2000))
    starts = val_idx[np.flatnonzero(np.diff(val_idx, prepend=-2) != 1)]
    assert all(start % 200 == 0 for start in starts)
    assert np.array_equal(split_indices(2000, 0.2, seed=1)[1], val_idx)
    assert not np.array_equal(split_indices(2000, 0.2, seed=2)[1], val_idx)
    # Small data sets get smaller blocks (at least 10), so the fraction still holds: 201
    # rows were one full block and a 1-row one, and the split went 1 / 200 for some seeds.
    for seed in range(10):
        train_idx, val_idx = split_indices(201, 0.2, seed=seed)
        assert len(val_idx) in (40, 41) and len(train_idx) + len(val_idx) == 201
    train_idx, val_idx = split_indices(150, 0.5, seed=0)
    assert len(val_idx) == 75
    with pytest.raises(ValueError, match='cannot split'):
        split_indices(1, 0.5, seed=0)
    assert all(len(part) == 0 for part in split_indices(0, 0.0, seed=0))


def test_constant_feature_gets_unit_std():
    X = np.column_stack([np.full(10, 4.0), np.arange(10.0)])
    mean, std = fit_normalisation(X)
    assert std[0] == 1.0 and mean[0] == 4.0 and std[1] > 0


@pytest.mark.parametrize('optimizer,weight_decay', [('sgd', 0.0), ('momentum', 1e-2),
                                                    ('adam', 0.0), ('adam', 1e-2)])
@pytest.mark.parametrize('normalise', [True, False])
def test_features_constant_in_training_are_ignored(optimizer, weight_decay, normalise):
    # A flag never set in the training data (0) and a constant reading (0.1, whose mean is
    # not exactly 0.1 in floating point): the data say nothing about them, so the model must
    # not react to them at run time.
    base = _dataset(600)
    X = np.column_stack([base.X[:, :3], np.zeros(600), base.X[:, 3:], np.full(600, 0.1)])
    names = FEATURES[:3] + ('lidar.stale',) + FEATURES[3:] + ('imu.rate',)
    data = Dataset(X=X, Y=base.Y, feature_names=names, class_names=CLASS_NAMES)
    config = TrainConfig(optimizer=optimizer, weight_decay=weight_decay, normalise=normalise,
                         epochs=3, val_fraction=0)
    model = train_model(data, config).model
    first_W = model.network.linears[0].W
    assert not first_W[3].any() and not first_W[-1].any()
    assert np.abs(first_W[[0, 1, 2, 4]]).min(axis=1).all()  # the others are learnt
    assert model.metadata['constant_features'] == ['lidar.stale', 'imu.rate']
    changed = X[:50].copy()
    changed[:, 3], changed[:, -1] = 1.0, 7.5
    assert np.array_equal(model.predict_proba(changed), model.predict_proba(X[:50]))
    assert train_model(base, TrainConfig(epochs=1)).model.metadata['constant_features'] == []


def test_constant_means_relative_to_the_features_magnitude():
    rng = np.random.default_rng(0)
    n = 2000
    large = np.full(n, 1.0e6)
    X = np.column_stack([
        np.zeros(n), np.full(n, 0.1),                         # exactly constant
        large + rng.integers(-3, 4, n) * np.spacing(large),   # rounding noise around 1e6
        rng.standard_normal(n) * 5e-7,                        # a feature in small units
        rng.standard_normal(n) * 1e-12 + 3e-12,               # ... in very small units
        large + rng.standard_normal(n) * 1e-2,                # a small change of a large value
    ])
    assert constant_features(X).tolist() == [True, True, True, False, False, False]
    _, std = fit_normalisation(X)
    assert np.array_equal(std[:3], [1.0, 1.0, 1.0])
    assert np.allclose(std[3:], X[:, 3:].std(axis=0))
    assert not constant_features(X[:, 3:].astype(np.float32)).any()


def test_a_feature_in_small_units_is_learnt():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 3))
    Y = (X[:, :1] > 0).astype(np.uint8)
    data = Dataset(X=X * 5e-7, Y=Y, feature_names=('f0', 'f1', 'f2'), class_names=('c',))
    result = train_model(data, TrainConfig(epochs=10))
    assert result.model.metadata['constant_features'] == []
    assert result.history[-1].val_micro_f1 > 0.9


def test_early_stopping_restores_the_best_epoch():
    data = _dataset(400)
    # a learning rate this high overfits / oscillates quickly on 320 examples
    config = TrainConfig(optimizer='adam', lr=0.05, epochs=60, patience=3, hidden=128)
    result = train_model(data, config)
    assert result.stopped_early
    best = min(r.val_loss for r in result.history)
    assert result.history[result.best_epoch - 1].val_loss == best
    assert len(result.history) == result.best_epoch + 3


def test_non_finite_batch_is_discarded_and_weights_kept():
    data = _dataset(200)
    model = train_model(data, TrainConfig(epochs=1, val_fraction=0)).model
    trainer = Trainer(model)
    before = [p.copy() for p in trainer.params]
    X = model.normalise(data.X[:32]).copy()
    X[3, 2] = np.nan
    assert trainer.step(X, data.Y[:32].astype(np.float64)) is None
    assert trainer.discarded_steps == 1 and trainer.steps == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, trainer.params))
    assert trainer.step(model.normalise(data.X[:32]), data.Y[:32]) is not None


def test_an_overflowing_batch_is_discarded_without_a_warning():
    # Warnings are errors in this suite (as in a node run with -W error): the overflow of a
    # diverging model must end as a discarded update, not as a RuntimeWarning mid-step.
    data = _dataset(64)
    model = train_model(data, TrainConfig(epochs=1, val_fraction=0)).model
    last = model.network.layers[-2]
    last.W[...] = 1e308
    last.b[...] = 1e308
    trainer = Trainer(model)  # BCE with logits, as online: logits of 1e308 or inf overflow it
    before = [p.copy() for p in trainer.params]
    assert trainer.step(model.normalise(data.X), data.Y.astype(np.float64)) is None
    assert trainer.discarded_steps == 1
    assert all(np.array_equal(a, b) for a, b in zip(before, trainer.params))


@pytest.mark.parametrize('optimizer', ['sgd', 'momentum', 'adam'])
def test_an_update_that_overflows_the_weights_is_undone(optimizer):
    # A finite gradient, but weight decay 1e308 makes the update (and Adam's moments) overflow:
    # the step must leave no trace, neither in the weights nor in the optimiser's state.
    data = _dataset(64)
    X, Y = data.X - data.X.mean(axis=0), data.Y.astype(np.float64)
    model = ObstacleModel.create(FEATURES, CLASS_NAMES, hidden=16, rng=0)
    reference = ObstacleModel.create(FEATURES, CLASS_NAMES, hidden=16, rng=0)
    trainer, clean = Trainer(model, optimizer), Trainer(reference, optimizer)
    trainer.step(X, Y)
    clean.step(X, Y)
    lr = trainer.optimizer.lr
    trainer.optimizer.weight_decay, trainer.optimizer.lr = 1e308, 100.0
    assert trainer.step(X, Y) is None
    assert trainer.discarded_steps == 1 and trainer.steps == 1
    trainer.optimizer.weight_decay, trainer.optimizer.lr = 0.0, lr
    assert trainer.step(X, Y) is not None and clean.step(X, Y) is not None
    for ours, theirs in zip(trainer.params + trainer.optimizer.state_arrays(),
                            clean.params + clean.optimizer.state_arrays()):
        assert np.array_equal(ours, theirs)


def test_training_with_an_overflowing_weight_decay_keeps_finite_weights(tmp_path):
    result = train_model(_dataset(300), TrainConfig(epochs=2, weight_decay=1e308))
    assert all(np.isfinite(p).all() for p in result.model.network.parameters())
    assert all(record.discarded_steps > 0 for record in result.history)
    result.model.save(tmp_path / 'm.npz')
    ObstacleModel.load(tmp_path / 'm.npz')


def test_balanced_positive_weights():
    Y = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=np.uint8)
    assert np.array_equal(balanced_pos_weight(Y, 20.0), [3.0, 1.0, 1.0])
    assert balanced_pos_weight(np.eye(100, 2, dtype=np.uint8), 20.0)[0] == 20.0
    result = train_model(_dataset(500), TrainConfig(epochs=2, pos_weight='balanced'))
    assert math.isfinite(result.history[-1].train_loss)


def test_float32_training_keeps_float32():
    result = train_model(_dataset(300), TrainConfig(epochs=2, dtype='float32'))
    assert all(p.dtype == np.float32 for p in result.model.network.parameters())


@pytest.mark.parametrize('change,message', [
    (dict(optimizer='lbfgs'), 'optimizer'), (dict(epochs=0), 'epochs'),
    (dict(val_fraction=1.0), 'validation fraction'), (dict(lr=-1.0), 'lr'),
    (dict(loss='brief', pos_weight='balanced'), 'positive class weights'),
    (dict(dtype='float16'), 'dtype'), (dict(activation='gelu'), 'activation'),
])
def test_bad_config_is_refused_with_a_clear_message(change, message):
    with pytest.raises(ValueError, match=message):
        train_model(_dataset(50), TrainConfig(**change))


def test_validation_data_with_other_names_are_refused_naming_the_differences():
    data = _dataset(200)
    renamed = Dataset(X=data.X[:50], Y=data.Y[:50], source='val.npz',
                      feature_names=FEATURES[:15] + ('lidar.stale',),
                      class_names=CLASS_NAMES[::-1])
    with pytest.raises(ValueError) as error:
        train_model(data, TrainConfig(epochs=1), validation=renamed)
    message = str(error.value)
    assert 'validation data (val.npz) do not match the training data' in message
    assert "missing features: 'f15'" in message and "unexpected features: 'lidar.stale'" in message
    assert "classes reordered: position 0 is 'curb', expected 'pedestrian'" in message


def test_plot_history_writes_a_png(tmp_path):
    result = train_model(_dataset(300), TrainConfig(epochs=3))
    plot_history(result.history, str(tmp_path / 'curves.png'))
    assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_mlp_beats_the_linear_baseline_on_a_nonlinear_problem():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 4))
    # XOR-like classes: a linear model cannot separate them
    Y = np.column_stack([(X[:, 0] * X[:, 1] > 0), (np.abs(X[:, 2]) > 1)]).astype(np.uint8)
    data = Dataset(X=X, Y=Y, feature_names=('a', 'b', 'c', 'd'), class_names=('xor', 'far'))
    f1 = {}
    for architecture in ('mlp', 'linear'):
        result = train_model(data, TrainConfig(architecture=architecture, epochs=30, lr=3e-3))
        f1[architecture] = result.history[result.best_epoch - 1].val_micro_f1
    assert f1['mlp'] > 0.9 and f1['linear'] < 0.7


def test_the_training_loss_is_the_mean_over_the_rows_that_trained():
    # A discarded step's rows were still counted: the loss came out low by their fraction.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 3))
    X[5, :] = 1.7e308  # one row of the first batch of 10 overflows the logits
    Y = (rng.random((100, 2)) < 0.5).astype(np.uint8)
    data = Dataset(X=X, Y=Y, feature_names=['f0', 'f1', 'f2'], class_names=['a', 'b'])
    config = TrainConfig(architecture='linear', optimizer='sgd', lr=1e-12, epochs=1,
                         batch_size=10, shuffle=False, val_fraction=0.0, patience=0,
                         normalise=False, seed=1)  # (seed 1: that row's logits overflow)
    result = train_model(data, config)
    record = result.history[0]
    assert record.discarded_steps == 1
    # lr 1e-12: the weights hardly move, so the trained rows' loss is their loss now
    trained = Trainer(result.model).mean_loss(X[10:], Y[10:].astype(np.float64))
    assert record.train_loss == pytest.approx(trained, rel=1e-9)


def test_a_validation_loss_never_finite_names_the_epoch_whose_weights_are_kept():
    rng = np.random.default_rng(0)
    names = ['f0', 'f1', 'f2']
    X, Y = rng.standard_normal((300, 3)), (rng.random((300, 2)) < 0.4).astype(np.uint8)
    X_val, Y_val = rng.standard_normal((50, 3)), (rng.random((50, 2)) < 0.4).astype(np.uint8)
    X_val[0] = 1.7e308  # finite, yet the logits overflow: every validation loss is NaN
    result = train_model(Dataset(X=X, Y=Y, feature_names=names, class_names=['a', 'b']),
                         TrainConfig(hidden=8, epochs=20, patience=3),
                         validation=Dataset(X=X_val, Y=Y_val, feature_names=names,
                                            class_names=['a', 'b']))
    assert all(math.isnan(record.val_loss) for record in result.history)
    # was best_epoch 0, an epoch that does not exist; the last epoch's weights are kept
    assert result.best_epoch == len(result.history) == result.model.metadata['best_epoch']


def test_max_pos_weight_below_one_is_refused():
    # Clipping to [1, max] with max 0.5 gave every class a weight of 0.5: positives down-weighted.
    with pytest.raises(ValueError, match='max_pos_weight must be >= 1'):
        TrainConfig(pos_weight='balanced', max_pos_weight=0.5).validate()


@pytest.mark.parametrize('scale', [1e-170, 1e-120, 1e120, 1e160])
def test_features_of_extreme_magnitude_are_not_taken_for_constant(scale):
    # Squares underflowed (a varying feature at 1e-165 read as constant) or overflowed to inf.
    x = np.random.default_rng(0).standard_normal((1000, 1)) * scale
    with np.errstate(all='raise'):
        assert not constant_features(x)[0]
        mean, std = fit_normalisation(x)
    assert std[0] / scale == pytest.approx(np.std(x / scale), rel=1e-12)
    assert mean[0] / scale == pytest.approx(np.mean(x / scale), rel=1e-9, abs=1e-12)
