"""``bag play`` and ``bag record``: rosbag2 playback with /clock, and raw recording.

A small stand-in for ``ros2 bag play`` (absent here and on many robot images). Messages are read
with ``rosbags`` and published as the raw CDR they were recorded as (rclpy ``publish`` of bytes:
no decode, no re-encode), each topic with the QoS it was recorded with (adapted to all its offered
profiles as rosbag2 does: see :func:`recorded_qos`), so a ``sensor_data`` subscriber matches a
best-effort sensor topic and a reliable subscriber a reliable one. ``rosgraph_msgs/Clock`` on
``/clock`` carries bag time (the time of each message before it is published, and every
``1 / clock_rate_hz`` wall seconds scaled by ``rate`` in between), so nodes started with
``use_sim_time:=true`` tick their timers on bag time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from rclpy.duration import Duration

from obstacle_classifier.ros_io import StopSignals, signals_request_stop

__all__ = ['PlaybackOptions', 'PlaybackStats', 'RecordOptions', 'RecordStats',
           'default_record_topics', 'parse_remaps', 'play_bag', 'record_bag', 'recorded_qos']

_NS_PER_S = 1_000_000_000
#: Longest sleep of the player between checks for a stop (s); also its pause between loops of
#: messages that all share one time (without it such a loop would spin).
MAX_SLEEP_S = 0.1


@dataclass(frozen=True)
class PlaybackOptions:
    """How to play a bag.

    Attributes:
        rate: playback speed factor (2.0 = twice as fast).
        loop: start over at the end until interrupted (bag time on /clock then jumps back).
        topics: play only these topics (absolute names as in the bag); all when empty.
        remaps: bag topic -> published topic.
        clock_rate_hz: /clock publications per wall second between messages (0: only with them).
        delay_s: wall seconds to wait after creating the publishers (lets subscribers match).
    """

    rate: float = 1.0
    loop: bool = False
    topics: tuple[str, ...] = ()
    remaps: Mapping[str, str] = field(default_factory=dict)
    clock_rate_hz: float = 100.0
    delay_s: float = 0.5


@dataclass
class PlaybackStats:
    """What a playback published: messages by bag topic, loops completed, /clock messages."""

    published: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    clock_messages: int = 0
    interrupted: bool = False
    left_out: dict[str, str] = field(default_factory=dict)  # bag topic -> why not played


def parse_remaps(items: Sequence[str]) -> dict[str, str]:
    """``['/a:=/b', ...]`` -> ``{'/a': '/b'}``; ValueError naming a malformed item, a target
    that is not a valid topic name, or a topic remapped twice."""
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_topic_name import validate_topic_name
    remaps: dict[str, str] = {}
    for item in items:
        source, separator, target = item.partition(':=')
        if not separator or not source or not target:
            raise ValueError(f'remap must look like /from:=/to, got {item!r}')
        try:
            validate_topic_name(target)
        except InvalidTopicNameException as exc:
            reason = str(exc).splitlines()[0].rstrip(':')  # the rest draws the name
            raise ValueError(f'remap {item!r}: {reason}') from None
        if source in remaps:
            raise ValueError(f'{source} is remapped twice ({remaps[source]} and {target})')
        remaps[source] = target
    return remaps


def recorded_qos(profiles: Sequence[Any]):
    """The rclpy QoSProfile for a topic recorded with rosbags ``Qos`` ``profiles`` (one per
    publisher the recorder saw).

    As rosbag2 adapts a replay to its recorded offers: best effort if any publisher was (a
    reliable offer would not match that publisher's best-effort subscribers), transient local
    only if every one was; KEEP_ALL if any was, and the deepest recorded depth. RELIABLE /
    VOLATILE / KEEP_LAST 10 for what is unknown or system default.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    best_effort = any(p.reliability.name == 'BEST_EFFORT' for p in profiles)
    latched = bool(profiles) and all(p.durability.name == 'TRANSIENT_LOCAL' for p in profiles)
    keep_all = any(p.history.name == 'KEEP_ALL' for p in profiles)
    depth = max([int(p.depth) for p in profiles if p.depth > 0], default=10)
    return QoSProfile(
        history=HistoryPolicy.KEEP_ALL if keep_all else HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                    else DurabilityPolicy.VOLATILE))


