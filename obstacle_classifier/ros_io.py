"""ROS-side glue shared by the classifier node, the simulator node, the demo and the tests.

What lives here is the mapping between the package's plain-Python world and ROS messages, and
nothing else (the feature logic is :mod:`obstacle_classifier.features`):

* message types by name (``'sensor_msgs/msg/Range'`` -> class) and the QoS of an input;
* reading an input from its serialized message (:func:`serialized_reader`);
* building a sensor message from raw values (what the simulator publishes): the inverse of
  :func:`~obstacle_classifier.features.extract_values`;
* the wire formats of the outputs: the ``obstacles`` JSON, the ``obstacle_labels`` truth string
  and the ``obstacle_classes`` list, with encoders for the nodes and decoders for consumers;
* time: ``builtin_interfaces/Time`` <-> integer nanoseconds;
* one helper that builds a ``diagnostic_msgs/DiagnosticStatus``.

Importing this module imports rclpy's QoS and the message packages it maps, nothing that spins.
"""
from __future__ import annotations

import array
import contextlib
import gc
import importlib
import inspect
import json
import math
import os
import re
import signal
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.serialization import deserialize_message
from std_msgs.msg import MultiArrayDimension, String

from obstacle_classifier.cdr import Reading, UnsupportedEncapsulation, cdr_reader
from obstacle_classifier.datasets import class_name_problem
from obstacle_classifier.features import (MSG_TYPES, InputSpec, extract_values,
                                          message_stamp_ns)

__all__ = [
    'OBSTACLES_STATUSES', 'ObstacleReport', 'RangeInfo', 'ScanGeometry', 'SensorMessageBuilder',
    'classes_qos', 'decode_classes', 'decode_features', 'decode_labels', 'decode_obstacles',
    'diagnostic_status', 'drop_negative_clock_messages', 'encode_classes', 'encode_features',
    'encode_labels', 'encode_obstacles', 'freeze_imported_heap', 'has_subscribers',
    'input_qos', 'message_class', 'message_type_name', 'serialized_reader',
    'ns_to_stamp', 'output_qos', 'publish_unless_shut_down', 'qos_text',
    'sigint_shuts_down', 'spin_on_events', 'stamp_to_ns',
    'timer_callback', 'undeclared_parameters', 'unless_shut_down', 'use_sim_time_change_refused',
    'warn_undeclared_parameters',
]

NS_PER_S = 1_000_000_000
_MAX_STAMP_SEC = 2**31 - 1  # builtin_interfaces/Time.sec is an int32
#: Seconds of readings an input subscription queues (see :func:`input_qos`).
INPUT_QUEUE_S = 0.5
_MSG_TYPE_PATTERN = re.compile(r'([A-Za-z][A-Za-z0-9_]*)/msg/([A-Z][A-Za-z0-9]*)\Z')

#: ``status`` values of the ``obstacles`` JSON: a prediction was made ('ok'); an input with
#: policy 'skip' is stale so no prediction was made ('skipped'); no usable model ('no_model').
OBSTACLES_STATUSES = ('ok', 'skipped', 'no_model')


# ----------------------------------------------------------------------------------------------
# Message types and QoS
# ----------------------------------------------------------------------------------------------

def message_type_name(msg_class: type) -> str:
    """``'<package>/msg/<Name>'`` of a message class (the inverse of :func:`message_class`)."""
    return f'{msg_class.__module__.split(".")[0]}/msg/{msg_class.__name__}'


@lru_cache(maxsize=None)
def message_class(msg_type: str) -> type:
    """The message class for ``'<package>/msg/<Name>'``, e.g. ``'sensor_msgs/msg/Range'``.

    Raises:
        ValueError: the name is malformed, or the package / message does not exist here.
    """
    match = _MSG_TYPE_PATTERN.match(msg_type) if isinstance(msg_type, str) else None
    if match is None:
        raise ValueError(f"message type must look like 'package/msg/Name', got {msg_type!r}")
    package, name = match.groups()
    try:
        module = importlib.import_module(f'{package}.msg')
    except ImportError as exc:
        raise ValueError(f'message type {msg_type!r}: package {package!r} is not installed '
                         f'({exc})') from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f'message type {msg_type!r}: {package}.msg has no {name!r}') from None


