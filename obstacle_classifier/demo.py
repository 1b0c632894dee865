"""``make demo``: the simulator and the classifier as two real ROS 2 processes, live.

What it does:

1. Finds a model: ``--model``, else the shipped ``config/default_model.npz``; if there is none
   yet (a fresh checkout), it trains a small one on the simulated world first and says so.
2. Starts ``sidewalk_simulator`` and ``classifier_node`` as separate processes (the installed
   executables when present, else ``python -m``), each with ``--ros-args --params-file
   config/<node>.yaml``, with ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and one
   ``ROS_DOMAIN_ID`` (this process joins the same domain).
3. Prints the live detections beside the ground truth twice a second for ``--duration`` seconds
   (default 20) or until Ctrl-C, then a summary: ticks and rate, latency (receipt time minus the
   output's stamp), and the agreement with the truth (F1 per class over the ticks that have a
   truth message within one label period).
4. Stops both processes (SIGINT, then SIGKILL) whatever happened.

Truth matching: ``obstacle_labels`` has no stamp; it describes the world at its publish time,
so each ``obstacles`` tick is paired with the truth message published nearest to the tick's stamp
(the DDS source timestamp; both on the same host clock), if one was within 0.1 s of it.
Latency is the middleware's receive time of an output minus its stamp.
"""
from __future__ import annotations

import argparse
import bisect
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from obstacle_classifier import paths
from obstacle_classifier.features import FeatureConfig, load_default_config
from obstacle_classifier.simulation import SCENARIOS

DEFAULT_DURATION_S = 20.0
DEFAULT_SEED = 4
STARTUP_TIMEOUT_S = 60.0
TRUTH_MATCH_S = 0.1
#: The fallback model: ~2 minutes of the demo's own simulated world, memorised quickly.
QUICK_MODEL_TICKS = 2400
QUICK_MODEL_EPOCHS = 40
#: Seconds the nodes get to stop on a Ctrl-C of their own (a terminal's reaches the whole
#: process group) before the demo signals them too; they stop in about 0.2 s. A SIGINT to the
#: demo alone costs this wait.
SIGNALLED_GRACE_S = 1.5
_QUICK_MODEL_CACHE_SIZE = 8
# Source files whose content defines a quick model: a change to any of them retrains it.
_MODEL_SOURCES = ('features.py', 'simulation.py', 'training.py', 'model.py', 'datasets.py')


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

def _quick_model_key(config: FeatureConfig, seed: int, scenario: str, n_ticks: int,
                     epochs: int) -> str:
    digest = hashlib.sha256(f'{seed}|{scenario}|{n_ticks}|{epochs}|'.encode())
    digest.update(Path(config.source).read_bytes() if Path(config.source).is_file()
                  else config.source.encode())
    package = Path(__file__).resolve().parent
    for name in _MODEL_SOURCES:
        digest.update((package / name).read_bytes())
    for path in sorted((package / 'nn').glob('*.py')):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def quick_model(seed: int = DEFAULT_SEED, scenario: str = 'default', *,
                n_ticks: int = QUICK_MODEL_TICKS, epochs: int = QUICK_MODEL_EPOCHS,
                config: Optional[FeatureConfig] = None,
                cache_dir: Optional[Path] = None) -> tuple[Path, bool]:
    """A small model trained on the first ``n_ticks`` of the simulated world ``seed``.

    It learns that one world by heart (in a few seconds): the live classifier reproducing its
    offline accuracy on that world shows that the live features equal the offline ones; it
    says nothing about other worlds. Cached in ``cache_dir`` (default: the system temporary
    directory) under a hash of its inputs and of the code that produces it.

    Returns:
        (path of the model file, True if it was trained now rather than found in the cache).
    """
    from obstacle_classifier.datasets import Dataset
    from obstacle_classifier.simulation import simulate_dataset
    from obstacle_classifier.training import TrainConfig, train_model

    config = config if config is not None else load_default_config()
    cache = Path(cache_dir) if cache_dir is not None else (
        Path(tempfile.gettempdir()) / 'obstacle_classifier_quick_models')
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f'quick_{_quick_model_key(config, seed, scenario, n_ticks, epochs)}.npz'
    if path.is_file():
        return path, False
    data = simulate_dataset(n_ticks, seed=seed, scenario=scenario, config=config)
    dataset = Dataset(X=data.X, Y=data.Y, feature_names=data.feature_names,
                      class_names=data.class_names, source=f'simulated world {seed}')
    result = train_model(dataset, TrainConfig(epochs=epochs, patience=0, val_fraction=0.0,
                                              seed=seed))
    result.model.metadata.update({'trained_on': f'simulated world seed {seed} ({scenario}), '
                                                f'first {n_ticks} ticks'})
    result.model.save(path)  # atomic: concurrent runs never see half a file
    # Every change to the code or config makes a new entry: keep only the newest few.

    def age(entry: Path) -> float:
        try:
            return entry.stat().st_mtime
        except OSError:  # removed by a concurrent run meanwhile
            return 0.0
    entries = sorted(cache.glob('quick_*.npz'), key=age, reverse=True)
    for old in entries[_QUICK_MODEL_CACHE_SIZE:]:
        old.unlink(missing_ok=True)
    return path, True


