"""Online training in the live node, as real processes: simulator + classifier, real DDS.

The classifier starts from a freshly initialised model (the default model's feature names,
classes and input normalisation, new random weights), learns from the simulator's ground truth
on ``obstacle_labels`` and writes checkpoints. Readings are validated and ticks with unusable
features are skipped, so a NaN cannot come in with the data; it comes from the arithmetic: a
model whose outputs overflow makes every batch loss non-finite, and the node must discard those
updates and keep serving.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Optional

import numpy as np

import ros_helpers

ros_helpers.import_rclpy()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.event_handler import PublisherEventCallbacks  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from std_msgs.msg import Float32, String, UInt8MultiArray  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from obstacle_classifier import paths  # noqa: E402
from obstacle_classifier.model import ObstacleModel  # noqa: E402
from obstacle_classifier.nn import BCEWithLogitsLoss  # noqa: E402
from obstacle_classifier.ros_io import output_qos  # noqa: E402
from obstacle_classifier.simulation import simulate_dataset  # noqa: E402

NODE = 'obstacle_classifier.classifier_node'
SIMULATOR = 'obstacle_classifier.simulator_node'
STARTUP_TIMEOUT = 60.0
RATE_HZ = 20.0
S = 1_000_000_000
STRICT_WARNINGS = ros_helpers.STRICT_WARNINGS_ENV
TRAINING = 'obstacle_classifier: training'
SIMULATOR_SEED = 11


def fresh_model(path: Path, seed: int = 3, hidden: Optional[int] = None) -> ObstacleModel:
    """New random weights with the default model's contract and input normalisation."""
    default = ObstacleModel.load(paths.config_path('default_model.npz'))
    model = ObstacleModel.create(default.feature_names, default.class_names,
                                 hidden=hidden or default.network.h,
                                 dtype=default.network.dtype, rng=seed,
                                 input_mean=default.input_mean, input_std=default.input_std)
    model.save(path)
    return model


def mean_loss(model: ObstacleModel, data) -> float:
    """Mean per-tick loss (sum over classes) of ``model`` on a simulated data set."""
    logits = model.network.logits(model.normalise(data.X), cache=False)
    return BCEWithLogitsLoss('sum').forward(logits, data.Y.astype(np.float64)) / len(data.X)


def start(procs, namespace: str, model_path: Path, checkpoint: Path, **parameters):
    simulator = procs.start_module('simulator', SIMULATOR, [
        '--ros-args', '-r', f'__ns:=/{namespace}', '-p', f'seed:={SIMULATOR_SEED}'],
        extra_env=STRICT_WARNINGS)
    settings = {'model_path': model_path, 'rate_hz': RATE_HZ, 'train.enabled': 'true',
                'train.checkpoint_path': checkpoint, 'train.steps_per_second': 50.0,
                'train.lr': 0.003, **parameters}
    args = ['--ros-args', '-r', f'__ns:=/{namespace}']
    for name, value in settings.items():
        args += ['-p', f'{name}:={value}']
    classifier = procs.start_module('classifier', NODE, args, extra_env=STRICT_WARNINGS)
    return simulator, classifier


def change_model(ros, node: str, path: Path) -> None:
    """Set the node's model_path (a model change while it trains)."""
    request = SetParameters.Request(
        parameters=[Parameter('model_path', value=str(path)).to_parameter_msg()])
    assert ros.call(SetParameters, f'{node}/set_parameters', request).results[0].successful


class Watcher:
    """Tick stamps, training losses and this node's training diagnostics, in the test node."""

    def __init__(self, ros, namespace: str) -> None:
        self.tick_stamps: list[int] = []
        self.losses: list[float] = []
        self.training: list[dict] = []
        hardware_id = f'/{namespace}/obstacle_classifier'
        ros.node.create_subscription(
            String, f'/{namespace}/obstacles',
            lambda m: self.tick_stamps.append(
                json.loads(m.data)['stamp']['sec'] * S + json.loads(m.data)['stamp']['nanosec']),
            output_qos(50))
        ros.node.create_subscription(Float32, f'/{namespace}/training/loss',
                                     lambda m: self.losses.append(m.data), 50)

        def on_diagnostics(msg):
            for status in msg.status:
                if status.hardware_id == hardware_id and status.name == TRAINING:
                    values = {kv.key: kv.value for kv in status.values}
                    values['level'] = int.from_bytes(status.level, 'little')
                    values['message'] = status.message
                    self.training.append(values)
        ros.node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 50)