def serialized_reader(spec: InputSpec) -> Callable[[bytes], Reading]:
    """``data -> (header stamp ns or None, values (k,))`` for serialized messages of ``spec``.

    Plain CDR (what ROS 2 publishes) is read by :func:`~obstacle_classifier.cdr.cdr_reader`;
    any other encapsulation is deserialised by rclpy and read by ``extract_values``, which gives
    the same result. Bytes that are no such message raise ValueError (CdrError, or what
    ``extract_values`` raises, e.g. for an empty scan) or RuntimeError (rclpy's RMWError).
    """
    read = cdr_reader(spec)
    msg_class = message_class(spec.msg_type)

    def read_serialized(data: bytes) -> Reading:
        try:
            return read(data)
        except UnsupportedEncapsulation:
            msg = deserialize_message(data, msg_class)
            return message_stamp_ns(msg), extract_values(msg, spec)

    return read_serialized


def input_qos(spec: InputSpec) -> QoSProfile:
    """The subscription QoS of an input (``spec.qos``).

    'sensor_data' is rclpy's sensor-data profile (BEST_EFFORT, VOLATILE, KEEP_LAST): it matches
    every publisher, as sensor drivers publish best effort. 'reliable' (RELIABLE) drops nothing
    but only matches reliable publishers; the node reports a best-effort publisher on such an
    input as an incompatible QoS instead of silently receiving nothing.

    The queue holds :data:`INPUT_QUEUE_S` of readings at the input's ``max_rate_hz`` (at least
    rclpy's 5 / 10): a node busy for a moment (a model reload, a loaded CPU) takes the readings
    late instead of losing them. History depth is local to each side, so any publisher matches.
    """
    queued = math.ceil(spec.max_rate_hz * INPUT_QUEUE_S)
    if spec.qos == 'sensor_data':
        return QoSProfile(history=qos_profile_sensor_data.history,
                          depth=max(qos_profile_sensor_data.depth, queued),
                          reliability=qos_profile_sensor_data.reliability,
                          durability=qos_profile_sensor_data.durability)
    if spec.qos == 'reliable':
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(10, queued),
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    raise ValueError(f"input {spec.name!r}: unknown qos {spec.qos!r} "
                     "(known: 'sensor_data', 'reliable')")


def output_qos(depth: int = 10) -> QoSProfile:
    """QoS of the per-tick outputs (``obstacles``, ``obstacle_probabilities``): reliable, volatile.

    Reliable so that a consumer asking for either reliability matches; volatile because a stale
    detection must never be delivered to a late joiner.
    """
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def classes_qos() -> QoSProfile:
    """QoS of ``obstacle_classes``: transient-local depth 1, so a late subscriber gets the list.

    A subscriber must ask for TRANSIENT_LOCAL durability too to receive the stored message.
    """
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def undeclared_parameters(node: Any) -> list[str]:
    """Names given to ``node`` (a params file, ``-p``) that it never declared: misspelt, meant
    for another node or namespace, or a ``qos_overrides`` entry for a topic it does not have.
    rclpy sets them aside without a word (in a private attribute: [] if rclpy changes that)."""
    overrides = getattr(node, '_parameter_overrides', None) or {}
    return sorted(name for name in overrides if not node.has_parameter(name))


def warn_undeclared_parameters(node: Any, hint: str = '') -> None:
    """Log a warning naming the parameters given to ``node`` that it does not have (see
    :func:`undeclared_parameters`): a misspelt one leaves a default running where the params
    file meant otherwise. Not an error: a ``/**:`` section shared by several nodes gives each
    the others' names, and rclpy cannot tell those apart."""
    unknown = undeclared_parameters(node)
    if unknown:
        node.get_logger().warning(
            f'unknown parameter(s) {", ".join(unknown)}: {node.get_name()} has no such '
            f'parameter and ignores them (misspelt, or meant for another node or namespace?)'
            f'{hint}')


