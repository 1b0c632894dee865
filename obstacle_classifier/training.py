"""Training: data split, input normalisation, the step loop, early stopping, curves.

The loss is the brief's mean negative log-likelihood (mean over examples, sum over classes).
Two ways to take its gradient:

- ``loss='logits'`` (default): from the logits (:class:`~obstacle_classifier.nn.BCEWithLogitsLoss`,
  ``'batchmean'``), the exact gradient ``(sigmoid(z) - y) / n``, finite for any logit;
- ``loss='brief'``: Sigmoid, then the brief's ``get_grad_log_loss`` with its ``eps = 1e-8``, then
  back through the Sigmoid, exactly as ``MLP.single_step_sgd`` does. The ``eps`` matters: where
  an output saturates (p (1 - p) << 1e-8) it damps the gradient to almost nothing.

``BRIEF_REGIME`` (sgd, lr 0.1, 10 epochs, batch 100, data order, no validation split, no input
normalisation, ``loss='brief'``) reproduces the brief's ``MLP.sgd`` bit for bit on data without
constant features (those are ignored: see :func:`ignore_features`).

:class:`Trainer` owns one model's optimisation state and performs guarded steps (a non-finite
loss or gradient discards the update and keeps the weights); offline training here and online
training in the node use it alike.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .datasets import Dataset, name_differences
from .metrics import multilabel_report
from .model import ARCHITECTURES, ObstacleModel
from .nn import ACTIVATIONS, BCEWithLogitsLoss, Network, get_grad_log_loss, log_loss
from .nn.optim import OPTIMIZERS, make_optimizer

# A feature whose training std is at most this fraction of its largest magnitude is constant
# (see constant_features).
CONSTANT_RELATIVE_STD = 1e-9
LOSSES = ('logits', 'brief')
SPLIT_BLOCK = 200  # rows per block of the validation split (10 s of ticks at 20 Hz)...
MIN_SPLIT_BLOCKS = 10  # ...but at least this many blocks, so small data sets split as asked


@dataclass
class TrainConfig:
    """Every knob of a training run (stored in the model's metadata)."""

    architecture: str = 'mlp'           # 'mlp' (the brief's) or 'linear' (the baseline)
    hidden: int = 64
    activation: str = 'scaled_relu'
    dtype: str = 'float64'
    optimizer: str = 'adam'
    lr: Optional[float] = None          # None: 0.1 sgd, 0.05 momentum, 1e-3 adam
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 60
    batch_size: int = 100
    shuffle: bool = True
    val_fraction: float = 0.2
    patience: int = 8                   # epochs without val-loss improvement; 0 disables
    pos_weight: str = 'none'            # 'none' or 'balanced' (n_neg / n_pos, clipped)
    max_pos_weight: float = 20.0
    normalise: bool = True
    loss: str = 'logits'                # 'logits' (exact, stable) or 'brief' (brief's eps path)
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.architecture in ARCHITECTURES, f'architecture must be one of '
                                                 f'{ARCHITECTURES}, got {self.architecture!r}'),
            (self.hidden >= 1, f'hidden must be >= 1, got {self.hidden}'),
            (self.activation in ACTIVATIONS, f'activation must be one of {sorted(ACTIVATIONS)}'),
            (self.dtype in ('float32', 'float64'), f'dtype must be float32 or float64, got '
                                                   f'{self.dtype!r}'),
            (self.optimizer in OPTIMIZERS, f'optimizer must be one of {OPTIMIZERS}'),
            (self.lr is None or (self.lr > 0 and math.isfinite(self.lr)),
             f'lr must be positive, got {self.lr}'),
            (self.epochs >= 1, f'epochs must be >= 1, got {self.epochs}'),
            (self.batch_size >= 1, f'batch size must be >= 1, got {self.batch_size}'),
            (0 <= self.val_fraction < 1, f'validation fraction must be in [0, 1), got '
                                         f'{self.val_fraction}'),
            (self.patience >= 0, f'patience must be >= 0, got {self.patience}'),
            (self.pos_weight in ('none', 'balanced'), "pos_weight must be 'none' or "
                                                      "'balanced'"),

            (self.weight_decay >= 0, f'weight decay must be >= 0, got {self.weight_decay}'),
            (self.loss in LOSSES, f'loss must be one of {LOSSES}, got {self.loss!r}'),
            (self.loss == 'logits' or self.pos_weight == 'none',
             "positive class weights need loss='logits'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_max_pos_weight(self.max_pos_weight)


def check_max_pos_weight(value: float) -> None:
    """ValueError unless ``value`` is a finite clip >= 1 for balanced positive-class weights:
    below 1 the clip to [1, max] would down-weight every class's positives."""
    if not 1 <= value < math.inf:
        raise ValueError(f'max_pos_weight must be >= 1 and finite, got {value}')


#: The brief's training regime on the brief's MLP (hidden 64, ScaledReLU, float64).
BRIEF_REGIME = dict(architecture='mlp', hidden=64, activation='scaled_relu', dtype='float64',
                    optimizer='sgd', lr=0.1, epochs=10, batch_size=100, shuffle=False,
                    val_fraction=0.0, patience=0, normalise=False, loss='brief',
                    weight_decay=0.0, pos_weight='none')


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: Optional[float]
    val_micro_f1: Optional[float]
    discarded_steps: int


@dataclass
class TrainResult:
    model: ObstacleModel
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


def fit_normalisation(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (d,) of training features (n, d), in float64; std 1 for a
    feature that is constant (:func:`constant_features`)."""
    return _fit(X)[:2]


def constant_features(X: np.ndarray) -> np.ndarray:
    """(d,) bool: which features of training data X (n, d) are constant. The data say nothing
    about how such a feature bears on the classes.

    Constant means ``std <= CONSTANT_RELATIVE_STD * max|x|`` (1e-9) over the column: the test
    is relative, so a feature in small units (std 5e-7) is a feature, while an exactly
    constant column (std 0, or the ~1e-16 relative rounding of its float mean) and float64
    rounding noise around a large value are constant. The bound is where normalising stops
    making sense: at run time ``x - mean`` carries a rounding error of ~1e-16 ``|x|``, which
    dividing by a std of 1e-9 ``|x|`` already makes 1e-7, float32 resolution.
    """
    return _fit(X)[2]


def _fit(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std with 1 for a constant feature, constant (d,) bool) of X (n, d): what
    :func:`fit_normalisation` and :func:`constant_features` give, from one pass of moments."""
    mean, std, magnitude = _moments(X)
    constant = (np.ones(X.shape[1], dtype=bool) if len(X) == 0
                else std <= CONSTANT_RELATIVE_STD * magnitude)
    std[constant] = 1.0
    return mean, std, constant


#: Column magnitudes whose squares stay well inside float64 (see _moments).
_SAFE_MAGNITUDE = (1e-100, 1e100)


def _moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, std and max |x| (d,) float64 of each column of X (n, d). A column of extreme
    magnitude is done again divided by its largest value: squares near 1e-165 underflow to 0
    (a varying feature would read as constant) and near 1e155 overflow to inf. (Only those
    columns: the others, sensor data among them, keep NumPy's own roundings, and the models
    their bytes.)"""
    with np.errstate(over='ignore', under='ignore', invalid='ignore'):
        mean = X.mean(axis=0, dtype=np.float64)
        std = X.std(axis=0, dtype=np.float64)
    if len(X) == 0:
        return mean, std, np.zeros(X.shape[1])
    # max |x| without an (n, d) temporary
    magnitude = np.maximum(X.max(axis=0), -X.min(axis=0)).astype(np.float64)
    extreme = (magnitude > 0) & np.isfinite(magnitude) & (
        (magnitude < _SAFE_MAGNITUDE[0]) | (magnitude > _SAFE_MAGNITUDE[1]))
    for column in np.flatnonzero(extreme):
        scale = magnitude[column]
        values = X[:, column] / scale
        mean[column] = values.mean(dtype=np.float64) * scale
        std[column] = values.std(dtype=np.float64) * scale
    return mean, std, magnitude


def ignore_features(network: Network, features: np.ndarray) -> None:
    """Zero the first-layer weight rows of ``features`` ((d,) bool) so the network's output
    does not depend on them at all.

    Used for features constant in the training data: their normalised input is 0, so their
    gradient is 0 and their rows would otherwise keep the random initial weights, and any
    change of such a feature at run time would swing the predictions at random. A row stays
    exactly 0 while training as long as its input column is exactly 0 (every optimiser, with
    weight decay, maps a zero gradient on a zero weight to a zero update).
    """
    first = network.linears[0]
    first.W[np.asarray(features, dtype=bool), :] = 0


def balanced_pos_weight(Y: np.ndarray, max_weight: float) -> np.ndarray:
    """(c,) positive-class weights n_neg / n_pos, clipped to [1, max_weight] (1 if no
    positives), so rare obstacles count as much as common ones."""
    return balanced_weights(Y.sum(axis=0, dtype=np.float64), len(Y), max_weight)


def balanced_weights(positives: np.ndarray, count: int, max_weight: float) -> np.ndarray:
    """(c,) positive-class weights n_neg / n_pos from per-class positive counts (c,) among
    ``count`` rows, clipped to [1, max_weight]; 1 for a class with no positives (yet)."""
    positives = np.asarray(positives, dtype=np.float64)
    weights = np.divide(count - positives, positives, out=np.ones_like(positives),
                        where=positives > 0)
    return np.clip(weights, 1.0, max_weight)


def split_indices(n: int, val_fraction: float, seed: int,
                  block: int = SPLIT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train / validation split by contiguous blocks of at most ``block`` rows.

    Consecutive ticks of a sensor stream are near-duplicates (a 0.5 s window moves 50 ms per
    tick), so a row-wise random split puts copies of training rows in validation and reports
    scores a new run never reaches. Whole blocks (default up to 200 ticks = 10 s at 20 Hz) go to
    one side or the other. The n rows are cut into equal blocks (to a row), at least
    :data:`MIN_SPLIT_BLOCKS` of them, so that a small data set still gets close to
    ``val_fraction``. No validation when the fraction is 0.

    Returns:
        (train indices, validation indices), each sorted, int64.
    """
    n_blocks = max(-(-n // block), min(n, MIN_SPLIT_BLOCKS))
    if n_blocks == 0:  # no rows
        return np.arange(0), np.arange(0)
    n_val_blocks = int(round(n_blocks * val_fraction))
    if val_fraction > 0 and n_val_blocks < 1:
        n_val_blocks = 1
    if val_fraction > 0 and n_val_blocks >= n_blocks:
        raise ValueError(f'cannot split {n} examples ({n_blocks} blocks) with validation '
                         f'fraction {val_fraction}')
    edges = np.arange(n_blocks + 1) * n // n_blocks  # block k: rows edges[k] to edges[k + 1]
    val_blocks = np.random.default_rng(seed).choice(n_blocks, size=n_val_blocks, replace=False)
    is_val = np.zeros(n, dtype=bool)
    for index in val_blocks:
        is_val[edges[index]:edges[index + 1]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class Trainer:
    """Guarded optimisation of one model's network on normalised features.

    ``step(X, Y)``: X (n, d) already normalised in the network dtype, Y (n, c) {0, 1}.
    """

    def __init__(self, model: ObstacleModel, optimizer: str = 'adam', lr: Optional[float] = None,
                 momentum: float = 0.9, weight_decay: float = 0.0,
                 pos_weight: Optional[np.ndarray] = None, loss: str = 'logits') -> None:
        if loss not in LOSSES:
            raise ValueError(f'loss must be one of {LOSSES}, got {loss!r}')
        if loss == 'brief' and pos_weight is not None:
            raise ValueError("positive class weights need loss='logits'")
        self.loss_kind = loss
        self.model = model
        self.network = model.network
        self.params = self.network.parameters()
        self.optimizer = make_optimizer(optimizer, self.params, lr=lr,
                                        weight_decay=weight_decay, momentum=momentum)
        self.loss = BCEWithLogitsLoss('batchmean', pos_weight=pos_weight)
        self.steps = 0
        self.discarded_steps = 0
        # What a step changes in place (weights, momentum / Adam moments), and room to copy it
        # to before each step, so that a step that overflows can be undone. The network's
        # flat parameter array and the optimiser's flat state make that a few NumPy calls.
        packed = self.network._packed_parameters(self.network.linears)
        self._state = (list(self.params) if packed is None else [packed])
        self._state += self.optimizer.state_buffers()
        self._saved = [np.empty_like(array) for array in self._state]

    def step(self, X: np.ndarray, Y: np.ndarray) -> Optional[float]:
        """One update; returns the batch loss, or None if the update was discarded because the
        loss or a gradient was not finite, or because the update itself made a weight or the
        optimiser's state non-finite (e.g. a huge weight decay). The weights and the
        optimiser's state are then as they were before the call."""
        # Overflow and inf - inf are expected on a diverging batch and are caught below by
        # value, not as warnings (which a process running with -W error would raise mid-step).
        with np.errstate(over='ignore', invalid='ignore'):
            if self.loss_kind == 'brief':
                value, grads = self._brief_gradients(X, Y)
            else:
                value = self.loss.forward(self.network.logits(X), Y)
                grads = self.network.backward_logits(self.loss.backward())
        if not math.isfinite(value) or not all(np.isfinite(g).all() for g in grads):
            self.discarded_steps += 1
            return None
        # The optimiser updates in place: save what it changes (a few percent of a step's
        # time), check after, and restore if the update overflowed.
        for saved, array in zip(self._saved, self._state):
            np.copyto(saved, array)
        optimizer_steps = self.optimizer.steps
        with np.errstate(over='ignore', invalid='ignore'):
            self.optimizer.step(grads)
            finite = all(_all_finite(array) for array in self._state)
        if not finite:
            for saved, array in zip(self._saved, self._state):
                np.copyto(array, saved)
            self.optimizer.steps = optimizer_steps
            self.discarded_steps += 1
            return None
        self.steps += 1
        return value

    def _brief_gradients(self, X: np.ndarray, Y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """The brief's arithmetic: Sigmoid, get_grad_log_loss(eps=1e-8), back through all."""
        Y_hat = self.network.forward(X)
        value = log_loss(Y, Y_hat)
        grad = get_grad_log_loss(Y, Y_hat)
        per_layer: list[list[np.ndarray]] = []
        for layer in self.network.layers[::-1]:
            grad, *param_grads = layer.backward(grad)
            per_layer.append(param_grads)
        return value, [g for param_grads in reversed(per_layer) for g in param_grads]

    def mean_loss(self, X: np.ndarray, Y: np.ndarray, batch: int = 4096) -> float:
        """Mean per-example loss over a data set, in inference mode (nothing cached)."""
        total = 0.0
        evaluation = BCEWithLogitsLoss('sum', pos_weight=self.loss.pos_weight)
        # Weights a huge learning rate left finite but enormous overflow to inf here: the loss
        # is then inf or NaN, an answer (training already silences the same warnings).
        with np.errstate(over='ignore', invalid='ignore'):
            for start in range(0, len(X), batch):
                logits = self.network.logits(X[start:start + batch], cache=False)
                total += evaluation.forward(logits, Y[start:start + batch])
        return total / max(len(X), 1)


def _all_finite(array: np.ndarray) -> bool:
    # One pass without a temporary: a sum is NaN or inf if any element is. Only a sum that
    # overflows from finite elements needs the exact (allocating) test.
    return math.isfinite(np.add.reduce(array, axis=None)) or bool(np.isfinite(array).all())


def train_model(data: Dataset, config: TrainConfig, validation: Optional[Dataset] = None,
                progress: bool = False,
                on_epoch: Optional[Callable[[EpochRecord], None]] = None) -> TrainResult:
    """Train a new :class:`ObstacleModel` on ``data``.

    Validation data is ``validation`` if given, else a ``config.val_fraction`` split of
    ``data``. With validation and ``patience > 0`` training stops after ``patience`` epochs
    without a lower validation loss and the best epoch's weights are restored. Features
    constant in the training data are ignored (:func:`ignore_features`; their names are in
    ``metadata['constant_features']``). Deterministic: the same data and config give bitwise
    the same model.
    """
    config.validate()
    if validation is None and config.val_fraction > 0:
        train_idx, val_idx = split_indices(data.n, config.val_fraction, config.seed)
        train, validation = data.subset(train_idx), data.subset(val_idx)
    else:
        train = data
    if validation is not None:
        problems = (name_differences('feature', validation.feature_names, train.feature_names)
                    + name_differences('class', validation.class_names, train.class_names))
        if problems:
            raise ValueError(f'validation data{_source(validation)} do not match the training '
                             f'data{_source(train)}: {"; ".join(problems)}')

    X_raw = train.X.astype(np.float64, copy=False)
    mean, std, constant = _fit(X_raw)
    if not config.normalise:
        mean, std = np.zeros(train.d), np.ones(train.d)
    model = ObstacleModel.create(train.feature_names, train.class_names, hidden=config.hidden,
                                 dtype=config.dtype, activation=config.activation,
                                 architecture=config.architecture, rng=config.seed,
                                 input_mean=mean, input_std=std,
                                 metadata={'train_config': asdict(config)})
    ignore_features(model.network, constant)
    model.metadata['constant_features'] = [name for name, flag
                                           in zip(train.feature_names, constant) if flag]
    dtype = model.network.dtype
    X = model.normalise(X_raw)
    # Exactly 0, not the rounding residue of x - mean (which Adam would scale up to full
    # steps): the zeroed rows then get a zero gradient and stay zero.
    X[:, constant] = 0
    Y = train.Y.astype(dtype)
    X_val = model.normalise(validation.X) if validation is not None else None
    Y_val = validation.Y.astype(dtype) if validation is not None else None
    pos_weight = (balanced_pos_weight(train.Y, config.max_pos_weight)
                  if config.pos_weight == 'balanced' else None)
    trainer = Trainer(model, config.optimizer, config.lr, config.momentum, config.weight_decay,
                      pos_weight, config.loss)
    shuffle_rng = np.random.default_rng(config.seed + 1)
    result = TrainResult(model=model)
    best_loss, best_params, stale_epochs = math.inf, None, 0

    bar = _progress_bar(config.epochs, progress)
    for epoch in range(1, config.epochs + 1):
        order = shuffle_rng.permutation(len(X)) if config.shuffle else None
        batch_losses = []
        rows_trained = 0  # of the steps that were not discarded (their losses are summed)
        discarded_before = trainer.discarded_steps
        for start in range(0, len(X), config.batch_size):
            if order is None:
                xb, yb = X[start:start + config.batch_size], Y[start:start + config.batch_size]
            else:
                rows = order[start:start + config.batch_size]
                xb, yb = X[rows], Y[rows]
            value = trainer.step(xb, yb)
            if value is not None:
                batch_losses.append(value * len(xb))
                rows_trained += len(xb)
        record = EpochRecord(epoch=epoch,
                             train_loss=(sum(batch_losses) / rows_trained if batch_losses
                                         else math.nan),
                             val_loss=None, val_micro_f1=None,
                             discarded_steps=trainer.discarded_steps - discarded_before)
        if X_val is not None:
            record.val_loss = trainer.mean_loss(X_val, Y_val)
            with np.errstate(over='ignore', invalid='ignore'):  # as in mean_loss
                predictions = model.decide(model.network.predict_proba(X_val))
            record.val_micro_f1 = multilabel_report(validation.Y, predictions,
                                                    model.class_names)['micro']['f1']
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if bar is not None:
            bar.set_postfix(loss=f'{record.train_loss:.4f}',
                            val_loss='-' if record.val_loss is None else f'{record.val_loss:.4f}',
                            val_f1='-' if record.val_micro_f1 is None
                            else f'{record.val_micro_f1:.3f}')
            bar.update(1)
        if record.val_loss is None or config.patience == 0:
            result.best_epoch = epoch
            continue
        if record.val_loss < best_loss:
            best_loss, result.best_epoch, stale_epochs = record.val_loss, epoch, 0
            best_params = [p.copy() for p in trainer.params]
        else:
            stale_epochs += 1
            if stale_epochs >= config.patience:
                result.stopped_early = True
                break
    if bar is not None:
        bar.close()
    if best_params is not None:
        for param, best in zip(trainer.params, best_params):
            param[...] = best
    elif result.history:  # no validation loss was ever finite: the last epoch's weights stay
        result.best_epoch = len(result.history)
    model.metadata.update({'best_epoch': result.best_epoch, 'epochs_run': len(result.history),
                           'stopped_early': result.stopped_early,
                           'train_examples': int(len(X)),
                           'val_examples': 0 if X_val is None else int(len(X_val))})
    return result


def _source(data: Dataset) -> str:
    return '' if data.source == Dataset.source else f' ({data.source})'


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit='epoch', desc='training', dynamic_ncols=True)


def plot_history(history: Sequence[EpochRecord], path: str) -> None:
    """Write a PNG of training / validation loss and validation micro-F1 per epoch."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    figure, (loss_axis, f1_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [r.train_loss for r in history], label='training')
    if any(r.val_loss is not None for r in history):
        loss_axis.plot(epochs, [r.val_loss for r in history], label='validation')
        f1_axis.plot(epochs, [r.val_micro_f1 for r in history], color='tab:green')
    loss_axis.set(xlabel='epoch', ylabel='mean NLL per example', title='loss')
    loss_axis.legend()
    f1_axis.set(xlabel='epoch', ylabel='micro F1', title='validation micro F1', ylim=(0, 1))
    save_figure(figure, path)


def save_figure(figure, path: str) -> None:
    """Write a matplotlib figure atomically (an error leaves no partial file and any previous
    one intact) in the format its suffix names (.png, .svg, .pdf), and close it."""
    import matplotlib.pyplot as plt

    from .atomic import atomic_write
    try:
        figure.tight_layout()
        atomic_write(path, lambda file: figure.savefig(file, format=Path(path).suffix[1:].lower(),
                                                       dpi=100))
    finally:
        plt.close(figure)
