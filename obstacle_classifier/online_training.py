"""Online training from a labelled stream, without ROS: parsing, pairing, replay, checkpoints.

The live node (``classifier_node``) is thin glue around the pieces here:

* :func:`parse_label_names` / :func:`parse_multi_hot`: a label message -> multi-hot (c,) or a
  rejection reason from :data:`LABEL_REJECTION_REASONS`;
* :class:`TickRing`: the last few ticks (stamp, normalised features or None when the tick was
  skipped); a label is paired with the tick nearest its arrival time within ``max_delay_ns``;
* :class:`ReplayBuffer`: preallocated ring of (x, y) examples; one whole block of consecutive
  examples in every ``held_out_every`` goes to a separate held-out ring that training never
  samples (used by the checkpoint guard);
* :class:`OnlineTrainer`: owns a *private copy* of the serving model and a
  :class:`~obstacle_classifier.training.Trainer` on it, runs steps on random batches (with
  balanced positive-class weights from the buffer's label counts: obstacles are rare), hands
  out snapshots (deep copies) for the inference side to swap in, and decides checkpoints.

Threading contract: ``add_example`` may be called from one thread while ``train_steps`` /
``snapshot`` / ``checkpoint`` run in another; the replay buffer is guarded by a lock held only to
copy rows. Inference never touches the private model, only snapshots, so it never sees
half-updated weights.
"""
from __future__ import annotations

import copy
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .model import ObstacleModel
from .nn import BCEWithLogitsLoss
from .nn.optim import OPTIMIZERS
from .training import Trainer, balanced_weights, check_max_pos_weight

__all__ = ['LABEL_REJECTION_REASONS', 'CheckpointDecision', 'OnlineTrainer', 'ReplayBuffer',
           'TickRing', 'TrainingStats', 'balanced_weights', 'parse_label_names',
           'parse_multi_hot']

#: Why a label message does not become a training example.
LABEL_REJECTION_REASONS = ('unknown_class', 'wrong_width', 'not_binary', 'no_tick_near',
                           'tick_skipped', 'labels_outpace_ticks')
#: Examples a TickRing may still pair after a run of ticks without labels: a labeller at the
#: tick rate whose latency jitters sends two labels in one tick period now and then.
LABEL_CREDIT_TICKS = 4
#: A checkpoint is refused when its held-out loss exceeds the last written one's by this factor
#: plus :data:`WORSE_ABSOLUTE_MARGIN` (both measured now, on the same held-out rows).
WORSE_RELATIVE_MARGIN = 0.10
WORSE_ABSOLUTE_MARGIN = 0.02
#: Consecutive examples per held-out block: 10 s of labels at the simulator's 10 Hz.
HELD_OUT_BLOCK = 100
#: The held-out ring holds at least this many blocks (shorter blocks in a small buffer).
HELD_OUT_MIN_BLOCKS = 4
#: Positive-class weights of the online loss: 'balanced' (n_neg / n_pos of the training rows,
#: clipped to [1, max_pos_weight], as ``TrainConfig(pos_weight='balanced')`` offline) or 'none'.
POS_WEIGHTS = ('balanced', 'none')
#: Training steps between two refreshes of the balanced weights from the buffer's counts.
POS_WEIGHT_REFRESH_STEPS = 50


# ----------------------------------------------------------------------------------------------
# Label parsing
# ----------------------------------------------------------------------------------------------

def parse_label_names(text: str, class_names: Sequence[str]
                      ) -> tuple[Optional[np.ndarray], Optional[str]]:
    """Comma-separated class names ('' = nothing there) -> (multi-hot uint8 (c,), None), or
    (None, reason) with reason 'unknown_class' if any name is not one of ``class_names``."""
    index = {name: k for k, name in enumerate(class_names)}
    labels = np.zeros(len(class_names), dtype=np.uint8)
    for name in (part.strip() for part in text.split(',')):
        if not name:
            continue
        k = index.get(name)
        if k is None:
            return None, 'unknown_class'
        labels[k] = 1
    return labels, None


