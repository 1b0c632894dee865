"""Test-only helpers for everything that touches ROS 2 (and the packaging checks).

Nothing here imports rclpy at module level: the environment must be configured (by
``conftest.py``, through :func:`configure_ros_environment`) before rclpy reads it, and the
pure-NumPy tests must be able to check that they import no ROS at all.

The pieces other tests use:

* :class:`ProcessLauncher` / :class:`ManagedProcess`: start a Python script, module or any
  command as a separate process with the per-run ROS environment, stdout and stderr captured to
  files, always stopped (SIGINT to the process group, then SIGKILL) and never leaked.
* :class:`RosTestNode`: an rclpy node in the test process on its own context, with an executor and
  poll-with-deadline helpers (``spin_until``, ``collect``, ``wait_for_publishers``).
* :func:`import_rclpy`: import rclpy with the one narrowly-targeted warning filter it needs.
* :func:`setup_py_arguments`: what ``setup.py`` passes to ``setup()``, without running setuptools.
"""
from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_NAME = 'obstacle_classifier'

#: Set this to pin the domain (0..101), e.g. to reproduce a run or to sniff it by hand.
DOMAIN_OVERRIDE_VARIABLE = 'OBSTACLE_CLASSIFIER_TEST_DOMAIN_ID'
MAX_DOMAIN_ID = 101  # the highest id whose DDS ports stay out of Linux's ephemeral range

#: Messages of the only DeprecationWarnings importing and using rclpy raises here: the lark parser
#: that rosidl_generator_py vendors imports the deprecated ``sre_parse``/``sre_constants`` modules
#: when the first message type support is loaded. Ignored only around that import.
ROS_IMPORT_WARNINGS = (
    r"module 'sre_parse' is deprecated",
    r"module 'sre_constants' is deprecated",
)

_state: Dict[str, Any] = {'domain_id': None, 'log_dir': None, 'lock_fds': []}


# ----------------------------------------------------------------------------------------------
# Per-run ROS environment
# ----------------------------------------------------------------------------------------------

#: Environment for node subprocesses: Python warnings are errors, as in the suite, except the
#: two deprecations the lark parser inside ROS's rosidl_generator_py raises at import.
STRICT_WARNINGS_ENV = {'PYTHONWARNINGS': ','.join([
    'error',
    "ignore:module 'sre_parse' is deprecated:DeprecationWarning",
    "ignore:module 'sre_constants' is deprecated:DeprecationWarning"])}


