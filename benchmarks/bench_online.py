"""Benchmark: online training from a fresh model vs the offline default model, over sim time.

Live (the default), over ROS with real processes, in real time:

* ``sidewalk_simulator`` on a world seed no model has seen (200; the default model was trained
  on seeds 1..N and tuned / tested on 101 / 100), ``real_time_factor`` 1 so the classifiers'
  ticks are not distorted: simulated time = wall time since the simulator started;
* two ``classifier_node`` processes on the simulator's sensor topics, their outputs remapped
  apart (``online/obstacles``, ``default/obstacles``): one with ``train.enabled`` starting from
  a FRESHLY INITIALISED model (the default model's feature names, classes, input
  normalisation and architecture: h = 32, ReLU; new random weights), learning from the
  simulator's ``obstacle_labels`` with the node's default ``train.*`` settings; one serving
  ``config/default_model.npz``;
* this process subscribes to both ``obstacles`` streams and to the truth. Each truth message
  (10 Hz, stamped by its arrival) is paired with each node's latest tick stamped at or before
  its arrival: prequential, the tick was decided before the label existed, so the online node
  never trained on the label it is scored against.

It prints micro-F1 against the truth per window of simulated time for both nodes and their
ratio, then the whole run, the second half and the last window. Not a test.

``--offline`` replays the same thing in this process without ROS, deterministically and much
faster than real time: ticks at 20 Hz from
:func:`~obstacle_classifier.simulation.simulate_dataset` (the node's feature pipeline), each
scored before anything is learnt from it, labels at 10 Hz into an
:class:`~obstacle_classifier.online_training.OnlineTrainer` with the node's default settings,
``steps_per_second`` steps per simulated second and a snapshot every 0.1 s. Both modes score
at the label rate (10 Hz) and print the same table.

    .venv/bin/python benchmarks/bench_online.py [--minutes 5] [--window 60] [--seed 200]
    .venv/bin/python benchmarks/bench_online.py --offline --minutes 10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from obstacle_classifier import paths  # noqa: E402
from obstacle_classifier.metrics import multilabel_report  # noqa: E402
from obstacle_classifier.model import ObstacleModel  # noqa: E402
from obstacle_classifier.online_training import OnlineTrainer  # noqa: E402

TICK_HZ, LABEL_HZ, SNAPSHOT_S = 20, 10, 0.1
S = 1_000_000_000
NODE = 'obstacle_classifier.classifier_node'
SIMULATOR = 'obstacle_classifier.simulator_node'
STARTUP_TIMEOUT_S = 90.0


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--minutes', type=float, default=5.0,
                        help='simulated minutes (live: also wall minutes)')
    parser.add_argument('--window', type=float, default=60.0, help='seconds per F1 window')
    parser.add_argument('--seed', type=int, default=200, help='world seed')
    parser.add_argument('--init-seed', type=int, default=3, help='fresh weights seed')
    parser.add_argument('--steps', type=float, default=20.0, help='training steps per second')
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--buffer', type=int, default=20000)
    parser.add_argument('--offline', action='store_true',
                        help='replay in this process without ROS (deterministic, fast)')
    parser.add_argument('--log-dir', type=Path, default=None,
                        help='live: keep the node logs and the checkpoint here')
    return parser.parse_args()


def fresh_model(default: ObstacleModel, seed: int) -> ObstacleModel:
    """New random weights with the default model's contract, width and input normalisation."""
    return ObstacleModel.create(default.feature_names, default.class_names,
                                hidden=default.network.h, dtype=default.network.dtype,
                                activation=default.network.activation, rng=seed,
                                input_mean=default.input_mean, input_std=default.input_std)


def micro_f1(Y: np.ndarray, P: np.ndarray, names) -> float:
    return multilabel_report(Y, P, names)['micro']['f1'] if len(Y) else float('nan')


