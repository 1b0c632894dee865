"""Benchmark: online training from a fresh model vs the offline default model, over sim time.

Replays what the node does with ``train.enabled`` on a simulated world it has never seen (seed
200; the default model was trained on seeds 1..N and tuned / tested on 100 and 101), with the
node's own components and default settings, without ROS:

* ticks at 20 Hz from :func:`~obstacle_classifier.simulation.simulate_dataset` (the node's
  feature pipeline), each scored *before* anything is learnt from it (prequential: the model
  that serves a tick never trained on it);
* labels at 10 Hz (the simulator's ``label_rate_hz``), each paired with its tick and added to
  the :class:`~obstacle_classifier.online_training.OnlineTrainer`'s replay buffer;
* ``steps_per_second`` training steps per simulated second, a snapshot swapped in every 0.1 s.

It prints micro-F1 against the truth per window of simulated time for the online model and for
``config/default_model.npz`` on the same ticks. Not a test.

    .venv/bin/python benchmarks/bench_online.py [--minutes 10] [--window 60] [--steps 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from obstacle_classifier import paths  # noqa: E402
from obstacle_classifier.metrics import multilabel_report  # noqa: E402
from obstacle_classifier.model import ObstacleModel  # noqa: E402
from obstacle_classifier.online_training import OnlineTrainer  # noqa: E402
from obstacle_classifier.simulation import simulate_dataset  # noqa: E402

TICK_HZ, LABEL_HZ, SNAPSHOT_S = 20, 10, 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--minutes', type=float, default=10.0, help='simulated minutes')
    parser.add_argument('--window', type=float, default=60.0, help='seconds per F1 window')
    parser.add_argument('--steps', type=float, default=20.0, help='training steps per second')
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--buffer', type=int, default=20000)
    parser.add_argument('--seed', type=int, default=200, help='world seed')
    args = parser.parse_args()

    default = ObstacleModel.load(paths.config_path('default_model.npz'))
    fresh = ObstacleModel.create(default.feature_names, default.class_names,
                                 hidden=default.network.h, dtype=default.network.dtype, rng=3,
                                 input_mean=default.input_mean, input_std=default.input_std)
    n_ticks = int(args.minutes * 60 * TICK_HZ)
    began = time.perf_counter()
    world = simulate_dataset(n_ticks, seed=args.seed)
    print(f'simulated {n_ticks} ticks ({args.minutes:g} min, seed {args.seed}) in '
          f'{time.perf_counter() - began:.1f} s')

    trainer = OnlineTrainer(fresh, 'adam', args.lr, args.batch, args.buffer)
    serving = fresh
    X_norm = fresh.normalise(world.X)
    online_pred = np.zeros_like(world.Y)
    steps_per_tick = args.steps / TICK_HZ
    label_every, snapshot_every = TICK_HZ // LABEL_HZ, int(round(SNAPSHOT_S * TICK_HZ))
    credit = 0.0
    began = time.perf_counter()
    for t in range(n_ticks):
        online_pred[t] = serving.decide(serving.network.predict_proba(X_norm[t]))
        if t % label_every == 0:
            trainer.add_example(X_norm[t], world.Y[t])
        credit += steps_per_tick
        if t % snapshot_every == snapshot_every - 1:
            steps = int(credit)
            credit -= steps
            trainer.train_steps(steps)
            serving = trainer.snapshot() or serving
    train_s = time.perf_counter() - began
    offline_pred = default.predict(world.X)

    window = int(args.window * TICK_HZ)
    print(f'{trainer.stats.steps} steps ({trainer.stats.discarded_updates} discarded), '
          f'{trainer.stats.examples_added} labelled examples, {train_s:.1f} s wall')
    print(f'{"sim time":>12}  {"online F1":>9}  {"default F1":>10}  {"ratio":>6}')
    names = default.class_names
    for start in range(0, n_ticks, window):
        rows = slice(start, min(start + window, n_ticks))
        online = multilabel_report(world.Y[rows], online_pred[rows], names)['micro']['f1']
        offline = multilabel_report(world.Y[rows], offline_pred[rows], names)['micro']['f1']
        ratio = online / offline if offline else float('nan')
        print(f'{start / TICK_HZ:5.0f}-{rows.stop / TICK_HZ:4.0f} s  {online:9.3f}  '
              f'{offline:10.3f}  {ratio:6.2f}')
    for label, rows in (('whole run', slice(0, n_ticks)),
                        ('second half', slice(n_ticks // 2, n_ticks)),
                        ('last window', slice(max(0, n_ticks - window), n_ticks))):
        online = multilabel_report(world.Y[rows], online_pred[rows], names)['micro']['f1']
        offline = multilabel_report(world.Y[rows], offline_pred[rows], names)['micro']['f1']
        print(f'{label}: online {online:.3f} vs default {offline:.3f} '
              f'({100 * online / offline:.0f}% of the offline model)')


if __name__ == '__main__':
    main()
