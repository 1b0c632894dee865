"""Benchmark of the live classifier node: latency, processing time, missed ticks, CPU. Not a test.

    .venv/bin/python benchmarks/bench_node.py [--duration 20] [--repeats 3] [--rate-hz 100]
        [--input-rate-hz 200] [--input-rate NAME=HZ ...]

The classifier node runs as its own process (``python -m obstacle_classifier.classifier_node``,
``rate_hz`` = ``--rate-hz``) with the default feature config and a model (the shipped default,
else a small one trained on simulated data). This process publishes every input of the config at
``--input-rate-hz`` (simulated readings, header stamps = publish time; ``--input-rate NAME=HZ``
gives one input its own rate, a divisor of ``--input-rate-hz``, or 0: not published, so the node
fills or skips it as its policy says), subscribes to the outputs
and the node's diagnostics, and reports, over ``--duration`` seconds after a warm-up:

* end-to-end latency, input publish -> output receipt: for each batch of inputs, the time from
  its publication to the receipt of the first output whose tick comes after it; this includes
  the wait for that tick (0 to one tick period), the tick's processing and the transport
  (inputs go out 0.1% below their rate, so that their phase against the ticks sweeps);
* tick -> receipt: output receipt minus the output's stamp (processing plus transport);
* processing time per tick, as the node measures it (wall time from the start of the timer
  callback to after its last publication): p50 / p99 over the whole window from the node's
  cumulative histogram in /diagnostics (to its bucket edges; exact for "p99 <= 200 us", an
  edge), and the node's own p50 / p99 over its last 1024 ticks;
* ticks missed: output stamps are placed on the ``rate_hz`` grid (its phase taken from the
  stamps); a grid point in the window without an output is a missed tick;
* CPU% of the node process (user + system time of all its threads from /proc/<pid>/stat;
  100% = one core), and how much of it the main (executor) thread takes;
* resident memory (VmRSS) of the node process at the start and the end of the window.

Before either it times one ``FeaturePipeline.tick`` in this process right after idling 0, 1, 3
and 10 ms: on this machine code that wakes from an idle gap of milliseconds runs several times
slower than in a hot loop, and the node's ticks wake from such gaps (the inputs come in bursts).

Then, under the same driver, it runs ``benchmarks/floor_node.py`` for as long: a node with the
classifier's subscriptions, QoS and executor that drops every message unread and publishes a
report of the same size per tick. Its CPU and per-tick time (exact, from its own record) are the
floor that rclpy and the middleware set on this machine before any work of the classifier's
(``--no-floor`` skips it).

The two sides alternate ``--repeats`` times (default 3); each side's full report is that of its
run with the least CPU. It ends with the P4 summary of issue 7: PASS / FAIL against p99
processing <= 200 us and node CPU < 10% of one core (each from the node's best run, as the issue
asks, with the floor's figure) and no missed tick (over all runs), and the end-to-end latency
p50 / p99.

Both processes share the machine: on 2 cores the publisher here competes with the node, and
anything else running preempts it (the processing time is wall time, so it shows).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from proc_stats import cpu_seconds, rss_bytes  # benchmarks/, the script's own directory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

S = 1_000_000_000
NAMESPACE = f'bench_node_{os.getpid()}'
#: Inputs go out this fraction slower than --input-rate-hz (see the input timer).
PHASE_SWEEP = 1e-3


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--duration', type=float, default=20.0, help='measured seconds')
    parser.add_argument('--warmup', type=float, default=3.0, help='seconds before measuring')
    parser.add_argument('--rate-hz', type=float, default=100.0, help="the node's rate_hz")
    parser.add_argument('--input-rate-hz', type=float, default=200.0,
                        help='publish rate of every input')
    parser.add_argument('--input-rate', action='append', default=[], metavar='NAME=HZ',
                        help='publish rate of one input (0: not at all); repeatable')
    parser.add_argument('--model', type=Path, default=None, help='model file')
    parser.add_argument('--repeats', type=int, default=3,
                        help='runs of each side, alternating; P4 takes the best (default 3)')
    parser.add_argument('--no-floor', action='store_true',
                        help='skip the floor run (benchmarks/floor_node.py)')
    parser.add_argument('--profile', type=Path, default=None,
                        help='run the node under cProfile and write its stats here (the CPU '
                        'and processing figures then include the profiler\'s overhead)')
    return parser.parse_args()


P4_PROCESSING_P99_US = 200.0
P4_CPU_PERCENT = 10.0


def _missed_on_grid(stamps_ns: np.ndarray, begin_ns: int, end_ns: int, period_ns: int):
    """Grid points of the tick timer in [begin, end) without an output, and outputs that share
    a grid point with another. The grid's phase is the circular mean of the stamps modulo the
    period (stamps are grid time plus the callback's delay); a stamp belongs to the nearest
    grid point."""
    if stamps_ns.size == 0:
        return None, 0, 0
    angles = 2 * np.pi * (stamps_ns % period_ns) / period_ns
    phase = int(round(np.angle(np.exp(1j * angles).mean()) / (2 * np.pi) * period_ns)) \
        % period_ns
    slots = np.round((stamps_ns - phase) / period_ns).astype(np.int64)
    first = -(-(begin_ns - phase) // period_ns)
    last = (end_ns - 1 - phase) // period_ns
    inside = slots[(slots >= first) & (slots <= last)]
    covered = np.unique(inside)
    return int(last - first + 1 - covered.size), int(inside.size - covered.size), \
        int(last - first + 1)


def _histogram_window(reports, begin_ns: int, end_ns: int):
    """Per-bucket tick counts between the first report at or after ``begin_ns`` and the last
    one before ``end_ns`` (the node's counts are cumulative), with the bucket edges (us)."""
    inside = [values for stamp, values in reports
              if begin_ns <= stamp < end_ns and 'processing_histogram_counts' in values]
    if len(inside) < 2:
        return None, None
    parse = lambda text: np.array([float(v) for v in text.split(',')])  # noqa: E731
    edges = parse(inside[-1]['processing_histogram_le_us'])
    counts = (parse(inside[-1]['processing_histogram_counts'])
              - parse(inside[0]['processing_histogram_counts']))
    return edges, counts


def _histogram_bucket(counts, q: float) -> int:
    """Index of the bucket holding quantile ``q`` (the last: above the last edge)."""
    return int(np.searchsorted(np.cumsum(counts), q * counts.sum(), 'left'))


def _histogram_quantile(edges, counts, q: float) -> str:
    """'<= edge' of the bucket holding quantile ``q``, or '> last edge'."""
    index = _histogram_bucket(counts, q)
    return f'<= {edges[index]:g} us' if index < edges.size else f'> {edges[-1]:g} us'


def _publish_every(args, config) -> dict[str, int]:
    """Input name -> publish on every k-th tick of the --input-rate-hz timer (0: never)."""
    every = {spec.name: 1 for spec in config.inputs}
    for item in args.input_rate:
        name, _, value = item.partition('=')
        if name not in every:
            raise SystemExit(f'--input-rate {item}: no input {name!r} in the feature config '
                             f'(inputs: {", ".join(every)})')
        try:
            hz = float(value)
        except ValueError:
            raise SystemExit(f'--input-rate {item}: the rate is not a number') from None
        ratio = args.input_rate_hz / hz if hz > 0 else 0.0
        if not math.isfinite(hz) or hz < 0 or (hz > 0 and abs(ratio - round(ratio)) > 1e-9):
            raise SystemExit(f'--input-rate {item}: the rate must be 0 or --input-rate-hz '
                             f'({args.input_rate_hz:g}) divided by a whole number')
        every[name] = int(round(ratio))
    return every


def _workload(args, every: dict[str, int]) -> str:
    """'6 inputs at 200 Hz, lidar at 20 Hz, noise not published' and the like."""
    text = f'{sum(k == 1 for k in every.values())} inputs at {args.input_rate_hz:g} Hz'
    for name, k in every.items():
        if k != 1:
            text += f', {name} ' + (f'at {args.input_rate_hz / k:g} Hz' if k else
                                    'not published')
    return text


def _model_path(args, config) -> Path:
    from obstacle_classifier import demo, paths
    if args.model is not None:
        return args.model
    default = paths.config_path('default_model.npz')
    if demo._default_model_problem(default, config) is None:
        return default
    path, _ = demo.quick_model(config=config)
    return path


def _idle_penalty(config, readings, repeats: int = 150) -> str:
    """CPU time of one ``FeaturePipeline.tick`` (the default config, windows full of simulated
    readings) right after the thread slept for 0, 1, 3 and 10 ms: how much slower code runs
    when it wakes from an idle gap on this machine. Medians, thread CPU time."""
    from obstacle_classifier.features import FeaturePipeline
    pipeline = FeaturePipeline(config)
    stamp = S
    figures = []
    for sleep_ms in (0, 1, 3, 10):
        samples = []
        for k in range(repeats):
            stamp += S // 100
            for name, values in readings.items():
                for back in (1, 0):  # two readings per input and tick, as at 200 Hz
                    pipeline.add(name, stamp - back * S // 200, values[k % len(values)])
            if sleep_ms:
                time.sleep(sleep_ms / 1000)
            start = time.thread_time_ns()
            pipeline.tick(stamp)
            samples.append(time.thread_time_ns() - start)
        figures.append(f'{sleep_ms} ms idle {np.median(samples[repeats // 3:]) / 1e3:.0f} us')
    return ('  machine: one pipeline.tick takes (CPU time, median) after '
            + ', '.join(figures))


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
    args.publish_every = _publish_every(args, config)
    args.workload = _workload(args, args.publish_every)
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

    idle_penalty = _idle_penalty(config, readings)
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
        every = args.publish_every

        def on_obstacles(msg, info):
            # The middleware's receive time: not delayed by this process's own executor.
            outputs.append((info['received_timestamp'] or time.time_ns(),
                            decode_obstacles(msg).stamp_ns))

        def on_diagnostics(msg):
            for status in msg.status:
                if status.name.endswith(': output') and NAMESPACE in status.hardware_id:
                    stamp_ns = msg.header.stamp.sec * S + msg.header.stamp.nanosec
                    diagnostics.append((stamp_ns, {kv.key: kv.value for kv in status.values}))

        def publish_inputs():
            k = counter[0]
            counter[0] += 1
            now = time.time_ns()
            messages = [(name, builders[name].build(values[k % len(values)], now))
                        for name, values in readings.items()
                        if every[name] and k % every[name] == 0]
            batches.append(time.time_ns())
            for name, msg in messages:
                publishers[name].publish(msg)

        node.create_subscription(String, f'/{NAMESPACE}/obstacles', on_obstacles, 100)
        node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
        # 0.1% slow: the batches' phase against the node's ticks then sweeps a whole tick
        # period every few seconds, so the end-to-end latency covers every phase; at the exact
        # rate the two timers keep one arbitrary phase per run (latency peaks 5 ms apart).
        node.create_timer((1.0 + PHASE_SWEEP) / args.input_rate_hz, publish_inputs)

        ros_args = ['--ros-args', '-r', f'__ns:=/{NAMESPACE}', '-p', f'rate_hz:={args.rate_hz}']
        profile = ('-m', 'cProfile', '-o', str(args.profile)) if args.profile else ()
        run = _Run(executor, outputs, batches, diagnostics, args)
        classifiers, floors = [], []
        for _ in range(args.repeats):  # the two sides alternate
            classifiers.append(run.measure(
                [sys.executable, *profile, '-m', 'obstacle_classifier.classifier_node',
                 *ros_args, '-p', f'model_path:={model}']))
            if not args.no_floor:
                with tempfile.TemporaryDirectory(prefix='bench_node_floor_') as scratch:
                    record = Path(scratch) / 'ticks.npy'
                    floors.append(run.measure(
                        [sys.executable, str(Path(__file__).parent / 'floor_node.py'),
                         '--record', str(record), *ros_args]))
                    floors[-1].ticks = np.load(record)
    finally:
        rclpy.try_shutdown()

    # Each side's full report is printed for its repetition with the least CPU.
    node_reports = [_captured(_report, args, model, c) for c in classifiers]
    floor_reports = [_captured(_report_floor, args, f) for f in floors]
    if args.repeats > 1:
        for index, (node_figures, _) in enumerate(node_reports):
            floor_text = ''
            if floor_reports:
                floor_figures = floor_reports[index][0]
                floor_text = (f' | floor: CPU {floor_figures.cpu_percent:.1f}%, p99 '
                              f'{floor_figures.p99_us:.0f} us')
            print(f'repetition {index + 1}: node CPU {node_figures.cpu_percent:.1f}%, p99 '
                  f'{node_figures.p99}, missed {node_figures.missed}{floor_text}')
    node_figures, text = min(node_reports, key=lambda report: report[0].cpu_percent)
    print(text, end='')
    print(idle_penalty)
    floor_figures = None
    if floor_reports:
        floor_figures, text = min(floor_reports, key=lambda report: report[0].cpu_percent)
        print(text, end='')
    _report_p4(args, [figures for figures, _ in node_reports], floor_figures)
    return 0


def _captured(report, *args) -> tuple[SimpleNamespace, str]:
    """(figures, printed text) of one report function call."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        figures = report(*args)
    return figures, text.getvalue()


class _Run:
    """Runs one node process against the shared driver and measures it over the window."""

    def __init__(self, executor, outputs, batches, diagnostics, args):
        self.executor, self.args = executor, args
        self.outputs, self.batches, self.diagnostics = outputs, batches, diagnostics

    def _spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)

    def measure(self, command: list[str]) -> SimpleNamespace:
        args = self.args
        for collected in (self.outputs, self.batches, self.diagnostics):
            collected.clear()
        log = tempfile.NamedTemporaryFile(prefix='bench_node_', suffix='.log', delete=False)
        process = subprocess.Popen(command, env=dict(os.environ, PYTHONUNBUFFERED='1'),
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60.0
            while not self.outputs and time.monotonic() < deadline:
                self.executor.spin_once(timeout_sec=0.05)
                if process.poll() is not None:
                    raise RuntimeError(f'{command[1:4]} exited; see {log.name}')
            if not self.outputs:
                raise RuntimeError(f'no output from {command[1:4]} in 60 s; see {log.name}')
            self._spin_for(args.warmup)
            first_output, first_batch = len(self.outputs), len(self.batches)
            first_report = len(self.diagnostics)
            cpu_start, wall_start = cpu_seconds(process.pid), time.monotonic()
            main_start = cpu_seconds(process.pid, process.pid)
            rss_start = rss_bytes(process.pid)
            begin_ns = time.time_ns()
            self._spin_for(args.duration)
            cpu = cpu_seconds(process.pid) - cpu_start
            main_cpu = cpu_seconds(process.pid, process.pid) - main_start
            rss_end = rss_bytes(process.pid)
            wall = time.monotonic() - wall_start
            end_ns = time.time_ns()
            self._spin_for(0.3)  # let the last outputs arrive before stopping
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        os.unlink(log.name)
        return SimpleNamespace(
            outputs=list(self.outputs), first_output=first_output,
            batches=list(self.batches), first_batch=first_batch,
            diagnostics=list(self.diagnostics), first_report=first_report,
            begin_ns=begin_ns, end_ns=end_ns, wall=wall, cpu=cpu, main_cpu=main_cpu,
            rss_start=rss_start, rss_end=rss_end)


def _report(args, model, run) -> SimpleNamespace:
    """The classifier node's figures."""
    outputs, batches, diagnostics = run.outputs, run.batches, run.diagnostics
    first_output, first_batch, first_report = run.first_output, run.first_batch, run.first_report
    begin_ns, end_ns, wall, cpu, main_cpu = run.begin_ns, run.end_ns, run.wall, run.cpu, \
        run.main_cpu
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
    period_ns = int(round(S / args.rate_hz))
    missed, doubled, grid_points = _missed_on_grid(stamps, begin_ns, end_ns, period_ns)
    edges, counts = _histogram_window(diagnostics, begin_ns, end_ns)
    reports = [report for _, report in diagnostics[first_report:]]

    def values(key):
        return np.array([float(report[key]) for report in reports if key in report])
    p50_key = [k for k in (reports[-1] if reports else {}) if k.startswith('processing_p50')]
    p99_key = [k for k in (reports[-1] if reports else {}) if k.startswith('processing_p99')]
    inputs_sent = sum(begin_ns <= publish_ns < end_ns for publish_ns in batches) / wall
    print(f'classifier node at {args.rate_hz:g} Hz, {args.workload} (sent '
          f'{inputs_sent:.1f} batches/s), '
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
    if counts is not None and counts.sum():
        print(f'  processing per tick, whole window  '
              f'p50 {_histogram_quantile(edges, counts, 0.5)}'
              f'   p99 {_histogram_quantile(edges, counts, 0.99)}   (n = {int(counts.sum())} '
              f'ticks; histogram buckets <= {", ".join(f"{e:g}" for e in edges)} us)')
    print(f'  ticks: {len(window)} received of {expected:.0f} expected; on the '
          f'{args.rate_hz:g} Hz grid: {grid_points} points, missed {missed}, doubled '
          f'{doubled}; gaps > 1.5 periods: {int(np.sum(gaps > 1.5 * S / args.rate_hz))}; '
          f'node-reported missed: '
          f'{int(values("ticks_missed").sum()) if reports else "n/a"}; ticks without '
          f'prediction: {int(values("ticks_without_prediction").sum()) if reports else "n/a"}')
    cpu_percent = 100.0 * cpu / wall
    print(f'  CPU of the node process: {cpu_percent:.1f}% of one core (main thread '
          f'{100.0 * main_cpu / wall:.1f}%, other threads '
          f'{100.0 * (cpu - main_cpu) / wall:.1f}%)'
          + ('  [under cProfile]' if args.profile else ''))
    print(_rss_line(run, 'node'))

    over = share = None
    if counts is not None and counts.sum():
        # Ticks over the limit; a bucket straddling it counts as over (not the case: an edge).
        bucket = int(np.searchsorted(edges, P4_PROCESSING_P99_US, 'left'))
        exact = bucket < edges.size and edges[bucket] == P4_PROCESSING_P99_US
        over = int(counts[bucket + 1 if exact else bucket:].sum())
        share = over / counts.sum()
    return SimpleNamespace(
        missed=missed, grid_points=grid_points, cpu_percent=cpu_percent, e2e_ns=e2e,
        over=over, share=share, ticks=int(counts.sum()) if counts is not None else 0,
        p99=_histogram_quantile(edges, counts, 0.99) if share is not None else None,
        p99_bucket=_histogram_bucket(counts, 0.99) if share is not None else None)


def _report_floor(args, run) -> SimpleNamespace:
    """The floor node's figures: its own exact per-tick timings over the window."""
    ticks = run.ticks[(run.ticks[:, 0] >= run.begin_ns) & (run.ticks[:, 0] < run.end_ns)]
    processing_us = ticks[:, 1] / 1e3
    stamps = np.array(sorted(t for _, t in run.outputs), dtype=np.int64)
    missed, _, grid_points = _missed_on_grid(stamps, run.begin_ns, run.end_ns,
                                             int(round(S / args.rate_hz)))
    cpu_percent = 100.0 * run.cpu / run.wall
    p50, p99 = np.percentile(processing_us, (50, 99)) if ticks.size else (np.nan, np.nan)
    over = int(np.sum(processing_us > P4_PROCESSING_P99_US))
    print('floor (benchmarks/floor_node.py, measured right after: the same subscriptions, QoS '
          'and executor, messages dropped unread, a report of the same size published per '
          'tick)')
    print(f'  processing per tick (floor)        p50 {p50 / 1e3:7.3f} ms   p99 {p99 / 1e3:7.3f} '
          f'ms   ({over} of {len(ticks)} ticks = {100 * over / max(len(ticks), 1):.2f}% over '
          f'{P4_PROCESSING_P99_US:g} us)')
    print(f'  ticks: missed {missed} of {grid_points} grid points')
    print(f'  CPU of the floor process: {cpu_percent:.1f}% of one core (main thread '
          f'{100.0 * run.main_cpu / run.wall:.1f}%, other threads '
          f'{100.0 * (run.cpu - run.main_cpu) / run.wall:.1f}%)')
    print(_rss_line(run, 'floor'))
    return SimpleNamespace(p50_us=p50, p99_us=p99, over=over, ticks=len(ticks),
                           cpu_percent=cpu_percent, missed=missed)


def _rss_line(run, side: str) -> str:
    """Resident memory at the start and the end of the measured window: a node that keeps
    something per tick or per message grows here (6,000 ticks a minute at 100 Hz)."""
    growth = run.rss_end - run.rss_start
    return (f'  resident memory of the {side} process: {run.rss_start / 2**20:.2f} MB at the '
            f'start of the window, {run.rss_end / 2**20:.2f} MB at its end ({growth / 1024:+.0f} '
            f'KB over {run.wall:.0f} s)')


def _report_p4(args, repetitions, floor) -> None:
    """The P4 verdicts: processing and CPU from the node's best repetition (as the issue asks),
    missed ticks summed over all of them; the floor's best repetition alongside."""
    def verdict(ok):
        return 'PASS' if ok else 'FAIL'

    def floor_note(text):
        return f'; floor {text}' if floor is not None else ''
    runs = f'best of {len(repetitions)} runs' if len(repetitions) > 1 else 'one run'
    print(f'P4 (issue 7): node at {args.rate_hz:g} Hz, {args.workload}, {args.duration:g} s '
          f'per run, {runs}')
    timed = [node for node in repetitions if node.share is not None]
    if timed:
        # the run with the fewest ticks over the limit; of equals, the lowest p99
        node = min(timed, key=lambda figures: (figures.share, figures.p99_bucket))
        floor_text = (f'p99 {floor.p99_us:.0f} us, {100 * floor.over / max(floor.ticks, 1):.2f}%'
                      ' over' if floor is not None else '')
        print(f'  p99 processing per tick <= {P4_PROCESSING_P99_US:g} us: '
              f'{verdict(node.share <= 0.01)} (p99 {node.p99}; {node.over} of {node.ticks} '
              f'ticks = {100 * node.share:.2f}% over{floor_note(floor_text)})')
    else:
        print('  p99 processing per tick: FAIL (no histogram from the node)')
    missed = sum(node.missed for node in repetitions)
    grid_points = sum(node.grid_points for node in repetitions)
    print(f'  no missed ticks over {args.duration * len(repetitions):g} s: '
          f'{verdict(missed == 0)} ({missed} missed of {grid_points} grid points, all runs)')
    node = min(repetitions, key=lambda figures: figures.cpu_percent)
    spread = (f', runs {min(n.cpu_percent for n in repetitions):.1f}-'
              f'{max(n.cpu_percent for n in repetitions):.1f}%' if len(repetitions) > 1 else '')
    print(f'  node CPU < {P4_CPU_PERCENT:g}% of one core: '
          f'{verdict(node.cpu_percent < P4_CPU_PERCENT)} ({node.cpu_percent:.2f}%{spread}'
          + floor_note(f'{floor.cpu_percent:.1f}%' if floor is not None else '') + ')')
    e2e_ms = np.asarray(node.e2e_ns, dtype=np.float64) / 1e6
    if e2e_ms.size:
        p50, p99 = np.percentile(e2e_ms, (50, 99))
        print(f'  end-to-end latency (input publish -> output receipt): p50 {p50:.3f} ms, '
              f'p99 {p99:.3f} ms (reported, no target)')


if __name__ == '__main__':
    sys.exit(main())
