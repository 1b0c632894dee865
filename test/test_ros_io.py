"""The pure parts of the ROS glue, without spinning: message types, QoS, time, message building
(round trips through CDR and ``features.extract_values``), and the output wire formats."""
import inspect
import math
import os
import time

import numpy as np
import pytest

import ros_helpers

ros_helpers.import_rclpy()  # before anything loads message type support (warning filter)

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from obstacle_classifier import ros_io  # noqa: E402
from obstacle_classifier.features import (MSG_TYPES, FeatureConfig, extract_values,  # noqa: E402
                                          load_default_config, message_stamp_ns,
                                          prepare_values)
from obstacle_classifier.simulation import (LIDAR_ANGLE_INCREMENT, LIDAR_ANGLE_MAX,  # noqa: E402
                                            LIDAR_ANGLE_MIN, LIDAR_RANGE_MAX, LIDAR_RANGE_MIN,
                                            RANGE_FIELD_OF_VIEW, RANGE_MAX, RANGE_MIN,
                                            SidewalkSimulator)

S = 1_000_000_000
SCAN = ros_io.ScanGeometry(angle_min=LIDAR_ANGLE_MIN, angle_max=LIDAR_ANGLE_MAX,
                           angle_increment=LIDAR_ANGLE_INCREMENT, range_min=LIDAR_RANGE_MIN,
                           range_max=LIDAR_RANGE_MAX, scan_time=0.1)
RANGE = ros_io.RangeInfo(min_range=RANGE_MIN, max_range=RANGE_MAX,
                         field_of_view=RANGE_FIELD_OF_VIEW)


def _spec(**item):
    base = {'name': 'x', 'topic': 'x', 'dim': 1, 'valid_range': [-100.0, 100.0],
            'timeout_s': 0.5, 'window_s': 1.0, 'aggregations': ['last'], 'policy': 'skip'}
    base.update(item)
    return FeatureConfig.from_dict({'rate_hz': 10, 'inputs': [base]}).inputs[0]


# -- message types and QoS ----------------------------------------------------------------------

@pytest.mark.parametrize('msg_type', sorted(MSG_TYPES))
def test_every_supported_type_resolves_to_its_class(msg_type):
    cls = ros_io.message_class(msg_type)
    package, _, name = msg_type.split('/')
    assert cls.__name__ == name and cls.__module__.startswith(f'{package}.msg')
    assert ros_io.message_class(msg_type) is cls  # cached


