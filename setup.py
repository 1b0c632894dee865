"""ament_python set-up for obstacle_classifier (colcon build, pip install)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'obstacle_classifier'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'benchmarks']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.npz')),
    ],
    # What the nodes and the obstacle-classifier command import (rclpy and the message
    # packages come from ROS, not from PyPI's index of this name).
    install_requires=['setuptools', 'numpy', 'PyYAML', 'tqdm', 'matplotlib', 'rosbags'],
    zip_safe=True,
    maintainer='obstacle_classifier maintainers',
    maintainer_email='maintainers@obstacle-classifier.invalid',
    description='Pure-NumPy multi-label obstacle classifier for ROS 2 sidewalk robots.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'obstacle-classifier = obstacle_classifier.cli:main',
            'classifier_node = obstacle_classifier.classifier_node:main',
            'sidewalk_simulator = obstacle_classifier.simulator_node:main',
        ],
    },
)
