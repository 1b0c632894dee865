"""The sidewalk simulator as a ROS node: raw sensor streams and ground truth, live.

Publishes what :class:`~obstacle_classifier.simulation.SidewalkSimulator` produces on the topics
of the feature config, with the config's message types, each sensor at its own rate, as real
drivers would: a timer at ``step_rate_hz`` advances the simulated world to "now" and publishes
every reading that fell due, stamped (header types) with the node-clock time the reading belongs
to. Simulated time runs at ``real_time_factor`` times the node clock (which is sim time itself
with ``use_sim_time``).

Ground truth goes to ``obstacle_labels`` (std_msgs/String): the classes in the robot's path,
comma-separated in class order, '' when the path is clear, at ``label_rate_hz``. A String has no
header: the truth is *stamped by its arrival*; it describes the world at the publish time (the
world is advanced to "now" first), so a consumer matches it to other data by receive time
(within a label period).
"""
from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from obstacle_classifier import paths
from obstacle_classifier.features import FeatureConfig
from obstacle_classifier.ros_io import (RangeInfo, ScanGeometry, SensorMessageBuilder,
                                        encode_labels, input_qos, message_class,
                                        publish_unless_shut_down, run_node,
                                        use_sim_time_change_refused, warn_undeclared_parameters)
from obstacle_classifier.simulation import (LIDAR_ANGLE_INCREMENT, LIDAR_ANGLE_MAX,
                                            LIDAR_ANGLE_MIN, LIDAR_RANGE_MAX, LIDAR_RANGE_MIN,
                                            RANGE_FIELD_OF_VIEW, RANGE_MAX, RANGE_MIN,
                                            SCENARIOS, SENSOR_RATES_HZ, SidewalkSimulator)

NODE_NAME = 'sidewalk_simulator'
LABELS_TOPIC = 'obstacle_labels'
RTF_RANGE = (0.01, 100.0)
#: A node-clock step longer than this many step periods (and 2 s) between two steps is a jump,
#: not only the passing of time: a /clock jump forward, a suspended machine, use_sim_time
#: switched. Only that much of it is simulated (a coarse /clock still moves the world on);
#: simulated time goes on from there instead of simulating the whole gap at once.
MAX_STEP_GAP_PERIODS = 10
MAX_STEP_GAP_S = 2.0
#: Readings published this many step periods after their stamps: the node is falling behind.
LAG_WARN_PERIODS = 10


def _default_feature_config() -> str:
    try:
        return str(paths.config_path('features.yaml'))
    except FileNotFoundError:
        return ''