def report(times_s: np.ndarray, Y: np.ndarray, online: np.ndarray, default: np.ndarray,
           names, window_s: float, extra: Optional[dict] = None) -> None:
    """Micro-F1 per window of simulated time for both models, their ratio, and the summary.

    ``times_s`` (n,) simulated seconds of each scored label; ``Y``, ``online``, ``default``
    (n, c) truth and the two models' decisions. ``extra``: column name -> (n,) values averaged
    per window (nan-aware), printed after the ratio.
    """
    extra = extra or {}
    end_s = float(times_s.max()) if len(times_s) else 0.0
    header = f'{"sim time":>13}  {"labels":>6}  {"online F1":>9}  {"default F1":>10}  {"ratio":>6}'
    print(header + ''.join(f'  {name:>9}' for name in extra))
    start = 0.0
    while start < end_s:
        rows = (times_s >= start) & (times_s < start + window_s)
        on, off = micro_f1(Y[rows], online[rows], names), micro_f1(Y[rows], default[rows], names)
        cells = ''.join(f'  {np.nanmean(v[rows]) if np.any(np.isfinite(v[rows])) else np.nan:9.4f}'
                        for v in extra.values())
        print(f'{start:6.0f}-{min(start + window_s, end_s):5.0f} s  {int(rows.sum()):6d}  '
              f'{on:9.3f}  {off:10.3f}  {on / off if off else float("nan"):6.2f}{cells}')
        start += window_s
    last_start = max(0.0, (np.ceil(end_s / window_s) - 1) * window_s)
    for label, rows in (('whole run', times_s >= 0),
                        ('second half', times_s >= end_s / 2),
                        ('last window', times_s >= last_start)):
        on, off = micro_f1(Y[rows], online[rows], names), micro_f1(Y[rows], default[rows], names)
        print(f'{label}: online {on:.3f} vs default {off:.3f} '
              f'({100 * on / off if off else float("nan"):.0f}% of the offline model)')


# ----------------------------------------------------------------------------------------------
# Offline replay (deterministic, no ROS)
# ----------------------------------------------------------------------------------------------

def run_offline(args: argparse.Namespace) -> None:
    from obstacle_classifier.simulation import simulate_dataset

    default = ObstacleModel.load(paths.config_path('default_model.npz'))
    fresh = fresh_model(default, args.init_seed)
    n_ticks = int(args.minutes * 60 * TICK_HZ)
    began = time.perf_counter()
    world = simulate_dataset(n_ticks, seed=args.seed)
    print(f'offline replay: simulated {n_ticks} ticks ({args.minutes:g} min, seed '
          f'{args.seed}) in {time.perf_counter() - began:.1f} s')

    trainer = OnlineTrainer(fresh, 'adam', args.lr, args.batch, args.buffer)
    serving = fresh
    X_norm = fresh.normalise(world.X)
    online_pred = np.zeros_like(world.Y)
    steps_per_tick = args.steps / TICK_HZ
    label_every, snapshot_every = TICK_HZ // LABEL_HZ, int(round(SNAPSHOT_S * TICK_HZ))
    credit = 0.0
    began = time.perf_counter()
    for t in range(n_ticks):
        # Decided before the label of this tick is learnt from (prequential).
        online_pred[t] = serving.decide(serving.network.predict_proba(X_norm[t]))
        if t % label_every == 0:
            trainer.add_example(X_norm[t], world.Y[t])
        credit += steps_per_tick
        if t % snapshot_every == snapshot_every - 1:
            steps = int(credit)
            credit -= steps
            trainer.train_steps(steps)
            serving = trainer.snapshot() or serving
    stats = trainer.stats
    print(f'{stats.steps} steps ({stats.discarded_updates} discarded), {stats.examples_added} '
          f'labelled examples, {time.perf_counter() - began:.1f} s wall; final thresholds '
          f'{np.round(serving.thresholds, 2).tolist()}')
    # Scored at the label rate, as the live benchmark is.
    rows = np.arange(0, n_ticks, label_every)
    report(rows / TICK_HZ, world.Y[rows], online_pred[rows], default.predict(world.X[rows]),
           default.class_names, args.window)


# ----------------------------------------------------------------------------------------------
# Live, over ROS
# ----------------------------------------------------------------------------------------------