def test_training_from_the_simulator_learns_checkpoints_and_keeps_the_tick_rate(
        ros, ros_processes, tmp_path):
    namespace = ros_helpers.unique_name('online')
    model_path, checkpoint = tmp_path / 'fresh.npz', tmp_path / 'online.npz'
    fresh = fresh_model(model_path)
    watcher = Watcher(ros, namespace)
    bad_labels = ros.node.create_publisher(String, f'/{namespace}/obstacle_labels', 10)
    # A best-effort label publisher cannot reach the reliable label subscription: reported.
    ros.node.create_publisher(String, f'/{namespace}/obstacle_labels', qos_profile_sensor_data,
                              event_callbacks=PublisherEventCallbacks(
                                  incompatible_qos=lambda event: None))
    simulator, classifier = start(ros_processes, namespace, model_path, checkpoint,
                                  **{'train.checkpoint_period_s': 2.0})
    assert ros.spin_until(lambda: len(watcher.losses) >= 5, timeout=STARTUP_TIMEOUT), \
        classifier.report() + simulator.report()
    for _ in range(5):
        bad_labels.publish(String(data='pedestrian,unicorn'))
        ros.spin_for(0.05)

    # Ticks keep their rate while training runs: counted from the stamps (the node's timer).
    window_start = watcher.tick_stamps[-1]
    ros.spin_for(8.0)
    stamps = np.array([s for s in watcher.tick_stamps if s >= window_start])
    span_s = (stamps[-1] - stamps[0]) / S
    rate = (len(stamps) - 1) / span_s
    assert abs(rate - RATE_HZ) <= 0.1 * RATE_HZ, f'{rate:.2f} ticks/s while training'
    # No long stall either (a single gap of 3 periods has been seen once in ~6 runs).
    gaps = np.diff(stamps) / S
    assert gaps.max() < 5.0 / RATE_HZ, f'{gaps.max():.3f} s between two ticks'

    # Batch losses are published, finite, one per training round.
    assert np.all(np.isfinite(watcher.losses)) and len(watcher.losses) > 50

    assert ros.spin_until(lambda: watcher.training and int(
        watcher.training[-1]['labels_rejected_unknown_class']) >= 5, timeout=10.0), \
        watcher.training[-1:]
    stats = watcher.training[-1]
    assert int(stats['steps']) > 100 and int(stats['discarded_updates']) == 0
    assert (stats['incompatible_qos_label_publishers'], stats['label_publishers']) == ('1', '3')
    assert stats['level'] == 1  # WARN: a label publisher has an incompatible QoS
    classifier.wait_for_output(r'offers QoS incompatible with the label subscription',
                               stream='stderr')
    assert int(stats['checkpoints_written']) >= 1, stats
    assert int(stats['examples']) > 50

    # A checkpoint appeared, is a normal model file, and is not the starting model.
    written = ObstacleModel.load(checkpoint)
    assert written.feature_names == fresh.feature_names
    assert written.version != fresh.version
    assert written.metadata['online_training']['steps'] > 0
    # The loss falls: on the stretch of this world the node has seen (its first 10 s, the
    # same features the node computes), the checkpoint's loss is far below the fresh model's.
    world = simulate_dataset(200, seed=SIMULATOR_SEED)
    before, after = mean_loss(fresh, world), mean_loss(written, world)
    assert after < 0.5 * before, (before, after)

    # Clean shutdown writes a last checkpoint (or says why it refused) and exits 0.
    classifier.send_sigint()
    assert classifier.wait(20.0) == 0, classifier.report()
    final = [line for line in classifier.stderr().splitlines() if 'checkpoint' in line]
    assert final and final[-1].split(': ', 2)[-1].startswith(
        ('written', 'refused', 'not written', 'not rewritten')), final  # unless nothing since
    ObstacleModel.load(checkpoint)
    assert 'Traceback' not in classifier.stderr()


