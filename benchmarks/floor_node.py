"""The ROS floor under the classifier node, for bench_node.py: its transport work, none of its own.

    python benchmarks/floor_node.py --record ticks.npy --ros-args -r __ns:=/x -p rate_hz:=100

Subscribes to every input of the default feature config exactly as the classifier node does
(serialized messages, the same QoS, the same executor) but drops each message unread, and at
``rate_hz`` publishes an ``obstacles`` report of the classifier's size (status ok, eight class
probabilities, the tick's stamp) on a timer. What it costs, CPU and time per tick from the timer
callback to after the publication, is what rclpy and the middleware cost on this machine before
any feature, model or bookkeeping work: the floor of the node's P4 figures. At shutdown it
writes (wall-clock ns, processing ns) per tick to ``--record`` (a .npy of int64 (n, 2)).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: The default model's classes: the report has the classifier's length.
CLASSES = ('pedestrian', 'bicycle', 'trash_can', 'pole', 'dog', 'scooter', 'barrier', 'curb')
MAX_TICKS = 1_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--record', type=Path, required=True, help='.npy file of tick timings')
    args, ros_args = parser.parse_known_args()
    with warnings.catch_warnings():  # rclpy's vendored lark imports deprecated sre_* modules
        warnings.simplefilter('ignore', DeprecationWarning)
        from rclpy.node import Node
        from std_msgs.msg import String

        from obstacle_classifier.features import load_default_config
        from obstacle_classifier.ros_io import (encode_obstacles, input_qos, message_class,
                                                output_qos, publish_unless_shut_down, run_node,
                                                spin_on_events, timer_callback)

    record = np.zeros((MAX_TICKS, 2), dtype=np.int64)
    count = [0]
    probabilities = {name: 0.0123 * (k + 1) for k, name in enumerate(CLASSES)}

    def make_node() -> Node:
        node = Node('obstacle_classifier_floor')
        rate_hz = node.declare_parameter('rate_hz', 100.0).value
        for spec in load_default_config().inputs:
            node.create_subscription(message_class(spec.msg_type), spec.topic,
                                     lambda data: None, input_qos(spec), raw=True)
        publisher = node.create_publisher(String, 'obstacles', output_qos())
        clock = node.get_clock()

        def tick() -> None:
            started = time.perf_counter_ns()
            now_ns = clock.now().nanoseconds
            text = encode_obstacles(now_ns, [CLASSES[0]], probabilities, (), 'ok')
            publish_unless_shut_down(node, publisher, String(data=text))
            index = count[0] % MAX_TICKS
            record[index] = time.time_ns(), time.perf_counter_ns() - started
            count[0] += 1

        node.create_timer(1.0 / rate_hz, timer_callback(tick))
        return node

    try:  # started and stopped as the classifier node is: run_node, the same executor
        return run_node(make_node, 'obstacle_classifier_floor', [sys.argv[0], *ros_args],
                        spin=spin_on_events)
    finally:
        np.save(args.record, record[:min(count[0], MAX_TICKS)])


if __name__ == '__main__':
    sys.exit(main())
