"""Session-wide test set-up: the per-run ROS environment and the fixtures ROS tests share.

Importing this module (pytest does it before it imports any test module) sets, in os.environ,
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and this run's own ``ROS_DOMAIN_ID`` in 1..101
(pid-derived, locked against concurrent runs on this machine; pin it with
``OBSTACLE_CLASSIFIER_TEST_DOMAIN_ID``), so rclpy in this process and in every child reads them.

Fixtures:
    ros_env          dict: a fresh copy of os.environ for ROS subprocesses (+ PYTHONUNBUFFERED=1)
    venv_python      str: sys.executable, the .venv interpreter
    ros_domain_id    int: this run's ROS_DOMAIN_ID
    repo_root        Path: the checkout
    ros_processes    ros_helpers.ProcessLauncher; every process is stopped and checked for leaks
    rclpy_context    an initialised rclpy Context for this test (no signal handlers installed)
    ros              ros_helpers.RosTestNode on that context: .node, .spin_until(), .collect()
    setup_py_args    dict: name, version, packages, data_files, entry_points given to setup()
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import ros_helpers

# Before anything imports rclpy (rcl reads these when a context is initialised).
ROS_DOMAIN_ID = ros_helpers.configure_ros_environment()


def pytest_report_header(config):
    return (f'ROS: ROS_DOMAIN_ID={ROS_DOMAIN_ID}, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST '
            f'(pin the domain with {ros_helpers.DOMAIN_OVERRIDE_VARIABLE})')


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Remember each phase's report so fixtures can tell at teardown whether the test failed.
    report = yield
    setattr(item, f'_report_{report.when}', report)
    return report


def pytest_sessionfinish(session, exitstatus):
    leaked = ros_helpers.cleanup_run()
    if leaked:
        print(f'\nWARNING: test processes still running at session end were killed: {leaked}',
              file=sys.stderr)


def _failed(request) -> bool:
    return any(getattr(getattr(request.node, f'_report_{when}', None), 'failed', False)
               for when in ('setup', 'call'))


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return ros_helpers.REPO_ROOT


@pytest.fixture(scope='session')
def ros_domain_id() -> int:
    return ROS_DOMAIN_ID


@pytest.fixture(scope='session')
def venv_python() -> str:
    return sys.executable


@pytest.fixture
def ros_env() -> dict:
    """A fresh dict (safe to modify) of os.environ with the per-run ROS settings."""
    return ros_helpers.ros_subprocess_env()


@pytest.fixture
def ros_processes(request, tmp_path, ros_env, venv_python):
    """Start processes with ``ros_env``; all are SIGINT-ed (then SIGKILL-ed) at teardown.

    Output goes to ``tmp_path/processes/<name>.std{out,err}.txt``; if the test failed, every
    process's report is printed (pytest shows it under "Captured stdout teardown").
    A process (or anything in its process group) still alive after teardown is an error.
    """
    launcher = ros_helpers.ProcessLauncher(tmp_path / 'processes', env=ros_env,
                                           python=venv_python, cwd=tmp_path)
    yield launcher
    launcher.stop_all()
    if _failed(request) and launcher.processes:
        print(launcher.reports())
    leaked = launcher.leaked()
    assert not leaked, f'processes survived SIGINT and SIGKILL: {leaked}'


@pytest.fixture
def rclpy_context(ros_domain_id):
    """A fresh, initialised rclpy Context on this run's domain; shut down at teardown."""
    rclpy = ros_helpers.import_rclpy()
    from rclpy.context import Context
    context = Context()
    with rclpy.init(args=[], context=context, domain_id=ros_domain_id):
        yield context


@pytest.fixture
def ros(rclpy_context):
    """A :class:`ros_helpers.RosTestNode` in the test process, destroyed at teardown."""
    test_node = ros_helpers.RosTestNode(rclpy_context)
    yield test_node
    test_node.close()


@pytest.fixture(scope='session')
def setup_py_args(repo_root, venv_python) -> dict:
    return ros_helpers.setup_py_arguments(repo_root, venv_python)