def play_bag(path: str, options: PlaybackOptions, ros_args: Optional[list[str]] = None
             ) -> PlaybackStats:
    """Play the bag at ``path`` until its end (or forever with ``loop``) or SIGINT / SIGTERM.

    Two kinds of topic are left out, named in ``stats.left_out``: a recorded ``/clock`` (the
    player publishes the bag time there itself; two clocks would make sim-time nodes see time
    jump back at every message), and, unless asked for with ``topics``, a topic whose message
    type is not installed here (a robot's full recording holds many).

    Raises:
        BagError: the bag cannot be opened or read (from :mod:`obstacle_classifier.bags`).
        ValueError: a requested topic is not in the bag, or its message type is not installed.
    """
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from obstacle_classifier.bags import BagError, _iterate, _open_reader
    if not options.rate > 0:
        raise ValueError(f'rate must be positive, got {options.rate}')
    if not options.clock_rate_hz >= 0:
        raise ValueError(f'clock_rate_hz must be >= 0 (0: /clock only with the messages), '
                         f'got {options.clock_rate_hz}')
    bag = Path(path)
    reader = _open_reader(bag)
    stats = PlaybackStats()
    try:
        connections = [c for c in reader.connections
                       if not options.topics or c.topic in options.topics]
        in_bag = {c.topic for c in reader.connections}
        for what, names in (('topic(s)', options.topics), ('remapped topic(s)', options.remaps)):
            missing = sorted(set(names) - in_bag)
            if missing:
                raise BagError(f'{bag}: {what} {", ".join(missing)} not in the bag (topics: '
                               f'{", ".join(sorted(in_bag))})')
        connections = _playable(connections, options, stats.left_out)
        if not connections:  # (and reader.messages of no connections would read them all)
            if not stats.left_out:
                return stats  # a bag without topics: nothing to publish
            raise BagError(f'{bag}: nothing to play: ' + '; '.join(
                f'{topic}: {reason}' for topic, reason in stats.left_out.items()))
        # A signal only asks the loop to stop: rclpy's handler would shut the context down
        # under it, and a publish between its check and the next one then raised.
        with signals_request_stop() as signals, rclpy.init(
                args=ros_args if ros_args is not None else [],
                signal_handler_options=SignalHandlerOptions.NO):
            node = rclpy.create_node('obstacle_classifier_bag_player')
            try:
                _Playback(node, bag, reader, connections, options, stats, _iterate,
                          lambda: not signals.count).run()
            finally:
                node.destroy_node()
            stats.interrupted = signals.count > 0
    finally:
        reader.close()
    return stats


def _playable(connections: list, options: PlaybackOptions, left_out: dict[str, str]) -> list:
    """The connections to publish, each with its message class; the others go to
    ``left_out`` (bag topic -> reason)."""
    from obstacle_classifier.ros_io import message_class
    playable = []
    for connection in connections:
        if options.remaps.get(connection.topic, connection.topic) == '/clock':
            left_out[connection.topic] = 'the player publishes /clock from the bag time'
            continue
        try:
            playable.append((connection, message_class(connection.msgtype)))
        except ValueError as exc:
            if connection.topic in options.topics:
                raise ValueError(f'cannot play {connection.topic}: {exc}') from None
            left_out[connection.topic] = str(exc)
    return playable


