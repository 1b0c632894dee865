"""Launch the obstacle classifier on a robot.

    ros2 launch obstacle_classifier obstacle_classifier.launch.py
    ros2 launch obstacle_classifier obstacle_classifier.launch.py \
        params_file:=/path/to/my_params.yaml use_sim_time:=true namespace:=robot1

The node subscribes to the sensor topics of its feature config and publishes `obstacles`,
`obstacle_probabilities`, `obstacle_classes` and `/diagnostics`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    params_file = LaunchConfiguration('params_file')
    use_sim_time = LaunchConfiguration('use_sim_time')
    namespace = LaunchConfiguration('namespace')
    log_level = LaunchConfiguration('log_level')

    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution(
                [FindPackageShare('obstacle_classifier'), 'config', 'obstacle_classifier.yaml']),
            description='Parameters of the classifier node (ros__parameters YAML)'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false',
            description='Follow /clock (bag replay, simulation) instead of the system clock'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and of its relative topics'),
        DeclareLaunchArgument(
            'log_level', default_value='info',
            description='Logging level (debug, info, warn, error, fatal)'),
        Node(
            package='obstacle_classifier',
            executable='classifier_node',
            name='obstacle_classifier',
            namespace=namespace,
            output='screen',
            emulate_tty=True,
            parameters=[params_file, {
                'use_sim_time': ParameterValue(use_sim_time, value_type=bool)}],
            arguments=['--ros-args', '--log-level', log_level],
        ),
    ])