def use_sim_time_change_refused(parameters: Sequence[Any], at_start: bool) -> Optional[Any]:
    """A failed SetParametersResult if ``parameters`` would change ``use_sim_time`` from its
    start-up value ``at_start``, else None. A node's clock subscription and timers are built
    at start: a live change would stop it (sim time without a /clock) or make it jump."""
    from rcl_interfaces.msg import SetParametersResult
    for parameter in parameters:
        if parameter.name == 'use_sim_time' and bool(parameter.value) != at_start:
            return SetParametersResult(
                successful=False,
                reason='use_sim_time is fixed at start-up: restart the node to change it')
    return None


def qos_text(profile: QoSProfile) -> str:
    """A subscription's or publisher's QoS as it is in effect (overrides applied), for logs and
    diagnostics: e.g. ``'best_effort, volatile, keep_last 5'``."""
    history = profile.history.name.lower()
    depth = f' {profile.depth}' if profile.history == HistoryPolicy.KEEP_LAST else ''
    return (f'{profile.reliability.name.lower()}, {profile.durability.name.lower()}, '
            f'{history}{depth}')


def publish_unless_shut_down(node: Any, publisher: Any, msg: Any) -> bool:
    """Publish ``msg``; False, and nothing raised, if the context was shut down meanwhile.

    rclpy's SIGINT / SIGTERM handler shuts the context down asynchronously, so a callback that
    is already running can find its publisher invalid. That race is the normal end of a node,
    not an error; any other failure to publish is raised.
    """
    return unless_shut_down(node, publisher.publish, msg)[0]


def has_subscribers(node: Any, publisher: Any) -> bool:
    """Whether ``publisher`` has a matched subscription; False, and nothing raised, once the
    context is shut down (the race of :func:`publish_unless_shut_down`)."""
    done, count = unless_shut_down(node, publisher.get_subscription_count)
    return done and count > 0


