"""Benchmark of the live classifier node: latency, processing time, missed ticks, CPU. Not a test.

    .venv/bin/python benchmarks/bench_node.py [--duration 20] [--rate-hz 100] [--input-rate-hz 200]

The classifier node runs as its own process (``python -m obstacle_classifier.classifier_node``,
``rate_hz`` = ``--rate-hz``) with the default feature config and a model (the shipped default,
else a small one trained on simulated data). This process publishes every input of the config at
``--input-rate-hz`` (simulated readings, header stamps = publish time), subscribes to the outputs
and the node's diagnostics, and reports, over ``--duration`` seconds after a warm-up:

* end-to-end latency, input publish -> output receipt: for each batch of inputs, the time from
  its publication to the receipt of the first output whose tick comes after it; this includes
  the wait for that tick (0 to one tick period), the tick's processing and the transport;
* tick -> receipt: output receipt minus the output's stamp (processing plus transport);
* processing time per tick (from the node's own measurement in /diagnostics: p50 / p99 over its
  last 1024 ticks, mean and max per 1 s period);
* ticks missed: ticks expected at ``rate_hz`` over the window minus outputs received;
* CPU% of the node process (user + system time from /proc/<pid>/stat; 100% = one core).

Both processes share the machine: on 2 cores the publisher here competes with the node.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

S = 1_000_000_000
NAMESPACE = f'bench_node_{os.getpid()}'


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--duration', type=float, default=20.0, help='measured seconds')
    parser.add_argument('--warmup', type=float, default=3.0, help='seconds before measuring')
    parser.add_argument('--rate-hz', type=float, default=100.0, help="the node's rate_hz")
    parser.add_argument('--input-rate-hz', type=float, default=200.0,
                        help='publish rate of every input')
    parser.add_argument('--model', type=Path, default=None, help='model file')
    return parser.parse_args()


def _cpu_seconds(pid: int) -> float:
    with open(f'/proc/{pid}/stat', 'rb') as stat:
        fields = stat.read().rsplit(b')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')  # utime + stime


def _model_path(args, config) -> Path:
    from obstacle_classifier import demo, paths
    if args.model is not None:
        return args.model
    default = paths.config_path('default_model.npz')
    if demo._default_model_problem(default, config) is None:
        return default
    path, _ = demo.quick_model(config=config)
    return path


def _percentiles(values_ns, label: str) -> str:
    values = np.asarray(values_ns, dtype=np.float64) / 1e6
    if values.size == 0:
        return f'  {label:<34} no samples'
    p50, p99 = np.percentile(values, (50, 99))
    return (f'  {label:<34} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   max {values.max():7.3f} ms'
            f'   (n = {values.size})')


def main() -> int:
    args = _parse()
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 101))
    os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
    with warnings.catch_warnings():  # rclpy's vendored lark imports deprecated sre_* modules
        warnings.simplefilter('ignore', DeprecationWarning)
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_msgs.msg import String

        from obstacle_classifier.features import load_default_config
        from obstacle_classifier.ros_io import (RangeInfo, ScanGeometry, SensorMessageBuilder,
                                                decode_obstacles, input_qos, message_class)
        from obstacle_classifier.simulation import (LIDAR_ANGLE_INCREMENT, LIDAR_ANGLE_MAX,
                                                    LIDAR_ANGLE_MIN, LIDAR_RANGE_MAX,
                                                    LIDAR_RANGE_MIN, RANGE_FIELD_OF_VIEW,
                                                    RANGE_MAX, RANGE_MIN, SidewalkSimulator)

    config = load_default_config()
    model = _model_path(args, config)
    # Readings to cycle through: 10 s of the simulated world, re-timed to --input-rate-hz.
    readings = {spec.name: [] for spec in config.inputs}
    for reading in SidewalkSimulator(seed=4, config=config).advance(10 * S):
        readings[reading.input_name].append(reading.values)
    geometry = ScanGeometry(LIDAR_ANGLE_MIN, LIDAR_ANGLE_MAX, LIDAR_ANGLE_INCREMENT,
                            LIDAR_RANGE_MIN, LIDAR_RANGE_MAX)
    range_info = RangeInfo(RANGE_MIN, RANGE_MAX, RANGE_FIELD_OF_VIEW)
    builders = {spec.name: SensorMessageBuilder(spec, frame_id=f'{spec.name}_link',
                                                range_info=range_info, scan_geometry=geometry)
                for spec in config.inputs}

    log = tempfile.NamedTemporaryFile(prefix='bench_node_', suffix='.log', delete=False)
    node_process = subprocess.Popen(
        [sys.executable, '-m', 'obstacle_classifier.classifier_node', '--ros-args',
         '-r', f'__ns:=/{NAMESPACE}', '-p', f'rate_hz:={args.rate_hz}',
         '-p', f'model_path:={model}'],
        env=dict(os.environ, PYTHONUNBUFFERED='1'), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)
    rclpy.init(args=[])
    try:
        node = Node('bench_node_driver')
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        publishers = {spec.name: node.create_publisher(message_class(spec.msg_type),
                                                       f'/{NAMESPACE}/{spec.topic}',
                                                       input_qos(spec))
                      for spec in config.inputs}
        outputs = []       # (receive_ns, stamp_ns)
        batches = []       # publish_ns of each batch of inputs
        diagnostics = []   # output status values per report
        counter = [0]

        def on_obstacles(msg, info):
            # The middleware's receive time: not delayed by this process's own executor.
            outputs.append((info['received_timestamp'] or time.time_ns(),
                            decode_obstacles(msg).stamp_ns))

        def on_diagnostics(msg):
            for status in msg.status:
                if status.name.endswith(': output') and NAMESPACE in status.hardware_id:
                    diagnostics.append({kv.key: kv.value for kv in status.values})

        def publish_inputs():
            k = counter[0]
            counter[0] += 1
            now = time.time_ns()
            messages = [(name, builders[name].build(values[k % len(values)], now))
                        for name, values in readings.items()]
            batches.append(time.time_ns())
            for name, msg in messages:
                publishers[name].publish(msg)

        node.create_subscription(String, f'/{NAMESPACE}/obstacles', on_obstacles, 100)
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
        node.create_timer(1.0 / args.input_rate_hz, publish_inputs)

        deadline = time.monotonic() + 60.0
        while not outputs and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            if node_process.poll() is not None:
                raise RuntimeError(f'the node exited; see {log.name}')
        if not outputs:
            raise RuntimeError(f'no output from the node in 60 s; see {log.name}')
        end_warmup = time.monotonic() + args.warmup
        while time.monotonic() < end_warmup:
            executor.spin_once(timeout_sec=0.05)
        first_output, first_batch, first_report = len(outputs), len(batches), len(diagnostics)
        cpu_start, wall_start = _cpu_seconds(node_process.pid), time.monotonic()
        begin_ns = time.time_ns()
        end = wall_start + args.duration
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        cpu = _cpu_seconds(node_process.pid) - cpu_start
        wall = time.monotonic() - wall_start
        end_ns = time.time_ns()
        # Let the last outputs arrive before stopping.
        settle = time.monotonic() + 0.3
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.05)
    finally:
        node_process.send_signal(signal.SIGINT)
        try:
            node_process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node_process.kill()
            node_process.wait()
        rclpy.try_shutdown()

    window = [(r, t) for r, t in outputs[first_output:] if begin_ns <= t < end_ns]
    stamps = np.array([t for _, t in outputs], dtype=np.int64)
    receipts = np.array([r for r, _ in outputs], dtype=np.int64)
    order = np.argsort(stamps)
    stamps, receipts = stamps[order], receipts[order]
    e2e = []
    for publish_ns in batches[first_batch:]:
        if not begin_ns <= publish_ns < end_ns:
            continue
        index = int(np.searchsorted(stamps, publish_ns, 'left'))
        if index < stamps.size:
            e2e.append(receipts[index] - publish_ns)
    tick_latency = [r - t for r, t in window]
    expected = args.duration * args.rate_hz
    gaps = np.diff(np.array(sorted(t for _, t in window)))
    reports = diagnostics[first_report:]

    def values(key):
        return np.array([float(report[key]) for report in reports if key in report])
    p50_key = [k for k in (reports[-1] if reports else {}) if k.startswith('processing_p50')]
    p99_key = [k for k in (reports[-1] if reports else {}) if k.startswith('processing_p99')]
    inputs_sent = (len(batches) - first_batch) / wall
    print(f'classifier node at {args.rate_hz:g} Hz, {len(config.inputs)} inputs at '
          f'{args.input_rate_hz:g} Hz each (sent {inputs_sent:.1f} batches/s), '
          f'{args.duration:g} s measured, model {model}')
    print(f'  machine: {os.cpu_count()} CPUs, load average '
          f'{", ".join(f"{v:.2f}" for v in os.getloadavg())}')
    print(_percentiles(e2e, 'input publish -> output receipt'))
    print(_percentiles(tick_latency, 'tick (stamp) -> output receipt'))
    if reports and p50_key:
        print(f'  processing per tick (node)         p50 {values(p50_key[0])[-1] / 1e3:7.3f} ms'
              f'   p99 {values(p99_key[0])[-1] / 1e3:7.3f} ms   (last {p50_key[0][-4:]} ticks); '
              f'mean {values("processing_mean_us").mean() / 1e3:.3f} ms, '
              f'max {values("processing_max_us").max() / 1e3:.3f} ms')
    print(f'  ticks: {len(window)} received of {expected:.0f} expected, missed '
          f'{max(0, round(expected) - len(window))}; gaps > 1.5 periods: '
          f'{int(np.sum(gaps > 1.5 * S / args.rate_hz))}; node-reported missed: '
          f'{int(values("ticks_missed").sum()) if reports else "n/a"}; ticks without '
          f'prediction: {int(values("ticks_without_prediction").sum()) if reports else "n/a"}')
    print(f'  CPU of the node process: {100.0 * cpu / wall:.1f}% of one core')
    os.unlink(log.name)
    return 0


if __name__ == '__main__':
    sys.exit(main())