def test_training_without_a_label_publisher_is_a_warning(ros, ros_processes, tmp_path):
    """A soak test saw the training status OK for the 20 s its label source was gone."""
    namespace = ros_helpers.unique_name('nolabels')
    model_path = tmp_path / 'fresh.npz'
    fresh_model(model_path)
    watcher = Watcher(ros, namespace)
    classifier = ros_processes.start_module('classifier', NODE, [
        '--ros-args', '-r', f'__ns:=/{namespace}', '-p', f'model_path:={model_path}',
        '-p', 'train.enabled:=true'], extra_env=STRICT_WARNINGS)
    assert ros.spin_until(lambda: watcher.training, timeout=STARTUP_TIMEOUT), classifier.report()
    assert watcher.training[-1]['level'] == 1
    assert watcher.training[-1]['message'] == f'no label publisher on /{namespace}/obstacle_labels'
    ros.node.create_publisher(String, f'/{namespace}/obstacle_labels', 10)
    reports = len(watcher.training)
    assert ros.spin_until(lambda: len(watcher.training) > reports + 1, timeout=30)
    assert watcher.training[-1]['message'] == 'no labelled examples for this model yet'


def test_kill_9_mid_run_leaves_a_loadable_checkpoint_and_multi_hot_labels_are_checked(
        ros, ros_processes, tmp_path):
    namespace = ros_helpers.unique_name('kill9')
    model_path, checkpoint = tmp_path / 'fresh.npz', tmp_path / 'online.npz'
    fresh = fresh_model(model_path, seed=5)
    watcher = Watcher(ros, namespace)
    truth: list[tuple[str, ...]] = []
    ros.node.create_subscription(
        String, f'/{namespace}/obstacle_labels',
        lambda m: truth.append(tuple(n for n in m.data.split(',') if n)), 10)
    multi_hot = ros.node.create_publisher(UInt8MultiArray, f'/{namespace}/truth_multi_hot', 10)
    simulator, classifier = start(ros_processes, namespace, model_path, checkpoint, **{
        'train.labels_topic': 'truth_multi_hot', 'train.labels_format': 'multi_hot',
        # Held-out rows after 10 labels (a held-out ring of 20, blocks of 5): from then on
        # every checkpoint has something to be compared on, and is written unless worse.
        'train.checkpoint_period_s': 0.2, 'train.buffer_size': 200})

    def relay():  # the simulator's truth as multi-hot, plus a few of the wrong width
        while truth:
            names = truth.pop(0)
            hot = [1 if name in names else 0 for name in fresh.class_names]
            multi_hot.publish(UInt8MultiArray(data=hot))
        return False

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not checkpoint.exists() and time.monotonic() < deadline:
        ros.spin_until(relay, timeout=0.1)
    assert checkpoint.exists(), classifier.report() + simulator.report()
    for _ in range(3):
        multi_hot.publish(UInt8MultiArray(data=[1, 0, 1]))
    # Checkpoints are written five times a second: kill at an arbitrary moment among them.
    rng = np.random.default_rng(int(time.time()))
    end = time.monotonic() + 2.0 + rng.uniform(0.0, 0.4)
    while time.monotonic() < end:
        ros.spin_until(relay, timeout=0.05)
    stats = watcher.training[-1]
    os.killpg(classifier.pid, signal.SIGKILL)
    assert classifier.wait(10.0) == -signal.SIGKILL
    loaded = ObstacleModel.load(checkpoint)
    assert loaded.version != fresh.version
    assert int(stats['labels_rejected_wrong_width']) == 3, stats
    assert int(stats['checkpoints_written']) >= 3, stats

    # A kill in the middle of a write leaves the write's temporary file (rarely: the window is
    # short, so one is planted as the killed write leaves it). The next start removes it.
    leftovers = list(tmp_path.glob('.online.npz.*.tmp'))
    planted = tmp_path / '.online.npz.k9dead00.tmp'  # as mkstemp names them: 8 characters
    planted.write_bytes(b'half a model')
    os.utime(planted, (time.time() - 3600, time.time() - 3600))
    for leftover in leftovers:
        os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    restarted = ros_processes.start_module('restarted', NODE, [
        '--ros-args', '-r', f'__ns:=/{namespace}', '-p', f'model_path:={checkpoint}',
        '-p', 'train.enabled:=true', '-p', f'train.checkpoint_path:={checkpoint}'],
        extra_env=STRICT_WARNINGS)
    restarted.wait_for_output(f'removed {re.escape(str(planted))}', stream='stderr',
                              timeout=STARTUP_TIMEOUT)
    assert not list(tmp_path.glob('.online.npz.*.tmp'))
    restarted.send_sigint()
    assert restarted.wait(20.0) == 0, restarted.report()


