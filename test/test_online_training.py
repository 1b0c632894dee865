"""Online training without ROS: label parsing, tick pairing, the replay buffer, the trainer."""
from __future__ import annotations

import math
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from obstacle_classifier.model import ObstacleModel
from obstacle_classifier.online_training import (HELD_OUT_BLOCK, HELD_OUT_MIN_BLOCKS,
                                                 LABEL_CREDIT_TICKS,
                                                 POS_WEIGHT_REFRESH_STEPS, OnlineTrainer,
                                                 ReplayBuffer, TickRing, balanced_weights,
                                                 parse_label_names, parse_multi_hot)
from obstacle_classifier.training import balanced_pos_weight

CLASSES = ('pole', 'dog', 'curb')
FEATURES = ('a', 'b')
MS = 1_000_000


def separable_examples(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """X (n, 2) normal; Y (n, 3): pole iff a > 0, dog iff b > 0, curb iff a + b > 0."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0, X.sum(axis=1) > 0], axis=1).astype(np.uint8)
    return X, Y


def fresh_model() -> ObstacleModel:
    return ObstacleModel.create(FEATURES, CLASSES, hidden=16, rng=1)


def test_the_module_imports_no_ros():
    import obstacle_classifier.online_training as module
    source = Path(module.__file__).read_text()
    assert 'rclpy' not in source and 'std_msgs' not in source


def test_label_names_parse_to_multi_hot_and_unknown_names_are_rejected():
    labels, reason = parse_label_names('curb, pole', CLASSES)
    assert reason is None and labels.tolist() == [1, 0, 1] and labels.dtype == np.uint8
    labels, reason = parse_label_names('', CLASSES)
    assert reason is None and labels.tolist() == [0, 0, 0]
    assert parse_label_names('pole,unicorn', CLASSES) == (None, 'unknown_class')


def test_multi_hot_arrays_of_the_wrong_width_or_values_are_rejected():
    labels, reason = parse_multi_hot([0, 1, 1], 3)
    assert reason is None and labels.tolist() == [0, 1, 1]
    labels, reason = parse_multi_hot(b'\x01\x00\x00', 3)
    assert reason is None and labels.tolist() == [1, 0, 0]
    assert parse_multi_hot([0, 1], 3) == (None, 'wrong_width')
    assert parse_multi_hot([0, 2, 1], 3) == (None, 'not_binary')


def test_a_label_pairs_with_the_nearest_tick_within_the_delay_only():
    ring = TickRing(4, 2, np.float64)
    assert ring.nearest(0, 10 * MS) == (None, 'no_tick_near')
    for k in range(6):  # ticks at 0, 50, ..., 250 ms; the ring keeps the last 4 (100..250)
        ring.record(k * 50 * MS, None if k == 4 else np.array([k, -k], dtype=np.float64))
    assert len(ring) == 4
    features, reason = ring.nearest(260 * MS, 20 * MS)
    assert reason is None and features.tolist() == [5.0, -5.0]
    features, reason = ring.nearest(160 * MS, 20 * MS)
    assert reason is None and features.tolist() == [3.0, -3.0]
    assert ring.nearest(205 * MS, 20 * MS) == (None, 'tick_skipped')
    assert ring.nearest(320 * MS, 20 * MS) == (None, 'no_tick_near')
    assert ring.nearest(0, 20 * MS) == (None, 'no_tick_near')  # evicted
    features[0] = 99.0  # a copy: the ring is unchanged
    assert ring.nearest(250 * MS, 1)[0].tolist() == [5.0, -5.0]


def test_labels_pair_one_example_per_tick_on_average():
    # 5 kHz labels against 20 Hz ticks filled the whole replay buffer with copies of a few
    # ticks within seconds and flipped the model: now a few saved-up ticks' worth pass.
    ring = TickRing(8, 1, np.float64)
    for k in range(6):
        ring.record(k * 50 * MS, np.array([float(k)]))
    outcomes = [ring.nearest(250 * MS + k * 50_000, 25 * MS)[1] for k in range(250)]
    assert outcomes[:LABEL_CREDIT_TICKS] == [None] * LABEL_CREDIT_TICKS
    assert set(outcomes[LABEL_CREDIT_TICKS:]) == {'labels_outpace_ticks'}
    # A labeller at the tick rate whose latency jitters (two labels in one period, none in
    # the next) loses none.
    ring = TickRing(8, 1, np.float64)
    for k in range(100):
        ring.record(k * 50 * MS, np.array([float(k)]))
        if k % 2:
            assert ring.nearest(k * 50 * MS + MS, 25 * MS)[1] is None
            assert ring.nearest(k * 50 * MS + 2 * MS, 25 * MS)[1] is None


def test_the_replay_buffer_is_bounded_holds_out_a_slice_and_allocates_nothing_per_example():
    buffer = ReplayBuffer(100, 2, 3, held_out_every=10)
    assert len(buffer.train.X) == 90 and len(buffer.held_out.X) == 10
    x, y = np.ones(2), np.array([1, 0, 1])
    for _ in range(200):
        buffer.add(x, y)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(60_000):  # a minute of a 1 kHz label stream
        buffer.add(x, y)
    grown = sum(stat.size_diff for stat in
                tracemalloc.take_snapshot().compare_to(before, 'filename'))
    tracemalloc.stop()
    assert grown < 20_000, grown
    assert buffer.train.count == 90 and buffer.held_out.count == 10
    assert buffer.added == 60_200
    X, Y = buffer.sample(32, np.random.default_rng(0))
    assert X.shape == (32, 2) and Y.shape == (32, 3)
    X_held, _ = buffer.held_out_rows()
    assert X_held.shape == (10, 2)


def test_held_out_rows_are_never_sampled_for_training():
    buffer = ReplayBuffer(80, 1, 1, held_out_every=4, held_out_block=5)
    assert buffer.block == 5
    for k in range(80):
        buffer.add(np.array([float(k)]), np.array([0]))
    held = set(buffer.held_out_rows()[0][:, 0].tolist())
    assert held == {float(k) for k in range(80) if (k // 5) % 4 == 1}
    X, _ = buffer.sample(1000, np.random.default_rng(0))
    assert not held & set(X[:, 0].tolist())


def test_the_held_out_slice_is_whole_blocks_of_consecutive_examples():
    # Consecutive labels are near-duplicates: interleaved held-out rows (every 10th) would each
    # have a training neighbour 0.1 s away. Blocks share only their two edges with training.
    buffer = ReplayBuffer(20000, 1, 1, held_out_every=10)
    assert buffer.block == HELD_OUT_BLOCK
    assert len(buffer.held_out.X) == 2000 and len(buffer.train.X) == 18000
    n = 5000
    for k in range(n):
        buffer.add(np.array([float(k)]), np.array([0]))
    held = np.sort(buffer.held_out_rows()[0][:, 0]).astype(int)
    assert len(held) == n // 10  # still a tenth of the stream
    runs = np.split(held, np.flatnonzero(np.diff(held) != 1) + 1)
    assert [len(run) for run in runs] == [HELD_OUT_BLOCK] * (n // (10 * HELD_OUT_BLOCK))
    assert [int(run[0]) for run in runs] == list(range(HELD_OUT_BLOCK, n, 10 * HELD_OUT_BLOCK))
    # The first examples train (learning starts at once); the first block held out is the second.
    assert buffer.train.X[0, 0] == 0.0
    held_set = set(held.tolist())
    neighbours = sum(1 for k in held_set if k - 1 not in held_set or k + 1 not in held_set)
    assert neighbours == 2 * len(runs)  # only block edges touch training rows


def test_a_small_held_out_ring_gets_shorter_blocks_so_it_spans_several_stretches():
    buffer = ReplayBuffer(200, 1, 1, held_out_every=10)  # 20 held-out rows
    assert buffer.block == 20 // HELD_OUT_MIN_BLOCKS
    for k in range(2000):
        buffer.add(np.array([float(k)]), np.array([0]))
    held = np.sort(buffer.held_out_rows()[0][:, 0]).astype(int)
    assert len(np.split(held, np.flatnonzero(np.diff(held) != 1) + 1)) == HELD_OUT_MIN_BLOCKS
    assert ReplayBuffer(2, 1, 1).block == 1


def test_the_buffer_counts_the_positives_of_the_training_rows_it_holds():
    buffer = ReplayBuffer(40, 1, 3, held_out_every=4, held_out_block=2)
    rng = np.random.default_rng(0)
    for _ in range(333):  # wraps the training ring many times
        buffer.add(rng.normal(size=1), (rng.random(3) < [0.05, 0.3, 0.0]).astype(np.uint8))
    positives, count = buffer.label_counts()
    assert count == len(buffer.train.X) == 30
    assert positives.tolist() == buffer.train.Y.sum(axis=0).tolist()


def test_balanced_weights_are_the_offline_rule_from_counts():
    Y = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]] * 10)
    expected = balanced_pos_weight(Y, 20.0)
    assert balanced_weights(Y.sum(axis=0), len(Y), 20.0).tolist() == expected.tolist()
    assert expected.tolist() == [3.0, 1.0, 1.0]  # 30/10; no positives -> 1; 10/30 -> 1
    assert balanced_weights(np.array([1.0]), 1000, 20.0).tolist() == [20.0]  # clipped


def test_the_online_loss_weighs_rare_positives_by_the_buffer_balance():
    model = fresh_model()
    trainer = OnlineTrainer(model, 'adam', 1e-2, batch_size=16, buffer_size=400)
    X, Y = separable_examples(400)
    Y[:, 0] = 0
    Y[::8, 0] = 1  # pole in one example of 8
    for x, y in zip(model.normalise(X), Y):
        trainer.add_example(x, y)
    trainer.train_steps(1)
    positives, count = trainer.buffer.label_counts()
    expected = np.clip((count - positives) / positives, 1.0, 20.0)
    assert trainer.pos_weight == pytest.approx(expected)
    assert trainer.pos_weight[0] == pytest.approx(7.0, rel=0.2)
    before = trainer.pos_weight.copy()
    trainer.buffer.train.positives[0] = 1.0  # refreshed only every POS_WEIGHT_REFRESH_STEPS
    trainer.train_steps(POS_WEIGHT_REFRESH_STEPS - 1)
    assert trainer.pos_weight.tolist() == before.tolist()
    trainer.train_steps(1)
    assert trainer.pos_weight[0] == 20.0
    assert trainer.snapshot().metadata['online_training']['pos_weight'][0] == 20.0
    plain = OnlineTrainer(model, pos_weight='none')
    assert plain.pos_weight is None and plain.refresh_pos_weight() is None


def test_online_training_learns_on_a_private_copy_and_snapshots_are_independent():
    model = fresh_model()
    original = [p.copy() for p in model.network.parameters()]
    trainer = OnlineTrainer(model, 'adam', 1e-2, batch_size=32, buffer_size=2000)
    assert trainer.train_steps(5) is None and trainer.snapshot() is None  # empty buffer
    X, Y = separable_examples(1500)
    for x, y in zip(model.normalise(X), Y):
        trainer.add_example(x, y)
    first = trainer.held_out_loss()
    trainer.train_steps(400)
    assert trainer.held_out_loss() < 0.5 * first
    assert trainer.stats.steps == 400 and trainer.stats.discarded_updates == 0
    for before, now in zip(original, model.network.parameters()):
        assert np.array_equal(before, now), 'the serving model was modified'
    snapshot = trainer.snapshot()
    assert snapshot is not None and trainer.snapshot() is None  # nothing new since
    frozen = [p.copy() for p in snapshot.network.parameters()]
    trainer.train_steps(10)
    for before, now in zip(frozen, snapshot.network.parameters()):
        assert np.array_equal(before, now), 'training changed a published snapshot'
    X_test, Y_test = separable_examples(500, seed=9)
    accuracy = (snapshot.predict(X_test) == Y_test).mean()
    assert accuracy > 0.9, accuracy


def test_a_nan_in_a_batch_is_discarded_and_the_weights_are_kept():
    trainer = OnlineTrainer(fresh_model(), 'sgd', 0.1, batch_size=8, buffer_size=20,
                            held_out_every=10)
    X, Y = separable_examples(20)
    for x, y in zip(X, Y):
        trainer.add_example(x, y)
    trainer.buffer.train.X[:, 0] = np.nan  # every training row poisoned
    before = [p.copy() for p in trainer.model.network.parameters()]
    assert trainer.train_steps(3) is None
    assert trainer.stats.discarded_updates == 3 and trainer.stats.steps == 0
    for old, now in zip(before, trainer.model.network.parameters()):
        assert np.array_equal(old, now)
    assert trainer.snapshot() is None


def test_checkpoints_are_written_loadable_and_refused_when_clearly_worse(tmp_path):
    model = fresh_model()
    path = tmp_path / 'online.npz'
    trainer = OnlineTrainer(model, 'adam', 1e-2, batch_size=32, buffer_size=1000)
    X, Y = separable_examples(1000)
    for x, y in zip(model.normalise(X), Y):
        trainer.add_example(x, y)
    trainer.train_steps(200)
    decision = trainer.checkpoint(path)
    assert decision.written, decision.reason
    assert decision.held_out_loss < decision.reference_loss
    loaded = ObstacleModel.load(path)
    assert loaded.version == trainer.snapshot().version
    assert loaded.metadata['online_training']['steps'] == 200
    written = path.read_bytes()

    # Sabotage the private weights: the held-out loss is far worse than the checkpoint's.
    for param in trainer.model.network.parameters():
        param *= -5.0
    decision = trainer.checkpoint(path)
    assert not decision.written and 'clearly worse' in decision.reason
    assert trainer.stats.checkpoints_refused == 1 and trainer.stats.checkpoints_written == 1
    assert path.read_bytes() == written


def test_a_new_model_is_guarded_against_the_checkpoint_file_already_there(tmp_path):
    # A model change or a restart: a barely trained model must not replace a well trained
    # file, even one whose input normalisation differs from the new model's.
    X, Y = separable_examples(1000)
    trained = ObstacleModel.create(FEATURES, CLASSES, hidden=16, rng=1, input_mean=[0.5, -0.5],
                                   input_std=[2.0, 0.5])
    first = OnlineTrainer(trained, 'adam', 1e-2, batch_size=32, buffer_size=1000)
    for x, y in zip(trained.normalise(X), Y):
        first.add_example(x, y)
    first.train_steps(300)
    path = tmp_path / 'online.npz'
    assert first.checkpoint(path).written
    written = path.read_bytes()

    starting = fresh_model()  # normalisation 0 / 1
    trainer = OnlineTrainer(starting, 'adam', 1e-2, batch_size=32, buffer_size=1000)
    trainer.compare_with(ObstacleModel.load(path), 'the checkpoint file')
    for x, y in zip(starting.normalise(X), Y):
        trainer.add_example(x, y)
    trainer.train_steps(2)
    decision = trainer.checkpoint(path)
    assert not decision.written, decision.reason
    assert "clearly worse than the checkpoint file's" in decision.reason
    assert decision.reference_loss < 0.5 * decision.held_out_loss
    assert path.read_bytes() == written
    trainer.train_steps(500)  # once it is better, it is written, and becomes the reference
    decision = trainer.checkpoint(path)
    assert decision.written and '(the checkpoint file ' in decision.reason, decision.reason
    assert '(the last checkpoint ' in trainer.checkpoint(path).reason
    other = ObstacleModel.create(FEATURES, ('pole', 'dog'), hidden=4, rng=0)
    with pytest.raises(ValueError, match='other feature or class names'):
        trainer.compare_with(other, 'the checkpoint file')


def test_a_checkpoint_whose_held_out_loss_is_not_finite_is_refused(tmp_path):
    # Finite weights whose logits overflow on the held-out rows: the loss is NaN, which must
    # not pass for 'no held-out examples'.
    model = fresh_model()
    trainer = OnlineTrainer(model, 'adam', 1e-2, batch_size=32, buffer_size=1000)
    X, Y = separable_examples(1000)
    for x, y in zip(model.normalise(X), Y):
        trainer.add_example(x, y)
    trainer.train_steps(50)
    path = tmp_path / 'online.npz'
    assert trainer.checkpoint(path).written
    for param in trainer.model.network.parameters():
        param *= 1e200
    decision = trainer.checkpoint(path)
    assert not decision.written and 'clearly worse' in decision.reason, decision.reason
    assert not math.isfinite(decision.held_out_loss)


def test_a_checkpoint_without_held_out_rows_is_written_only_if_it_replaces_none(tmp_path):
    trainer = OnlineTrainer(fresh_model(), buffer_size=10)
    path = tmp_path / 'm.npz'
    decision = trainer.checkpoint(path)
    assert decision.written and 'unguarded' in decision.reason
    assert math.isnan(decision.held_out_loss)
    written = path.read_bytes()
    decision = trainer.checkpoint(path)  # now there is a checkpoint to keep
    assert not decision.written and 'no held-out examples yet' in decision.reason
    # A model change: a new trainer with an empty buffer, guarded against the file, must not
    # replace it before it can be compared (the soak test's reload wrote 2 s of training).
    changed = OnlineTrainer(fresh_model(), buffer_size=10)
    changed.compare_with(ObstacleModel.load(path), 'the checkpoint file')
    changed.stats.steps = 40
    decision = changed.checkpoint(path)
    assert not decision.written, decision.reason
    assert decision.reason == ('not written: no held-out examples yet to compare with the '
                               'checkpoint file')
    assert changed.stats.checkpoints_refused == 0 and path.read_bytes() == written


def test_adding_examples_while_training_runs_in_another_thread_is_safe():
    model = fresh_model()
    trainer = OnlineTrainer(model, 'adam', 1e-2, batch_size=16, buffer_size=300)
    X, Y = separable_examples(3000)
    X = model.normalise(X)
    for x, y in zip(X[:50], Y[:50]):
        trainer.add_example(x, y)
    done = threading.Event()

    def feed():
        for x, y in zip(X[50:], Y[50:]):
            trainer.add_example(x, y)
        done.set()

    thread = threading.Thread(target=feed)
    thread.start()
    rounds = 0
    while not done.is_set() or rounds < 20:
        trainer.train_steps(5)
        rounds += 1
    thread.join()
    assert trainer.stats.examples_added == 3000 and trainer.stats.discarded_updates == 0
    assert trainer.stats.steps == 5 * rounds
    assert np.isfinite(trainer.stats.last_loss)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match='optimizer'):
        OnlineTrainer(fresh_model(), optimizer='lbfgs')
    with pytest.raises(ValueError, match='batch size'):
        OnlineTrainer(fresh_model(), batch_size=0)
    with pytest.raises(ValueError, match='capacity'):
        ReplayBuffer(1, 2, 3)
    with pytest.raises(ValueError, match='held_out_block'):
        ReplayBuffer(100, 2, 3, held_out_block=0)
    with pytest.raises(ValueError, match='pos_weight'):
        OnlineTrainer(fresh_model(), pos_weight='inverse')


def test_features_the_model_ignores_stay_ignored_while_training_online():
    # f5 was constant offline: its first-layer row is 0 and its normalisation a placeholder
    # (std 1). Online, where f5 varies, the row used to train on raw values: changing f5 from
    # 50 to 90 then moved a probability by 0.99, while the metadata still said "ignored".
    from obstacle_classifier.datasets import Dataset
    from obstacle_classifier.training import TrainConfig, train_model
    rng = np.random.default_rng(0)
    X = np.c_[rng.standard_normal((300, 5)), np.full(300, 50.0)]
    Y = (X[:, :2] > 0.5).astype(np.uint8)
    names = [f'f{i}' for i in range(6)]
    model = train_model(Dataset(X=X, Y=Y, feature_names=names, class_names=['a', 'b']),
                        TrainConfig(hidden=8, epochs=3, val_fraction=0)).model
    assert model.metadata['constant_features'] == ['f5']
    trainer = OnlineTrainer(model, batch_size=16, buffer_size=500, seed=0)
    X_online = np.c_[rng.standard_normal((200, 5)), rng.uniform(0, 100, 200)]
    Y_online = (X_online[:, 5:6] > 50).repeat(2, axis=1).astype(np.uint8)
    for x, y in zip(model.normalise(X_online), Y_online):
        trainer.add_example(x, y)
    assert trainer.train_steps(200) is not None
    trained = trainer.snapshot()
    assert not np.array_equal(trained.network.linears[0].W, model.network.linears[0].W)
    assert not trained.network.linears[0].W[5].any()
    at_50, at_90 = X_online.copy(), X_online.copy()
    at_50[:, 5], at_90[:, 5] = 50.0, 90.0
    assert np.array_equal(trained.predict_proba(at_50), trained.predict_proba(at_90))


def test_a_checkpoint_file_worth_keeping_is_never_replaced(tmp_path):
    # A model change to other classes: the file holds the old model's training, which the
    # first unguarded checkpoint of the new one used to replace.
    model = fresh_model()
    trainer = OnlineTrainer(model, batch_size=4, buffer_size=40, held_out_every=2,
                            held_out_block=2)
    for k in range(20):
        trainer.add_example(np.array([k % 3, 1.0]), np.array([1, 0, k % 2], dtype=np.uint8))
    trainer.train_steps(5)
    path = tmp_path / 'online.npz'
    path.write_bytes(b'the old model')
    trainer.keep_file(f'{path} holds a model of other classes')
    decision = trainer.checkpoint(path)
    assert not decision.written and decision.reason.startswith('refused: ')
    assert 'other classes' in decision.reason and trainer.stats.checkpoints_refused == 1
    assert path.read_bytes() == b'the old model'


def test_an_infinite_pos_weight_clip_is_refused_as_offline():
    with pytest.raises(ValueError, match='max_pos_weight must be >= 1 and finite'):
        OnlineTrainer(fresh_model(), max_pos_weight=math.inf)