class _Playback:
    """The publishing loop of one ``play_bag`` call (one node, its publishers, the clock)."""

    def __init__(self, node: Any, bag: Path, reader: Any, connections: list,
                 options: PlaybackOptions, stats: PlaybackStats, iterate: Any,
                 ok: Callable[[], bool]) -> None:
        from rosgraph_msgs.msg import Clock

        self.node, self.bag, self.reader = node, bag, reader
        self.connections = [connection for connection, _ in connections]
        self.options, self.stats = options, stats
        self.iterate = iterate
        self.clock_type = Clock
        self.clock_pub = node.create_publisher(Clock, '/clock', 10)
        self.publishers = {}
        for connection, msg_class in connections:
            topic = options.remaps.get(connection.topic, connection.topic)
            self.publishers[connection.id] = node.create_publisher(
                msg_class, topic, recorded_qos(connection.ext.offered_qos_profiles))
            stats.published.setdefault(connection.topic, 0)
        self.ok = ok  # false once a signal asked to stop

    def publish_clock(self, bag_ns: int) -> None:
        from builtin_interfaces.msg import Time
        seconds, nanoseconds = divmod(int(bag_ns), _NS_PER_S)
        self.clock_pub.publish(self.clock_type(clock=Time(sec=seconds, nanosec=nanoseconds)))
        self.stats.clock_messages += 1

    def wait_until(self, wall_deadline: float, bag_start_ns: int, wall_start: float,
                   next_ns: int) -> None:
        """Sleep until ``wall_deadline``, publishing the bag time on /clock meanwhile, never
        beyond ``next_ns`` (the next message's time): a node that ticks once /clock passes the
        tick time must have been sent every message up to it first (see sim_ticks)."""
        clock_period = 1.0 / self.options.clock_rate_hz if self.options.clock_rate_hz else None
        while self.ok():
            now = time.monotonic()
            if now >= wall_deadline:
                return
            # At most 0.1 s at a time: a signal must end the playback then, not when the next
            # message is due (a minute later).
            step = min(wall_deadline - now, MAX_SLEEP_S)
            if clock_period is not None:
                step = min(step, clock_period)
            time.sleep(step)
            if clock_period is not None and time.monotonic() < wall_deadline:
                elapsed_ns = int((time.monotonic() - wall_start) * self.options.rate * _NS_PER_S)
                self.publish_clock(min(bag_start_ns + elapsed_ns, next_ns))

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless asked to stop meanwhile."""
        end = time.monotonic() + seconds
        while self.ok() and time.monotonic() < end:
            time.sleep(min(MAX_SLEEP_S, max(0.0, end - time.monotonic())))

    def run(self) -> None:
        self.pause(self.options.delay_s)
        while self.ok():
            played, span_ns = self.play_once()
            if not self.options.loop or not self.ok() or not played:
                break  # (a loop over nothing would spin)
            self.stats.loops += 1
            if span_ns == 0:  # messages of one time: without a pause the loop would spin
                self.pause(MAX_SLEEP_S)
        # Let reliable subscribers receive the last messages before the publishers go away.
        for publisher in self.publishers.values():
            if self.ok():
                publisher.wait_for_all_acked(Duration(seconds=1.0))

    def play_once(self) -> tuple[int, int]:
        """Play the selected topics once; the number of messages published, and the bag time
        they spanned (ns)."""
        bag_start_ns: Optional[int] = None
        wall_start = time.monotonic()
        played = timestamp = 0
        for connection, timestamp, raw in self.iterate(self.bag, self.reader, self.connections):
            if not self.ok():
                break
            if bag_start_ns is None:
                bag_start_ns, wall_start = timestamp, time.monotonic()
            deadline = wall_start + (timestamp - bag_start_ns) / (_NS_PER_S * self.options.rate)
            self.wait_until(deadline, bag_start_ns, wall_start, timestamp)
            if not self.ok():
                break
            self.publish_clock(timestamp)
            self.publishers[connection.id].publish(bytes(raw))
            self.stats.published[connection.topic] += 1
            played += 1
        return played, (timestamp - bag_start_ns if bag_start_ns is not None else 0)


# ----------------------------------------------------------------------------------------------
# bag record
# ----------------------------------------------------------------------------------------------

# Messages a recorded topic may queue while the recorder writes (``RecordOptions.queue_depth``
# by default): the Python callback (one storage write per message) is slower than DDS delivery,
# and a reliable publisher's burst overflowing a 10-deep queue was lost silently (107 of 20,000
# at 5 kHz). Memory is only used when the recorder falls behind, up to this many messages per
# topic: 1000 x 2 MB images took 1.35 GB, so large messages want a smaller queue.
RECORD_QUEUE_DEPTH = 1000
#: Longest a stopping recorder goes on writing what it received before the stop (s).
DRAIN_LIMIT_S = 2.0
_NEVER_NS = 2**63 - 1
#: Longest an old subscription of a topic subscribed to again waits for the new one to match.
RETIRE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RecordOptions:
    """How to record a bag.

    Attributes:
        topics: absolute topic names to record; their types are discovered from the graph.
        storage: 'sqlite3' or 'mcap'.
        duration_s: stop after this many wall seconds (None: until SIGINT / SIGTERM).
        queue_depth: messages each topic may queue while the recorder writes; memory is up to
            this many times the message size per topic, when the recorder falls behind.
    """

    topics: tuple[str, ...]
    storage: str = 'sqlite3'
    duration_s: Optional[float] = None
    queue_depth: int = RECORD_QUEUE_DEPTH

    def __post_init__(self) -> None:
        if self.queue_depth < 1:
            raise ValueError(f'queue_depth must be >= 1, got {self.queue_depth}')


def default_record_topics(config: Any = None) -> tuple[str, ...]:
    """The configured inputs' topics and the label topic, absolute (root namespace)."""
    from obstacle_classifier.bags import LABELS_TOPIC, _topic_key
    from obstacle_classifier.features import load_default_config
    config = config if config is not None else load_default_config()
    return tuple(_topic_key(spec.topic) for spec in config.inputs) + (_topic_key(LABELS_TOPIC),)


