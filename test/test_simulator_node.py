"""The sidewalk simulator node as a separate process: what it publishes, when, and with what QoS.

The live streams are checked against the offline :class:`SidewalkSimulator` with the same seed:
every lidar scan, range and IMU reading the node publishes is exactly one the offline simulator
produces, at the same offset between its header stamp and its simulated time.
"""
from __future__ import annotations

import signal

import numpy as np
import pytest

import ros_helpers

ros_helpers.import_rclpy()

from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from obstacle_classifier.features import load_default_config  # noqa: E402
from obstacle_classifier.ros_io import (decode_labels, message_class, ns_to_stamp,  # noqa: E402
                                        stamp_to_ns)
from obstacle_classifier.simulation import (CLASS_NAMES, DT_NS, SENSOR_RATES_HZ,  # noqa: E402
                                            SidewalkSimulator)

MODULE = 'obstacle_classifier.simulator_node'
S = 1_000_000_000
SEED = 3
STARTUP_TIMEOUT = 60.0
STRICT_WARNINGS = ros_helpers.STRICT_WARNINGS_ENV


def start_simulator(procs, namespace, **parameters):
    args = ['--ros-args', '-r', f'__ns:=/{namespace}']
    for name, value in parameters.items():
        args += ['-p', f'{name}:={value}']
    return procs.start_module('simulator', MODULE, args, extra_env=STRICT_WARNINGS)


def set_parameter(ros, node, name, value):
    client = ros.node.create_client(SetParameters, f'{node}/set_parameters')
    assert ros.spin_until(client.service_is_ready, timeout=30.0)
    future = client.call_async(SetParameters.Request(
        parameters=[Parameter(name, value=value).to_parameter_msg()]))
    assert ros.spin_until(future.done, timeout=30.0)
    ros.node.destroy_client(client)
    return future.result().results[0]


def subscribe_all(ros, namespace, config):
    """{input name: [(receive_ns, msg)]} for every sensor topic, and the truth list.

    Times are the middleware's (DDS receive / source timestamps on this host's clock), so they
    do not depend on how promptly this process runs its callbacks.
    """
    received = {spec.name: [] for spec in config.inputs}
    for spec in config.inputs:
        sink = received[spec.name]
        ros.node.create_subscription(
            message_class(spec.msg_type), f'/{namespace}/{spec.topic}',
            lambda msg, info, sink=sink: sink.append((info['received_timestamp'], msg)),
            qos_profile_sensor_data)
    truths = []  # (publish time, text): the truth describes the world when it was published
    ros.node.create_subscription(
        String, f'/{namespace}/obstacle_labels',
        lambda m, info: truths.append((info['source_timestamp'], m.data)), 50)
    return received, truths