def unless_shut_down(node: Any, call: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """(True, ``call(*args)``), or (False, None) if the call failed because the context was
    shut down meanwhile (rclpy says so with RCLError, or InvalidHandle once it has destroyed the
    entity); any other failure is raised."""
    try:
        return True, call(*args)
    except (_rclpy.RCLError, _rclpy.InvalidHandle):
        if node.context.ok():
            raise
        return False, None


def timer_callback(callback: Callable[[], None]) -> Callable[[], None]:
    """``callback`` wrapped for ``create_timer``: a function whose signature is looked up at once.

    rclpy's executors look up a timer callback's signature on every call (to pass a TimerInfo
    to a callback that asks for one); for a bound method ``inspect`` rebuilds it each time,
    about 5 us hot, every tick. A function carrying ``__signature__`` is answered directly.
    """
    def call() -> None:
        callback()

    call.__signature__ = inspect.signature(call)  # type: ignore[attr-defined]
    return call


def drop_negative_clock_messages(node: Any, on_dropped: Callable[[], None]) -> None:
    """Guard rclpy's own ``/clock`` subscription (``use_sim_time``) against a negative time.

    rclpy's TimeSource turns each ``/clock`` message into a ``Time``, which raises ValueError
    for negative seconds, out of the executor: one such message would end the node. Its
    callback is wrapped so that the message is dropped and ``on_dropped`` called instead.
    Nothing happens without sim time (there is no such subscription then).
    """
    subscription = getattr(getattr(node, '_time_source', None), '_clock_sub', None)
    if subscription is None:
        return
    set_time = subscription.callback

    def checked(msg: Any) -> None:
        if msg.clock.sec < 0:
            on_dropped()
            return
        set_time(msg)

    subscription.callback = checked


def spin_until_shutdown(node: Any, executor: Any = None) -> None:
    """Spin ``node`` (on ``executor`` if given, else ``rclpy.spin``) until shutdown.

    The same race as in :func:`publish_unless_shut_down`, on the receiving side: the executor can
    be taking a message when the signal handler shuts the context down, and rclpy then raises
    (a RuntimeError from the message conversion, or an RCLError). Once the context is shut down
    that is the normal end of the node; while it is still up, it is a real error and is raised.
    """
    import rclpy
    if not node.context.ok():
        # Already shut down (a signal as the node came up): rclpy.spin would build an executor
        # on the dead context, which fails half-built and prints a traceback from __del__.
        return
    try:
        if executor is None:
            rclpy.spin(node)
        else:
            executor.spin()
    except (RuntimeError, _rclpy.RCLError):
        if node.context.ok():
            raise


#: Longest wait of one EventsExecutor ``spin_once`` (s): how soon a shutdown is noticed.
EVENTS_SPIN_TIMEOUT_S = 0.5


class _EventsExecutorLoop:
    """rclpy's EventsExecutor, spun with ``spin_once`` in a loop.

    In this rclpy (9.1) ``EventsExecutor.spin()`` neither fires timers nor returns at shutdown,
    while ``spin_once`` works and releases the GIL while it waits (so other threads run). Each
    ``spin_once`` runs one callback; ``spin`` returns once the context is shut down.
    """

    def __init__(self, executor: Any) -> None:
        self._executor = executor

    def add_node(self, node: Any) -> None:
        self._executor.add_node(node)

    def spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        spin_once, context = self._executor.spin_once, self._executor.context
        try:
            while context.ok():
                spin_once(EVENTS_SPIN_TIMEOUT_S)
        except ExternalShutdownException:  # shut down while waiting: the normal end
            if context.ok():
                raise

    def shutdown(self) -> None:
        self._executor.shutdown()


def event_driven_executor(context: Any = None, *, message_info: bool = False) -> Any:
    """An executor for a node that takes many small messages; ``spin()`` runs it until shutdown.

    The wait-set executors rebuild and scan a wait set of every entity (subscriptions, their
    QoS event handlers, timers, services, guard conditions) for each callback they run: with
    over a thousand messages a second that bookkeeping costs far more CPU than the callbacks.
    rclpy's EventsExecutor is told by the middleware what is ready and runs the callbacks in
    arrival order. It is experimental: this falls back to the SingleThreadedExecutor when the
    module is missing, when a subscription callback takes a MessageInfo (``message_info``: the
    EventsExecutor of rclpy 9.1 fails on those with "SystemError: null argument to internal
    routine"), or when ``OBSTACLE_CLASSIFIER_EXECUTOR=single``.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    if context is None:
        context = rclpy.get_default_context()
    if not message_info and os.environ.get('OBSTACLE_CLASSIFIER_EXECUTOR', 'events') != 'single':
        try:
            from rclpy.experimental.events_executor import EventsExecutor
        except ImportError:
            pass
        else:
            return _EventsExecutorLoop(EventsExecutor(context=context))
    return SingleThreadedExecutor(context=context)


def spin_on_events(node: Any, *, message_info: bool = False) -> None:
    """Spin ``node`` on :func:`event_driven_executor` until shutdown, then shut the executor
    down. ``message_info``: some subscription callback takes a MessageInfo."""
    executor = event_driven_executor(node.context, message_info=message_info)
    executor.add_node(node)
    try:
        spin_until_shutdown(node, executor)
    finally:
        executor.shutdown()


def freeze_imported_heap() -> int:
    """Collect, then move every object alive now out of the garbage collector's reach.

    Called once the modules are imported and before the node is built. The imports leave some
    33,000 objects (modules, classes, message types) that live as long as the process; a full
    collection traverses every tracked object, 4-11 ms here with them, long enough to make a
    100 Hz tick late whenever one lands on it. Frozen (``gc.freeze``), they are skipped: what
    the node builds afterwards (about 7,000 objects, the model among them, which holds
    reference cycles and must stay collectable when it is replaced) takes 0.5-0.9 ms. Returns
    the number of objects frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@contextlib.contextmanager
def sigint_shuts_down() -> Iterator[Callable[[], bool]]:
    """Within: SIGINT raises no KeyboardInterrupt into a running callback; rclpy's own handler
    still shuts the context down. Enter before ``rclpy.init``; yields ``interrupted()``, true
    once a SIGINT has come (check it after ``rclpy.init``: one may come before rclpy's handler
    is in place).

    rclpy's handler (installed by ``rclpy.init``) has a thread of its own shut the context down
    and then runs the Python-level handler that was installed before it. Python's default raises
    KeyboardInterrupt inside whatever callback is running, which rclpy reports as a failed
    callback, and a callback cut short may leave its work half done (e.g. a bag write). This
    handler does nothing the first time (it must not touch rclpy: the shutdown is under way in
    that other thread) and raises KeyboardInterrupt from the second SIGINT on, so that a
    shutdown that hangs can still be interrupted. SIGTERM needs nothing: Python installs no
    handler of its own for it.
    """
    with _counting_signals((signal.SIGINT,), raise_from=2) as signals:
        yield lambda: signals.count > 0


@dataclass
class StopSignals:
    """The SIGINT / SIGTERM received within :func:`signals_request_stop`."""

    count: int = 0
    first_ns: Optional[int] = None  # wall time (time.time_ns) of the first


def signals_request_stop() -> contextlib.AbstractContextManager[StopSignals]:
    """Within: SIGINT and SIGTERM are only counted, in the yielded :class:`StopSignals`.

    For a loop that must finish its work before it ends, e.g. a recorder writing the messages
    it received before the stop and then closing its bag: no exception lands at an arbitrary
    point of a write (a second signal asks the loop to cut its finishing short), and none ends
    the process while the bag is closed. Init rclpy inside with ``signal_handler_options=
    SignalHandlerOptions.NO``, so that no signal shuts the context down under the loop. The loop
    must end in bounded time on its own: it checks ``count`` at least once per wait (Python runs
    the handler when the wait returns).
    """
    return _counting_signals((signal.SIGINT, signal.SIGTERM))


@contextlib.contextmanager
def _counting_signals(signums: Sequence[int], raise_from: Optional[int] = None
                      ) -> Iterator[StopSignals]:
    """Within: ``signums`` are counted in the yielded :class:`StopSignals`, and from the
    ``raise_from``-th on (if given) raise KeyboardInterrupt; the handlers before are put back
    at the end."""
    signals = StopSignals()

    def on_signal(signum: int, frame: Any) -> None:
        if signals.first_ns is None:
            signals.first_ns = time.time_ns()
        signals.count += 1
        if raise_from is not None and signals.count >= raise_from:
            raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, on_signal) for signum in signums}
    try:
        yield signals
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_node(make_node: Callable[[], Any], node_name: str, args: Optional[list[str]] = None,
             spin: Callable[[Any], None] = spin_until_shutdown) -> int:
    """The executables' main: init, build the node, spin until SIGINT / SIGTERM, shut down.

    A signal shuts the context down and the spin returns; the first SIGINT never raises
    KeyboardInterrupt into a running callback (see :func:`sigint_shuts_down`).

    Returns the exit status: 0 after a clean shutdown, 1 when the node cannot be built from its
    configuration (a bad feature config or parameter), which is logged as fatal with the reason.
    A signal while the node is being built is a clean shutdown too: rclpy then refuses to
    create entities on the shut-down context, and whatever that raises ends the build.
    """
    import rclpy
    from rclpy.exceptions import NameValidationException, ParameterException
    from rclpy.executors import ExternalShutdownException
    from rclpy.logging import get_logger

    from obstacle_classifier.features import FeatureConfigError
    try:
        with sigint_shuts_down() as interrupted, rclpy.init(args=args):
            if interrupted():
                return 0
            freeze_imported_heap()
            try:
                try:
                    node = make_node()
                except Exception as exc:
                    if not rclpy.ok():  # a signal came while the node was being built
                        return 0
                    # A bad name given as a parameter (e.g. train.labels_topic) is a
                    # configuration problem like the others.
                    if not isinstance(exc, (FeatureConfigError, ParameterException,
                                            NameValidationException, ValueError)):
                        raise
                    get_logger(node_name).fatal(f'cannot start: {exc}')
                    return 1
                spin(node)
            finally:
                gc.unfreeze()  # only the spinning needs it: tear down as Python usually does
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return 0


