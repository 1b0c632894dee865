"""The whole demo on a machine with ROS 2: the sidewalk simulator feeding the classifier.

    ros2 launch obstacle_classifier demo.launch.py
    ros2 launch obstacle_classifier demo.launch.py scenario:=busy seed:=7

Watch the detections and the ground truth side by side:

    ros2 topic echo /obstacles
    ros2 topic echo /obstacle_labels
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    classifier_params = LaunchConfiguration('classifier_params_file')
    simulator_params = LaunchConfiguration('simulator_params_file')
    seed = LaunchConfiguration('seed')
    scenario = LaunchConfiguration('scenario')
    real_time_factor = LaunchConfiguration('real_time_factor')

    return LaunchDescription([
        DeclareLaunchArgument(
            'classifier_params_file',
            default_value=PathJoinSubstitution(
                [FindPackageShare('obstacle_classifier'), 'config', 'obstacle_classifier.yaml']),
            description='Parameters of the classifier node'),
        DeclareLaunchArgument(
            'simulator_params_file',
            default_value=PathJoinSubstitution(
                [FindPackageShare('obstacle_classifier'), 'config', 'sidewalk_simulator.yaml']),
            description='Parameters of the simulator node'),
        DeclareLaunchArgument('seed', default_value='4', description='World seed'),
        DeclareLaunchArgument('scenario', default_value='default',
                              description='default, quiet or busy'),
        DeclareLaunchArgument('real_time_factor', default_value='1.0',
                              description='Simulated seconds per second'),
        Node(
            package='obstacle_classifier',
            executable='sidewalk_simulator',
            name='sidewalk_simulator',
            output='screen',
            emulate_tty=True,
            # Typed: launch_ros reads a bare argument as YAML, so real_time_factor:=2 would
            # be an integer, which the node's double parameter refuses at start-up.
            parameters=[simulator_params, {
                'seed': ParameterValue(seed, value_type=int),
                'scenario': ParameterValue(scenario, value_type=str),
                'real_time_factor': ParameterValue(real_time_factor, value_type=float)}],
        ),
        Node(
            package='obstacle_classifier',
            executable='classifier_node',
            name='obstacle_classifier',
            output='screen',
            emulate_tty=True,
            parameters=[classifier_params],
        ),
    ])