def parse_multi_hot(values: Sequence[int], n_classes: int
                    ) -> tuple[Optional[np.ndarray], Optional[str]]:
    """A multi-hot array (c,) of 0/1 -> (uint8 (c,), None), or (None, 'wrong_width' |
    'not_binary')."""
    # UInt8MultiArray.data arrives as bytes (or an array.array): read it without copying.
    array = (np.frombuffer(values, dtype=np.uint8) if isinstance(values, (bytes, bytearray))
             else np.asarray(values))
    if array.ndim != 1 or array.shape[0] != n_classes:
        return None, 'wrong_width'
    if not np.all((array == 0) | (array == 1)):
        return None, 'not_binary'
    return array.astype(np.uint8), None


# ----------------------------------------------------------------------------------------------
# Pairing labels with ticks
# ----------------------------------------------------------------------------------------------

class TickRing:
    """The last ``capacity`` ticks: stamp (ns) and normalised features (d,), or a skipped tick.

    Preallocated: ``record`` copies into fixed arrays, nothing grows.
    """

    def __init__(self, capacity: int, n_features: int, dtype: np.dtype | type) -> None:
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        self._stamps = np.full(capacity, np.iinfo(np.int64).min, dtype=np.int64)
        self._features = np.zeros((capacity, n_features), dtype=dtype)
        self._valid = np.zeros(capacity, dtype=bool)
        self._credit = 0  # examples it may pair: one per tick recorded, up to LABEL_CREDIT_TICKS
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        self._count = 0
        self._next = 0
        self._credit = 0

    def record(self, stamp_ns: int, features: Optional[np.ndarray]) -> None:
        """Remember one tick: ``features`` (d,) normalised, or None if the tick was skipped."""
        slot = self._next
        self._stamps[slot] = stamp_ns
        self._credit = min(self._credit + 1, LABEL_CREDIT_TICKS)
        if features is None:
            self._valid[slot] = False
        else:
            self._features[slot] = features
            self._valid[slot] = True
        self._next = (slot + 1) % len(self._stamps)
        self._count = min(self._count + 1, len(self._stamps))

    def nearest(self, stamp_ns: int, max_delay_ns: int
                ) -> tuple[Optional[np.ndarray], Optional[str]]:
        """Features (d,) (a copy) of the tick nearest ``stamp_ns``, or (None, reason):
        'no_tick_near' if none lies within ``max_delay_ns``, 'tick_skipped' if the nearest one
        was skipped (stale inputs), 'labels_outpace_ticks' if labels come faster than ticks:
        at most one example per tick on average (a few saved up, for jitter). A flood of labels
        (5 kHz) used to fill the whole replay buffer with copies of a few ticks and flip the
        model within seconds."""
        if self._count == 0:
            return None, 'no_tick_near'
        stamps = self._stamps[:self._count] if self._count < len(self._stamps) else self._stamps
        distance = np.abs(stamps - np.int64(stamp_ns))
        slot = int(np.argmin(distance))
        if distance[slot] > max_delay_ns:
            return None, 'no_tick_near'
        if not self._valid[slot]:
            return None, 'tick_skipped'
        if self._credit < 1:
            return None, 'labels_outpace_ticks'
        self._credit -= 1
        return self._features[slot].copy(), None


# ----------------------------------------------------------------------------------------------
# Replay buffer
# ----------------------------------------------------------------------------------------------

