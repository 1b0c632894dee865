"""The ROS 2 install in .venv really works across processes, on this run's own domain.

A talker and a listener are small rclpy scripts run as separate processes (the current
``with rclpy.init()`` main pattern, clean exit on SIGINT); the test process joins in through an
rclpy node on its own context. Every wait polls against a generous deadline.
"""
import os
import re
import time

import pytest

import ros_helpers

# Publishes a counter until SIGINT. argv: kind (string|range), qos (reliable|sensor), topic.
TALKER = r'''
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Range
from std_msgs.msg import String


class Talker(Node):
    def __init__(self, kind, qos, topic):
        super().__init__('smoke_talker')
        self.kind = kind
        self.count = 0
        msg_type = String if kind == 'string' else Range
        profile = qos_profile_sensor_data if qos == 'sensor' else 10
        self.publisher = self.create_publisher(msg_type, topic, profile)
        self.timer = self.create_timer(0.05, self.tick)
        print(f'READY {kind} {qos} {topic}', flush=True)

    def tick(self):
        self.count += 1
        if self.kind == 'string':
            msg = String(data=f'hello {self.count}')
        else:
            msg = Range(radiation_type=Range.ULTRASOUND, field_of_view=0.5,
                        min_range=0.02, max_range=4.0, range=0.25 * (1 + self.count % 8))
            msg.header.frame_id = 'smoke_sonar'
            msg.header.stamp.sec = self.count
        self.publisher.publish(msg)


def main():
    try:
        with rclpy.init(args=sys.argv):
            node = Talker(*sys.argv[1:4])
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    print('STOPPED', flush=True)


if __name__ == '__main__':
    main()
'''

# Prints "GOT <counter>" per message; exits 0 after `count` messages, 3 after `timeout` s.
# argv: kind (string|range), qos (reliable|sensor), topic, count, timeout.
LISTENER = r'''
import sys
import time

import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Range
from std_msgs.msg import String


def main():
    kind, qos, topic = sys.argv[1:4]
    count, timeout = int(sys.argv[4]), float(sys.argv[5])
    received = []

    def on_message(msg):
        value = int(msg.data.split()[1]) if kind == 'string' else msg.header.stamp.sec
        received.append(value)
        print(f'GOT {value}', flush=True)

    with rclpy.init(args=sys.argv):
        node = Node('smoke_listener')
        node.create_subscription(String if kind == 'string' else Range, topic, on_message,
                                 qos_profile_sensor_data if qos == 'sensor' else 10)
        print(f'READY {kind} {qos} {topic}', flush=True)
        deadline = time.monotonic() + timeout
        while len(received) < count and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.destroy_node()
    if len(received) < count:
        print(f'TIMEOUT after {len(received)} messages', flush=True)
        sys.exit(3)
    print('DONE', flush=True)


if __name__ == '__main__':
    main()
'''

MESSAGES = 5
ARRIVAL_TIMEOUT = 90.0  # seconds; a few seconds is normal, discovery on a loaded box is slower


def _topic(stem):
    return '/' + ros_helpers.unique_name(stem)


def _received(proc):
    return [int(v) for v in re.findall(r'^GOT (\d+)$', proc.stdout(), re.MULTILINE)]


def test_environment_is_per_run_and_localhost(ros_env, ros_domain_id, ros_processes):
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert os.environ['ROS_DOMAIN_ID'] == str(ros_domain_id)
    assert 0 <= ros_domain_id <= ros_helpers.MAX_DOMAIN_ID
    assert 'ROS_STATIC_PEERS' not in os.environ
    assert ros_env['PYTHONUNBUFFERED'] == '1'
    assert ros_env['ROS_DOMAIN_ID'] == str(ros_domain_id)
    child = ros_processes.start_script('env_probe', (
        'import os\n'
        'for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "PYTHONUNBUFFERED"):\n'
        '    print(key, os.environ.get(key))\n'))
    assert child.wait(timeout=60) == 0, child.report()
    assert child.stdout().split('\n')[:3] == [
        'ROS_AUTOMATIC_DISCOVERY_RANGE LOCALHOST', f'ROS_DOMAIN_ID {ros_domain_id}',
        'PYTHONUNBUFFERED 1'], child.report()