def _default_model_problem(path: Path, config: FeatureConfig) -> Optional[str]:
    from obstacle_classifier.model import ModelFileError, ObstacleModel
    if not path.is_file():
        return f'{path} does not exist yet'
    try:
        ObstacleModel.load(path).check_features(config.feature_names)
    except (ModelFileError, ValueError) as exc:
        return str(exc)
    return None


# ----------------------------------------------------------------------------------------------
# Child processes
# ----------------------------------------------------------------------------------------------

def _node_command(executable: str, module: str) -> list[str]:
    """The installed console script next to this interpreter, else ``python -m module``."""
    script = Path(sys.executable).parent / executable
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, '-u', '-m', module]


@dataclass
class _Child:
    name: str
    process: subprocess.Popen
    log_path: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors='replace').splitlines()
        return '\n'.join(f'    {line}' for line in text[-lines:]) or '    <no output>'


@dataclass
class _Children:
    """The demo's node processes; :meth:`stop_all` is called in every case."""

    log_dir: Path
    env: dict
    children: list[_Child] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str]) -> _Child:
        log_path = self.log_dir / f'{name}.log'
        with open(log_path, 'wb') as log:
            # Same process group as the demo: a terminal Ctrl-C reaches the nodes too, and
            # killing the demo's group can never leave them behind.
            process = subprocess.Popen(list(argv), env=self.env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT)
        child = _Child(name, process, log_path)
        self.children.append(child)
        return child

    def failed(self) -> list[_Child]:
        return [child for child in self.children if child.process.poll() is not None]

    def stop_all(self, timeout: float = 10.0, signalled: bool = False) -> None:
        """SIGINT each node still running, then SIGKILL what is left after ``timeout``.

        ``signalled``: the nodes got a SIGINT of their own (a terminal's Ctrl-C reaches the
        whole process group); they get ``SIGNALLED_GRACE_S`` to finish on it first, since a
        second SIGINT forces a node out of its clean shutdown.
        """
        if signalled:
            grace_end = time.monotonic() + SIGNALLED_GRACE_S
            for child in self.children:
                try:
                    child.process.wait(timeout=max(0.0, grace_end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(timeout=5.0)


# ----------------------------------------------------------------------------------------------
# Watching
# ----------------------------------------------------------------------------------------------

@dataclass
class _Record:
    """What the demo saw; all times are ROS times in integer nanoseconds on this host."""

    outputs: list = field(default_factory=list)       # (receive_ns, ObstacleReport)
    truth_times: list = field(default_factory=list)   # publish (source) ns, increasing
    truths: list = field(default_factory=list)        # tuple of class names
    classes: tuple = ()
    diagnostics: dict = field(default_factory=dict)   # status name -> (level, message)

    def truth_near(self, stamp_ns: int) -> Optional[tuple[str, ...]]:
        index = bisect.bisect_left(self.truth_times, stamp_ns)
        best = None
        for candidate in (index - 1, index):
            if 0 <= candidate < len(self.truth_times):
                gap = abs(self.truth_times[candidate] - stamp_ns)
                if gap <= TRUTH_MATCH_S * 1e9 and (best is None or gap < best[0]):
                    best = (gap, self.truths[candidate])
        return None if best is None else best[1]


def _watch(record: _Record, children: _Children, duration_s: float, domain_id: int,
           out) -> bool:
    """Subscribe, show live lines until ``duration_s`` after the first output; False if the
    nodes died or never produced output (Ctrl-C raises KeyboardInterrupt out of here)."""
    import warnings
    with warnings.catch_warnings():  # rclpy's vendored lark imports deprecated sre_* modules
        warnings.simplefilter('ignore', DeprecationWarning)
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.signals import SignalHandlerOptions
        from std_msgs.msg import String

        from obstacle_classifier.ros_io import (classes_qos, decode_classes, decode_labels,
                                                decode_obstacles)

    context = Context()
    # No rclpy signal handlers: Ctrl-C must reach this loop, which then summarises and cleans.
    rclpy.init(args=[], context=context, domain_id=domain_id,
               signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = Node('obstacle_classifier_demo', context=context,
                    start_parameter_services=False)
        clock = node.get_clock()
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)

        # Middleware timestamps (same host clock as the stamps): what this process measures
        # does not depend on how promptly it runs its callbacks.
        def on_obstacles(msg, info):
            received = info['received_timestamp'] or clock.now().nanoseconds
            record.outputs.append((received, decode_obstacles(msg)))

        def on_labels(msg, info):
            record.truth_times.append(info['source_timestamp'] or clock.now().nanoseconds)
            record.truths.append(decode_labels(msg))

        def on_classes(msg):
            record.classes = decode_classes(msg)

        def on_diagnostics(msg):
            for status in msg.status:
                record.diagnostics[status.name] = (int.from_bytes(status.level, 'little'),
                                                   status.message)

        node.create_subscription(String, 'obstacles', on_obstacles, 50)
        node.create_subscription(String, 'obstacle_labels', on_labels, 50)
        node.create_subscription(String, 'obstacle_classes', on_classes, classes_qos())
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not (record.outputs and record.truths):
            executor.spin_once(timeout_sec=0.1)
            if children.failed() or time.monotonic() > deadline:
                return False
        print(f'{"time":>6}  {"detected (classifier)":<36}  {"truth (simulator)":<36}',
              file=out)
        started = time.monotonic()
        next_line = started
        while time.monotonic() - started < duration_s:
            executor.spin_once(timeout_sec=0.05)
            if children.failed():
                return False
            if time.monotonic() >= next_line:
                next_line += 0.5
                print(_live_line(record, time.monotonic() - started), file=out, flush=True)
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        return True
    finally:
        context.try_shutdown()


def _live_line(record: _Record, elapsed_s: float) -> str:
    receive_ns, report = record.outputs[-1]
    truth = record.truths[-1] if record.truths else None
    if report.status == 'ok':
        detected = ', '.join(report.labels) or '-'
    else:
        detected = f'({report.status})'
    if report.stale_inputs:
        detected += f' [stale: {", ".join(report.stale_inputs)}]'
    shown_truth = '?' if truth is None else (', '.join(truth) or '-')
    mark = ''
    if report.status == 'ok' and truth is not None:
        mark = 'agree' if set(report.labels) == set(truth) else 'differ'
    return f'{elapsed_s:5.1f}s  {detected:<36}  {shown_truth:<36}  {mark}'


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------

_LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}


def summarise(record: _Record, rate_hz: float) -> str:
    """The closing report: ticks and rate, latency, agreement with the truth, diagnostics."""
    from obstacle_classifier.metrics import multilabel_report

    lines = ['', 'Summary']
    outputs = record.outputs
    if not outputs:
        return '\n'.join(lines + ['  no output was received'])
    stamps = np.array([report.stamp_ns for _, report in outputs], dtype=np.int64)
    received = np.array([receive for receive, _ in outputs], dtype=np.int64)
    span_s = (stamps[-1] - stamps[0]) / 1e9
    rate = (len(stamps) - 1) / span_s if span_s > 0 else float('nan')
    statuses = [report.status for _, report in outputs]
    lines.append(f'  ticks received     {len(outputs)} over {span_s:.1f} s: {rate:.1f} Hz '
                 f'(rate_hz {rate_hz:g}); with prediction {statuses.count("ok")}, '
                 f'skipped {statuses.count("skipped")}, no model {statuses.count("no_model")}')
    latency_ms = (received - stamps) / 1e6
    p50, p99 = np.percentile(latency_ms, (50, 99))
    lines.append(f'  latency            receipt - stamp: p50 {p50:.2f} ms, p99 {p99:.2f} ms, '
                 f'max {latency_ms.max():.2f} ms')

    classes = record.classes or tuple(outputs[-1][1].probabilities)
    rows_true, rows_pred = [], []
    for _, report in outputs:
        if report.status != 'ok':
            continue
        truth = record.truth_near(report.stamp_ns)
        if truth is None:
            continue
        rows_true.append([name in truth for name in classes])
        rows_pred.append([name in report.labels for name in classes])
    if rows_true and classes:
        report = multilabel_report(np.array(rows_true, dtype=np.uint8),
                                   np.array(rows_pred, dtype=np.uint8), classes)
        lines.append(f'  agreement          over {len(rows_true)} predicted ticks with a truth '
                     f'message within {TRUTH_MATCH_S * 1e3:.0f} ms')
        lines.append(f'    {"class":<12} {"F1":>5} {"truth":>6} {"detected":>9}')
        truth_counts = np.sum(rows_true, axis=0)
        predicted_counts = np.sum(rows_pred, axis=0)
        for index, name in enumerate(classes):
            scores = report['per_class'][name]
            f1 = f'{scores["f1"]:.2f}' if truth_counts[index] or predicted_counts[index] else '-'
            lines.append(f'    {name:<12} {f1:>5} {int(truth_counts[index]):>6} '
                         f'{int(predicted_counts[index]):>9}')
        micro = (f'{report["micro"]["f1"]:.2f}' if truth_counts.sum() + predicted_counts.sum()
                 else '-')  # F1 is undefined when nothing was there and nothing detected
        lines.append(f'    {"micro F1":<12} {micro:>5}   '
                     f'(ticks in full agreement: {report["subset_accuracy"]:.0%})')
    else:
        lines.append('  agreement          no predicted tick could be matched to a truth message')
    if record.diagnostics:
        worst = max(level for level, _ in record.diagnostics.values())
        lines.append(f'  diagnostics        last report: {_LEVELS.get(worst, worst)}')
        for name, (level, message) in sorted(record.diagnostics.items()):
            if level:
                lines.append(f'    {_LEVELS.get(level, level)}: {name}: {message}')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='python -m obstacle_classifier.demo',
        description='Run the sidewalk simulator and the obstacle classifier as two ROS 2 '
                    'processes and show live detections beside the ground truth.')
    parser.add_argument('--duration', type=float, default=DEFAULT_DURATION_S,
                        help='seconds to watch after the first detection (default %(default)s)')
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED,
                        help='world seed (default %(default)s)')
    parser.add_argument('--scenario', default='default', choices=SCENARIOS,
                        help='how busy the sidewalk is (default %(default)s)')
    parser.add_argument('--model', type=Path, default=None,
                        help='model file (default: config/default_model.npz, or a small model '
                             'trained on the spot if there is none)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID, else derived from the pid)')
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error('--duration must be positive')
    return args