# ----------------------------------------------------------------------------------------------
# Time
# ----------------------------------------------------------------------------------------------

def ns_to_stamp(stamp_ns: int) -> Time:
    """Integer nanoseconds -> ``builtin_interfaces/Time``: 0 up to 2**31 s (its ``sec`` is an
    int32, so 2038-01-19 is the last time it holds); ValueError outside."""
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f'a ROS time stamp cannot be negative, got {stamp_ns} ns')
    sec, nanosec = divmod(stamp_ns, NS_PER_S)
    if sec > _MAX_STAMP_SEC:
        raise ValueError(f'{stamp_ns} ns is past the last time builtin_interfaces/Time holds '
                         f'(int32 seconds: {_MAX_STAMP_SEC})')
    return Time(sec=sec, nanosec=nanosec)


def stamp_to_ns(stamp: Any) -> int:
    """``builtin_interfaces/Time`` (or anything with ``sec`` and ``nanosec``) -> nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


# ----------------------------------------------------------------------------------------------
# Building sensor messages (the simulator's side of extract_values)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScanGeometry:
    """What a LaserScan carries besides its ranges (radians, metres, seconds)."""

    angle_min: float
    angle_max: float
    angle_increment: float
    range_min: float
    range_max: float
    scan_time: float = 0.0
    time_increment: float = 0.0


@dataclass(frozen=True)
class RangeInfo:
    """The constant fields of a ``sensor_msgs/Range`` (metres, radians)."""

    min_range: float
    max_range: float
    field_of_view: float
    radiation_type: int = 0  # sensor_msgs/Range.ULTRASOUND


@dataclass
class SensorMessageBuilder:
    """Builds the message of one input from a raw reading, as a sensor driver would publish it.

    ``build(values, stamp_ns)`` sets ``spec.fields`` from ``values`` (in field order; an array
    field takes them all), the header (stamp, ``frame_id``) when the type has one, and the
    constant fields (:class:`RangeInfo`, :class:`ScanGeometry`) unless the config reads them.
    ``extract_values(build(v, t), spec)`` equals ``prepare_values(v, spec, ...)`` up to the
    float32 rounding of float32 fields: that round trip is what the tests check.

    Attributes:
        spec: the input.
        frame_id: the header frame.
        range_info: required for sensor_msgs/Range.
        scan_geometry: required for sensor_msgs/LaserScan.
    """

    spec: InputSpec
    frame_id: str = ''
    range_info: Optional[RangeInfo] = None
    scan_geometry: Optional[ScanGeometry] = None
    _cls: type = field(init=False, repr=False)
    _has_header: bool = field(init=False, repr=False)
    _sequence: bool = field(init=False, repr=False)
    _paths: tuple[tuple[str, ...], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.spec.msg_type not in MSG_TYPES:
            raise ValueError(f'input {self.spec.name!r}: unsupported message type '
                             f'{self.spec.msg_type!r}')
        self._cls = message_class(self.spec.msg_type)
        self._has_header = 'header' in self._cls.get_fields_and_field_types()
        readable = MSG_TYPES[self.spec.msg_type]
        self._sequence = any(readable[path] == 'sequence' for path in self.spec.fields)
        self._paths = tuple(tuple(path.split('.')) for path in self.spec.fields)
        if self.spec.msg_type == 'sensor_msgs/msg/Range' and self.range_info is None:
            raise ValueError(f'input {self.spec.name!r}: a Range message needs range_info')
        if self.spec.msg_type == 'sensor_msgs/msg/LaserScan' and self.scan_geometry is None:
            raise ValueError(f'input {self.spec.name!r}: a LaserScan message needs '
                             'scan_geometry')

    def build(self, values: Any, stamp_ns: int) -> Any:
        """A new message carrying ``values`` (array-like) stamped ``stamp_ns`` (header types)."""
        msg = self._cls()
        self._set_constants(msg)
        if self._sequence:
            path = self._paths[0]
            data = np.asarray(values, dtype=np.float32).reshape(-1)
            # array.array from raw bytes is ~25x faster than rclpy's check of a NumPy array.
            _set_path(msg, path, array.array('f', data.tobytes()))
            if self.spec.msg_type == 'std_msgs/msg/Float32MultiArray':
                msg.layout.dim = [MultiArrayDimension(label=self.spec.name, size=data.shape[0],
                                                      stride=data.shape[0])]
        else:
            flat = np.asarray(values, dtype=np.float64).reshape(-1)
            if flat.shape[0] != len(self._paths):
                raise ValueError(f'input {self.spec.name!r}: {len(self._paths)} field(s) '
                                 f'{list(self.spec.fields)} but {flat.shape[0]} value(s)')
            for path, value in zip(self._paths, flat.tolist()):
                _set_path(msg, path, value)
        if self._has_header:
            msg.header.stamp = ns_to_stamp(stamp_ns)
            msg.header.frame_id = self.frame_id
        return msg

    def _set_constants(self, msg: Any) -> None:
        msg_type = self.spec.msg_type
        if msg_type == 'sensor_msgs/msg/Range':
            info = self.range_info
            msg.radiation_type = info.radiation_type
            msg.min_range = info.min_range
            msg.max_range = info.max_range
            msg.field_of_view = info.field_of_view
        elif msg_type == 'sensor_msgs/msg/LaserScan':
            geometry = self.scan_geometry
            msg.angle_min = geometry.angle_min
            msg.angle_max = geometry.angle_max
            msg.angle_increment = geometry.angle_increment
            msg.range_min = geometry.range_min
            msg.range_max = geometry.range_max
            msg.scan_time = geometry.scan_time
            msg.time_increment = geometry.time_increment
        elif msg_type == 'sensor_msgs/msg/Imu':
            # REP 145: a -1 in the first element of a covariance means "not provided".
            for group in ('orientation', 'angular_velocity', 'linear_acceleration'):
                if not any(path.startswith(group + '.') for path in self.spec.fields):
                    getattr(msg, f'{group}_covariance')[0] = -1.0


def _set_path(msg: Any, path: tuple[str, ...], value: Any) -> None:
    target = msg
    for attribute in path[:-1]:
        target = getattr(target, attribute)
    setattr(target, path[-1], value)


# ----------------------------------------------------------------------------------------------
# Output formats
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObstacleReport:
    """One decoded ``obstacles`` message.

    Attributes:
        stamp_ns: the tick time on the classifier's clock (sim time under replay).
        labels: detected classes, in class order.
        probabilities: class -> probability ({} unless ``status == 'ok'``).
        stale_inputs: inputs with no reading within their timeout at this tick.
        status: one of :data:`OBSTACLES_STATUSES`.
    """

    stamp_ns: int
    labels: tuple[str, ...]
    probabilities: Mapping[str, float]
    stale_inputs: tuple[str, ...]
    status: str

    @property
    def valid(self) -> bool:
        """True when the classifier made a prediction (labels mean "seen", not "unknown")."""
        return self.status == 'ok'


_quoted = lru_cache(maxsize=4096)(json.dumps)  # class and input names recur every tick


def encode_obstacles(stamp_ns: int, labels: Sequence[str], probabilities: Mapping[str, float],
                     stale_inputs: Sequence[str], status: str) -> str:
    """The ``obstacles`` JSON text: keys in a fixed order, probabilities to 4 decimals.

    Formatted by hand (names JSON-quoted once and cached): it runs on every tick, and this is
    several times faster than ``json.dumps`` of the equivalent dict, with the same result.
    """
    values = [float(p) for p in probabilities.values()]
    if not all(map(math.isfinite, values)):
        # JSON has no NaN or infinity; json.loads elsewhere would refuse the whole report.
        raise ValueError(f'obstacle probabilities must be finite, got {dict(probabilities)}')
    probs = ','.join(f'{_quoted(name)}:{p:.4f}' for name, p in zip(probabilities, values))
    return (f'{{{_stamp_json(stamp_ns)},'
            f'"labels":[{",".join(map(_quoted, labels))}],'
            f'"probabilities":{{{probs}}},'
            f'"stale_inputs":[{",".join(map(_quoted, stale_inputs))}],'
            f'"status":{_quoted(status)}}}')


def encode_features(stamp_ns: int, features: Optional[np.ndarray]) -> str:
    """The ``obstacle_features`` JSON text: ``{"stamp": {"sec", "nanosec"}, "features": [...]}``.

    ``features`` float64 (d,) or None (a skipped tick: ``null``). Each value is written as
    Python's shortest round-trip repr, so :func:`decode_features` gives back the same bits.
    """
    values = 'null' if features is None else f'[{",".join(map(repr, features.tolist()))}]'
    return f'{{{_stamp_json(stamp_ns)},"features":{values}}}'


def _stamp_json(stamp_ns: int) -> str:
    """The ``"stamp": {"sec", "nanosec"}`` member of the per-tick JSON outputs."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return f'"stamp":{{"sec":{sec},"nanosec":{nanosec}}}'