def test_string_counter_from_one_process_reaches_another(ros_processes):
    topic = _topic('smoke_chatter')
    listener = ros_processes.start_script(
        'listener', LISTENER, ['string', 'reliable', topic, str(MESSAGES), str(ARRIVAL_TIMEOUT)])
    talker = ros_processes.start_script('talker', TALKER, ['string', 'reliable', topic])

    deadline = time.monotonic() + ARRIVAL_TIMEOUT + 60
    while listener.is_running() and talker.is_running() and time.monotonic() < deadline:
        time.sleep(0.1)
    code = listener.wait(timeout=5)
    assert code == 0, f'listener got too few messages\n{listener.report()}\n{talker.report()}'
    counters = _received(listener)
    assert len(counters) >= MESSAGES, listener.report()
    assert counters == sorted(set(counters)), f'not strictly increasing: {counters}'
    assert counters[0] >= 1

    # The talker uses the main-function pattern later nodes use: SIGINT ends it cleanly.
    assert talker.stop(sigint_timeout=30) == 0, talker.report()
    assert 'STOPPED' in talker.stdout(), talker.report()


def test_sensor_data_qos_from_a_process_reaches_the_test_node(ros, ros_processes):
    from rclpy.qos import QoSReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Range

    topic = _topic('smoke_range')
    received = ros.collect(Range, topic, qos_profile_sensor_data)
    talker = ros_processes.start_script('talker', TALKER, ['range', 'sensor', topic])

    arrived = ros.spin_until(lambda: len(received) >= MESSAGES or not talker.is_running(),
                             timeout=ARRIVAL_TIMEOUT)
    assert arrived and len(received) >= MESSAGES, (
        f'{len(received)} sensor-QoS messages in {ARRIVAL_TIMEOUT:.0f} s\n{talker.report()}')

    # The talker really offered the sensor-data profile (best effort), not a reliable one.
    infos = ros.node.get_publishers_info_by_topic(topic)
    assert [i.qos_profile.reliability for i in infos] == [QoSReliabilityPolicy.BEST_EFFORT]

    stamps = [msg.header.stamp.sec for msg in received]
    assert stamps == sorted(set(stamps)), f'not strictly increasing: {stamps}'
    first = received[0]
    assert first.header.frame_id == 'smoke_sonar'
    assert first.radiation_type == Range.ULTRASOUND
    assert first.min_range == pytest.approx(0.02) and first.max_range == pytest.approx(4.0)
    assert first.range == pytest.approx(0.25 * (1 + first.header.stamp.sec % 8))

    assert talker.stop(sigint_timeout=30) == 0, talker.report()


def test_sensor_data_qos_from_the_test_node_reaches_a_process(ros, ros_processes):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Range

    topic = _topic('smoke_range_in')
    publisher = ros.node.create_publisher(Range, topic, qos_profile_sensor_data)
    listener = ros_processes.start_script(
        'listener', LISTENER, ['range', 'sensor', topic, str(MESSAGES), str(ARRIVAL_TIMEOUT)])
    sent = [0]

    def publish():
        sent[0] += 1
        msg = Range(radiation_type=Range.INFRARED, min_range=0.1, max_range=2.0, range=1.0)
        msg.header.stamp.sec = sent[0]
        publisher.publish(msg)

    ros.node.create_timer(0.05, publish)
    finished = ros.spin_until(lambda: not listener.is_running(), timeout=ARRIVAL_TIMEOUT + 60)
    assert finished and listener.returncode == 0, (
        f'listener did not get {MESSAGES} messages ({sent[0]} sent)\n{listener.report()}')
    counters = _received(listener)
    assert len(counters) >= MESSAGES and counters == sorted(set(counters)), listener.report()
    assert 1 <= counters[0] and counters[-1] <= sent[0]