#: The signals that interrupted the demo (SIGINT or SIGTERM), in order.
_INTERRUPTS: list[int] = []


def _raise_keyboard_interrupt(signum, frame):
    _INTERRUPTS.append(signum)
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    out = sys.stdout
    domain_id = args.domain_id
    if domain_id is None:
        domain_id = (int(os.environ['ROS_DOMAIN_ID']) if os.environ.get('ROS_DOMAIN_ID')
                     else 1 + os.getpid() % 101)
    # Discovery stays on this machine; this process and both nodes share one domain.
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ['ROS_DOMAIN_ID'] = str(domain_id)
    env = dict(os.environ, PYTHONUNBUFFERED='1', RCUTILS_COLORIZED_OUTPUT='0')

    config = load_default_config()
    if args.model is not None:
        model_path = args.model.resolve()
        print(f'model: {model_path}', file=out)
    else:
        model_path = paths.config_path('default_model.npz')
        problem = _default_model_problem(model_path, config)
        if problem is None:
            print(f'model: {model_path} (the shipped default)', file=out)
        else:
            print(f'No usable default model ({problem}).\nTraining a small one on simulated '
                  f'world {args.seed} ({QUICK_MODEL_TICKS} ticks, {QUICK_MODEL_EPOCHS} '
                  'epochs) ...', file=out, flush=True)
            began = time.monotonic()
            model_path, trained = quick_model(args.seed, args.scenario, config=config)
            how = f'trained in {time.monotonic() - began:.1f} s' if trained else 'from the cache'
            print(f'model: {model_path} ({how}). It has seen this very world: the agreement '
                  'below checks the live pipeline, not how well a model generalises.', file=out)

    log_dir = Path(tempfile.mkdtemp(prefix='obstacle_classifier_demo_'))
    # From here to the end a signal stops the watching (and is remembered); the handlers are
    # put back in the finally below.
    previous = {signum: signal.signal(signum, _raise_keyboard_interrupt)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    _INTERRUPTS.clear()
    children = _Children(log_dir, env)
    record = _Record()
    ok = interrupted = False
    rate_hz = 20.0
    try:
        simulator = children.start('sidewalk_simulator', [
            *_node_command('sidewalk_simulator', 'obstacle_classifier.simulator_node'),
            '--ros-args', '--params-file', str(paths.config_path('sidewalk_simulator.yaml')),
            '-p', f'seed:={args.seed}', '-p', f'scenario:={args.scenario}'])
        classifier = children.start('classifier_node', [
            *_node_command('classifier_node', 'obstacle_classifier.classifier_node'),
            '--ros-args', '--params-file', str(paths.config_path('obstacle_classifier.yaml')),
            '-p', f'model_path:={model_path}'])
        rate_hz = _configured_rate(paths.config_path('obstacle_classifier.yaml'))
        print(f'started sidewalk_simulator (pid {simulator.process.pid}) and classifier_node '
              f'(pid {classifier.process.pid}) on ROS_DOMAIN_ID {domain_id}, localhost only; '
              f'logs in {log_dir}', file=out, flush=True)
        try:
            ok = _watch(record, children, args.duration, domain_id, out)
        except KeyboardInterrupt:
            interrupted = True
            print('\ninterrupted', file=out)
        if not ok and not interrupted:
            print('\nthe nodes did not produce output:', file=out)
            for child in children.children:
                state = ('running' if child.process.poll() is None
                         else f'exited with {child.process.returncode}')
                print(f'  {child.name} ({state}):\n{child.tail()}', file=out)
        print(summarise(record, rate_hz), file=out)
    finally:
        # Another Ctrl-C now must not cut the stopping short (and leave a node behind).
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        try:
            children.stop_all(signalled=signal.SIGINT in _INTERRUPTS)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        codes = ', '.join(f'{child.name} exited {child.process.returncode}'
                          for child in children.children)
        print(f'stopped: {codes}', file=out, flush=True)
        if ok:
            shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if ok or interrupted else 1


def _configured_rate(params_file: Path) -> float:
    import yaml
    try:
        with open(params_file, encoding='utf-8') as stream:
            data = yaml.safe_load(stream)
        return float(data['/**/obstacle_classifier']['ros__parameters']['rate_hz'])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return 20.0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before any node was started (e.g. while training)
        sys.exit(130)