class SimulatorNode(Node):
    """Publishes the simulated sensors of the feature config and the ground truth."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._declare_parameters()
        warn_undeclared_parameters(self)
        self._use_sim_time_at_start = bool(self.get_parameter('use_sim_time').value)
        seed = self.get_parameter('seed').value
        scenario = self.get_parameter('scenario').value
        self._rtf = float(self.get_parameter('real_time_factor').value)
        config_file = self.get_parameter('feature_config').value or _default_feature_config()
        config = FeatureConfig.from_yaml(config_file)
        self._simulator = SidewalkSimulator(seed=seed, scenario=scenario, config=config)
        self._class_names = self._simulator.class_names

        lidar_rate = SENSOR_RATES_HZ.get('lidar', 10.0)
        geometry = ScanGeometry(
            angle_min=LIDAR_ANGLE_MIN, angle_max=LIDAR_ANGLE_MAX,
            angle_increment=LIDAR_ANGLE_INCREMENT, range_min=LIDAR_RANGE_MIN,
            range_max=LIDAR_RANGE_MAX, scan_time=1.0 / lidar_rate)
        range_info = RangeInfo(min_range=RANGE_MIN, max_range=RANGE_MAX,
                               field_of_view=RANGE_FIELD_OF_VIEW)
        self._builders: dict[str, SensorMessageBuilder] = {}
        self._sensor_pubs: dict[str, Any] = {}
        for spec in config.inputs:
            self._builders[spec.name] = SensorMessageBuilder(
                spec, frame_id=f'{spec.name}_link', range_info=range_info,
                scan_geometry=geometry)
            # Publish as the config expects a driver to: a sensor-data input gets best effort.
            self._sensor_pubs[spec.name] = self.create_publisher(
                message_class(spec.msg_type), spec.topic, input_qos(spec))
        self._labels_pub = self.create_publisher(String, LABELS_TOPIC, 10)

        # Simulated time = anchor_sim + (node time - anchor_node) * rtf, re-anchored whenever
        # the factor changes or the node clock jumps (see MAX_STEP_GAP_PERIODS): simulated time
        # never goes back, nor ahead by more than one step's worth at once.
        self._step_period_ns = int(round(1e9 / self.get_parameter('step_rate_hz').value))
        self._max_gap_ns = max(MAX_STEP_GAP_PERIODS * self._step_period_ns,
                               int(MAX_STEP_GAP_S * 1e9))
        self._node_clock = self.get_clock()
        self._anchor_node_ns: Optional[int] = None
        self._anchor_sim_ns = 0
        self._last_node_ns = 0

        # Ranges and read-only flags are enforced by rclpy from the descriptors.
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._step_timer = self.create_timer(
            1.0 / self.get_parameter('step_rate_hz').value, self._step)
        self._labels_timer = self.create_timer(
            1.0 / self.get_parameter('label_rate_hz').value, self._publish_labels)
        self.get_logger().info(
            f"simulating scenario '{scenario}' with seed {seed} at {self._rtf:g}x real time: "
            + ', '.join(f'{spec.name} on {self._sensor_pubs[spec.name].topic_name}'
                        for spec in config.inputs)
            + f'; ground truth on {self._labels_pub.topic_name}')

    def _declare_parameters(self) -> None:
        self.declare_parameter('seed', 0, ParameterDescriptor(
            type=ParameterType.PARAMETER_INTEGER, read_only=True,
            description='World seed: the same seed, scenario and feature config give the same '
                        'world and the same readings.',
            integer_range=[IntegerRange(from_value=0, to_value=2**31 - 1, step=1)]))
        self.declare_parameter('scenario', 'default', ParameterDescriptor(
            type=ParameterType.PARAMETER_STRING, read_only=True,
            description='How busy the sidewalk is.',
            additional_constraints=f'one of {", ".join(SCENARIOS)}'))
        low, high = RTF_RANGE
        self.declare_parameter('real_time_factor', 1.0, ParameterDescriptor(
            type=ParameterType.PARAMETER_DOUBLE,
            description='Simulated seconds per second of the node clock. A live change takes '
                        'effect from now on (simulated time never jumps).',
            floating_point_range=[FloatingPointRange(from_value=low, to_value=high, step=0.0)]))
        self.declare_parameter('feature_config', _default_feature_config(), ParameterDescriptor(
            type=ParameterType.PARAMETER_STRING, read_only=True,
            description='Feature config YAML naming the sensors, topics and message types to '
                        'publish. Empty: the installed config/features.yaml.'))
        self.declare_parameter('label_rate_hz', 10.0, ParameterDescriptor(
            type=ParameterType.PARAMETER_DOUBLE, read_only=True,
            description='Rate of the ground truth on obstacle_labels (node clock).',
            floating_point_range=[FloatingPointRange(from_value=0.1, to_value=100.0,
                                                     step=0.0)]))
        self.declare_parameter('step_rate_hz', 200.0, ParameterDescriptor(
            type=ParameterType.PARAMETER_DOUBLE, read_only=True,
            description='How often the world is advanced and due readings are published: '
                        'a reading leaves at most one step after its stamp.',
            floating_point_range=[FloatingPointRange(from_value=10.0, to_value=1000.0,
                                                     step=0.0)]))

    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """Refuse a live use_sim_time change (rclpy checks the rest from the descriptors)."""
        refused = use_sim_time_change_refused(parameters, self._use_sim_time_at_start)
        return refused or SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        for parameter in parameters:
            if parameter.name == 'real_time_factor':
                self._step()  # settle the world up to now at the old factor
                if self._anchor_node_ns is not None:
                    self._anchor_node_ns = self._last_node_ns
                    self._anchor_sim_ns = self._simulator.now_ns
                self._rtf = float(parameter.value)
                self.get_logger().info(f'real-time factor now {self._rtf:g}')

    # -- time ----------------------------------------------------------------------------------

    def _node_ns(self, sim_ns: int) -> int:
        """The node-clock time of simulated time ``sim_ns``."""
        return self._anchor_node_ns + int(round((sim_ns - self._anchor_sim_ns) / self._rtf))

    def _advance(self) -> list:
        now_ns = self._node_clock.now().nanoseconds
        if now_ns <= 0:
            return []  # sim time before the first /clock
        jumped = (self._anchor_node_ns is not None
                  and not 0 <= now_ns - self._last_node_ns <= self._max_gap_ns)
        if jumped:
            self.get_logger().warning(
                f'node clock jumped by {(now_ns - self._last_node_ns) / 1e9:+.3f} s between two '
                f'steps: simulated time goes on from where it was (at most '
                f'{self._max_gap_ns / 1e9:g} s of the jump are simulated)')
        if self._anchor_node_ns is None or jumped:
            # After a jump ahead, the last max_gap of it is simulated now.
            ahead = jumped and now_ns > self._last_node_ns
            self._anchor_node_ns = now_ns - (self._max_gap_ns if ahead else 0)
            self._anchor_sim_ns = self._simulator.now_ns
        self._last_node_ns = now_ns
        target = self._anchor_sim_ns + int((now_ns - self._anchor_node_ns) * self._rtf)
        if target <= self._simulator.now_ns:
            return []
        return self._simulator.advance(target)

    # -- callbacks -----------------------------------------------------------------------------

    def _step(self) -> None:
        stamp_ns = None
        for reading in self._advance():
            name = reading.input_name
            stamp_ns = self._node_ns(reading.stamp_ns)
            msg = self._builders[name].build(reading.values, stamp_ns)
            if not publish_unless_shut_down(self, self._sensor_pubs[name], msg):
                return
        if stamp_ns is not None:
            lag_ns = self._node_clock.now().nanoseconds - stamp_ns
            if lag_ns > LAG_WARN_PERIODS * self._step_period_ns:
                self.get_logger().warning(
                    f'falling behind: readings leave {lag_ns / 1e6:.0f} ms after their stamps '
                    f'(real_time_factor {self._rtf:g} is more than this machine keeps up with)',
                    throttle_duration_sec=5.0)

    def _publish_labels(self) -> None:
        self._step()  # the truth describes the world now, not at the last step
        if self._anchor_node_ns is None:
            return
        hits = self._simulator.labels_at(self._simulator.now_ns)
        names = [name for name, hit in zip(self._class_names, np.asarray(hits).tolist()) if hit]
        publish_unless_shut_down(self, self._labels_pub, String(data=encode_labels(names)))


def main(args: Optional[list[str]] = None) -> int:
    """Run the simulator until SIGINT / SIGTERM; exit 1 if its configuration is unusable."""
    return run_node(SimulatorNode, NODE_NAME, args)


if __name__ == '__main__':
    sys.exit(main())