def test_non_finite_batch_losses_are_discarded_and_the_node_keeps_serving(
        ros, ros_processes, tmp_path):
    namespace = ros_helpers.unique_name('nonfinite')
    model_path, checkpoint = tmp_path / 'overflowing.npz', tmp_path / 'online.npz'
    model = fresh_model(model_path)
    # Output weights and biases at 1e308: every logit is 1e308 or +inf, so each batch's loss
    # is inf or NaN (inf - inf) however the labels fall; the predictions (sigmoid) stay 1.0.
    last = model.network.layers[-2]
    last.W[...] = 1e308
    last.b[...] = 1e308
    model.save(model_path)
    watcher = Watcher(ros, namespace)
    reports = ros.collect(String, f'/{namespace}/obstacles', 100)
    simulator, classifier = start(ros_processes, namespace, model_path, checkpoint,
                                  **{'train.checkpoint_period_s': 0.5})
    assert ros.spin_until(lambda: watcher.training and int(
        watcher.training[-1]['discarded_updates']) >= 50, timeout=STARTUP_TIMEOUT), \
        watcher.training[-1:] or classifier.report() + simulator.report()
    stats = watcher.training[-1]
    assert int(stats['steps']) == 0 and int(stats['examples']) > 0, stats
    assert stats['level'] == 1, stats  # WARN: updates discarded
    assert not watcher.losses  # a discarded update publishes no loss
    # Inference went on with the last good weights (the starting ones), tick after tick.
    count = len(reports)
    ros.spin_for(1.0)
    served = [json.loads(m.data) for m in reports[count:]]
    assert len(served) >= 0.9 * RATE_HZ, len(served)
    assert all(r['status'] == 'ok' and set(r['probabilities'].values()) == {1.0} for r in served)
    # Nothing was learnt, so nothing is checkpointed, at the period or at shutdown.
    classifier.send_sigint()
    assert classifier.wait(20.0) == 0, classifier.report()
    assert not checkpoint.exists()
    assert 'Traceback' not in classifier.stderr()


def test_a_model_change_keeps_the_checkpoint_until_the_new_model_has_trained(
        ros, ros_processes, tmp_path):
    namespace = ros_helpers.unique_name('swap')
    node = f'/{namespace}/obstacle_classifier'
    model_path, checkpoint, other = tmp_path / 'fresh.npz', tmp_path / 'online.npz', \
        tmp_path / 'other.npz'
    fresh_model(model_path)
    fresh_model(other, seed=9)
    # The simulator's truth reaches the trainer only while the test relays it.
    truth: list[str] = []
    ros.node.create_subscription(String, f'/{namespace}/obstacle_labels',
                                 lambda m: truth.append(m.data), 10)
    relayed = ros.node.create_publisher(String, f'/{namespace}/relayed_labels', 10)
    simulator, classifier = start(ros_processes, namespace, model_path, checkpoint, **{
        'train.labels_topic': 'relayed_labels', 'train.checkpoint_period_s': 0.2})

    def relay():
        while truth:
            relayed.publish(String(data=truth.pop(0)))
        return checkpoint.exists()

    assert ros.spin_until(relay, timeout=STARTUP_TIMEOUT), \
        classifier.report() + simulator.report()
    ros.spin_for(1.0)  # no more labels: the trainer goes on with its buffer, checkpointing
    change_model(ros, node, other)
    # A model change does not wait for the training round in progress: the previous model's
    # last round (and checkpoint) may end just after it.
    ros.spin_for(0.5)
    trained = checkpoint.read_bytes()
    assert ObstacleModel.load(checkpoint).metadata['online_training']['steps'] > 0
    # The new model has no examples and trains nothing: neither the period nor a clean
    # shutdown may overwrite the trained checkpoint with it.
    ros.spin_for(1.0)
    classifier.send_sigint()
    assert classifier.wait(20.0) == 0, classifier.report()
    assert checkpoint.read_bytes() == trained
    assert 'not rewritten, no training step since' in classifier.stderr()


