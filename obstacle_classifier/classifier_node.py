"""The on-robot obstacle classifier: sensor topics in, obstacle labels out, at a fixed rate.

Thin glue around the shared :class:`~obstacle_classifier.features.FeaturePipeline` and an
:class:`~obstacle_classifier.model.ObstacleModel`:

* one subscription per input of the feature config, taking serialized messages: each one goes
  through :func:`~obstacle_classifier.cdr.cdr_reader` (the header stamp and the config's
  fields read from the CDR bytes, exactly ``extract_values`` of the deserialised message) and
  ``FeaturePipeline.add`` (which validates it) and nothing else;
* a timer at ``rate_hz`` on the node's clock (so it follows ``/clock`` with ``use_sim_time``):
  ``pipeline.tick(now)`` -> ``model.predict_proba`` -> ``model.decide`` -> publish;
* ``/diagnostics`` at 1 Hz on a steady clock (it keeps reporting while sim time is paused).

Topics (relative names resolve in the node's namespace):

==================================  ============================================================
``obstacles`` (std_msgs/String)     JSON per tick: ``{"stamp": {"sec", "nanosec"}, "labels":
                                    [...], "probabilities": {class: p}, "stale_inputs": [...],
                                    "status": "ok" | "skipped" | "no_model"}``. The stamp is the
                                    tick time on the node's clock. Published on *every* tick, so
                                    a consumer can tell "nothing there" (status ok, no labels)
                                    from "cannot tell" (status skipped / no_model: labels and
                                    probabilities empty).
``obstacle_probabilities``          std_msgs/Float32MultiArray, class order; only on 'ok' ticks
                                    (and, like ``obstacle_features``, only built while it has a
                                    subscriber: these topics are volatile).
``obstacle_classes``                std_msgs/String, JSON list of class names; transient-local
                                    (published when a model is loaded).
``/diagnostics``                    diagnostic_msgs/DiagnosticArray at 1 Hz.
``~/reload_model``                  std_srvs/Trigger: reload ``model_path``; a bad file is
                                    refused with the reason and the old model keeps serving.
``obstacle_labels`` (input, with    ground truth to learn from (``train.labels_topic``):
``train.enabled``)                  std_msgs/String of comma-separated class names, or
                                    std_msgs/UInt8MultiArray multi-hot (``train.labels_format``).
``training/loss``                   std_msgs/Float32: the last batch loss, after each training
                                    round (with ``train.enabled``).
==================================  ============================================================

Online training (``train.enabled``, off by default; see
:mod:`~obstacle_classifier.online_training`): each tick's normalised features go into a small
ring; a label is paired with the tick nearest its arrival (within ``train.max_label_delay``) and
stored in a bounded replay buffer. A dedicated training thread trains a private copy of the
model and swaps a snapshot in as the serving model: the tick never waits on training beyond
reading one reference. Checkpoints (atomic, guarded by a held-out slice) go to
``train.checkpoint_path`` every ``train.checkpoint_period_s`` and on a clean shutdown.
"""
from __future__ import annotations

import array
import bisect
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (QoSCompatibility, QoSPolicyKind, QoSProfile, ReliabilityPolicy,
                       qos_check_compatible, qos_policy_name_from_kind)
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.subscription import MessageInfo
from rclpy.validate_topic_name import validate_topic_name
from rosgraph_msgs.msg import Clock as ClockMessage
from std_msgs.msg import Float32, Float32MultiArray, MultiArrayDimension, String, UInt8MultiArray
from std_srvs.srv import Trigger

from obstacle_classifier import paths
from obstacle_classifier.atomic import remove_stale_temporaries, write_destination
from obstacle_classifier.features import (READING_REFUSALS, REJECTION_REASONS, FeatureConfig,
                                          FeaturePipeline, InputSpec, InputStats,
                                          ReadingRefused)
from obstacle_classifier.model import ModelFileError, ObstacleModel
from obstacle_classifier.nn.optim import OPTIMIZERS
from obstacle_classifier.online_training import (OnlineTrainer, TickRing, parse_label_names,
                                                 parse_multi_hot)
from obstacle_classifier.ros_io import (classes_qos, diagnostic_status,
                                        drop_negative_clock_messages, encode_classes,
                                        encode_features, encode_obstacles, has_subscribers,
                                        input_qos, message_class, message_type_name,
                                        output_qos, publish_unless_shut_down, qos_text,
                                        run_node, serialized_reader, spin_on_events,
                                        stamp_to_ns, timer_callback, unless_shut_down,
                                        use_sim_time_change_refused, warn_undeclared_parameters)
from obstacle_classifier.sim_ticks import Event, SimTimeTicker

NODE_NAME = 'obstacle_classifier'
DEFAULT_RATE_HZ = 20.0
RATE_RANGE_HZ = (0.5, 500.0)
#: ``threshold`` value meaning "use the model's own per-class thresholds" (ROS parameters
#: cannot be None).
USE_MODEL_THRESHOLDS = -1.0
DIAGNOSTICS_PERIOD_S = 1.0
REJECTION_WARN_PERIOD_S = 5.0
#: Reasons the node itself refuses a reading for, before the pipeline sees it.
NODE_REJECTION_REASONS = ('no_stamp', 'malformed')
#: The QoS policies of an input a params file may override (qos_overrides.<topic>.subscription.*)
_OVERRIDABLE_QOS = (QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY,
                    QoSPolicyKind.DURABILITY)
_PROCESSING_HISTORY = 1024  # per-tick processing times kept for the p50 / p99 in diagnostics
#: Upper edges (us) of the processing-time histogram in diagnostics: counts since start-up, so a
#: consumer gets exact fractions over any span of reports (one more bucket counts the rest).
PROCESSING_HISTOGRAM_EDGES_US = (25, 50, 75, 100, 125, 150, 200, 300, 500, 1000, 2000, 5000,
                                 10000)
LABEL_FORMATS = ('names', 'multi_hot')
TRAINING_PERIOD_S = 0.1  # one training round (steps_per_second / 10 steps, a snapshot) per period
MAX_LABEL_DELAY_RANGE_S = (0.001, 1.0)
#: Label rejections for want of a tick to pair with; the training status WARNs of them in a
#: report period only from this many, and this share of the labels received in it.
UNPAIRED_LABEL_REASONS = ('no_tick_near', 'tick_skipped', 'labels_outpace_ticks')
UNPAIRED_WARN_MIN, UNPAIRED_WARN_SHARE = 3, 0.1
#: With use_sim_time: what waits for a later message (see sim_ticks) runs after this (steady)
#: wait. Long: a busy executor must not release it while the message that would is queued.
SIM_TICK_MAX_WAIT_S = 0.5
SIM_TICK_CHECK_PERIOD_S = 0.1
#: /clock messages queued by the node's own clock subscription (best effort: it matches every
#: publisher); deep, so that a busy moment does not lose the order of the bag.
CLOCK_QUEUE_DEPTH = 1000

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


class ModelRefused(ValueError):
    """A model file that cannot serve: unreadable, invalid, or built for other features."""


def _default_path(name: str) -> str:
    """The installed ``config/<name>``, or '' when no share directory can be found."""
    try:
        return str(paths.config_path(name))
    except FileNotFoundError:
        return ''


def _check_training_parameters(node: Any) -> None:
    """ValueError (or rclpy's InvalidTopicNameException) for a ``train.*`` value the online
    training could not run with, whether it is enabled or not: a params file that sets them
    for later must not hold a silent mistake (ranges and types rclpy checks itself)."""
    value = lambda name: node.get_parameter(f'train.{name}').value  # noqa: E731
    if value('labels_format') not in LABEL_FORMATS:
        raise ValueError(f'train.labels_format must be one of {LABEL_FORMATS}, got '
                         f'{value("labels_format")!r}')
    if value('optimizer') not in OPTIMIZERS:
        raise ValueError(f'train.optimizer must be one of {OPTIMIZERS}, got '
                         f'{value("optimizer")!r}')
    validate_topic_name(value('labels_topic'))