class _Ring:
    """Preallocated (capacity, d) features and (capacity, c) labels, oldest overwritten, and
    the per-class positive counts (c,) of the rows it holds, kept up to date per row (O(c))."""

    def __init__(self, capacity: int, n_features: int, n_classes: int,
                 dtype: np.dtype | type) -> None:
        self.X = np.zeros((capacity, n_features), dtype=dtype)
        self.Y = np.zeros((capacity, n_classes), dtype=dtype)
        self.positives = np.zeros(n_classes, dtype=np.float64)  # 0/1 sums: exact in float64
        self.count = 0
        self._next = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.count == len(self.X):
            self.positives -= self.Y[self._next]  # the row about to be overwritten
        self.X[self._next] = x
        self.Y[self._next] = y
        self.positives += self.Y[self._next]
        self._next = (self._next + 1) % len(self.X)
        self.count = min(self.count + 1, len(self.X))


class ReplayBuffer:
    """Bounded store of training examples with a held-out slice in blocks, safe across threads.

    ``capacity`` rows in total: ``capacity // held_out_every`` (at least 1) are the held-out
    ring, the rest train. The stream of examples is cut into blocks of :attr:`block`
    consecutive examples, and block number ``k`` is held out iff ``k % held_out_every == 1``:
    one whole block in every ``held_out_every``. Consecutive labels describe nearly the same
    scene (a label every 0.1 s, an encounter lasts seconds), so a held-out row interleaved
    with training rows would have a near-copy in training and score optimistically; a block of
    :data:`HELD_OUT_BLOCK` examples (10 s of labels at 10 Hz, the offline split's
    ``SPLIT_BLOCK`` span) shares only its edges with training. The held-out block is the
    second of each cycle, not the first, so training starts with the first example and the
    checkpoint guard has held-out rows after two blocks.

    The block is shortened to ``held_out_capacity // HELD_OUT_MIN_BLOCKS`` (at least 1) when
    the held-out ring is small, so that it always spans several separate stretches of the
    stream rather than one. Memory is allocated once, here: a label stream of any rate or
    duration only overwrites the oldest rows.
    """

    def __init__(self, capacity: int, n_features: int, n_classes: int,
                 dtype: np.dtype | type = np.float64, held_out_every: int = 10,
                 held_out_block: int = HELD_OUT_BLOCK) -> None:
        if capacity < 2:
            raise ValueError(f'buffer capacity must be >= 2, got {capacity}')
        if held_out_every < 2:
            raise ValueError(f'held_out_every must be >= 2, got {held_out_every}')
        if held_out_block < 1:
            raise ValueError(f'held_out_block must be >= 1, got {held_out_block}')
        held_out = max(1, capacity // held_out_every)
        self.train = _Ring(capacity - held_out, n_features, n_classes, dtype)
        self.held_out = _Ring(held_out, n_features, n_classes, dtype)
        self.held_out_every = held_out_every
        self.block = max(1, min(held_out_block, held_out // HELD_OUT_MIN_BLOCKS))
        self.added = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for ring in (self.train, self.held_out) for a in (ring.X, ring.Y))

    def is_held_out(self, index: int) -> bool:
        """Whether the ``index``-th example ever added (from 0) goes to the held-out ring."""
        return (index // self.block) % self.held_out_every == 1

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Store features (d,) normalised and labels (c,) {0, 1}."""
        with self._lock:
            ring = self.held_out if self.is_held_out(self.added) else self.train
            ring.add(x, y)
            self.added += 1

    def sample(self, batch_size: int, rng: np.random.Generator
               ) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """A random batch (copies) X (n, d), Y (n, c), n = min(batch_size, rows); None if
        there are no training rows yet."""
        with self._lock:
            count = self.train.count
            if count == 0:
                return None
            rows = rng.integers(0, count, size=min(batch_size, count))
            return self.train.X[rows], self.train.Y[rows]

    def label_counts(self) -> tuple[np.ndarray, int]:
        """Per-class positive counts (c,) float64 of the training rows (a copy), and the
        number of training rows."""
        with self._lock:
            return self.train.positives.copy(), self.train.count

    def held_out_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the held-out X (m, d), Y (m, c)."""
        with self._lock:
            m = self.held_out.count
            return self.held_out.X[:m].copy(), self.held_out.Y[:m].copy()


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainingStats:
    """Counters since start-up (all plain numbers, for diagnostics)."""

    labels_received: int = 0
    labels_rejected: dict[str, int] = field(
        default_factory=lambda: {reason: 0 for reason in LABEL_REJECTION_REASONS})
    examples_added: int = 0
    steps: int = 0
    discarded_updates: int = 0
    last_loss: float = math.nan
    snapshots: int = 0
    checkpoints_written: int = 0
    checkpoints_refused: int = 0
    checkpoint_failures: int = 0
    last_checkpoint_reason: str = ''
    last_held_out_loss: float = math.nan

    @property
    def labels_rejected_total(self) -> int:
        return sum(self.labels_rejected.values())


@dataclass(frozen=True)
class CheckpointDecision:
    """What :meth:`OnlineTrainer.checkpoint` did: ``written`` or not, and why."""

    written: bool
    reason: str
    held_out_loss: float = math.nan
    reference_loss: float = math.nan


class OnlineTrainer:
    """Trains a private copy of a model from labelled examples; never mutates the given model.

    Args:
        model: the serving model; it is deep-copied (network, normalisation, metadata).
        optimizer, lr: as :class:`~obstacle_classifier.training.Trainer` (lr None = default).
        batch_size: rows per step (fewer while the buffer holds fewer).
        buffer_size: rows in the replay buffer, held-out slice included.
        held_out_every: one block of consecutive examples in every ``held_out_every`` is held
            out for the checkpoint guard (see :class:`ReplayBuffer`).
        seed: batch sampling seed.
        held_out_block: examples per held-out block (shortened for a small buffer).
        pos_weight: 'balanced' (default): the loss weighs each class's positives by
            n_neg / n_pos of the training rows (clipped to [1, ``max_pos_weight``]), refreshed
            every :data:`POS_WEIGHT_REFRESH_STEPS` steps, so rare obstacles are not learnt as
            "never there"; 'none': plain BCE.
        max_pos_weight: the clip of the balanced weights.
    """

    def __init__(self, model: ObstacleModel, optimizer: str = 'adam',
                 lr: Optional[float] = None, batch_size: int = 32, buffer_size: int = 5000,
                 held_out_every: int = 10, seed: int = 0,
                 held_out_block: int = HELD_OUT_BLOCK, pos_weight: str = 'balanced',
                 max_pos_weight: float = 20.0) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f'optimizer must be one of {OPTIMIZERS}, got {optimizer!r}')
        if batch_size < 1:
            raise ValueError(f'batch size must be >= 1, got {batch_size}')
        if pos_weight not in POS_WEIGHTS:
            raise ValueError(f'pos_weight must be one of {POS_WEIGHTS}, got {pos_weight!r}')
        check_max_pos_weight(max_pos_weight)
        self.model = copy.deepcopy(model)
        # Features constant in the offline training data have zero first-layer rows and a
        # placeholder normalisation (see training.ignore_features): they stay ignored here too,
        # their inputs zeroed, else a varying one would train its row on raw values.
        ignored = set(model.metadata.get('constant_features', ()))
        self._ignored = [k for k, name in enumerate(model.feature_names) if name in ignored]
        self.balanced = pos_weight == 'balanced'
        self.max_pos_weight = float(max_pos_weight)
        # All ones until the first refresh (a weighted loss from the start: same code path).
        self.trainer = Trainer(self.model, optimizer, lr,
                               pos_weight=np.ones(model.n_classes) if self.balanced else None)
        self._steps_at_refresh: Optional[int] = None
        self.dtype = self.model.network.dtype
        self.batch_size = batch_size
        self.buffer = ReplayBuffer(buffer_size, model.n_features, model.n_classes, self.dtype,
                                   held_out_every, held_out_block)
        self.stats = TrainingStats()
        self._rng = np.random.default_rng(seed)
        # The guard compares against the last written checkpoint; until one is written, against
        # the checkpoint file already there (compare_with) or else the model training started
        # from.
        self._reference = copy.deepcopy(model)
        self._reference_name = 'the starting model'
        self._reference_is_file = False  # a checkpoint file the next write would replace
        self._protected = ''  # why the file at the checkpoint path must not be replaced
        self._trained_since_snapshot = False

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.model.class_names

    def reject(self, reason: str) -> None:
        """Count a label that did not become an example."""
        self.stats.labels_rejected[reason] = self.stats.labels_rejected.get(reason, 0) + 1

    def add_example(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Features (d,) already normalised (as the serving model saw them), labels (c,).
        Those the model ignores (constant offline) are stored as 0."""
        if self._ignored:
            features = np.array(features, dtype=self.dtype)  # (the caller's is left alone)
            features[self._ignored] = 0
        self.buffer.add(features, labels)
        self.stats.examples_added += 1

    def train_steps(self, n_steps: int) -> Optional[float]:
        """Run up to ``n_steps`` guarded steps; the last finite batch loss, or None if no step
        produced one (empty buffer or every update discarded)."""
        last: Optional[float] = None
        for _ in range(n_steps):
            batch = self.buffer.sample(self.batch_size, self._rng)
            if batch is None:
                break
            if self.balanced and (self._steps_at_refresh is None or self.stats.steps
                                  - self._steps_at_refresh >= POS_WEIGHT_REFRESH_STEPS):
                self.refresh_pos_weight()
            value = self.trainer.step(*batch)
            if value is None:
                self.stats.discarded_updates += 1
                continue
            self.stats.steps += 1
            self.stats.last_loss = last = value
            self._trained_since_snapshot = True
        return last

    def refresh_pos_weight(self) -> Optional[np.ndarray]:
        """Recompute the balanced positive-class weights (c,) from the training rows' label
        counts (the buffer's class balance drifts with the scene); None with ``pos_weight``
        'none'. Call from the training thread."""
        if not self.balanced:
            return None
        positives, count = self.buffer.label_counts()
        weights = balanced_weights(positives, count, self.max_pos_weight)
        self.trainer.loss.pos_weight = weights
        self._steps_at_refresh = self.stats.steps
        return weights

    @property
    def pos_weight(self) -> Optional[np.ndarray]:
        """The positive-class weights (c,) of the online loss now, or None (plain BCE)."""
        return self.trainer.loss.pos_weight

    def snapshot(self) -> Optional[ObstacleModel]:
        """A deep copy of the trained model for inference, or None if nothing changed since
        the last snapshot. Call from the training thread (it reads the private weights)."""
        if not self._trained_since_snapshot:
            return None
        self._trained_since_snapshot = False
        self.stats.snapshots += 1
        return self._export()

    def compare_with(self, checkpoint: ObstacleModel, name: str) -> None:
        """Guard checkpoints against ``checkpoint`` (the file already at the checkpoint path,
        called ``name`` in the reasons) instead of the starting model: a model change or a
        restart must not let a barely trained model replace a well trained file. Same feature
        and class names required (ValueError otherwise); its normalisation may differ."""
        if (checkpoint.feature_names, checkpoint.class_names) != (
                self.model.feature_names, self.model.class_names):
            raise ValueError('it has other feature or class names than the model')

        self._reference = copy.deepcopy(checkpoint)
        self._reference_name = name
        self._reference_is_file = True

    def keep_file(self, why: str) -> None:
        """Refuse every checkpoint from now on, saying ``why``: the file at the checkpoint path
        is worth keeping and cannot be compared (a model of other features or classes, whose
        training a model change must not overwrite)."""
        self._protected = why

    def held_out_loss(self, model: Optional[ObstacleModel] = None) -> float:
        """Mean per-example loss of ``model`` (default: the trained one) on the held-out rows
        (inference mode, nothing cached); nan when there are none or the loss is not finite.

        The rows are held normalised as the serving model saw them; another model's
        normalisation is applied to the raw features they came from."""
        X, Y = self.buffer.held_out_rows()
        if len(X) == 0:
            return math.nan
        model = self.model if model is None else model
        if not (np.array_equal(model.input_mean, self.model.input_mean)
                and np.array_equal(model.input_std, self.model.input_std)):
            try:
                X = model.normalise(X * self.model.input_std + self.model.input_mean)
            except ValueError:  # an overflow once renormalised: it cannot score these rows
                return math.nan
        with np.errstate(over='ignore', invalid='ignore'):
            total = BCEWithLogitsLoss('sum').forward(model.network.logits(X, cache=False), Y)
        return float(total) / len(X)

    def checkpoint(self, path: str | Path) -> CheckpointDecision:
        """Save the trained model atomically to ``path`` unless it is clearly worse.

        Both the trained network and the last written checkpoint's (initially the starting
        model's) are scored now on the same held-out rows; the write is refused when
        ``loss > reference * (1 + WORSE_RELATIVE_MARGIN) + WORSE_ABSOLUTE_MARGIN``.
        Without held-out rows the file is written unguarded (said in the reason) only if it
        would replace no checkpoint (:meth:`compare_with` was not called and none has been
        written): a model change starts an empty buffer, and a barely trained model replaced a
        well trained file when a checkpoint fell due before any held-out example had come.
        """
        if self._protected:
            self.stats.checkpoints_refused += 1
            reason = f'refused: {self._protected}'
            self.stats.last_checkpoint_reason = reason
            return CheckpointDecision(False, reason, math.nan, math.nan)
        held_out_rows = self.buffer.held_out.count
        loss = self.held_out_loss()
        reference = self.held_out_loss(self._reference)
        self.stats.last_held_out_loss = loss
        name = self._reference_name
        if held_out_rows == 0:
            if self._reference_is_file:  # nothing to tell a barely trained model by
                reason = f'not written: no held-out examples yet to compare with {name}'
                self.stats.last_checkpoint_reason = reason
                return CheckpointDecision(False, reason, loss, reference)
            reason = 'written unguarded: no held-out examples yet, and no checkpoint to keep'
        elif not math.isfinite(loss) or (
                loss > reference * (1 + WORSE_RELATIVE_MARGIN) + WORSE_ABSOLUTE_MARGIN):
            self.stats.checkpoints_refused += 1
            reason = (f'refused: held-out loss {loss:.4f} is clearly worse than {name}\'s '
                      f'{reference:.4f}')
            self.stats.last_checkpoint_reason = reason
            return CheckpointDecision(False, reason, loss, reference)
        else:
            reason = f'written: held-out loss {loss:.4f} ({name} {reference:.4f})'
        exported = self._export()
        try:
            exported.save(path)
        except OSError as exc:
            self.stats.checkpoint_failures += 1
            reason = f'failed: {exc}'
            self.stats.last_checkpoint_reason = reason
            return CheckpointDecision(False, reason, loss, reference)
        self._reference, self._reference_name = exported, 'the last checkpoint'
        self._reference_is_file = True
        self.stats.checkpoints_written += 1
        self.stats.last_checkpoint_reason = reason
        return CheckpointDecision(True, reason, loss, reference)

    def _export(self) -> ObstacleModel:
        exported = copy.deepcopy(self.model)
        summary = {key: value for key, value in asdict(self.stats).items()
                   if key in ('steps', 'discarded_updates', 'examples_added')}
        last = self.stats.last_loss
        summary['last_loss'] = None if math.isnan(last) else float(last)
        weights = self.pos_weight
        summary['pos_weight'] = None if weights is None else [float(w) for w in weights]
        exported.metadata['online_training'] = summary
        return exported