def _to_rosbags_qos(profile: Any):
    """An rclpy QoSProfile as the rosbags ``Qos`` stored in the bag's metadata."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy
    zero = QosTime(sec=0, nsec=0)
    return Qos(
        history=(QosHistory.KEEP_ALL if profile.history == HistoryPolicy.KEEP_ALL
                 else QosHistory.KEEP_LAST),
        depth=int(profile.depth),
        reliability=(QosReliability.BEST_EFFORT
                     if profile.reliability == ReliabilityPolicy.BEST_EFFORT
                     else QosReliability.RELIABLE),
        durability=(QosDurability.TRANSIENT_LOCAL
                    if profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                    else QosDurability.VOLATILE),
        deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


@dataclass
class RecordStats:
    """What a recording wrote: messages by topic, and what it could not write.

    Attributes:
        recorded: messages written, by topic.
        lost: messages missing from a publisher's numbered sequence, by topic (overwritten
            in a full queue, or dropped by the network).
        before_clock: messages dropped under ``use_sim_time`` because more than
            ``queue_depth`` waited for the first /clock (or none came).
        never_seen: topics with no message written.
        interrupted: a signal ended the recording.
    """

    recorded: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    before_clock: int = 0
    never_seen: tuple[str, ...] = ()
    interrupted: bool = False


def record_bag(path: str, options: RecordOptions, ros_args: Optional[list[str]] = None
               ) -> RecordStats:
    """Record ``options.topics`` into a new bag at ``path`` until the duration or a signal.

    Each topic is subscribed to as soon as a publisher appears, with raw (serialised) delivery:
    the CDR bytes are written unchanged, stamped with the node clock's time when taken (with
    ``use_sim_time`` the latest /clock; what comes before the first one is written with it, up
    to ``options.queue_depth`` messages, and the rest dropped and counted). The subscription is
    best effort if any publisher is (it then matches every publisher present), and transient
    local if all of them are (latched messages are recorded); when a publisher it cannot match
    appears later, the topic is subscribed to again. The offered QoS of the publishers present
    at the first subscription is what the bag records for ``bag play``. A topic whose message
    type is not installed here is logged and left out. The duration or a SIGINT / SIGTERM stops
    the recording after it has written what it received before then (a second signal cuts that
    short); whatever ends it (an error included), what was recorded is a readable bag.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    from obstacle_classifier.bags import BagError, new_bag_directory
    bag = new_bag_directory(path, options.storage)
    plugin = StoragePlugin.MCAP if options.storage == 'mcap' else StoragePlugin.SQLITE3
    stats = RecordStats(recorded={topic: 0 for topic in options.topics},
                        lost={topic: 0 for topic in options.topics})
    writer = Writer(bag, version=9, storage_plugin=plugin)
    try:
        writer.open()
    except WriterError as exc:
        raise BagError(f'{bag}: cannot write bag: {exc}') from exc
    # A signal only asks the recording to stop (rclpy's handler would shut the context down at
    # once, and the messages received but not yet taken would be lost), until the bag is closed.
    with signals_request_stop() as signals:
        # Closed (index and metadata.yaml written) whatever ends the recording, an error
        # included: what was recorded stays a bag (rosbags' context manager would abort it).
        try:
            with rclpy.init(args=ros_args if ros_args is not None else [],
                            signal_handler_options=SignalHandlerOptions.NO):
                node = rclpy.create_node('obstacle_classifier_bag_recorder')
                executor = SingleThreadedExecutor()
                executor.add_node(node)
                try:
                    _Recording(node, writer, options, stats).run(executor, signals)
                finally:
                    executor.shutdown()
                    node.destroy_node()
        finally:
            try:
                writer.close()
            except WriterError as exc:
                raise BagError(f'{bag}: cannot write bag: {exc}') from exc
    stats.never_seen = tuple(topic for topic, count in stats.recorded.items() if not count)
    return stats