@pytest.fixture(scope='module')
def offline():
    """The first 40 s of world SEED offline: readings by input, truth per physics step."""
    config = load_default_config()
    simulator = SidewalkSimulator(seed=SEED, config=config)
    readings = {spec.name: [] for spec in config.inputs}
    truth = []
    for step in range(40 * S // DT_NS):
        for reading in simulator.advance(step * DT_NS):
            readings[reading.input_name].append(reading)
        truth.append(tuple(name for name, hit in zip(CLASS_NAMES, simulator.labels_at(
            step * DT_NS)) if hit))
    return config, readings, truth


def test_streams_are_the_offline_simulators_at_their_rates_with_the_truth(
        ros, ros_processes, offline):
    config, readings, truth = offline
    namespace = ros_helpers.unique_name('sim')
    received, truths = subscribe_all(ros, namespace, config)
    simulator = start_simulator(ros_processes, namespace, seed=SEED)
    assert ros.spin_until(lambda: received['lidar'], timeout=STARTUP_TIMEOUT), simulator.report()
    ros.spin_for(4.0)

    # Types, topics and QoS: as the feature config says, sensor data published best effort.
    for spec in config.inputs:
        infos = ros.node.get_publishers_info_by_topic(f'/{namespace}/{spec.topic}')
        publishers = [(info.node_name, info.topic_type) for info in infos]
        assert publishers == [('sidewalk_simulator', spec.msg_type)]
        assert infos[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT

    # Every scan is one of the offline simulator's, bit for bit, at one constant time offset.
    scans = {reading.values.tobytes(): reading.stamp_ns for reading in readings['lidar']}
    offsets = []
    for receive_ns, msg in received['lidar']:
        data = np.asarray(msg.ranges, dtype=np.float32).tobytes()
        assert data in scans, 'a published scan is not the offline simulator\'s'
        stamp_ns = stamp_to_ns(msg.header.stamp)
        offsets.append(stamp_ns - scans[data])
        # Published within a step (5 ms) of the time it belongs to, plus transport.
        assert 0 <= receive_ns - stamp_ns < 0.1 * S
        assert msg.header.frame_id == 'lidar_link'
    anchor = offsets[0]
    assert max(offsets) - min(offsets) <= 1, offsets
    for name in ('range_front', 'imu'):
        offline_values = {r.stamp_ns: r.values for r in readings[name]}
        spec = config.input(name)
        for _, msg in received[name]:
            sim_ns = stamp_to_ns(msg.header.stamp) - anchor
            assert sim_ns in offline_values, (name, sim_ns)
            live = [msg.range] if name == 'range_front' else [
                getattr(getattr(msg, path.split('.')[0]), path.split('.')[1])
                for path in spec.fields]
            np.testing.assert_array_equal(np.float64(live), np.float64(offline_values[sim_ns]))

    # Each sensor at its own rate (header stamps where there is a header, else arrivals).
    for spec in config.inputs:
        messages = received[spec.name]
        assert len(messages) >= 10, spec.name
        if hasattr(messages[0][1], 'header'):
            times = [stamp_to_ns(msg.header.stamp) for _, msg in messages]
        else:
            times = [receive for receive, _ in messages]
        rate = (len(times) - 1) / ((times[-1] - times[0]) / S)
        expected = SENSOR_RATES_HZ[spec.name]
        tolerance = 0.05 if hasattr(messages[0][1], 'header') else 0.2
        assert abs(rate - expected) <= tolerance * expected, (spec.name, rate, expected)

    # The truth at 10 Hz: the offline truth at the simulated time of its arrival.
    assert len(truths) >= 30
    publish_times = [receive for receive, _ in truths]
    assert abs((len(truths) - 1) / ((publish_times[-1] - publish_times[0]) / S) - 10.0) <= 1.5
    agree = 0
    for publish_ns, text in truths:
        labels = decode_labels(text)
        assert set(labels) <= set(CLASS_NAMES) and text == ','.join(labels)
        step = (publish_ns - anchor) // DT_NS
        agree += labels in truth[max(step - 3, 0):step + 1]
    assert agree >= 0.9 * len(truths), f'{agree} of {len(truths)} truth messages agree'

    simulator.popen.send_signal(signal.SIGTERM)
    assert simulator.wait(30) == 0, simulator.report()
    assert 'Traceback' not in simulator.stderr()


def test_real_time_factor_scales_time_live_and_read_only_parameters_are_refused(
        ros, ros_processes):
    namespace = ros_helpers.unique_name('rtf')
    node = f'/{namespace}/sidewalk_simulator'
    config = load_default_config()
    received, _ = subscribe_all(ros, namespace, config)
    start_simulator(ros_processes, namespace, seed=SEED, real_time_factor=2.0)
    assert ros.spin_until(lambda: len(received['lidar']) >= 15, timeout=STARTUP_TIMEOUT)

    def spacing(messages):
        stamps = np.array([stamp_to_ns(msg.header.stamp) for _, msg in messages])
        return float(np.median(np.diff(stamps))) / S

    # The lidar scans every 0.1 s of simulated time: 0.05 s of node time at 2x.
    assert spacing(received['lidar']) == pytest.approx(0.05, abs=0.005)

    result = set_parameter(ros, node, 'real_time_factor', 0.5)
    assert result.successful, result.reason
    changed = len(received['lidar'])
    assert ros.spin_until(lambda: len(received['lidar']) >= changed + 8, timeout=30.0)
    assert spacing(received['lidar'][changed + 1:]) == pytest.approx(0.2, abs=0.02)
    stamps = [stamp_to_ns(msg.header.stamp) for _, msg in received['lidar']]
    assert stamps == sorted(stamps), 'time went back when the factor changed'

    for name, value in (('seed', 5), ('scenario', 'busy'), ('label_rate_hz', 20.0)):
        result = set_parameter(ros, node, name, value)
        assert not result.successful and 'read-only' in result.reason.lower(), name
    result = set_parameter(ros, node, 'real_time_factor', 0.0)
    assert not result.successful
    # On sim time without a /clock the world stopped without a word: refused, as the classifier
    result = set_parameter(ros, node, 'use_sim_time', True)
    assert not result.successful and 'fixed at start-up' in result.reason


def test_a_clock_jump_ahead_does_not_simulate_the_whole_gap(ros, ros_processes):
    # A bag with epoch times played after a simulated one: /clock jumps from 100 s to 1.7e9 s.
    # Simulating the gap (54 years of 25 ms steps) froze the node with its memory growing.
    namespace = ros_helpers.unique_name('jump')
    config = load_default_config()
    received, _ = subscribe_all(ros, namespace, config)
    clock_pub = ros.node.create_publisher(Clock, '/clock', 10)
    clock = {'now': 100 * S, 'step': 10_000_000}

    def tick():
        clock['now'] += clock['step']
        clock_pub.publish(Clock(clock=ns_to_stamp(clock['now'])))
    ros.node.create_timer(0.01, tick)
    simulator = start_simulator(ros_processes, namespace, seed=SEED, use_sim_time='true')
    assert ros.spin_until(lambda: len(received['lidar']) >= 5, timeout=STARTUP_TIMEOUT), \
        simulator.report()
    before = len(received['lidar'])
    jump_ns = clock['now'] = 1_700_000_000 * S
    assert ros.spin_until(lambda: len(received['lidar']) >= before + 30, timeout=20.0), \
        simulator.report()
    after = [stamp_to_ns(msg.header.stamp) for _, msg in received['lidar'][before:]]
    # The last 2 s of the jump are simulated (20 scans at 10 Hz), then time runs on from there.
    assert after[-1] > jump_ns and sum(stamp <= jump_ns for stamp in after) <= 21
    simulator.wait_for_output(r'node clock jumped by \+1\d{9}\.\d+ s between two steps',
                              stream='stderr')
    # A coarse /clock (1.5 s a message, e.g. a bag played fast) is time passing, not a jump.
    clock['step'] = 1_500_000_000
    coarse_from = clock['now']
    assert ros.spin_until(lambda: stamp_to_ns(received['lidar'][-1][1].header.stamp)
                          > coarse_from + 20 * S, timeout=20.0), simulator.report()
    assert simulator.is_running()


@pytest.mark.parametrize('argument, fragment', [
    ('scenario:=nowhere', "unknown scenario 'nowhere'"),
    ('feature_config:=/nonexistent/features.yaml', '/nonexistent/features.yaml'),
])
def test_an_unusable_configuration_stops_the_simulator_with_the_reason(
        ros_processes, argument, fragment):
    proc = ros_processes.start_module('bad_simulator', MODULE, ['--ros-args', '-p', argument],
                                      extra_env=STRICT_WARNINGS)
    assert proc.wait(STARTUP_TIMEOUT) == 1, proc.report()
    assert fragment in proc.stderr() and 'Traceback' not in proc.stderr(), proc.report()