class _Publishers(NamedTuple):
    """Publishers on a topic, from the graph (see ``ClassifierNode.publishers_of``)."""

    total: int
    other_type: int        # of another message type: none of their messages arrive
    incompatible_qos: int  # with QoS the subscription cannot match: none arrive either
    delivering: int        # the rest: their messages all arrive, on the one subscription


@dataclass(eq=False)
class _InputState:
    """Bookkeeping of one subscribed input (all counters since start-up)."""

    spec: InputSpec
    topic: str = ''
    received: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    last_receive_stamp_ns: int = -1  # receive-stamped inputs: stamps are made strictly increasing
    qos: Optional[QoSProfile] = None
    incompatible_policy: str = ''
    incompatible_type: int = 0
    received_at_report: int = 0
    rejected_at_report: int = 0
    truncated_at_report: int = 0

    def __post_init__(self) -> None:
        self.rejected = {reason: 0 for reason in
                         REJECTION_REASONS[1:] + READING_REFUSALS + NODE_REJECTION_REASONS}

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class _OnlineTraining:
    """The node's online-training glue: label subscription, tick ring, training thread.

    Threads: ``record_tick``, ``on_label`` and ``restart_from`` run in the executor thread,
    like the tick; ``train_round`` runs in a dedicated training thread (started by :meth:`start`,
    one round every ``TRAINING_PERIOD_S`` on the steady clock). ``self._round_lock`` is held
    for a whole round (its steps and a checkpoint write) and is never taken in the executor
    thread until shutdown; ``self._swap_lock`` guards only the hand-over of a trainer (a model
    change) and of a snapshot to inference, a few assignments. So neither a tick nor a model
    change waits for training: a round still running on the previous model ends without
    swapping in its snapshot. A plain thread rather than a MultiThreadedExecutor: the tick
    then keeps the cheap event-driven executor (see
    :func:`~obstacle_classifier.ros_io.event_driven_executor`).
    """

    def __init__(self, node: 'ClassifierNode') -> None:
        self._node = node
        value = lambda name: node.get_parameter(f'train.{name}').value  # noqa: E731
        self.labels_format = value('labels_format')  # (checked: _check_training_parameters)
        self.optimizer = value('optimizer')
        self.lr = float(value('lr'))
        self.batch_size = int(value('batch_size'))
        self.buffer_size = int(value('buffer_size'))
        self.max_delay_ns = int(round(float(value('max_label_delay')) * 1e9))
        self.steps_per_round = float(value('steps_per_second')) * TRAINING_PERIOD_S
        self.checkpoint_period_ns = int(float(value('checkpoint_period_s')) * 1e9)
        path = value('checkpoint_path')
        self.checkpoint_path = os.path.expanduser(path) if path else ''
        if self.checkpoint_path:
            self._remove_leftovers(node.get_logger())
            if not self._checkpoint_directory_exists():
                node.get_logger().error(
                    f'checkpoint directory of {self.checkpoint_path} does not exist: every '
                    'checkpoint will fail until it does (the training is lost at exit)')
        self._step_credit = 0.0
        self._last_checkpoint_ns = time.monotonic_ns()
        # stats.steps at the last checkpoint or model change: a checkpoint needs steps since.
        self._checkpointed_steps = 0
        self._round_lock = threading.Lock()
        self._swap_lock = threading.Lock()
        self._finished = False
        self.trainer: Optional[OnlineTrainer] = None
        self.ring: Optional[TickRing] = None
        self.rejected_without_model = 0
        self._discarded_at_report = 0  # discarded updates at the last status report
        self._received_at_report = 0    # labels received, and rejected by reason, likewise
        self._other_type_publishers = 0  # label publishers of another type, at the last report
        self._rejected_at_report: dict[str, int] = {}
        if node._model is not None:
            self.restart_from(node._model)
        else:
            node.get_logger().error('train.enabled, but no model serves: labels are rejected '
                                    'until a model is loaded')

        msg_type = String if self.labels_format == 'names' else UInt8MultiArray
        self.msg_type = message_type_name(msg_type)
        self.incompatible_policy = ''  # of the last incompatible label publisher reported
        self.subscription = node.create_subscription(
            msg_type, value('labels_topic'), self.on_label, 10,
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos))
        self.loss_pub = node.create_output(Float32, 'training/loss', QoSProfile(depth=10))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='online_training', daemon=True)
        where = (f'checkpoints to {self.checkpoint_path} every '
                 f'{self.checkpoint_period_ns / 1e9:g} s' if self.checkpoint_path
                 else 'NO checkpoints (train.checkpoint_path is empty)')
        node.get_logger().info(
            f'online training from {self.subscription.topic_name} ({self.labels_format}): '
            f'{self.optimizer} lr {self.lr:g}, batch {self.batch_size}, '
            f'{self.steps_per_round / TRAINING_PERIOD_S:g} steps/s, buffer {self.buffer_size}; '
            f'{where}')

    # -- default callback group (with the tick) -----------------------------------------------

    def restart_from(self, model: ObstacleModel) -> None:
        """Train a private copy of ``model`` from now on (a new model or start-up); does not
        wait for a training round in progress."""
        ring_capacity = math.ceil(self.max_delay_ns / 1e9 * RATE_RANGE_HZ[1]) + 2
        trainer = OnlineTrainer(model, self.optimizer, self.lr, self.batch_size,
                                self.buffer_size)
        self._guard_against_the_checkpoint_file(trainer)
        ring = TickRing(ring_capacity, model.n_features, model.network.dtype)
        with self._swap_lock:
            if self.trainer is not None:  # the counters describe the node's life, not one model
                trainer.stats = self.trainer.stats
            self.trainer, self.ring = trainer, ring
            # The new model has trained nothing yet: the checkpoint file keeps what the last
            # one wrote until it has.
            self._checkpointed_steps = trainer.stats.steps

    def _guard_against_the_checkpoint_file(self, trainer: OnlineTrainer) -> None:
        """Compare checkpoints with the file already at the checkpoint path (a previous run's
        or the previous model's training), not only with the model now starting."""
        if not self.checkpoint_path or not os.path.exists(self.checkpoint_path):
            return
        try:
            checkpoint = ObstacleModel.load(self.checkpoint_path)
        except (ModelFileError, OSError) as exc:
            self._node.get_logger().warning(
                f'checkpoint {self.checkpoint_path} cannot guard the checkpoints ({exc}): the '
                'first one written will replace it')
            return
        try:
            trainer.compare_with(checkpoint, 'the checkpoint file')
        except ValueError as exc:
            # Another model's training (a model change to other classes): not to be lost.
            why = (f'{self.checkpoint_path} holds a model of other features or classes ({exc}); '
                   'set train.checkpoint_path for this model')
            trainer.keep_file(why)
            self._node.get_logger().error(f'no checkpoints: {why}')

    def record_tick(self, stamp_ns: int, features: Optional[np.ndarray]) -> None:
        """One tick: normalised features (d,), or None when it produced no prediction."""
        if self.ring is not None:
            self.ring.record(stamp_ns, features)

    def on_label(self, msg: Any) -> None:
        trainer = self.trainer
        if trainer is None:
            self.rejected_without_model += 1
            return
        stats = trainer.stats
        stats.labels_received += 1
        arrival_ns = self._node._node_clock.now().nanoseconds
        if self.labels_format == 'names':
            labels, reason = parse_label_names(msg.data, trainer.class_names)
        else:
            labels, reason = parse_multi_hot(msg.data, len(trainer.class_names))
        if reason is None:
            features, reason = self.ring.nearest(arrival_ns, self.max_delay_ns)
        if reason is not None:
            trainer.reject(reason)
            self._node.get_logger().warning(
                f'label rejected ({reason}); {stats.labels_rejected_total} of '
                f'{stats.labels_received} so far', throttle_duration_sec=REJECTION_WARN_PERIOD_S)
            return
        trainer.add_example(features, labels)

    def _on_incompatible_qos(self, event: Any) -> None:
        self.incompatible_policy = qos_policy_name_from_kind(event.last_policy_kind)
        self._node.get_logger().warning(
            f'a publisher on {self.subscription.topic_name} offers QoS incompatible with the '
            f'label subscription (policy {self.incompatible_policy}; it asks for reliable, '
            'volatile): NONE of its labels will arrive.')

    # -- the training thread ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic() + TRAINING_PERIOD_S
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + TRAINING_PERIOD_S, time.monotonic())
            self.train_round()

    def train_round(self) -> None:
        """Some steps, a snapshot swapped in for inference, a checkpoint when due."""
        self._step_credit += self.steps_per_round
        steps = int(self._step_credit)
        self._step_credit -= steps
        node = self._node
        with self._round_lock:
            trainer = self.trainer
            if trainer is None or self._finished:
                return
            loss = trainer.train_steps(steps) if steps else None
            snapshot = trainer.snapshot()
            with self._swap_lock:
                if self.trainer is not trainer:
                    # The model changed during the round: its work belongs to the old model,
                    # and the steps it counted are not the new model's.
                    self._checkpointed_steps = self.trainer.stats.steps
                    return
                if snapshot is not None:
                    # Inference reads node._model once per tick: this is the only hand-over
                    # (a model change sets it after restart_from, so it wins).
                    node._model_version = snapshot.version
                    node._model = snapshot
            if loss is not None:
                publish_unless_shut_down(node, self.loss_pub, Float32(data=float(loss)))
            now_ns = time.monotonic_ns()
            if (self.checkpoint_path and trainer.stats.steps > self._checkpointed_steps
                    and now_ns - self._last_checkpoint_ns >= self.checkpoint_period_ns):
                self._last_checkpoint_ns = now_ns
                self._checkpoint(trainer)

    def finish(self) -> None:
        """Clean shutdown: stop the training thread, write a last (guarded) checkpoint."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)
        with self._round_lock:
            self._finished = True
            if self.trainer is None or not self.checkpoint_path:
                return
            if self.trainer.stats.steps > self._checkpointed_steps:
                self._checkpoint(self.trainer)
            else:
                self._logger().info(f'checkpoint {self.checkpoint_path}: not rewritten, no '
                                    'training step since the last one or the last model change')

    def _remove_leftovers(self, logger: Any) -> None:
        """Remove what checkpoint writes cut short left (``kill -9``, power loss), at start and
        before each checkpoint (one a quick respawn found too young to be sure of)."""
        for leftover in remove_stale_temporaries(self.checkpoint_path):
            logger.warning(f'removed {leftover}: a checkpoint write cut short (kill -9 or power '
                           'loss)')

    def _checkpoint_directory_exists(self) -> bool:
        return os.path.isdir(os.path.dirname(write_destination(self.checkpoint_path)) or '.')

    def _checkpoint(self, trainer: OnlineTrainer) -> None:
        self._checkpointed_steps = trainer.stats.steps
        self._remove_leftovers(self._logger())
        decision = trainer.checkpoint(self.checkpoint_path)
        logger = self._logger()
        message = f'checkpoint {self.checkpoint_path}: {decision.reason}'
        if decision.written:
            logger.info(message)
        else:
            logger.warning(message)

    def _logger(self):
        """The node's logger; after shutdown one that still reaches stderr."""
        logger = self._node.get_logger()
        if not self._node.context.ok():  # after SIGINT: /rosout is gone, stderr still works
            logger = get_logger(f'{logger.name}_shutdown')
        return logger

    # -- diagnostics ---------------------------------------------------------------------------

    def status(self, hardware_id: str) -> DiagnosticStatus:
        trainer = self.trainer
        if trainer is None:
            return diagnostic_status(self._node.status_name('training'), ERROR,
                                     'no model to train', hardware_id,
                                     {'labels_rejected_no_model': self.rejected_without_model})
        stats = trainer.stats
        discarded_now = stats.discarded_updates - self._discarded_at_report
        self._discarded_at_report = stats.discarded_updates
        received_now = stats.labels_received - self._received_at_report
        rejected_now = {reason: count - self._rejected_at_report.get(reason, 0)
                        for reason, count in stats.labels_rejected.items()}
        self._received_at_report = stats.labels_received
        self._rejected_at_report = dict(stats.labels_rejected)
        rejected_total_now = sum(rejected_now.values())
        # A label of unknown content is a labeller problem whatever the count; one that found
        # no tick to pair with happens now and then (the first label of a replay, a label
        # timer's late first call), and is one only when it is a good share of them.
        unpaired = sum(rejected_now[reason] for reason in UNPAIRED_LABEL_REASONS)
        labels_wrong = rejected_total_now > unpaired or (
            unpaired >= UNPAIRED_WARN_MIN and unpaired >= UNPAIRED_WARN_SHARE * received_now)
        publishers, other_type, incompatible_qos, _ = self._node.publishers_of(
            self.subscription.topic_name, self.msg_type, self.subscription.qos_profile)
        self._other_type_publishers = self._node.note_other_type(
            'labels (train.labels_format)', self.subscription.topic_name, self.msg_type,
            self._other_type_publishers, other_type)
        values: dict[str, Any] = {
            'labels_topic': self.subscription.topic_name, 'labels_format': self.labels_format,
            'label_publishers': publishers,
            'incompatible_qos_label_publishers': incompatible_qos,
            'other_type_label_publishers': other_type,
            'labels_received': stats.labels_received,
            'labels_rejected': stats.labels_rejected_total,
            **{f'labels_rejected_{reason}': count
               for reason, count in stats.labels_rejected.items()},
            'examples': stats.examples_added,
            'buffer_rows': trainer.buffer.train.count,
            'held_out_rows': trainer.buffer.held_out.count,
            'buffer_bytes': trainer.buffer.nbytes,
            'steps': stats.steps, 'discarded_updates': stats.discarded_updates,
            'last_loss': stats.last_loss, 'snapshots': stats.snapshots,
            'labels_rejected_no_model': self.rejected_without_model,
            'checkpoint_path': self.checkpoint_path,
            'checkpoints_written': stats.checkpoints_written,
            'checkpoints_refused': stats.checkpoints_refused,
            'checkpoint_failures': stats.checkpoint_failures,
            'last_checkpoint': stats.last_checkpoint_reason,
            'last_held_out_loss': stats.last_held_out_loss,
        }
        if incompatible_qos or other_type:
            level = WARN
            message = (f'a label publisher has an incompatible QoS ({self.incompatible_policy})'
                       if incompatible_qos else
                       f'a label publisher has another message type than {self.msg_type}')
        elif not publishers:  # training goes on from the buffer, on nothing new
            level, message = WARN, f'no label publisher on {self.subscription.topic_name}'
        elif self.checkpoint_path and not self._checkpoint_directory_exists():
            level, message = WARN, f'checkpoint directory of {self.checkpoint_path} is missing'
        elif labels_wrong:
            # e.g. unknown_class after a change of the model's classes: the labels that still
            # pass (the empty ones) would teach it that nothing is ever there.
            level = WARN
            message = (f'{rejected_total_now} of {received_now} labels rejected since the last '
                       'report (' + ', '.join(f'{reason} {count}' for reason, count
                                              in rejected_now.items() if count) + ')')
        elif stats.last_checkpoint_reason.startswith(('refused', 'failed')):
            level = WARN  # as things are now; the totals are in the values
            message = f'{stats.steps} steps; last checkpoint {stats.last_checkpoint_reason}'
        elif discarded_now:
            level = WARN
            message = (f'{stats.steps} steps, {discarded_now} updates discarded since the last '
                       'report')
        elif not trainer.buffer.train.count + trainer.buffer.held_out.count:
            level, message = WARN, 'no labelled examples for this model yet'
        else:
            level, message = OK, f'{stats.steps} steps, loss {stats.last_loss:.4f}'
        return diagnostic_status(self._node.status_name('training'), level, message, hardware_id,
                                 values)


