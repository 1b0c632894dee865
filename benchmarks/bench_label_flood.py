"""Benchmark: the training node's memory under a 1 kHz label stream, for minutes. Not a test.

    .venv/bin/python benchmarks/bench_label_flood.py [--minutes 3] [--label-rate-hz 1000]

Real processes over ROS: ``sidewalk_simulator`` feeds the sensor topics (so every tick has
features a label can pair with) and a ``classifier_node`` with ``train.enabled`` and its default
``train.*`` settings learns from ``obstacle_labels``. This process
floods that topic with labels at ``--label-rate-hz`` (valid class names, random subsets; in
bursts of 10 per 10 ms), 50x the simulator's own 10 Hz labels, which it does not publish here
(its label topic is remapped away). It samples the node's resident memory (VmRSS of
/proc/<pid>/status) every second and reads the node's training diagnostics.

Labels pair with ticks at one per tick on average (the rest are rejected as
'labels_outpace_ticks'), so examples come at the tick rate, 20/s: the replay buffer is sized to
fill within the warm-up (``--warmup``, default 40 s: 600 rows), after which every example
overwrites the oldest row, while every label still goes through the node's label path; the
report gives the RSS at the end of the
warm-up, at each minute after it and at the end, the growth over the measured window, and the
labels received / paired / rejected. A flat RSS (growth within allocator noise, ~1 MB) is the
pass mark the issue asks for ("memory stays flat under a 1 kHz label stream for minutes").
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from proc_stats import rss_bytes  # benchmarks/, the script's own directory

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NAMESPACE = f'bench_flood_{os.getpid()}'
TRAINING = 'obstacle_classifier: training'
FLAT_MB = 2.0
TICK_RATE_HZ = 20.0  # the node's default rate_hz: one example per tick at most


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--minutes', type=float, default=3.0, help='measured minutes')
    parser.add_argument('--warmup', type=float, default=40.0,
                        help='seconds of flooding before measuring (the buffer fills)')
    parser.add_argument('--label-rate-hz', type=float, default=1000.0)
    return parser.parse_args()


def main() -> int:
    args = _parse()
    sys.path.insert(0, str(REPO / 'test'))
    import ros_helpers  # ProcessLauncher: process groups, captured logs, never leaked
    ros_helpers.configure_ros_environment()
    os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
    rclpy = ros_helpers.import_rclpy()
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from std_msgs.msg import String

    from obstacle_classifier import paths
    from obstacle_classifier.model import ObstacleModel

    classes = ObstacleModel.load(paths.config_path('default_model.npz')).class_names
    rng = np.random.default_rng(0)
    label_texts = [','.join(name for name in classes if rng.random() < 0.2) for _ in range(997)]
    log_dir = Path(tempfile.mkdtemp(prefix='bench_flood_'))
    launcher = ros_helpers.ProcessLauncher(log_dir, python=sys.executable, cwd=REPO)
    namespace = ['--ros-args', '-r', f'__ns:=/{NAMESPACE}']
    launcher.start_module('simulator', 'obstacle_classifier.simulator_node',
                          namespace + ['-r', 'obstacle_labels:=simulator_truth_unused'])
    buffer_rows = max(20, int(TICK_RATE_HZ * args.warmup * 0.75))  # full before measuring
    classifier = launcher.start_module('classifier', 'obstacle_classifier.classifier_node',
                                       namespace + ['-p', 'train.enabled:=true',
                                                    '-p', f'train.buffer_size:={buffer_rows}'])
    rclpy.init(args=[])
    try:
        node = Node('bench_label_flood')
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        labels = node.create_publisher(String, f'/{NAMESPACE}/obstacle_labels', 1000)
        training: list[dict] = []

        def on_diagnostics(msg):
            for status in msg.status:
                if status.name == TRAINING and NAMESPACE in status.hardware_id:
                    training.append({kv.key: kv.value for kv in status.values})
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)

        burst = 10
        sent = [0]

        def flood():
            for _ in range(burst):
                labels.publish(String(data=label_texts[sent[0] % len(label_texts)]))
                sent[0] += 1
        deadline = time.monotonic() + 60.0
        while not training and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            if not classifier.is_running():
                raise RuntimeError(f'the classifier exited; see {log_dir}')
        if not training:
            raise RuntimeError(f'no training diagnostics in 60 s; see {log_dir}')
        node.create_timer(burst / args.label_rate_hz, flood)

        samples: list[tuple[float, int]] = []  # (seconds since the end of the warm-up, RSS)
        start = time.monotonic() + args.warmup
        end = start + 60.0 * args.minutes
        next_sample = time.monotonic()
        sent_at_start = None
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.01)
            now = time.monotonic()
            if now >= start and sent_at_start is None:
                sent_at_start = (sent[0], dict(training[-1]))
            if now >= next_sample:
                samples.append((now - start, rss_bytes(classifier.pid)))
                next_sample += 1.0
            if not classifier.is_running():
                raise RuntimeError(f'the classifier exited; see {log_dir}')
        sent_total, last = sent[0], dict(training[-1])
    finally:
        launcher.stop_all(timeout=20.0)
        rclpy.try_shutdown()

    measured = [(t, rss) for t, rss in samples if t >= 0]
    first_sent, first = sent_at_start
    window_s = 60.0 * args.minutes
    print(f'label flood: {(sent_total - first_sent) / window_s:.0f} labels/s published for '
          f'{args.minutes:g} min after a {args.warmup:g} s warm-up (logs: {log_dir})')
    print(f"node: {int(last['labels_received']) - int(first['labels_received'])} labels "
          f"received, {int(last['examples']) - int(first['examples'])} paired into examples, "
          f"{int(last['labels_rejected']) - int(first['labels_rejected'])} rejected; "
          f"buffer {last['buffer_rows']} + {last['held_out_rows']} held-out rows, "
          f"{int(last['buffer_bytes']) / 1e6:.2f} MB; {last['steps']} steps")
    print('  minute   RSS MB')
    marks = [0.0] + [60.0 * k for k in range(1, int(args.minutes) + 1)]
    for mark in marks:
        t, rss = min(measured, key=lambda sample: abs(sample[0] - mark))
        print(f'  {t / 60:6.2f}   {rss / 1e6:7.2f}')
    rss = np.array([rss for _, rss in measured], dtype=np.float64) / 1e6
    growth = rss[-1] - rss[0]
    verdict = 'PASS' if abs(growth) <= FLAT_MB else 'FAIL'
    print(f'RSS over the measured window: start {rss[0]:.2f} MB, end {rss[-1]:.2f} MB, '
          f'min {rss.min():.2f}, max {rss.max():.2f}; growth {growth:+.2f} MB '
          f'(flat within {FLAT_MB:g} MB: {verdict})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