class _Stream:
    """One classifier's ``obstacles``: tick stamps (ns) and multi-hot decisions, in order."""

    def __init__(self, class_names) -> None:
        self.index = {name: k for k, name in enumerate(class_names)}
        self.stamps: list[int] = []
        self.decisions: list[np.ndarray] = []
        self.not_ok = 0

    def add(self, report) -> None:
        hot = np.zeros(len(self.index), dtype=np.uint8)
        for name in report.labels:
            hot[self.index[name]] = 1
        self.not_ok += report.status != 'ok'
        self.stamps.append(report.stamp_ns)
        self.decisions.append(hot)

    def at(self, receipts_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For label receipts (n,): the decisions (n, c) of the latest tick stamped at or
        before each, and that tick's age (n,) in seconds (inf when there is none)."""
        stamps = np.asarray(self.stamps, dtype=np.int64)
        order = np.argsort(stamps, kind='stable')
        stamps = stamps[order]
        decisions = np.asarray(self.decisions)[order]
        index = np.searchsorted(stamps, receipts_ns, side='right') - 1
        found = index >= 0
        out = np.zeros((len(receipts_ns), len(self.index)), dtype=np.uint8)
        out[found] = decisions[index[found]]
        age = np.full(len(receipts_ns), np.inf)
        age[found] = (receipts_ns[found] - stamps[index[found]]) / S
        return out, age


def _classifier_args(namespace: str, name: str, outputs: str, parameters: dict) -> list[str]:
    """``--ros-args`` for a classifier node called ``name`` whose outputs go to ``outputs/``."""
    args = ['--ros-args', '-r', f'__ns:=/{namespace}', '-r', f'__node:={name}']
    for topic in ('obstacles', 'obstacle_probabilities', 'obstacle_classes', 'training/loss'):
        args += ['-r', f'{topic}:={outputs}/{topic}']
    for key, value in parameters.items():
        args += ['-p', f'{key}:={value}']
    return args


def run_live(args: argparse.Namespace) -> int:
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 101))
    sys.path.insert(0, str(REPO / 'test'))
    import ros_helpers  # ProcessLauncher: process groups, captured logs, never leaked

    with warnings.catch_warnings():  # rclpy's vendored lark imports deprecated sre_* modules
        warnings.simplefilter('ignore', DeprecationWarning)
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_msgs.msg import Float32, String

        from obstacle_classifier.ros_io import decode_labels, decode_obstacles, output_qos

    default_path = paths.config_path('default_model.npz')
    default = ObstacleModel.load(default_path)
    names = default.class_names
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix='bench_online_'))
    log_dir.mkdir(parents=True, exist_ok=True)
    fresh_path, checkpoint = log_dir / 'fresh.npz', log_dir / 'online.npz'
    fresh_model(default, args.init_seed).save(fresh_path)
    namespace = f'bench_online_{os.getpid()}'
    env = dict(os.environ, PYTHONUNBUFFERED='1', RCUTILS_COLORIZED_OUTPUT='0')
    print(f'live over ROS (domain {env["ROS_DOMAIN_ID"]}, namespace /{namespace}): simulator '
          f'seed {args.seed} at 1x real time, {args.minutes:g} min; logs in {log_dir}',
          flush=True)

    streams = {'online': _Stream(names), 'default': _Stream(names)}
    truth: list[tuple[int, tuple[str, ...]]] = []
    losses: list[tuple[int, float]] = []
    training: list[dict] = []
    rclpy.init(args=[])
    node = None
    launcher = ros_helpers.ProcessLauncher(log_dir, env=env, python=sys.executable, cwd=REPO)
    try:
        node = Node(f'bench_online_{os.getpid()}')
        executor = SingleThreadedExecutor()
        executor.add_node(node)

        def receipt_ns(info) -> int:
            # The middleware's receive time: not delayed by this process's own executor.
            return info['received_timestamp'] or time.time_ns()

        def on_obstacles(stream: _Stream):
            return lambda msg: stream.add(decode_obstacles(msg))

        for key, stream in streams.items():
            node.create_subscription(String, f'/{namespace}/{key}/obstacles',
                                     on_obstacles(stream), output_qos(100))
        node.create_subscription(
            String, f'/{namespace}/obstacle_labels',
            lambda msg, info: truth.append((receipt_ns(info), decode_labels(msg))), 100)
        node.create_subscription(
            Float32, f'/{namespace}/online/training/loss',
            lambda msg, info: losses.append((receipt_ns(info), msg.data)), 100)
        online_id = f'/{namespace}/online_classifier'

        def on_diagnostics(msg) -> None:
            for status in msg.status:
                if status.hardware_id == online_id and status.name.endswith(': training'):
                    training.append({kv.key: kv.value for kv in status.values})
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)

        launcher.start_module('default_classifier', NODE, _classifier_args(
            namespace, 'default_classifier', 'default', {'model_path': default_path}))
        launcher.start_module('online_classifier', NODE, _classifier_args(
            namespace, 'online_classifier', 'online', {
                'model_path': fresh_path, 'train.enabled': 'true',
                'train.steps_per_second': args.steps, 'train.lr': args.lr,
                'train.batch_size': args.batch, 'train.buffer_size': args.buffer,
                'train.checkpoint_path': checkpoint, 'train.checkpoint_period_s': 60.0}))

        def spin_until(predicate, timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while not predicate():
                if time.monotonic() > deadline:
                    return False
                for proc in launcher.processes:
                    if not proc.is_running():
                        raise RuntimeError(f'{proc.name} exited early\n{proc.report()}')
                executor.spin_once(timeout_sec=0.05)
            return True

        # Both classifiers tick (status no input yet) before the world starts, so sim time 0
        # is when all three are up and the first label can be learnt from.
        if not spin_until(lambda: all(s.stamps for s in streams.values()), STARTUP_TIMEOUT_S):
            raise RuntimeError('the classifiers did not start\n' + launcher.reports())
        launcher.start_module('simulator', SIMULATOR, [
            '--ros-args', '-r', f'__ns:=/{namespace}', '-p', f'seed:={args.seed}',
            '-p', 'real_time_factor:=1.0'])
        if not spin_until(lambda: bool(truth), STARTUP_TIMEOUT_S):
            raise RuntimeError('no ground truth from the simulator\n' + launcher.reports())
        t0 = truth[0][0]
        duration_ns = int(args.minutes * 60 * S)
        next_note = args.window
        began = time.monotonic()
        while truth[-1][0] - t0 < duration_ns:
            spin_until(lambda: truth[-1][0] - t0 >= min(duration_ns, next_note * S), 3600.0)
            elapsed = (truth[-1][0] - t0) / S
            if elapsed >= next_note - 1e-9:
                last = training[-1] if training else {}
                print(f'  {elapsed:6.0f} s simulated: {len(truth)} labels, online node '
                      f'{last.get("steps", "?")} steps, {last.get("examples", "?")} examples',
                      flush=True)
                next_note += args.window
        wall = time.monotonic() - began
        spin_until(lambda: False, 0.5)  # the ticks around the last label
        final = training[-1] if training else {}
    finally:
        codes = launcher.stop_all(timeout=20.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()

    receipts = np.array([r for r, _ in truth], dtype=np.int64)
    keep = receipts - t0 < duration_ns
    receipts = receipts[keep]
    Y = np.array([[1 if n in labels else 0 for n in names] for _, labels in truth],
                 dtype=np.uint8)[keep]
    decided = {key: stream.at(receipts) for key, stream in streams.items()}
    times_s = (receipts - t0) / S
    loss_t = np.array([(r - t0) / S for r, _ in losses])
    loss_v = np.array([v for _, v in losses])
    # Mean training loss over the last second before each label (nan when none): its curve.
    loss_at = np.full(len(times_s), np.nan)
    if len(loss_t):
        lo = np.searchsorted(loss_t, times_s - 1.0)
        hi = np.searchsorted(loss_t, times_s)
        cum = np.concatenate([[0.0], np.cumsum(loss_v)])
        has = hi > lo
        loss_at[has] = (cum[hi[has]] - cum[lo[has]]) / (hi[has] - lo[has])
    print(f'{len(receipts)} truth labels over {times_s.max():.0f} s simulated '
          f'({wall:.0f} s wall); ticks received: '
          + ', '.join(f'{k} {len(s.stamps)} ({s.not_ok} without prediction)'
                      for k, s in streams.items())
          + '; tick age at a label (mean / max): '
          + ', '.join(f'{k} {np.mean(age) * 1e3:.0f} / {np.max(age) * 1e3:.0f} ms'
                      for k, (_, age) in decided.items()))
    print('online node at the end: ' + ', '.join(
        f'{key} {final.get(key, "?")}' for key in (
            'steps', 'examples', 'labels_rejected', 'discarded_updates', 'checkpoints_written',
            'checkpoints_refused', 'last_held_out_loss')))
    checkpoint_lines = [line.split('checkpoint ', 1)[-1] for line in
                        (log_dir / 'online_classifier.stderr.txt').read_text().splitlines()
                        if ': written' in line or ': refused' in line]
    if checkpoint_lines:
        print(f'last checkpoint: {checkpoint_lines[-1]}')
    if checkpoint.exists():
        print(f'checkpoint thresholds: '
              f'{json.dumps(np.round(ObstacleModel.load(checkpoint).thresholds, 2).tolist())}')
    print(f'exit codes: {codes}')
    report(times_s, Y, decided['online'][0], decided['default'][0], names, args.window,
           {'train loss': loss_at})
    return 0


def main() -> int:
    args = _parse()
    if args.offline:
        run_offline(args)
        return 0
    return run_live(args)


if __name__ == '__main__':
    sys.exit(main())