def _stamp_from_json(obj: Mapping[str, Any]) -> int:
    """Inverse of :func:`_stamp_json`, from the decoded object (KeyError, TypeError,
    ValueError if it is not one)."""
    stamp = obj['stamp']
    return int(stamp['sec']) * NS_PER_S + int(stamp['nanosec'])


def decode_features(data: Any) -> tuple[int, Optional[np.ndarray]]:
    """Parse an ``obstacle_features`` message: (stamp ns, float64 (d,) or None); ValueError if
    it is not one."""
    text = data.data if hasattr(data, 'data') else data
    try:
        obj = json.loads(text)
        stamp_ns = _stamp_from_json(obj)
        values = obj['features']
        features = None if values is None else np.array(values, dtype=np.float64)
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f'not an obstacle_features message ({type(exc).__name__}: {exc}): '
                         f'{str(text)[:200]!r}') from None
    if features is not None and features.ndim != 1:
        raise ValueError(f'obstacle_features: features must be a flat list, got shape '
                         f'{features.shape}')
    return stamp_ns, features


def decode_obstacles(data: Any) -> ObstacleReport:
    """Parse an ``obstacles`` message (a std_msgs/String or its ``data``); ValueError if bad."""
    text = data.data if hasattr(data, 'data') else data
    try:
        obj = json.loads(text)
        report = ObstacleReport(
            stamp_ns=_stamp_from_json(obj),
            labels=tuple(str(name) for name in obj['labels']),
            probabilities={str(k): float(v) for k, v in obj['probabilities'].items()},
            stale_inputs=tuple(str(name) for name in obj['stale_inputs']),
            status=str(obj.get('status', 'ok')))
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f'not an obstacles message ({type(exc).__name__}: {exc}): '
                         f'{str(text)[:200]!r}') from None
    if report.status not in OBSTACLES_STATUSES:
        raise ValueError(f'unknown obstacles status {report.status!r}')
    return report