class ClassifierNode(Node):
    """Subscribes to the configured sensor inputs and publishes obstacle classes at ``rate_hz``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._node_clock = self.get_clock()
        self._declare_parameters()

        # The feature config is the contract with the model: a bad one is fatal (raised).
        config_file = self.get_parameter('feature_config').value or _default_path('features.yaml')
        self._config = FeatureConfig.from_yaml(config_file)
        self._pipeline = FeaturePipeline(self._config)
        self._rate_hz = float(self.get_parameter('rate_hz').value)
        self._tick_period_ns = int(round(1e9 / self._rate_hz))
        self._threshold = self._threshold_from(self.get_parameter('threshold').value)

        self._model: Optional[ObstacleModel] = None
        self._model_version = ''    # content hash, computed once per load
        self._model_path = ''
        self._model_error = ''      # why no model serves (start-up) or why the last load failed
        self._pending_model: Optional[tuple[str, ObstacleModel]] = None
        self._published_classes: Optional[tuple[str, ...]] = None

        # The outputs' QoS, by topic: their subscribers are checked against it at each report.
        self._output_qos: dict[str, QoSProfile] = {}
        self._obstacles_pub = self.create_output(String, 'obstacles', output_qos())
        self._probabilities_pub = self.create_output(
            Float32MultiArray, 'obstacle_probabilities', output_qos())
        self._classes_pub = self.create_output(String, 'obstacle_classes', classes_qos())
        self._diagnostics_pub = self.create_output(DiagnosticArray, '/diagnostics',
                                                   QoSProfile(depth=10))
        self._probabilities_msg = Float32MultiArray()
        self._features_pub = (self.create_output(String, 'obstacle_features', output_qos())
                              if self.get_parameter('publish_features').value else None)

        # With sim time the ticks follow /clock in the order the bag player published (see
        # sim_ticks); the clock subscription is created before the inputs, so that when both are
        # ready the executor serves the /clock message (published first) first.
        self._sim_ticker: Optional[SimTimeTicker] = None
        self._negative_clocks = 0  # /clock messages with a negative time, dropped
        if self.get_parameter('use_sim_time').value:
            drop_negative_clock_messages(self, self._count_negative_clock)
            self._sim_ticker = SimTimeTicker(self._tick_period_ns)
            self._clock_subscription = self.create_subscription(
                ClockMessage, '/clock', self._on_clock, QoSProfile(
                    depth=CLOCK_QUEUE_DEPTH, reliability=ReliabilityPolicy.BEST_EFFORT))

        self._inputs: dict[str, _InputState] = {}
        for spec in self._config.inputs:
            self._inputs[spec.name] = self._subscribe(spec)

        requested = self.get_parameter('model_path').value
        try:
            self._install_model(*self._read_model(requested))
        except ModelRefused as exc:
            self._model_path = self._resolve_model_path(requested)
            self._model_error = str(exc)
            self.get_logger().error(
                f'no usable model: {exc}. The node keeps running and publishes status '
                "'no_model' (no detections) until a good model is loaded with ~/reload_model "
                'or by setting model_path.')

        self._training: Optional[_OnlineTraining] = None
        _check_training_parameters(self)  # enabled or not: a bad value is no silent default
        if self.get_parameter('train.enabled').value:
            self._training = _OnlineTraining(self)
        example = next(iter(self._inputs.values())).topic
        warn_undeclared_parameters(self, f'; qos_overrides name the absolute topic, namespace '
                                         f'included: qos_overrides.{example}.subscription.*')

        self._reload_service = self.create_service(Trigger, '~/reload_model', self._on_reload)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        # Statistics, reset at every diagnostics report unless noted.
        # The last tick, for time jumps and missed ticks; None after a rate change or jump.
        self._last_tick_ns: Optional[int] = None
        self._stale_inputs: tuple[str, ...] = tuple(self._inputs)  # nothing received yet
        self._ticks = self._ticks_skipped = self._ticks_missed = 0
        self._time_jumps = self._inference_errors = 0
        self._period_ticks = self._period_skipped = self._period_missed = 0
        # Ticks that predicted with a stale 'fill' input's fill value in its features.
        self._ticks_filled = self._period_filled = 0
        self._period_processing_ns = self._period_processing_max_ns = 0
        self._processing_ns = np.zeros(_PROCESSING_HISTORY, dtype=np.int64)
        self._histogram_edges_ns = [edge * 1000 for edge in PROCESSING_HISTOGRAM_EDGES_US]
        self._processing_histogram = [0] * (len(PROCESSING_HISTOGRAM_EDGES_US) + 1)
        # Single-example inference writes into this (model, (c,) probabilities) pair; a new
        # model (reload, training snapshot) gets a new one at its first tick.
        self._inference_out: tuple[Optional[ObstacleModel], np.ndarray] = (None, np.empty(0))
        self._report_steady_ns = time.monotonic_ns()
        self._report_node_ns = self._node_clock.now().nanoseconds
        # Expected ticks of the period before the last rate change, and since when the rate is.
        self._rate_since_ns, self._period_expected = self._report_node_ns, 0.0
        self._period_jumped = False  # time jumped back this period: its clock spans are void

        self._tick_timer = self._create_tick_timer()
        # Steady clock: diagnostics keep coming while sim time is paused or not yet published.
        self._diagnostics_timer = self.create_timer(
            DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
            clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f'classifying {len(self._config.inputs)} inputs ({len(self._pipeline.feature_names)} '
            f'features from {self._config.source}) at {self._rate_hz:g} Hz; threshold '
            f'{self._describe_threshold()}')
        if self._rate_hz != self._config.rate_hz:
            # Someone editing the feature config to retune the node would otherwise not know.
            self.get_logger().warning(
                f'ticking at rate_hz {self._rate_hz:g} Hz, the node parameter; the feature '
                f'config\'s rate_hz {self._config.rate_hz:g} is the rate of bag extraction and '
                'simulation (a tick\'s features do not depend on the rate)')

    # -- parameters ----------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        low, high = RATE_RANGE_HZ
        self.declare_parameter('feature_config', _default_path('features.yaml'),
                               ParameterDescriptor(
                                   type=ParameterType.PARAMETER_STRING, read_only=True,
                                   description=(
                                       'Feature config YAML: the inputs to subscribe to and '
                                       'how they become features. Empty: the installed '
                                       'config/features.yaml. Read-only: the subscriptions '
                                       'and the model contract are built from it.')))
        self.declare_parameter('model_path', _default_path('default_model.npz'),
                               ParameterDescriptor(
                                   type=ParameterType.PARAMETER_STRING,
                                   description=(
                                       'Model file (.npz). Empty: the installed '
                                       'config/default_model.npz. Setting it loads the file; '
                                       'one that cannot serve (unreadable, invalid, other '
                                       'feature names) is refused with the reason and the '
                                       'current model stays.')))
        self.declare_parameter('rate_hz', DEFAULT_RATE_HZ, ParameterDescriptor(
            type=ParameterType.PARAMETER_DOUBLE,
            description=('Ticks per second: one feature vector, one prediction and one '
                         'obstacles message per tick, on the node clock (sim time with '
                         'use_sim_time). A live change restarts the timer.'),
            floating_point_range=[FloatingPointRange(from_value=low, to_value=high, step=0.0)]))
        self.declare_parameter('threshold', USE_MODEL_THRESHOLDS, ParameterDescriptor(
            type=ParameterType.PARAMETER_DOUBLE,
            description=('Decision threshold for every class, in (0, 1); -1.0 uses the '
                         "model's own per-class thresholds. A live change applies on the next "
                         'tick.'),
            additional_constraints='-1.0, or 0 < threshold < 1',
            floating_point_range=[FloatingPointRange(from_value=-1.0, to_value=1.0, step=0.0)]))
        self.declare_parameter('publish_features', False, ParameterDescriptor(
            type=ParameterType.PARAMETER_BOOL, read_only=True,
            description=('Also publish each tick\'s feature vector (before normalisation) on '
                         'obstacle_features (std_msgs/String JSON, float64 values written '
                         'exactly): for checking the live features against bag extraction '
                         'and for recording training data. Off: it costs a JSON dump per '
                         'tick.')))
        self._declare_training_parameters()

    def _declare_training_parameters(self) -> None:
        """``train.*``: online training, all read-only (fixed for the life of the node)."""
        def described(kind: int, text: str, **ranges: Any) -> ParameterDescriptor:
            return ParameterDescriptor(type=kind, read_only=True, description=text, **ranges)

        def float_range(low: float, high: float) -> dict:
            return {'floating_point_range': [FloatingPointRange(from_value=low, to_value=high,
                                                                step=0.0)]}

        def int_range(low: int, high: int) -> dict:
            return {'integer_range': [IntegerRange(from_value=low, to_value=high, step=1)]}

        double, integer = ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_INTEGER
        string = ParameterType.PARAMETER_STRING
        self.declare_parameter('train.enabled', False, described(
            ParameterType.PARAMETER_BOOL,
            'Train the serving model online from labels on train.labels_topic. Off by '
            'default: a robot normally serves a fixed, validated model.'))
        self.declare_parameter('train.labels_topic', 'obstacle_labels', described(
            string, 'Ground-truth topic (relative names resolve in the node namespace).'))
        self.declare_parameter('train.labels_format', 'names', described(
            string, "'names': std_msgs/String of comma-separated class names ('' = clear); "
            "'multi_hot': std_msgs/UInt8MultiArray of 0/1 in class order.",
            additional_constraints=f'one of {", ".join(LABEL_FORMATS)}'))
        self.declare_parameter('train.max_label_delay', 0.1, described(
            double, 'Seconds: a label is paired with the tick nearest its arrival time on the '
            'node clock, if that tick is at most this far away; otherwise it is rejected.',
            **float_range(*MAX_LABEL_DELAY_RANGE_S)))
        self.declare_parameter('train.buffer_size', 20000, described(
            integer, 'Replay buffer rows (allocated once; one in ten is held out to guard '
            'checkpoints). The oldest are overwritten.', **int_range(20, 1_000_000)))
        self.declare_parameter('train.batch_size', 64, described(
            integer, 'Examples per training step, drawn at random from the replay buffer.',
            **int_range(1, 4096)))
        self.declare_parameter('train.steps_per_second', 20.0, described(
            double, 'Training steps per second (steady clock), in rounds of '
            f'{TRAINING_PERIOD_S:g} s in their own thread.', **float_range(0.1, 1000.0)))
        self.declare_parameter('train.optimizer', 'adam', described(
            string, 'Optimizer of the online steps (its state starts afresh with each model).',
            additional_constraints=f'one of {", ".join(OPTIMIZERS)}'))
        self.declare_parameter('train.lr', 1e-3, described(
            double, 'Learning rate of the online optimizer (adam: 1e-3 is the usual start).',
            **float_range(1e-7, 10.0)))
        self.declare_parameter('train.checkpoint_period_s', 60.0, described(
            double, 'Seconds (steady clock) between checkpoints; one more on clean shutdown.',
            **float_range(0.1, 86400.0)))
        self.declare_parameter('train.checkpoint_path', '', described(
            string, 'Where checkpoints go (a normal model file, written atomically; a '
            'checkpoint whose held-out loss is clearly worse than the last one is not '
            'written). Empty: no checkpoints (the training is lost at exit).'))

    @staticmethod
    def _threshold_problem(value: float) -> Optional[str]:
        if value == USE_MODEL_THRESHOLDS or (math.isfinite(value) and 0.0 < value < 1.0):
            return None
        return (f'threshold must be {USE_MODEL_THRESHOLDS} (the model\'s per-class thresholds) '
                f'or lie in (0, 1), got {value}')

    def _threshold_from(self, value: float) -> Optional[float]:
        problem = self._threshold_problem(value)
        if problem:
            raise ValueError(problem)
        return None if value == USE_MODEL_THRESHOLDS else float(value)

    def _describe_threshold(self) -> str:
        return 'per-class (model)' if self._threshold is None else f'{self._threshold:g}'

    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Refuse bad values before they are set (range and read-only are checked by rclpy)."""
        self._pending_model = None
        # (The /clock subscription and the inputs' sim-time ordering are built at start.)
        refused = use_sim_time_change_refused(parameters, self._sim_ticker is not None)
        if refused is not None:
            return refused
        for parameter in parameters:
            if parameter.name == 'threshold':
                problem = self._threshold_problem(parameter.value)
                if problem:
                    return SetParametersResult(successful=False, reason=problem)
            elif parameter.name == 'model_path':
                # Load now so that a file that cannot serve is refused, not set.
                try:
                    self._pending_model = self._read_model(parameter.value)
                except ModelRefused as exc:
                    self.get_logger().warning(f'model_path change refused: {exc}')
                    return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        for parameter in parameters:
            if parameter.name == 'threshold':
                self._threshold = self._threshold_from(parameter.value)
                self.get_logger().info(f'threshold now {self._describe_threshold()}')
            elif parameter.name == 'model_path' and self._pending_model is not None:
                self._install_model(*self._pending_model)
                self._pending_model = None
            elif parameter.name == 'rate_hz':
                # The period's expected ticks so far at the old rate (see the output status).
                now_ns = self._node_clock.now().nanoseconds
                self._period_expected += (now_ns - self._rate_since_ns) / 1e9 * self._rate_hz
                self._rate_since_ns = now_ns
                period_ns = int(round(1e9 / float(parameter.value)))
                if self._sim_ticker is not None:
                    # What waits for a later /clock runs now, on the old grid, not lost.
                    self._run_events(self._sim_ticker.change_period(period_ns))
                self._rate_hz = float(parameter.value)
                self._tick_period_ns = period_ns
                self.destroy_timer(self._tick_timer)
                self._tick_timer = self._create_tick_timer()
                self._last_tick_ns = None  # the old period's gaps are not missed ticks
                self.get_logger().info(f'rate now {self._rate_hz:g} Hz')

    # -- model ---------------------------------------------------------------------------------

    @staticmethod
    def _resolve_model_path(requested: str) -> str:
        return os.path.expanduser(requested) if requested else _default_path('default_model.npz')

    def _read_model(self, requested: str) -> tuple[str, ObstacleModel]:
        """Load and check a model file; ModelRefused says why it cannot serve."""
        path = self._resolve_model_path(requested)
        if not path:
            raise ModelRefused('no model_path given and no installed default model found')
        try:
            model = ObstacleModel.load(path)
        except ModelFileError as exc:
            raise ModelRefused(str(exc)) from None
        except OSError as exc:
            raise ModelRefused(f'{path}: cannot read ({exc})') from None
        except Exception as exc:  # a damage no check foresaw: refuse the file, never die
            raise ModelRefused(f'{path}: unreadable model file ({type(exc).__name__}: '
                               f'{exc})') from None
        try:
            model.check_features(self._pipeline.feature_names)
        except ValueError as exc:
            raise ModelRefused(f'{path}: {exc} (feature config {self._config.source})') from None
        return path, model

    def _install_model(self, path: str, model: ObstacleModel) -> None:
        """Serve ``model`` from the next tick on (a single reference swap)."""
        training = getattr(self, '_training', None)
        if training is not None:
            training.restart_from(model)  # online training continues from the new model
        self._model = model
        self._model_version = model.version
        self._model_path = path
        self._model_error = ''
        if model.class_names != self._published_classes:
            publish_unless_shut_down(self, self._classes_pub, encode_classes(model.class_names))
            self._published_classes = model.class_names
            c = len(model.class_names)
            self._probabilities_msg.layout.dim = [
                MultiArrayDimension(label='classes', size=c, stride=c)]
        self.get_logger().info(
            f'model {path} loaded: version {self._model_version}, {model.n_classes} classes '
            f'({", ".join(model.class_names)}), {model.n_features} features')

    def _on_reload(self, request: Trigger.Request, response: Trigger.Response
                   ) -> Trigger.Response:
        requested = self.get_parameter('model_path').value
        try:
            path, model = self._read_model(requested)
        except ModelRefused as exc:
            self._model_error = f'reload failed: {exc}'
            serving = (f'still serving version {self._model_version}'
                       if self._model is not None else 'no model is serving')
            response.success = False
            response.message = f'{exc}; {serving}'
            self.get_logger().error(f'reload refused: {response.message}')
            return response
        self._install_model(path, model)
        response.success = True
        response.message = (f'loaded {path}: version {self._model_version}, '
                            f'{model.n_classes} classes')
        return response

    # -- inputs --------------------------------------------------------------------------------

    def _subscribe(self, spec: InputSpec) -> _InputState:
        state = _InputState(spec)
        msg_class = message_class(spec.msg_type)
        # (A publisher of another type is found from the graph at each report: the rmw here
        # does not deliver the incompatible-type event.)
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda event: self._on_incompatible_qos(state, event))
        # qos_overrides.<topic>.subscription.* parameters let a params file change the QoS of
        # one input (e.g. reliability) without editing the feature config.
        # raw=True: the callback gets the serialized message and reads only the fields it
        # needs (serialized_reader), instead of rclpy building a message object per reading.
        try:
            subscription = self.create_subscription(
                msg_class, spec.topic, self._make_callback(state), input_qos(spec),
                event_callbacks=events, raw=True,
                qos_overriding_options=QoSOverridingOptions(_OVERRIDABLE_QOS))
        except RuntimeError as exc:  # rclpy's words for a bad override name no parameter
            raise ValueError(f"input '{spec.name}' ({spec.topic}): cannot subscribe with the "
                             f'QoS its qos_overrides.<topic>.subscription.* parameters ask '
                             f'for: {exc}') from exc
        state.topic = subscription.topic_name
        state.qos = subscription.qos_profile  # with the qos_overrides applied
        return state

    def _make_callback(self, state: _InputState):
        spec = state.spec
        name = spec.name
        add = self._pipeline.add
        read = serialized_reader(spec)  # serialized message -> (header stamp, values)
        now = self._node_clock.now
        from_header = spec.stamp_source == 'header'
        # The node clock, for how far a header stamp lies ahead: system time unless sim time
        # (time.time_ns is that, at a fraction of the cost of a Time object per reading).
        clock_ns = time.time_ns if self._sim_ticker is None else lambda: now().nanoseconds

        def on_message(data: bytes, receive_ns: Optional[int] = None) -> None:
            state.received += 1
            try:
                header_stamp_ns, values = read(data)
            except ReadingRefused as refused:  # e.g. a range outside its sensor's limits
                self._reject(state, refused.reason)
                return
            except (ValueError, RuntimeError):
                self._reject(state, 'malformed')  # e.g. truncated bytes
                return
            if from_header:
                stamp_ns = header_stamp_ns
                if stamp_ns is None:  # a zero stamp would fake freshness
                    self._reject(state, 'no_stamp')
                    return
                # Its arrival, for the future_stamp check: with sim time its bag time (given,
                # as bag extraction uses); live the node clock (0 before any /clock: unchecked).
                if receive_ns is None:
                    receive_ns = clock_ns() or None
            else:
                if receive_ns is None:
                    receive_ns = now().nanoseconds
                # Several messages can arrive within one sim-time step: keep stamps increasing.
                stamp_ns = max(receive_ns, state.last_receive_stamp_ns + 1)
                state.last_receive_stamp_ns = stamp_ns
            reason = add(name, stamp_ns, values, receive_ns)
            if reason is not None:
                self._reject(state, reason)

        if self._sim_ticker is None:
            return on_message

        def on_message_in_bag_order(msg: Any, info: MessageInfo) -> None:
            # It may wait (and ticks or readings published before it may run first).
            # Every reading gets its bag time: the stamp of a receive-stamped one, the arrival
            # a header stamp is checked against (future_stamp) for the others.
            self._run_events(self._sim_ticker.on_message(
                info['source_timestamp'], (on_message, msg), time.monotonic_ns(),
                needs_bag_time=True))

        return on_message_in_bag_order

    def _reject(self, state: _InputState, reason: str) -> None:
        state.rejected[reason] = state.rejected.get(reason, 0) + 1
        self.get_logger().warning(
            f"input '{state.spec.name}' ({state.topic}): reading rejected ({reason}); "
            f'{state.rejected_total} rejected so far '
            f'({", ".join(f"{k} {v}" for k, v in state.rejected.items() if v)})',
            throttle_duration_sec=REJECTION_WARN_PERIOD_S)

    def _on_incompatible_qos(self, state: _InputState, event: Any) -> None:
        state.incompatible_policy = qos_policy_name_from_kind(event.last_policy_kind)
        self.get_logger().warning(
            f"input '{state.spec.name}': a publisher on {state.topic} offers QoS incompatible "
            f"with this subscription (policy {state.incompatible_policy}; the input asks for "
            f"{qos_text(state.qos)}): NONE of its messages will arrive. Match the publisher "
            "(qos in the feature config, or the qos_overrides parameters).")

    def create_output(self, msg_type: Any, topic: str, qos: QoSProfile) -> Any:
        """A publisher that reports subscribers asking for QoS it does not offer (logged,
        counted in diagnostics) instead of rclpy's default warning, or silence."""
        offered = ' and '.join(policy.name.lower().replace('_', ' ')
                               for policy in (qos.reliability, qos.durability))

        self._output_qos[topic] = qos

        def on_incompatible(event: Any) -> None:
            self.get_logger().warning(
                f'a subscriber of {topic} requests QoS this node does not offer (policy '
                f'{qos_policy_name_from_kind(event.last_policy_kind)}); it receives nothing. '
                f'{topic} is {offered}.')
        return self.create_publisher(
            msg_type, topic, qos,
            event_callbacks=PublisherEventCallbacks(incompatible_qos=on_incompatible))

    def publishers_of(self, topic: str, msg_type: str, qos: QoSProfile) -> _Publishers:
        """The publishers on ``topic`` for a subscription of ``msg_type`` with ``qos``, counted
        from the graph as it is now (the QoS events only count up, a publisher gone stays
        counted, and the type event never comes here)."""
        publishers = self.get_publishers_info_by_topic(topic)
        qos = self._as_in_the_graph(self.get_subscriptions_info_by_topic(topic), qos)
        other_type = [info.topic_type != msg_type for info in publishers]
        incompatible = [_incompatible(info.qos_profile, qos) for info in publishers]
        return _Publishers(len(publishers), sum(other_type), sum(incompatible),
                           sum(not (a or b) for a, b in zip(other_type, incompatible)))

    def note_other_type(self, consumer: str, topic: str, msg_type: str, before: int,
                        now: int) -> int:
        """Log when more publishers of another type than ``msg_type`` are on ``topic`` than at
        the last report (``before``; the rmw here sends no event for them); returns ``now``."""
        if now > before:
            self.get_logger().warning(
                f'{consumer}: a publisher on {topic} uses another message type than '
                f'{msg_type}: none of its messages will arrive.')
        return now

    def _incompatible_subscriber_count(self) -> int:
        """Subscribers of the outputs that ask for QoS their publisher does not offer, now."""
        count = 0
        for topic, qos in self._output_qos.items():
            qos = self._as_in_the_graph(self.get_publishers_info_by_topic(topic), qos)
            count += sum(_incompatible(qos, info.qos_profile)
                         for info in self.get_subscriptions_info_by_topic(topic))
        return count

    def _as_in_the_graph(self, endpoints: list, qos: QoSProfile) -> QoSProfile:
        """This node's endpoint's QoS as the graph reports it (``qos`` if not found): the graph
        spells an unset deadline or lease as infinite, which the requested profile does not,
        and the two would not compare as compatible."""
        for info in endpoints:
            if (info.node_name, info.node_namespace) == (self.get_name(),
                                                         self.get_namespace()):
                return info.qos_profile
        return qos

    # -- the tick ------------------------------------------------------------------------------

    def _create_tick_timer(self):
        """Wall time: ticks on a timer at rate_hz. Sim time: ticks come from /clock (see
        _on_clock); a steady timer only runs the ones nothing followed (end of a bag)."""
        if self._sim_ticker is None:
            return self.create_timer(1.0 / self._rate_hz, timer_callback(self._on_timer))
        return self.create_timer(SIM_TICK_CHECK_PERIOD_S, timer_callback(self._run_overdue_ticks),
                                 clock=Clock(clock_type=ClockType.STEADY_TIME))

    def _on_timer(self) -> None:
        started = time.perf_counter_ns()
        now_ns = self._node_clock.now().nanoseconds
        if now_ns > 0:  # 0: sim time before the first /clock message
            self._tick(now_ns, started)

    def _count_negative_clock(self) -> None:
        self._negative_clocks += 1
        self.get_logger().error(f'/clock message with a negative time dropped '
                                f'({self._negative_clocks} so far)', throttle_duration_sec=5.0)

    def _on_clock(self, msg: ClockMessage, info: MessageInfo) -> None:
        if msg.clock.sec < 0:
            return  # dropped (and counted) by the node clock's own subscription too
        clock_ns = stamp_to_ns(msg.clock)
        previous_clock_ns = self._sim_ticker.last_clock_ns
        events, jumped_back = self._sim_ticker.on_clock(
            info['source_timestamp'], clock_ns, time.monotonic_ns())
        if jumped_back and self._last_tick_ns is not None:
            self._on_time_jump(previous_clock_ns - clock_ns)
            self._last_tick_ns = None
        self._run_events(events)

    def _run_overdue_ticks(self) -> None:
        self._run_events(self._sim_ticker.overdue(time.monotonic_ns(),
                                                  int(SIM_TICK_MAX_WAIT_S * 1e9)))

    def _run_events(self, events: list[Event]) -> None:
        """Ticks and readings released by the sim-time ticker, in the order published."""
        for event in events:
            if event.payload is None:
                self._tick(event.tick_ns)
            else:
                on_message, msg = event.payload
                on_message(msg, event.bag_ns)

    def _tick(self, now_ns: int, started: Optional[int] = None) -> None:
        """One tick at ``now_ns`` (node-clock ns): features, prediction, publication.

        Its processing time (diagnostics) runs from ``started`` (the timer callback's first
        ``perf_counter_ns``) or from here, to after the last publication and bookkeeping."""
        if started is None:
            started = time.perf_counter_ns()
        last = self._last_tick_ns
        if last is not None and now_ns < last:
            self._on_time_jump(last - now_ns)
        elif last is not None:
            # Ticks that should have come between the last one and this one (a late timer
            # fires once, not once per period missed): counted from the node clock's own gap.
            missed = int((now_ns - last) / self._tick_period_ns + 0.5) - 1
            if missed > 0:
                self._ticks_missed += missed
                self._period_missed += missed
        self._last_tick_ns = now_ns
        result = self._pipeline.tick(now_ns)
        model = self._model
        labels: list[str] = []
        probabilities: dict[str, float] = {}
        x: Optional[np.ndarray] = None
        if model is None:
            status = 'no_model'
        elif result.skipped:
            status = 'skipped'
        else:
            try:
                owner, p = self._inference_out
                if owner is not model:
                    p = np.empty(model.n_classes, dtype=model.network.dtype)
                    self._inference_out = (model, p)
                # Bit for bit predict_proba then decide, into a preallocated array. Logits that
                # overflow give probabilities of exactly 0 or 1, a valid answer; only a NaN
                # (inf - inf inside the network) means the model cannot answer for these
                # features (FloatingPointError).
                with np.errstate(over='ignore', invalid='ignore'):
                    x, values, labels = model.predict_one(result.features, p, self._threshold)
            except (ValueError, FloatingPointError) as exc:
                self._inference_errors += 1
                self.get_logger().error(f'inference failed: {exc}', throttle_duration_sec=5.0)
                status = 'skipped'
            else:
                status = 'ok'
                probabilities = dict(zip(model.class_names, values))
        text = encode_obstacles(now_ns, labels, probabilities, result.stale_inputs, status)
        if not publish_unless_shut_down(self, self._obstacles_pub, String(data=text)):
            return
        # Per-tick topics are volatile: a sample nobody has matched is lost anyway, so the
        # optional ones are only built and sent while someone subscribes.
        if status == 'ok' and has_subscribers(self, self._probabilities_pub):
            self._probabilities_msg.data = array.array(
                'f', (p if p.dtype == np.float32 else p.astype(np.float32)).tobytes())
            publish_unless_shut_down(self, self._probabilities_pub, self._probabilities_msg)
        if self._features_pub is not None and has_subscribers(self, self._features_pub):
            publish_unless_shut_down(self, self._features_pub, String(
                data=encode_features(now_ns, result.features)))

        self._stale_inputs = result.stale_inputs
        if self._training is not None and model is not None:
            self._training.record_tick(now_ns, x if status == 'ok' else None)
        if status != 'ok':
            self._ticks_skipped += 1
            self._period_skipped += 1
        elif result.stale_inputs:
            self._ticks_filled += 1
            self._period_filled += 1
        elapsed = time.perf_counter_ns() - started
        self._processing_ns[self._ticks % _PROCESSING_HISTORY] = elapsed
        self._processing_histogram[bisect.bisect_left(self._histogram_edges_ns, elapsed)] += 1
        self._ticks += 1
        self._period_ticks += 1
        self._period_processing_ns += elapsed
        if elapsed > self._period_processing_max_ns:
            self._period_processing_max_ns = elapsed

    def _on_time_jump(self, back_ns: int) -> None:
        """Time went ``back_ns`` backwards (a bag looping under sim time): start the buffers
        afresh."""
        self._time_jumps += 1
        self._period_jumped = True
        self._pipeline.reset()
        for state in self._inputs.values():
            state.last_receive_stamp_ns = -1
        self.get_logger().warning(
            f'time jumped back by {back_ns / 1e9:.3f} s (bag loop?): '
            'feature buffers cleared')

    # -- diagnostics ---------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        if self.context.ok():
            # A signal can shut the context down while the report asks the graph (publishers,
            # subscriptions): that ends the report, it is no error.
            unless_shut_down(self, self._report)

    def _report(self) -> None:
        steady_ns = time.monotonic_ns()
        node_ns = self._node_clock.now().nanoseconds
        elapsed_s = max((steady_ns - self._report_steady_ns) / 1e9, 1e-9)
        node_elapsed_s = (node_ns - self._report_node_ns) / 1e9
        hardware_id = self.get_fully_qualified_name()
        # Ticks due this period on the node clock: at each rate for its share of the period;
        # unknown before the first /clock (sim time) and across a jump back.
        node_clock_known = self._report_node_ns > 0 and not self._period_jumped
        expected = (self._period_expected + (node_ns - self._rate_since_ns) / 1e9
                    * self._rate_hz if node_clock_known else math.nan)
        # Input rates per second of the node clock (bag time with sim time), as the ticks.
        rate_elapsed_s = (node_elapsed_s if self._sim_ticker is not None and node_clock_known
                          and node_elapsed_s > 0 else elapsed_s)
        statuses = [self._model_status(hardware_id),
                    self._output_status(hardware_id, expected)]
        stats = self._pipeline.stats()
        statuses.extend(self._input_status(state, stats[name], hardware_id, rate_elapsed_s,
                                           node_ns) for name, state in self._inputs.items())
        if self._training is not None:
            statuses.append(self._training.status(hardware_id))
        array_msg = DiagnosticArray(status=statuses)
        array_msg.header.stamp = self._node_clock.now().to_msg()
        publish_unless_shut_down(self, self._diagnostics_pub, array_msg)

        self._report_steady_ns, self._report_node_ns = steady_ns, node_ns
        self._rate_since_ns, self._period_expected = node_ns, 0.0
        self._period_jumped = False
        self._period_ticks = self._period_skipped = self._period_missed = 0
        self._period_filled = 0
        self._period_processing_ns = self._period_processing_max_ns = 0
        for name, state in self._inputs.items():
            state.received_at_report = state.received
            state.rejected_at_report = state.rejected_total
            state.truncated_at_report = stats[name].truncated_windows

    # -- running -------------------------------------------------------------------------------

    def spin(self) -> None:
        """Spin until shutdown. With online training the training thread runs alongside, and
        a clean exit (SIGINT) stops it and writes a last checkpoint."""
        if self._training is not None:
            self._training.start()
        try:
            # With sim time the /clock and input callbacks take a MessageInfo (see sim_ticks).
            spin_on_events(self, message_info=self._sim_ticker is not None)
        finally:
            if self._training is not None:
                self._training.finish()

    def status_name(self, part: str) -> str:
        """A /diagnostics status name: '<this node's name>: <part>' (the diagnostic_updater
        convention), so that a renamed node, e.g. front_classifier beside rear_classifier,
        reports under its own name; hardware_id is the node's fully qualified name."""
        return f'{self.get_name()}: {part}'

    def _model_status(self, hardware_id: str) -> DiagnosticStatus:
        model = self._model
        values: dict[str, Any] = {'model_path': self._model_path}
        if model is None:
            level, message = ERROR, f'no model, no detections: {self._model_error}'
        else:
            version = self._model_version
            values.update(version=version, classes=list(model.class_names),
                          features=model.n_features, threshold=self._describe_threshold())
            if self._model_error:
                level, message = WARN, f'serving version {version}; {self._model_error}'
            else:
                level, message = OK, f'serving version {version}'
        if self._model_error:
            values['error'] = self._model_error
        return diagnostic_status(self.status_name('model'), level, message, hardware_id, values)

    def _output_status(self, hardware_id: str, expected: float) -> DiagnosticStatus:
        ticks, skipped = self._period_ticks, self._period_skipped
        filled = min(self._ticks, _PROCESSING_HISTORY)
        history = self._processing_ns[:filled]
        p50, p99 = ((float(v) / 1e3 for v in np.percentile(history, (50, 99)))
                    if filled else (math.nan, math.nan))
        mean_us = self._period_processing_ns / ticks / 1e3 if ticks else math.nan
        values = {
            'rate_hz': self._rate_hz,
            'ticks': ticks, 'ticks_expected': round(expected, 1),
            'ticks_missed': self._period_missed, 'ticks_missed_total': self._ticks_missed,
            'ticks_without_prediction': skipped,
            'ticks_total': self._ticks, 'ticks_without_prediction_total': self._ticks_skipped,
            'ticks_with_filled_inputs': self._period_filled,
            'ticks_with_filled_inputs_total': self._ticks_filled,
            'processing_mean_us': mean_us,
            'processing_max_us': self._period_processing_max_ns / 1e3,
            f'processing_p50_us_last_{_PROCESSING_HISTORY}': p50,
            f'processing_p99_us_last_{_PROCESSING_HISTORY}': p99,
            'processing_histogram_le_us': PROCESSING_HISTOGRAM_EDGES_US,
            'processing_histogram_counts': self._processing_histogram,
            'time_jumps_back': self._time_jumps,
            'inference_errors': self._inference_errors,
            'incompatible_subscribers': self._incompatible_subscriber_count(),
        }
        if self._sim_ticker is not None:  # see SimTimeTicker's attributes
            values.update(sim_ticks_dropped=self._sim_ticker.ticks_dropped,
                          sim_events_dropped=self._sim_ticker.events_dropped,
                          negative_clock_messages=self._negative_clocks)
        period_ns = 1e9 / self._rate_hz
        if ticks == 0:
            level = WARN
            message = ('no ticks: waiting for /clock (use_sim_time)'
                       if self.get_parameter('use_sim_time').value else 'no ticks')
        elif self._model is None:
            level, message = ERROR, 'no model: no detections'
        elif skipped == ticks:
            level, message = ERROR, 'no prediction on any tick: inputs stale (see inputs)'
        elif skipped:
            level, message = WARN, f'{skipped} of {ticks} ticks without prediction'
        elif self._period_filled:
            # A filled input stands for "nothing seen" (its fill value) on a sensor that says
            # nothing: the predictions go on, but a consumer must not take them for full sight.
            filled = ', '.join(self._stale_inputs) or 'none now'
            level, message = WARN, (f'{self._period_filled} of {ticks} ticks predicted with '
                                    f'stale inputs filled in (now: {filled})')
        elif ticks < 0.9 * expected:
            level, message = WARN, f'{ticks} ticks for {expected:.0f} expected'
        elif self._period_processing_max_ns > period_ns:
            level, message = WARN, 'a tick took longer than the tick period'
        else:
            level, message = OK, f'{ticks} ticks, mean {mean_us:.0f} us'
        return diagnostic_status(self.status_name('output'), level, message, hardware_id, values)

    def _input_status(self, state: _InputState, stats: InputStats, hardware_id: str,
                      elapsed_s: float, node_ns: int) -> DiagnosticStatus:
        spec = state.spec
        stale = spec.name in self._stale_inputs
        last = stats.last_stamp_ns
        age_s = (node_ns - last) / 1e9 if last is not None else math.inf
        rejected_now = state.rejected_total - state.rejected_at_report
        truncated_now = stats.truncated_windows - state.truncated_at_report
        publishers, other_type, incompatible_qos, delivering = self.publishers_of(
            state.topic, spec.msg_type, state.qos)
        # (as now: it clears when that publisher leaves)
        state.incompatible_type = self.note_other_type(
            f"input '{spec.name}'", state.topic, spec.msg_type, state.incompatible_type,
            other_type)
        values: dict[str, Any] = {
            'topic': state.topic, 'type': spec.msg_type, 'qos': spec.qos,
            'qos_effective': qos_text(state.qos),
            'stamp_source': spec.stamp_source, 'policy': spec.policy,
            'timeout_s': spec.timeout_s,
            'rate_hz': (state.received - state.received_at_report) / elapsed_s,
            'age_s': age_s, 'stale': stale,
            'received': state.received, 'accepted': stats.accepted,
            'rejected': state.rejected_total,
            **{f'rejected_{reason}': count for reason, count in state.rejected.items()},
            'rejected_last_period': rejected_now,
            'max_rate_hz': spec.max_rate_hz,
            'truncated_windows': stats.truncated_windows,
            'truncated_windows_last_period': truncated_now,
            'publishers': publishers,
            'publishers_delivering': delivering,
            'incompatible_qos_publishers': incompatible_qos,
            'incompatible_type_publishers': state.incompatible_type,
        }
        never = last is None
        if stale and spec.policy == 'skip':
            level = ERROR
            message = ('no reading yet' if never else f'stale for {age_s:.2f} s') + \
                ': ticks are skipped (no detections)'
        elif stale:
            level = WARN
            message = ('no reading yet' if never else f'stale for {age_s:.2f} s') + \
                f': filled with {spec.fill_value:g}'
        elif incompatible_qos or state.incompatible_type:
            level = WARN
            message = ('a publisher has an incompatible QoS '
                       f'({state.incompatible_policy})' if incompatible_qos
                       else 'a publisher has another message type')
        elif rejected_now:
            level, message = WARN, f'{rejected_now} readings rejected in the last period'
        elif delivering > 1:
            # Two drivers on one topic (front and rear on the same name, a bag replayed beside
            # the live sensor): their readings interleave in one window as if one sensor's.
            level, message = WARN, (f'{delivering} publishers deliver to this input: their '
                                    'readings mix in one window')
        elif truncated_now:
            # The buffer holds max_rate_hz readings per second of window: at a higher rate the
            # oldest in the window are gone, and the features describe a shorter one.
            level, message = WARN, (f'{truncated_now} ticks with a window cut short: the '
                                    f'input comes faster than max_rate_hz {spec.max_rate_hz:g}')
        else:
            level, message = OK, f'{values["rate_hz"]:.1f} Hz, age {age_s * 1e3:.0f} ms'
        if stale and (incompatible_qos or state.incompatible_type):
            message += ' (a publisher is incompatible: see incompatible_*)'
        return diagnostic_status(self.status_name(f'input {spec.name}'), level, message,
                                 hardware_id, values)


def _incompatible(publisher_qos: QoSProfile, subscription_qos: QoSProfile) -> bool:
    """Whether a publisher and a subscription with these QoS cannot talk."""
    return qos_check_compatible(publisher_qos, subscription_qos)[0] == QoSCompatibility.ERROR


def main(args: Optional[list[str]] = None) -> int:
    """Run the classifier until SIGINT / SIGTERM; exit 1 if its configuration is unusable (a
    model problem leaves the node up instead)."""
    return run_node(ClassifierNode, NODE_NAME, args, spin=ClassifierNode.spin)


if __name__ == '__main__':
    sys.exit(main())