def _recording_qos(publishers: Sequence[Any], depth: int):
    """The subscription QoS, ``depth`` deep, that matches every one of ``publishers`` (rclpy
    TopicEndpointInfo): the reliability and durability a replay of their offers takes
    (:func:`recorded_qos`). Best effort if any publisher is, transient local only if every one
    is (a transient-local subscription does not match a volatile publisher): then what was
    latched before the recording started is recorded too.
    """
    from rclpy.qos import QoSProfile
    adapted = recorded_qos([_to_rosbags_qos(p.qos_profile) for p in publishers])
    return QoSProfile(depth=depth, reliability=adapted.reliability,
                      durability=adapted.durability)


def _matches_all(subscription_qos: Any, publishers: Sequence[Any]) -> bool:
    """Whether a subscription with ``subscription_qos`` receives from every one of
    ``publishers``: reliability and durability, the policies a recorder's choice can break."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
    if subscription_qos.reliability == ReliabilityPolicy.RELIABLE and any(
            p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in publishers):
        return False
    return not (subscription_qos.durability == DurabilityPolicy.TRANSIENT_LOCAL and any(
        p.qos_profile.durability != DurabilityPolicy.TRANSIENT_LOCAL for p in publishers))


@dataclass
class _Retiring:
    """A topic's subscription being replaced, and the publishers (endpoint gids) it writes."""

    subscription: Any
    deadline: float  # time.monotonic() by which it is retired, matched or not
    publishers: set[bytes]