def encode_labels(names: Sequence[str]) -> str:
    """Ground truth on ``obstacle_labels``: comma-separated class names, '' when none.

    ValueError for a name :func:`decode_labels` would not give back (see
    :func:`~obstacle_classifier.datasets.class_name_problem`).
    """
    for name in names:
        problem = class_name_problem(name)
        if problem:
            raise ValueError(f'class name {problem}')
    return ','.join(names)


def decode_labels(data: Any) -> tuple[str, ...]:
    """Inverse of :func:`encode_labels` (accepts a std_msgs/String or its ``data``)."""
    text = data.data if hasattr(data, 'data') else data
    return tuple(name.strip() for name in text.split(',') if name.strip())


def encode_classes(class_names: Sequence[str]) -> String:
    """The ``obstacle_classes`` message: a JSON list of the class names in output order."""
    return String(data=json.dumps(list(class_names)))


def decode_classes(data: Any) -> tuple[str, ...]:
    text = data.data if hasattr(data, 'data') else data
    names = json.loads(text)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f'obstacle_classes must be a JSON list of strings, got {text!r}')
    return tuple(names)


# ----------------------------------------------------------------------------------------------
# Diagnostics
# ----------------------------------------------------------------------------------------------

def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else f'{value:.6g}'
    if isinstance(value, (list, tuple)):
        return ', '.join(str(item) for item in value)
    return str(value)


def diagnostic_status(name: str, level: bytes, message: str, hardware_id: str,
                      values: Mapping[str, Any]) -> DiagnosticStatus:
    """A DiagnosticStatus with ``values`` as key/value strings (floats to 6 significant digits)."""
    return DiagnosticStatus(
        level=level, name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=str(key), value=_format_value(value))
                for key, value in values.items()])