def test_a_change_to_a_model_of_other_classes_keeps_the_checkpoint_and_warns(
        ros, ros_processes, tmp_path):
    # The labeller kept the old class names: every label naming a class was rejected
    # (unknown_class), the empty ones taught the new model that nothing is ever there, its
    # first checkpoint replaced the trained file, and the training status stayed OK.
    namespace = ros_helpers.unique_name('renamed')
    model_path, checkpoint, other = (tmp_path / name
                                     for name in ('fresh.npz', 'online.npz', 'renamed.npz'))
    default = fresh_model(model_path)
    ObstacleModel.create(default.feature_names, tuple(f'x_{c}' for c in default.class_names),
                         hidden=default.network.h, rng=9, input_mean=default.input_mean,
                         input_std=default.input_std).save(other)
    watcher = Watcher(ros, namespace)
    simulator, classifier = start(ros_processes, namespace, model_path, checkpoint, **{
        'train.checkpoint_period_s': 0.2})
    assert ros.spin_until(checkpoint.exists, timeout=STARTUP_TIMEOUT), \
        classifier.report() + simulator.report()
    change_model(ros, f'/{namespace}/obstacle_classifier', other)
    classifier.wait_for_output('no checkpoints: .*holds a model of other features or classes',
                               stream='stderr')
    ros.spin_for(0.5)  # the old model's last round may still end with a checkpoint
    trained = checkpoint.read_bytes()
    since = len(watcher.training)
    assert ros.spin_until(lambda: any(
        'labels rejected since the last report' in status['message']
        and 'unknown_class' in status['message'] and status['level'] == 1
        for status in watcher.training[since:]), timeout=15.0), watcher.training[-3:]
    classifier.send_sigint()
    assert classifier.wait(20.0) == 0, classifier.report()
    assert checkpoint.read_bytes() == trained
    assert ObstacleModel.load(checkpoint).class_names == default.class_names


def test_a_model_reload_does_not_wait_for_a_long_training_round(ros, ros_processes, tmp_path):
    # In-range settings that make one round (50 steps of a ~800-row batch through a 1024-wide
    # network) take several seconds: neither a reload nor the tick may wait for it.
    namespace = ros_helpers.unique_name('long_round')
    node = f'/{namespace}/obstacle_classifier'
    model_path, checkpoint = tmp_path / 'wide.npz', tmp_path / 'online.npz'
    fresh_model(model_path, hidden=1024)
    watcher = Watcher(ros, namespace)
    labels = ros.node.create_publisher(String, f'/{namespace}/obstacle_labels', 10)
    simulator, classifier = start(ros_processes, namespace, model_path, checkpoint, **{
        'train.batch_size': 1000, 'train.steps_per_second': 500.0})
    assert ros.spin_until(lambda: len(watcher.tick_stamps) > 10, timeout=STARTUP_TIMEOUT), \
        classifier.report() + simulator.report()
    for _ in range(200):  # a flood of labels: rows for full batches
        for _ in range(5):
            labels.publish(String(data='pole'))
        ros.spin_for(0.01)
    # The first round ends (its loss is published); the next one, on full batches, begins.
    assert ros.spin_until(lambda: watcher.losses, timeout=60.0), watcher.training[-1:]
    began = time.monotonic()
    ticks_before = len(watcher.tick_stamps)
    response = ros.call(Trigger, f'{node}/reload_model', Trigger.Request(), timeout=60.0)
    answered_s = time.monotonic() - began
    ros.spin_for(1.0)
    assert response.success, response.message
    assert answered_s < 2.0, f'the reload waited {answered_s:.1f} s for the training round'
    assert len(watcher.tick_stamps) - ticks_before >= 15, 'the tick waited'
    classifier.send_sigint()
    assert classifier.wait(60.0) == 0, classifier.report()
    assert 'Traceback' not in classifier.stderr()