@pytest.mark.parametrize('bad, fragment', [
    ('sensor_msgs/Range', "'package/msg/Name'"),
    ('sensor_msgs/srv/Range', "'package/msg/Name'"),
    ('no_such_package_xyz/msg/Thing', 'not installed'),
    ('std_msgs/msg/NoSuchType', 'has no'),
    (None, "'package/msg/Name'"),
])
def test_bad_message_type_names_are_refused_with_the_reason(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        ros_io.message_class(bad)


def test_input_qos_follows_the_spec():
    sensor = ros_io.input_qos(_spec(msg_type='std_msgs/msg/Float64', fields=['data'],
                                    qos='sensor_data', max_rate_hz=1.0))
    assert sensor.reliability == ReliabilityPolicy.BEST_EFFORT
    assert sensor.durability == DurabilityPolicy.VOLATILE and sensor.depth == 5
    reliable = ros_io.input_qos(_spec(msg_type='std_msgs/msg/Float64', fields=['data'],
                                      qos='reliable', max_rate_hz=1.0))
    assert reliable.reliability == ReliabilityPolicy.RELIABLE and reliable.depth == 10


@pytest.mark.parametrize('qos', ['sensor_data', 'reliable'])
def test_input_queues_hold_half_a_second_at_the_input_max_rate(qos):
    # A node busy for a moment (reload, loaded CPU) must take a 200 Hz IMU late, not lose it.
    spec = _spec(msg_type='std_msgs/msg/Float64', fields=['data'], qos=qos, max_rate_hz=200.0)
    assert ros_io.input_qos(spec).depth == math.ceil(200.0 * ros_io.INPUT_QUEUE_S) == 100


def test_class_list_is_latched_and_per_tick_outputs_are_not():
    assert ros_io.classes_qos().durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert ros_io.classes_qos().reliability == ReliabilityPolicy.RELIABLE
    assert ros_io.output_qos().durability == DurabilityPolicy.VOLATILE


# -- time -------------------------------------------------------------------------------------

@pytest.mark.parametrize('ns', [0, 1, S - 1, S, 1_700_000_000 * S + 123_456_789,
                                (2**31 - 1) * S + S - 1])
def test_time_round_trips(ns):
    stamp = ros_io.ns_to_stamp(ns)
    assert isinstance(stamp, Time) and 0 <= stamp.nanosec < S
    assert ros_io.stamp_to_ns(stamp) == ns


def test_negative_time_is_refused():
    with pytest.raises(ValueError, match='negative'):
        ros_io.ns_to_stamp(-1)


def test_time_past_int32_seconds_is_refused():
    # Time.sec is an int32: 2**31 s would be serialized as a negative time, not as 2038.
    with pytest.raises(ValueError, match='int32 seconds'):
        ros_io.ns_to_stamp(2**31 * S)


# -- building messages ------------------------------------------------------------------------

def _cdr_round_trip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


@pytest.fixture(scope='module')
def simulated_readings():
    """The first 2 s of every simulated sensor of the default config."""
    config = load_default_config()
    readings = SidewalkSimulator(seed=3, config=config).advance(2 * S)
    by_input = {}
    for reading in readings:
        by_input.setdefault(reading.input_name, []).append(reading)
    assert set(by_input) == set(config.input_names)
    return config, by_input


def _published(simulated_readings, count: int = 20):
    """(spec, message as the simulator publishes it, the values the node must read from it, its
    stamp) for the first ``count`` readings of every input."""
    config, by_input = simulated_readings
    for spec in config.inputs:
        builder = ros_io.SensorMessageBuilder(spec, frame_id=f'{spec.name}_link',
                                              range_info=RANGE, scan_geometry=SCAN)
        geometry = ({'angle_min': LIDAR_ANGLE_MIN, 'angle_increment': LIDAR_ANGLE_INCREMENT}
                    if spec.sectors else {})
        for reading in by_input[spec.name][:count]:
            stamp_ns = 10 * S + reading.stamp_ns
            yield (spec, builder.build(reading.values, stamp_ns),
                   prepare_values(reading.values, spec, **geometry), stamp_ns)


def test_simulated_readings_survive_message_and_cdr_round_trip(simulated_readings):
    for spec, msg, expected, stamp_ns in _published(simulated_readings):
        msg = _cdr_round_trip(msg)
        # Exact: the simulator already rounds float32 fields to float32.
        np.testing.assert_array_equal(extract_values(msg, spec), expected, err_msg=spec.name)
        if hasattr(msg, 'header'):
            assert message_stamp_ns(msg) == stamp_ns
            assert msg.header.frame_id == f'{spec.name}_link'


def test_serialized_reader_reads_what_the_simulator_publishes(simulated_readings):
    """What the node does with each message: the same stamp and values as the simulator's
    reading, from the CDR bytes; other encapsulations through rclpy give the same."""
    last = {}
    for spec, msg, expected, stamp_ns in _published(simulated_readings):
        read = ros_io.serialized_reader(spec)
        data = bytes(serialize_message(msg))
        for encoded in (data, b'\x00\x07' + data[2:]):  # plain CDR, then as PLAIN_CDR2
            got_stamp_ns, values = read(encoded)
            np.testing.assert_array_equal(values, expected, err_msg=spec.name)
            assert got_stamp_ns == (stamp_ns if spec.stamp_source == 'header' else None)
        last[spec.name] = read, data
    for read, data in last.values():
        with pytest.raises((ValueError, RuntimeError)):
            read(data[:len(data) // 2])  # every input of the config needs its last half
        with pytest.raises(RuntimeError):  # rclpy's RMWError: not a message at all
            read(b'\x00\x07' + data[2:len(data) // 2])


def test_range_and_scan_constants_are_filled_in(simulated_readings):
    config, by_input = simulated_readings
    front = config.input('range_front')
    msg = ros_io.SensorMessageBuilder(front, range_info=RANGE).build([math.inf], S)
    assert msg.range == math.inf  # REP 117: no return
    assert (msg.min_range, msg.max_range) == (pytest.approx(RANGE_MIN), RANGE_MAX)
    assert msg.field_of_view == pytest.approx(RANGE_FIELD_OF_VIEW)
    lidar = config.input('lidar')
    scan = ros_io.SensorMessageBuilder(lidar, scan_geometry=SCAN).build(
        by_input['lidar'][0].values, S)
    assert len(scan.ranges) == 181
    assert scan.angle_min == pytest.approx(LIDAR_ANGLE_MIN)
    assert scan.angle_min + 180 * scan.angle_increment == pytest.approx(scan.angle_max, abs=1e-6)
    assert (scan.range_min, scan.range_max) == (pytest.approx(LIDAR_RANGE_MIN), LIDAR_RANGE_MAX)


def test_imu_marks_unread_groups_as_not_provided():
    spec = _spec(msg_type='sensor_msgs/msg/Imu', dim=2,
                 fields=['linear_acceleration.z', 'angular_velocity.z'])
    msg = ros_io.SensorMessageBuilder(spec).build([9.81, 0.25], 5 * S)
    assert (msg.linear_acceleration.z, msg.angular_velocity.z) == (9.81, 0.25)
    assert msg.orientation_covariance[0] == -1.0  # REP 145: no orientation estimate
    assert msg.linear_acceleration_covariance[0] == 0.0
    np.testing.assert_array_equal(extract_values(_cdr_round_trip(msg), spec), [9.81, 0.25])


def test_multi_array_and_std_scalars():
    spec = _spec(name='vec', msg_type='std_msgs/msg/Float32MultiArray', fields=['data'], dim=3)
    msg = ros_io.SensorMessageBuilder(spec).build(np.array([1.5, -2.0, 3.25]), 0)
    assert [d.size for d in msg.layout.dim] == [3] and msg.layout.dim[0].label == 'vec'
    np.testing.assert_array_equal(extract_values(_cdr_round_trip(msg), spec), [1.5, -2.0, 3.25])
    for msg_type in ('std_msgs/msg/Float32', 'std_msgs/msg/Float64'):
        scalar = _spec(msg_type=msg_type, fields=['data'])
        msg = ros_io.SensorMessageBuilder(scalar).build([0.5], 0)
        assert extract_values(_cdr_round_trip(msg), scalar).tolist() == [0.5]


def test_builder_refuses_what_it_cannot_build():
    range_spec = _spec(msg_type='sensor_msgs/msg/Range', fields=['range'])
    with pytest.raises(ValueError, match='range_info'):
        ros_io.SensorMessageBuilder(range_spec)
    scan_spec = _spec(msg_type='sensor_msgs/msg/LaserScan', fields=['ranges'], dim=4)
    with pytest.raises(ValueError, match='scan_geometry'):
        ros_io.SensorMessageBuilder(scan_spec)
    two = _spec(msg_type='sensor_msgs/msg/Imu', dim=2,
                fields=['linear_acceleration.x', 'linear_acceleration.y'])
    with pytest.raises(ValueError, match='2 field'):
        ros_io.SensorMessageBuilder(two).build([1.0, 2.0, 3.0], 0)


# -- wire formats ------------------------------------------------------------------------------

def test_obstacles_json_round_trips():
    text = ros_io.encode_obstacles(
        12 * S + 345, ['pedestrian', 'dog'], {'pedestrian': 0.912345678, 'dog': 0.5,
                                              'pole': 0.0001}, ['lidar'], 'ok')
    report = ros_io.decode_obstacles(String(data=text))
    assert report.stamp_ns == 12 * S + 345 and report.valid
    assert report.labels == ('pedestrian', 'dog') and report.stale_inputs == ('lidar',)
    assert report.probabilities == {'pedestrian': 0.9123, 'dog': 0.5, 'pole': 0.0001}
    assert ros_io.decode_obstacles(text) == report


@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf])
def test_obstacles_json_refuses_non_finite_probabilities(value):
    # 'nan' or 'inf' in the text would make every JSON reader refuse the whole report.
    with pytest.raises(ValueError, match='must be finite'):
        ros_io.encode_obstacles(S, [], {'pedestrian': 0.5, 'dog': value}, [], 'ok')


@pytest.mark.parametrize('text', ['', '[]', '{"stamp": 3}', '{"labels": []}',
                                  '{"stamp": {"sec": 1, "nanosec": 0}, "labels": [], '
                                  '"probabilities": {}, "stale_inputs": [], "status": "odd"}'])
def test_malformed_obstacles_json_is_refused(text):
    with pytest.raises(ValueError):
        ros_io.decode_obstacles(text)


def test_labels_and_classes_formats():
    assert ros_io.encode_labels([]) == ''
    assert ros_io.decode_labels(String(data='')) == ()
    assert ros_io.decode_labels(ros_io.encode_labels(['pole', 'curb'])) == ('pole', 'curb')
    # Names that would come back as other names are refused rather than sent.
    for name, problem in [('bin,bag', 'comma'), (' pole', 'white space'), ('', 'empty')]:
        with pytest.raises(ValueError, match=problem):
            ros_io.encode_labels(['curb', name])
    names = ('pedestrian', 'bicycle')
    assert ros_io.decode_classes(ros_io.encode_classes(names)) == names
    with pytest.raises(ValueError):
        ros_io.decode_classes('{"a": 1}')


def test_diagnostic_status_formats_values():
    status = ros_io.diagnostic_status('n: input x', DiagnosticStatus.WARN, 'stale', 'hw', {
        'rate_hz': 19.98765432, 'stale': True, 'age_s': math.inf, 'classes': ['a', 'b'],
        'count': 3})
    assert status.level == DiagnosticStatus.WARN and status.hardware_id == 'hw'
    assert {kv.key: kv.value for kv in status.values} == {
        'rate_hz': '19.9877', 'stale': 'true', 'age_s': 'inf', 'classes': 'a, b', 'count': '3'}


def test_freezing_the_imported_heap_takes_it_out_of_full_collections():
    import gc
    try:
        tracked = len(gc.get_objects())
        frozen = ros_io.freeze_imported_heap()
        assert frozen == gc.get_freeze_count() > 1000  # this test process's modules at least
        # what a full collection still traverses: only what was made since (nearly nothing)
        assert len(gc.get_objects()) < tracked / 100
    finally:
        gc.unfreeze()  # back to normal for the rest of the test session


BUSY_NODE = """
import sys, time
from rclpy.node import Node
from obstacle_classifier.ros_io import run_node, spin_on_events


def busy():  # a callback that is running Python code nearly all the time
    print('busy', flush=True)
    end = time.perf_counter() + 0.05
    while time.perf_counter() < end:
        pass


def make():
    node = Node('busy_{pid}')
    node.create_timer(0.001, busy)
    return node


sys.exit(run_node(make, 'busy', spin=spin_on_events))
"""

# A node still being built when the signal comes: rclpy refuses to create anything more on the
# shut-down context (RCLError), which is a stop, not a failure to start.
SLOW_TO_BUILD_NODE = """
import sys, time
import rclpy
from rclpy.node import Node
from std_srvs.srv import Trigger
from obstacle_classifier.ros_io import run_node, spin_on_events


def make():
    node = Node('slow_{pid}')
    print('building', flush=True)
    while rclpy.ok():
        time.sleep(0.005)
    node.create_service(Trigger, '~/reload', lambda request, response: response)
    return node


sys.exit(run_node(make, 'slow', spin=spin_on_events))
"""


@pytest.mark.parametrize('signal_name', ['SIGINT', 'SIGTERM'])
@pytest.mark.parametrize('script, moment', [(BUSY_NODE, 'busy'),
                                            (SLOW_TO_BUILD_NODE, 'building')])
def test_a_signal_during_a_callback_or_the_build_ends_the_node_cleanly(signal_name, script,
                                                                       moment):
    """SIGINT / SIGTERM shut the node down and it exits 0, also when the signal lands inside a
    Python callback: no KeyboardInterrupt is raised into it (rclpy would log that as a failed
    callback, with a deprecated call that is an error under strict warnings), and also while
    the node is still being built."""
    import signal
    import subprocess
    import sys
    process = subprocess.Popen(
        [sys.executable, '-c', script.replace('{pid}', str(os.getpid()))],
        env=ros_helpers.ros_subprocess_env(ros_helpers.STRICT_WARNINGS_ENV),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == moment  # inside the callback / build now
        process.send_signal(getattr(signal, signal_name))
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert 'Exception in' not in stderr and 'KeyboardInterrupt' not in stderr, stderr


def test_spinning_a_node_whose_context_is_already_shut_down_returns_quietly():
    # A signal just as a node comes up: rclpy.spin would build an executor on the dead
    # context, which fails half-built and prints a traceback from its __del__.
    import subprocess
    import sys
    script = ('import gc, rclpy\n'
              'from obstacle_classifier.ros_io import spin_until_shutdown\n'
              'rclpy.init()\n'
              f'node = rclpy.create_node("shut_down_{os.getpid()}")\n'
              'rclpy.shutdown()\n'
              'spin_until_shutdown(node)\n'
              'gc.collect()\n'
              'print("returned")\n')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          env=ros_helpers.ros_subprocess_env(ros_helpers.STRICT_WARNINGS_ENV),
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == 'returned', done.stderr
    assert 'Exception ignored' not in done.stderr and 'Traceback' not in done.stderr


def test_timer_callback_calls_through_and_has_its_signature_ready():
    calls = []
    wrapped = ros_io.timer_callback(lambda: calls.append('tick'))
    signature = inspect.signature(wrapped)
    assert signature is wrapped.__signature__  # no rebuilding per call
    assert not signature.parameters  # so rclpy passes no TimerInfo
    wrapped()
    assert calls == ['tick']


def test_publishing_and_counting_subscribers_after_shutdown_raise_nothing(ros_domain_id):
    """A callback still running when SIGINT shuts the context down must not fail on its
    publisher: publish_unless_shut_down and has_subscribers answer False instead."""
    rclpy = ros_helpers.import_rclpy()
    from rclpy.context import Context
    from rclpy.node import Node

    context = Context()
    rclpy.init(args=[], context=context, domain_id=ros_domain_id)
    try:
        node = Node(f'shutdown_test_{ros_domain_id}', context=context)
        publisher = node.create_publisher(String, 'shutdown_test', 10)
        node.create_subscription(String, 'shutdown_test', lambda msg: None, 10)
        assert ros_io.has_subscribers(node, publisher)  # its own subscription, same node
        assert ros_io.publish_unless_shut_down(node, publisher, String(data='x'))
        context.try_shutdown()
        assert ros_io.has_subscribers(node, publisher) is False
        assert ros_io.publish_unless_shut_down(node, publisher, String(data='x')) is False
    finally:
        context.try_shutdown()


def test_event_driven_executor_runs_timers_and_messages_and_returns_at_shutdown(
        ros_domain_id, monkeypatch):
    """The executor the classifier node spins: timers (ROS and steady clock) and subscriptions
    run, a thread keeps running alongside, spin() returns once the context is shut down; a
    MessageInfo callback or the environment switch falls back to the wait-set executor."""
    import threading

    rclpy = ros_helpers.import_rclpy()
    from rclpy.clock import Clock, ClockType
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    context = Context()
    rclpy.init(args=[], context=context, domain_id=ros_domain_id)
    try:
        assert isinstance(ros_io.event_driven_executor(context, message_info=True),
                          SingleThreadedExecutor)
        with monkeypatch.context() as patch:
            patch.setenv('OBSTACLE_CLASSIFIER_EXECUTOR', 'single')
            assert isinstance(ros_io.event_driven_executor(context), SingleThreadedExecutor)
        node = Node(f'executor_test_{ros_domain_id}', context=context)
        counts = {'timer': 0, 'steady': 0, 'message': 0, 'thread': 0}
        publisher = node.create_publisher(String, 'executor_test', 10)
        node.create_subscription(
            String, 'executor_test',
            lambda msg: counts.__setitem__('message', counts['message'] + 1), 10)
        node.create_timer(0.01, lambda: (counts.__setitem__('timer', counts['timer'] + 1),
                                         publisher.publish(String(data='x'))))
        node.create_timer(0.05, lambda: counts.__setitem__('steady', counts['steady'] + 1),
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

        def other_thread():
            counts['thread'] += 1  # runs while the executor waits (the GIL is released)
            context.try_shutdown()
        threading.Timer(1.0, other_thread).start()
        executor = ros_io.event_driven_executor(context)
        executor.add_node(node)
        started = time.monotonic()
        ros_io.spin_until_shutdown(node, executor)
        elapsed = time.monotonic() - started
        executor.shutdown()
        node.destroy_node()
    finally:
        context.try_shutdown()
    assert elapsed < 1.0 + 2 * ros_io.EVENTS_SPIN_TIMEOUT_S + 1.0
    assert counts['thread'] == 1
    assert counts['timer'] >= 50 and counts['steady'] >= 10 and counts['message'] >= 30, counts