class _Recording:
    """Subscriptions of one ``record_bag`` call, created as publishers are discovered."""

    def __init__(self, node: Any, writer: Any, options: RecordOptions,
                 stats: RecordStats) -> None:
        from rosbags.typesys import Stores, get_typestore
        self.node, self.writer, self.options, self.stats = node, writer, options, stats
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self.subscriptions: dict[str, Any] = {}
        self.retiring: dict[str, _Retiring] = {}  # topic -> subscription being replaced
        self.connections: dict[str, Any] = {}
        self.msg_classes: dict[str, type] = {}
        self.unreadable: set[str] = set()  # topics whose message type is not installed here
        self.last_sequence: dict[bytes, int] = {}  # publisher gid -> its last message taken
        self.other_types: set[tuple[str, str]] = set()  # (topic, type) not recorded, logged
        self.stop_ns = _NEVER_NS  # messages received later (wall time) are not recorded
        self.clock = node.get_clock()
        self.sim_time = bool(node.get_parameter('use_sim_time').value)
        self.clock_ns: Optional[int] = None  # the latest /clock, under sim time
        self.before_clock: list[tuple[str, bytes]] = []  # (topic, raw) awaiting a /clock
        if self.sim_time:
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            from rosgraph_msgs.msg import Clock
            node.create_subscription(Clock, '/clock', self._on_clock, QoSProfile(
                depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))  # as rclpy's time source

    def subscribe_discovered(self) -> None:
        """Subscribe to each topic whose publishers have appeared, and again to one whose
        subscription does not match a publisher that appeared since."""
        from obstacle_classifier.ros_io import message_class
        types = dict(self.node.get_topic_names_and_types())
        for topic in self.options.topics:
            if topic in self.unreadable or topic not in types:
                continue
            subscription = self.subscriptions.get(topic)
            # A bag topic has one type: the first seen (publishers of another are logged).
            msg_type = (types[topic][0] if subscription is None
                        else self.connections[topic].msgtype)
            publishers = [p for p in self.node.get_publishers_info_by_topic(topic)
                          if p.topic_type == msg_type]
            if not publishers:
                continue
            self._warn_of_other_types(topic, msg_type, types[topic])
            if subscription is None:
                try:
                    self.msg_classes[topic] = message_class(msg_type)
                except ValueError as exc:  # not installed here: the other topics go on
                    self.unreadable.add(topic)
                    self.node.get_logger().error(f'cannot record {topic}: {exc}')
                    continue
                self.connections[topic] = self.writer.add_connection(
                    topic, msg_type, typestore=self.typestore,
                    offered_qos_profiles=[_to_rosbags_qos(p.qos_profile) for p in publishers])
                self.node.get_logger().info(f'recording {topic} ({msg_type})')
            elif self._keeps(topic, subscription, publishers):
                continue
            else:
                # The old subscription goes on with its publishers until the new one has
                # matched them all, then what is queued in it is written: destroyed at once, it
                # took its backlog with it.
                self.retiring[topic] = _Retiring(
                    subscription, time.monotonic() + RETIRE_TIMEOUT_S,
                    {bytes(p.endpoint_gid) for p in publishers
                     if _matches_all(subscription.qos_profile, [p])})
                self.node.get_logger().warning(
                    f'subscribing to {topic} again: a publisher the subscription does not '
                    'match appeared (best effort, or volatile where all were transient local)')
            self.subscriptions[topic] = self.node.create_subscription(
                self.msg_classes[topic], topic, self._callback(topic),
                _recording_qos(publishers, self.options.queue_depth), raw=True,
                event_callbacks=self._events())

    def _keeps(self, topic: str, subscription: Any, publishers: Sequence[Any]) -> bool:
        """Whether ``subscription``, the topic's, stays: it matches every one of ``publishers``.

        An old subscription retiring beside it is retired once this one has matched them all
        (or after ``RETIRE_TIMEOUT_S``), and at once when this one does not match a publisher:
        this one is then replaced in turn, and neither would receive that publisher meanwhile.
        """
        matches = _matches_all(subscription.qos_profile, publishers)
        retiring = self.retiring.get(topic)
        if retiring is not None and (
                not matches or subscription.get_publisher_count() >= len(publishers)
                or time.monotonic() >= retiring.deadline):
            self._drain(retiring.subscription, time.monotonic() + DRAIN_LIMIT_S)
            del self.retiring[topic]
            self.node.destroy_subscription(retiring.subscription)
        return matches

    def _drain(self, subscription: Any, deadline: float,
               stop_now: Callable[[], bool] = lambda: False) -> bool:
        """Write what ``subscription`` holds that was received before the stop, taken directly
        (not through the executor, which would interleave other subscriptions' messages), until
        it is empty, ``deadline`` (time.monotonic()) passes or ``stop_now()``; False if cut
        short by those two."""
        while time.monotonic() < deadline and not stop_now():
            with subscription.handle:
                taken = subscription.handle.take_message(subscription.msg_type, subscription.raw)
            if taken is None or taken[1]['received_timestamp'] > self.stop_ns:
                return True  # empty, or the rest came after the stop
            subscription.callback(*taken)
        return False

    def _warn_of_other_types(self, topic: str, msg_type: str, types: Sequence[str]) -> None:
        """Log, once per type, publishers of ``topic`` with a type other than ``msg_type``,
        the one it is recorded as: the subscription does not receive them."""
        for other in types:
            if other != msg_type and (topic, other) not in self.other_types:
                self.other_types.add((topic, other))
                self.node.get_logger().warning(
                    f'not recording the {other} publishers of {topic}: it is recorded as '
                    f'{msg_type}')

    def _callback(self, topic: str):
        def on_message(raw: bytes, info: Any) -> None:
            if info['received_timestamp'] > self.stop_ns:  # wall time (0 if the rmw has none)
                return  # after the stop: not part of the recording
            gid, sequence = info['publisher_gid'], info['publication_sequence_number']
            publisher = bytes(gid['data']) if gid is not None else None
            if not self._writes(topic, on_message, publisher, sequence):
                return
            self._count_lost(topic, publisher, sequence)
            if not self.sim_time:
                # Not received_ns: a reliable sample repaired by a resend carries the later
                # reception time, which would put it out of order in the bag.
                self._write(topic, raw, self.clock.now().nanoseconds)
            elif self.clock_ns is not None:
                self._write(topic, raw, self.clock_ns)
            elif len(self.before_clock) < self.options.queue_depth:
                # No bag time yet: written with the first /clock (a latched message, sent once
                # at subscription, would otherwise be lost for good).
                self.before_clock.append((topic, raw))
            else:
                if not self.stats.before_clock:
                    self.node.get_logger().warning(
                        f'dropping messages: {len(self.before_clock)} wait for the first /clock '
                        '(use_sim_time is set)')
                self.stats.before_clock += 1

        return on_message

    def _on_clock(self, msg: Any) -> None:
        """Bag time under sim time: the latest /clock (the node clock's time, known at once;
        rclpy's time source may run its /clock callback after a message's)."""
        self.clock_ns = msg.clock.sec * _NS_PER_S + msg.clock.nanosec
        for topic, raw in self.before_clock:
            self._write(topic, raw, self.clock_ns)
        self.before_clock.clear()

    def _write(self, topic: str, raw: bytes, stamp_ns: int) -> None:
        self.writer.write(self.connections[topic], stamp_ns, raw)
        self.stats.recorded[topic] += 1

    def _writes(self, topic: str, callback: Any, publisher: Optional[bytes],
                sequence: Optional[int]) -> bool:
        """Whether the subscription of ``callback`` writes message ``sequence`` of
        ``publisher`` (its gid) on ``topic``: never a copy of one already written; while an old
        subscription retires, it writes its own publishers' and the new one the others'."""
        last = self.last_sequence.get(publisher)
        # Not a copy of one already written (a subscription retired before this one can have
        # written it: a re-subscription during another's retirement).
        new = sequence is None or last is None or sequence > last
        retiring = self.retiring.get(topic)
        if retiring is not None:
            from_old = callback is retiring.subscription.callback
            return new and from_old == (publisher in retiring.publishers)
        return new

    def _count_lost(self, topic: str, publisher: Optional[bytes],
                    sequence: Optional[int]) -> None:
        """Count the messages missing between message ``sequence`` of ``publisher`` (its gid)
        and the last one taken from it.

        Each publisher numbers its messages; a gap is messages lost on the way or overwritten
        in a full subscription queue, which DDS does not report for a reliable topic. What a
        publisher sent before the first message taken from it is not counted (a subscription
        that matched later never had it).
        """
        if sequence is None or publisher is None:  # a middleware that does not number them
            return
        last = self.last_sequence.get(publisher)
        self.last_sequence[publisher] = sequence
        if last is not None and sequence > last + 1:
            if not self.stats.lost[topic]:
                self.node.get_logger().warning(
                    f'messages lost on {topic}: the recorder fell behind its queue of '
                    f'{self.options.queue_depth}, or the network dropped them (counted)')
            self.stats.lost[topic] += sequence - last - 1

    @staticmethod
    def _events():
        from rclpy.event_handler import SubscriptionEventCallbacks

        def on_incompatible_qos(info: Any) -> None:
            """Handled by subscribing again at the next discovery (rclpy's default warns)."""

        return SubscriptionEventCallbacks(incompatible_qos=on_incompatible_qos)

    def run(self, executor: Any, signals: StopSignals) -> None:
        """Record until the duration has passed or a signal, then write what was received before
        that and not yet taken: until each subscription's queue is empty or reaches what came
        after (for at most ``DRAIN_LIMIT_S`` in all, or until a second signal)."""
        start = time.monotonic()
        if self.options.duration_s is not None:
            self.stop_ns = time.time_ns() + int(self.options.duration_s * _NS_PER_S)
        next_discovery = 0.0
        while not signals.count:
            now = time.monotonic()
            if self.options.duration_s is not None and now - start >= self.options.duration_s:
                break
            if now >= next_discovery:
                self.subscribe_discovered()
                next_discovery = now + 0.2
            executor.spin_once(timeout_sec=0.05)
        self.stats.interrupted = signals.count > 0
        if signals.first_ns is not None:
            self.stop_ns = min(self.stop_ns, signals.first_ns)
        # Each subscription in turn, retiring ones first (they hold their publishers' oldest).
        drain_end = time.monotonic() + DRAIN_LIMIT_S
        for subscription in ([retiring.subscription for retiring in self.retiring.values()]
                             + list(self.subscriptions.values())):
            if not self._drain(subscription, drain_end, lambda: signals.count > 1):
                self.node.get_logger().warning(
                    f'stopped writing what came before the stop after {DRAIN_LIMIT_S:g} s or a '
                    'second signal: what was still queued is not in the bag')
                break
        if self.before_clock:  # no /clock came: no bag time to give them
            self.stats.before_clock += len(self.before_clock)
            self.before_clock.clear()