def _lock_domain(domain_id: int) -> bool:
    """Hold an exclusive lock that says "this test run owns ``domain_id``" until we exit."""
    directory = Path(tempfile.gettempdir()) / f'{PACKAGE_NAME}_test_ros_domains'
    try:
        directory.mkdir(mode=0o777, exist_ok=True)
        fd = os.open(directory / f'{domain_id}.lock', os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return False  # e.g. created by another user: treat as taken
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    _state['lock_fds'].append(fd)  # not inheritable: released when this process ends
    return True


def _pick_domain_id() -> int:
    override = os.environ.get(DOMAIN_OVERRIDE_VARIABLE, '').strip()
    if override:
        try:
            value = int(override)
        except ValueError:
            raise ValueError(f'{DOMAIN_OVERRIDE_VARIABLE} must be an integer in '
                             f'0..{MAX_DOMAIN_ID}, got {override!r}') from None
        if not 0 <= value <= MAX_DOMAIN_ID:
            raise ValueError(f'{DOMAIN_OVERRIDE_VARIABLE} must be in 0..{MAX_DOMAIN_ID}, '
                             f'got {value}')
        return value
    # Start from a pid-derived id in 1..101 and take the first one no concurrent run holds.
    start = os.getpid() % MAX_DOMAIN_ID
    for step in range(MAX_DOMAIN_ID):
        candidate = 1 + (start + step) % MAX_DOMAIN_ID
        if _lock_domain(candidate):
            return candidate
    return 1 + start  # every id locked (101 concurrent runs?): fall back to the pid-derived one


def configure_ros_environment() -> int:
    """Set the per-run ROS environment in ``os.environ`` (idempotent); return the domain id.

    ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` keeps DDS discovery on loopback; ``ROS_DOMAIN_ID``
    is this run's own (see :func:`_pick_domain_id`); ``ROS_LOG_DIR`` is a per-run temporary
    directory so that runs do not fill ``~/.ros/log``. Static peers (traffic to other addresses)
    and the deprecated ``ROS_LOCALHOST_ONLY`` are removed.
    """
    if _state['domain_id'] is None:
        _state['domain_id'] = _pick_domain_id()
        _state['log_dir'] = tempfile.mkdtemp(prefix=f'{PACKAGE_NAME}_ros_log_')
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ['ROS_DOMAIN_ID'] = str(_state['domain_id'])
    os.environ['ROS_LOG_DIR'] = _state['log_dir']
    os.environ.pop('ROS_STATIC_PEERS', None)
    os.environ.pop('ROS_LOCALHOST_ONLY', None)
    return _state['domain_id']


def ros_domain_id() -> int:
    """This run's ROS domain id."""
    return configure_ros_environment()


def ros_subprocess_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """A fresh copy of ``os.environ`` for a ROS subprocess: per-run ROS settings, unbuffered."""
    configure_ros_environment()
    env = dict(os.environ)
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    env['RCUTILS_LOGGING_BUFFERED_STREAM'] = '0'
    if extra:
        env.update(extra)
    return env


def cleanup_run() -> List[str]:
    """End-of-session clean-up: stop leaked processes, remove the log dir. Returns the leaks."""
    leaked = [proc.name for proc in list(_LIVE) if proc.poll() is None]
    for proc in list(_LIVE):
        proc.stop(sigint_timeout=2.0)
    if _state['log_dir']:
        shutil.rmtree(_state['log_dir'], ignore_errors=True)
    return leaked


# ----------------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------------

_LIVE: 'set[ManagedProcess]' = set()
_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """A name unique in this run that is valid as a ROS node or topic name component."""
    return f'{prefix}_{os.getpid()}_{next(_counter)}'


def _group_members(pgid: int) -> List[int]:
    """Live (non-zombie) processes in process group ``pgid``, from /proc (Linux)."""
    members = []
    for entry in os.scandir('/proc'):
        if not entry.name.isdigit():
            continue
        try:
            with open(f'/proc/{entry.name}/stat', 'rb') as stat:
                fields = stat.read().rsplit(b')', 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in (b'Z', b'X'):
            members.append(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    if os.path.isdir('/proc'):
        return bool(_group_members(pgid))
    try:  # elsewhere: a zombie counts as alive
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ManagedProcess:
    """A child process in its own process group with stdout/stderr captured to files."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str],
                 cwd: Path, log_dir: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.stdout_path = log_dir / f'{name}.stdout.txt'
        self.stderr_path = log_dir / f'{name}.stderr.txt'
        with open(self.stdout_path, 'wb') as out, open(self.stderr_path, 'wb') as err:
            self.popen = subprocess.Popen(
                self.argv, env=dict(env), cwd=str(cwd), stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True)
        self.pid = self.popen.pid  # also the process group id (start_new_session)
        self._interrupted = False
        _LIVE.add(self)

    def __repr__(self) -> str:
        state = 'running' if self.is_running() else f'exited {self.returncode}'
        return f'<ManagedProcess {self.name} pid={self.pid} {state}>'

    # -- state and output --------------------------------------------------------------------
    def poll(self) -> Optional[int]:
        return self.popen.poll()

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.poll()

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors='replace')

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors='replace')

    def report(self, tail: int = 60) -> str:
        """A failure-message block: command, state and the last lines of both streams."""
        state = ('running' if self.is_running() else f'exited with {self.returncode}')
        parts = [f'--- process {self.name!r} (pid {self.pid}, {state})',
                 '    ' + ' '.join(self.argv)]
        for label, text in (('stdout', self.stdout()), ('stderr', self.stderr())):
            lines = text.splitlines()
            cut = f' (last {tail} of {len(lines)} lines)' if len(lines) > tail else ''
            parts.append(f'--- {self.name} {label}{cut}:')
            parts.extend(lines[-tail:] or ['<empty>'])
        return '\n'.join(parts)

    # -- waiting -------------------------------------------------------------------------------
    def wait(self, timeout: float) -> Optional[int]:
        """Wait up to ``timeout`` s for the process to exit; its return code, or None."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_for_output(self, pattern: str, timeout: float = 60.0, stream: str = 'stdout',
                        poll: float = 0.05) -> 're.Match[str]':
        """Poll the captured ``stream`` until ``pattern`` (a regex, MULTILINE) matches.

        Fails with the process report if the deadline passes or the process exits first.
        """
        regex = re.compile(pattern, re.MULTILINE)
        read = self.stdout if stream == 'stdout' else self.stderr
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.is_running()
            match = regex.search(read())
            if match:
                return match
            if exited:
                raise AssertionError(f'{self.name} exited before printing /{pattern}/ on '
                                     f'{stream}\n{self.report()}')
            if time.monotonic() > deadline:
                raise AssertionError(f'{self.name} did not print /{pattern}/ on {stream} '
                                     f'within {timeout:.0f} s\n{self.report()}')
            time.sleep(poll)

    # -- stopping ------------------------------------------------------------------------------
    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def send_sigint(self) -> None:
        """SIGINT the process group, once (a second SIGINT would interrupt a clean shutdown)."""
        if self.is_running() and not self._interrupted:
            self._interrupted = True
            self._signal_group(signal.SIGINT)

    def stop(self, sigint_timeout: float = 10.0, kill_timeout: float = 10.0) -> Optional[int]:
        """SIGINT the process group, SIGKILL it after ``sigint_timeout``; the return code.

        Anything left in the group after the leader exits is killed too. A return code of 0 means
        the process handled SIGINT and shut down cleanly; -9 means it had to be killed.
        """
        self.send_sigint()
        if self.wait(sigint_timeout) is None:
            self._signal_group(signal.SIGKILL)
            self.wait(kill_timeout)
        deadline = time.monotonic() + kill_timeout
        while _group_alive(self.pid) and time.monotonic() < deadline:
            self._signal_group(signal.SIGKILL)  # stragglers the leader left in its group
            time.sleep(0.05)
        _LIVE.discard(self)
        return self.returncode

    def leaked(self) -> bool:
        """True if the process or anything in its process group is still alive."""
        return self.is_running() or _group_alive(self.pid)


class ProcessLauncher:
    """Starts :class:`ManagedProcess` es with one environment and log directory; stops them all.

    ``start_module(name, 'obstacle_classifier.node', ['--ros-args', '--params-file', path])``
    runs ``python -u -m obstacle_classifier.node ...``; ``start_script(name, text, args)`` writes
    ``text`` to ``<log_dir>/<name>.py`` and runs it; ``start(name, argv)`` runs any command.
    """

    def __init__(self, log_dir: Path, env: Optional[Mapping[str, str]] = None,
                 python: str = sys.executable, cwd: Optional[Path] = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env) if env is not None else ros_subprocess_env()
        self.python = python
        self.cwd = Path(cwd) if cwd is not None else self.log_dir
        self.processes: List[ManagedProcess] = []

    def _free_name(self, name: str) -> str:
        if not re.fullmatch(r'[A-Za-z0-9_.-]+', name):
            raise ValueError(f'process name must be [A-Za-z0-9_.-]+, got {name!r}')
        taken = {p.name for p in self.processes}
        candidate, suffix = name, 1
        while candidate in taken:
            suffix += 1
            candidate = f'{name}-{suffix}'
        return candidate

    def start(self, name: str, argv: Sequence[str], *,
              extra_env: Optional[Mapping[str, str]] = None,
              cwd: Optional[Path] = None) -> ManagedProcess:
        env = dict(self.env)
        if extra_env:
            env.update(extra_env)
        proc = ManagedProcess(self._free_name(name), argv, env,
                              Path(cwd) if cwd is not None else self.cwd, self.log_dir)
        self.processes.append(proc)
        return proc

    def start_script(self, name: str, script: str, args: Iterable[str] = (),
                     **kwargs: Any) -> ManagedProcess:
        name = self._free_name(name)
        path = self.log_dir / f'{name}.py'
        path.write_text(script)
        return self.start(name, [self.python, '-u', str(path), *args], **kwargs)

    def start_module(self, name: str, module: str, args: Iterable[str] = (),
                     **kwargs: Any) -> ManagedProcess:
        return self.start(name, [self.python, '-u', '-m', module, *args], **kwargs)

    def stop_all(self, timeout: float = 10.0) -> Dict[str, Optional[int]]:
        """SIGINT every running process at once, SIGKILL what is left after ``timeout`` s."""
        for proc in self.processes:
            proc.send_sigint()
        deadline = time.monotonic() + timeout
        codes = {}
        for proc in reversed(self.processes):
            codes[proc.name] = proc.stop(sigint_timeout=max(0.0, deadline - time.monotonic()))
        return codes

    def leaked(self) -> List[str]:
        return [proc.name for proc in self.processes if proc.leaked()]

    def reports(self) -> str:
        return '\n'.join(proc.report() for proc in self.processes)

    def __enter__(self) -> 'ProcessLauncher':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop_all()


# ----------------------------------------------------------------------------------------------
# rclpy in the test process
# ----------------------------------------------------------------------------------------------

def import_rclpy():
    """Import rclpy and what its first message type support pulls in, warning-clean.

    Under ``filterwarnings = error`` the vendored lark's ``import sre_parse`` would fail the first
    test that creates a publisher; it is ignored here, by message, around this import only. Once
    imported the modules are cached, so later tests in the run see no warning at all.
    """
    with warnings.catch_warnings():
        for message in ROS_IMPORT_WARNINGS:
            warnings.filterwarnings('ignore', message=message, category=DeprecationWarning)
        import rclpy
        import rclpy.context
        import rclpy.executors
        import rclpy.node
        import rclpy.qos
        import rosidl_generator_py  # noqa: F401  (lazily imported by type support otherwise)
    return rclpy


class RosTestNode:
    """A node in the test process, on ``context``, spun by its own single-threaded executor."""

    def __init__(self, context: Any, name: Optional[str] = None) -> None:
        import_rclpy()
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        self.context = context
        self.node = Node(name or unique_name('test_node'), context=context,
                         start_parameter_services=False)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate: Callable[[], bool], timeout: float = 60.0,
                   period: float = 0.05) -> bool:
        """Spin until ``predicate()`` is true (True) or ``timeout`` s pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bool(predicate())
            self.executor.spin_once(timeout_sec=min(period, remaining))

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, timeout=seconds)

    def collect(self, msg_type: Any, topic: str, qos: Any = 10) -> List[Any]:
        """Subscribe to ``topic``; return the list every received message is appended to."""
        received: List[Any] = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 30.0) -> Any:
        """Call service ``name`` once it is available; its response (asserts on timeouts)."""
        client = self.node.create_client(srv_type, name)
        try:
            assert self.spin_until(client.service_is_ready, timeout=timeout), \
                f'{name} not available'
            future = client.call_async(request)
            assert self.spin_until(future.done, timeout=timeout), f'{name} did not answer'
            return future.result()
        finally:
            self.node.destroy_client(client)

    def wait_for_publishers(self, topic: str, count: int = 1, timeout: float = 60.0) -> bool:
        return self.spin_until(lambda: self.node.count_publishers(topic) >= count, timeout)

    def wait_for_subscribers(self, topic: str, count: int = 1, timeout: float = 60.0) -> bool:
        return self.spin_until(lambda: self.node.count_subscribers(topic) >= count, timeout)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.node.destroy_node()


# ----------------------------------------------------------------------------------------------
# Packaging
# ----------------------------------------------------------------------------------------------

_SETUP_PROBE = r'''
import json, runpy, sys
import setuptools
captured = {}
setuptools.setup = lambda **kwargs: captured.update(kwargs)
runpy.run_path('setup.py', run_name='__main__')
keys = ('name', 'version', 'packages', 'data_files', 'entry_points', 'install_requires')
json.dump({k: captured.get(k) for k in keys}, sys.stdout)
'''


def setup_py_arguments(repo: Path = REPO_ROOT, python: str = sys.executable) -> Dict[str, Any]:
    """The arguments ``setup.py`` passes to ``setup()`` (globs evaluated in ``repo``).

    ``setup.py`` runs in a child interpreter with ``setuptools.setup`` replaced by a recorder, so
    nothing is built and variables, globs and f-strings in it are evaluated as pip would.
    """
    done = subprocess.run([python, '-c', _SETUP_PROBE], cwd=str(repo), capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f'running setup.py with a recording setup() failed '
                             f'({done.returncode}):\n{done.stdout}\n{done.stderr}')
    return json.loads(done.stdout)


def console_scripts(setup_args: Mapping[str, Any]) -> Dict[str, str]:
    """``{executable: 'module:function'}`` from setup()'s ``entry_points``."""
    entry_points = setup_args.get('entry_points') or {}
    specs = entry_points.get('console_scripts', [])
    if isinstance(specs, str):
        specs = [line for line in specs.splitlines() if line.strip()]
    scripts = {}
    for spec in specs:
        name, _, target = spec.partition('=')
        scripts[name.strip()] = target.strip()
    return scripts
