"""The ``obstacle-classifier`` command line: make and judge a model before it goes on a robot.

Subcommands: ``simulate`` (data from the simulated sidewalk, through the node's feature
pipeline), ``train``, ``evaluate``, ``tune-thresholds``, ``predict``, ``flops``, and the ``bag``
group (``info``, ``extract``, ``play``, ``record``: rosbag2 via :mod:`obstacle_classifier.bags`
and :mod:`obstacle_classifier.bag_player`). Each is a function ``_cmd_<name>(args) -> int``
registered in :func:`build_parser`. User mistakes (bad paths,
bad files, bad values) are reported on stderr with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .datasets import Dataset, DatasetError, check_compatible, load_dataset, save_dataset
from .model import ModelFileError, ObstacleModel
from .nn import ACTIVATIONS, flops_report, mlp_shapes
from .nn.optim import OPTIMIZERS

EXAMPLES = {
    'simulate': """examples:
  obstacle-classifier simulate --ticks 20000 --seed 1 --output sim_train.npz
  obstacle-classifier simulate --ticks 6000 --seed 4 --bag sim_bag --storage mcap
  obstacle-classifier simulate --ticks 5000 --seed 2 --scenario busy --output sim_test.csv""",
    'train': """examples:
  obstacle-classifier train sim_train.npz --output model.npz --plot curves.png
  obstacle-classifier train data.csv --label-prefix label: --dtype float32 --output model.npz
  # the brief's exact regime on the brief's MLP:
  obstacle-classifier train data.npz --output brief.npz --optimizer sgd --lr 0.1 --epochs 10 \\
      --batch-size 100 --no-shuffle --val-fraction 0 --no-normalise --loss brief --patience 0
  # ... or, the same:  obstacle-classifier train data.npz --output brief.npz --brief-regime""",
    'evaluate': """examples:
  obstacle-classifier evaluate model.npz sim_test.npz
  obstacle-classifier evaluate model.npz sim_test.npz --json > report.json
  obstacle-classifier evaluate model.npz sim_test.npz --plot per_class.png""",
    'tune-thresholds': """examples:
  obstacle-classifier tune-thresholds model.npz sim_val.npz            # rewrites model.npz
  obstacle-classifier tune-thresholds model.npz sim_val.npz --output tuned.npz""",
    'predict': """examples:
  obstacle-classifier predict model.npz readings.csv --output predictions.csv
  obstacle-classifier predict model.npz features.npz --output predictions.npz --threshold 0.4""",
    'flops': """example:
  obstacle-classifier flops --d 16 --h 64 --c 8 --n 10000""",
    'bag': """examples:
  obstacle-classifier bag info sim_bag
  obstacle-classifier bag extract sim_bag --output sim_bag.npz""",
    'bag info': """example:
  obstacle-classifier bag info sim_bag""",
    'bag play': """examples:
  obstacle-classifier bag play sim_bag     # nodes started before it with use_sim_time:=true
  obstacle-classifier bag play sim_bag --rate 2 --loop --topics /sensors/scan,/sensors/imu
  obstacle-classifier bag play robot_bag --remap /scan:=/sensors/scan""",
    'bag record': """examples:
  obstacle-classifier bag record robot_bag                 # the configured inputs + labels
  obstacle-classifier bag record robot_bag --storage mcap --duration 60
  obstacle-classifier bag record robot_bag --topics /sensors/scan,/obstacle_labels
  obstacle-classifier bag record sim_bag --use-sim-time  # stamped with the simulator's /clock""",
    'bag extract': """examples:
  obstacle-classifier bag extract sim_bag --output sim_bag.npz
  obstacle-classifier bag extract robot_bag --output robot.csv --config my_features.yaml""",
}


PLOT_SUFFIXES = ('.png', '.svg', '.pdf')  # what matplotlib's Agg backend writes
#: ``train``'s options that are TrainConfig fields: None in the parser unless given (see
#: _train_config), TrainConfig's defaults otherwise (the ones their help texts name).
TRAIN_OPTIONS = ('architecture', 'hidden', 'activation', 'dtype', 'optimizer', 'lr',
                 'weight_decay', 'epochs', 'batch_size', 'shuffle', 'val_fraction', 'patience',
                 'pos_weight', 'normalise', 'loss', 'momentum')
#: Options whose name is not their destination's with dashes.
_OPTION_NAMES = {'shuffle': '--no-shuffle', 'normalise': '--no-normalise'}


# What to make smaller when a command runs out of memory (default: 'less data').
MEMORY_HINTS = {'train': 'a smaller --hidden or --batch-size, or less data',
                'simulate': 'fewer --ticks'}


class CliError(Exception):
    """A user-facing error: printed as ``obstacle-classifier: error: <message>``, exit 2."""


# -- argument types ---------------------------------------------------------------------------

def _int_at_least(minimum: int, expected: str):
    """An argparse type: an integer >= ``minimum`` (``expected`` names it in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected {expected}, got {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'expected {expected}, got {value}')
        return value
    return parse


_positive_int = _int_at_least(1, 'a positive integer')
_non_negative_int = _int_at_least(0, 'an integer >= 0')


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f'expected a finite number, got {text}')
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text}')
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f'expected a number >= 0, got {text}')
    return value


def _probability(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f'expected a threshold in (0, 1), got {text}')
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f'expected a fraction in [0, 1), got {text}')
    return value


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(',') if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError('expected a comma-separated list of column names')
    return names


# -- shared helpers ---------------------------------------------------------------------------

def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """The options that say how to read data: a CSV's label columns, a bag's feature config."""
    parser.add_argument('--label-columns', type=_name_list, metavar='A,B,...',
                        help='CSV: the label columns, by exact header name')
    parser.add_argument('--label-prefix', default='label:',
                        help='CSV: label columns are those whose name starts with this '
                             '(stripped to give the class name; default "label:")')
    parser.add_argument('--config', help="bag: the feature config YAML the node runs with "
                                         "(default: the installed one); feature names do not "
                                         "show a window or a timeout")


def _feature_config(args: argparse.Namespace):
    """The FeatureConfig of ``--config``, or None (the installed one)."""
    from .features import FeatureConfig
    return FeatureConfig.from_yaml(args.config) if args.config else None


def _load_data(path: str, args: argparse.Namespace, require_labels: bool = True) -> Dataset:
    """A data file, or a bag directory run through the node's feature pipeline."""
    return _load_data_and_stamps(path, args, require_labels)[0]


def _load_data_and_stamps(path: str, args: argparse.Namespace, require_labels: bool = True
                          ) -> tuple[Dataset, Optional[np.ndarray]]:
    """:func:`_load_data` and, for a bag, each row's tick time: int64 (n,) ns (None for a file)."""
    if Path(path).is_dir():
        from .bags import extract_bag
        # Without required labels (predict) the label topic is not read at all: its gaps
        # would drop ticks.
        extraction = extract_bag(path, _feature_config(args), require_labels=require_labels,
                                 ignore_labels=not require_labels)
        for warning in extraction.warnings():
            print(f'obstacle-classifier {args.command}: warning: {path}: {warning}',
                  file=sys.stderr)
        return extraction.dataset, extraction.stamps_ns
    return load_dataset(path, label_columns=args.label_columns, label_prefix=args.label_prefix,
                        require_labels=require_labels), None


def _load_model(path: str) -> ObstacleModel:
    return ObstacleModel.load(path)


def _check_output_path(path: str, suffixes: Sequence[str],
                       inputs: Sequence[Optional[str]] = ()) -> Path:
    """``path`` as the output file of a command, checked before any work is done: its suffix,
    a directory that exists and can be written to, and not one of the command's ``inputs``
    (the same file under any name: a symlink or hard link to it too)."""
    from .atomic import write_destination
    output = Path(path)
    if output.suffix.lower() not in suffixes:
        raise CliError(f'{output}: output must end in {" or ".join(suffixes)}')
    target = write_destination(output)  # where the write lands: a symlink's target
    via = f' ({output} links to {target})' if target != output else ''
    if target.is_dir():
        raise CliError(f'{output}: is a directory, not a file{via}')
    if not target.parent.is_dir():
        raise CliError(f'{output}: directory {target.parent} does not exist{via}')
    # (root passes os.access on a read-only mode, not on a read-only file system)
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise CliError(f'{output}: directory {target.parent} is not writable{via}')
    for source in inputs:
        if source is not None and output.exists() and os.path.exists(source) \
                and os.path.samefile(output, source):
            raise CliError(f'{output}: the output would overwrite the input {source}')
    return output


def _storable_thresholds(thresholds: np.ndarray) -> np.ndarray:
    """Tuned thresholds (c,) as a model file takes them, strictly inside (0, 1).

    A tuned threshold is an observed score; only one of exactly 0 or 1 lies outside, and it
    becomes the nearest float inside, which decides every other score as before (``p >= t``).
    A wider clip (to 1e-6, say) would move the thresholds of classes the model scores very
    low, and with them the F1 the tuning found.
    """
    return np.clip(thresholds, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0))


def _evaluation(model: ObstacleModel, data: Dataset, threshold: Optional[float] = None,
                probabilities: Optional[np.ndarray] = None) -> dict:
    """The report of ``model`` on ``data``, from ``probabilities`` (n, c) if the caller has them
    (:func:`_probabilities`) so that the model runs once."""
    from .metrics import multilabel_report
    check_compatible(data, model.feature_names, model.class_names)
    if probabilities is None:
        probabilities = _probabilities(model, data)
    return multilabel_report(data.Y, model.decide(probabilities, threshold), model.class_names)


def _probabilities(model: ObstacleModel, data: Dataset) -> np.ndarray:
    """The model's probabilities (n, c) for ``data``, with a warning for rows it cannot answer
    (NaN: weights so large that inf - inf happens inside; they are decided absent)."""
    probabilities = model.predict_proba(data.X)
    unanswered = int(np.count_nonzero(np.isnan(probabilities).any(axis=1)))
    if unanswered:
        print(f'obstacle-classifier: warning: the model gives no answer (NaN) for {unanswered} '
              f'of {data.n} rows of {data.source}: its weights overflow; those rows count as '
              'nothing detected', file=sys.stderr)
    return probabilities


# -- subcommands ------------------------------------------------------------------------------

def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulation import simulate_dataset
    if (args.output is None) == (args.bag is None):
        raise CliError('give exactly one of --output (a data file) and --bag (a bag directory)')
    config = _feature_config(args)
    if args.bag is not None:
        return _simulate_bag(args, config)
    given = [option for option, value in (('--duration', args.duration),
                                          ('--storage', args.storage)) if value is not None]
    if given:
        raise CliError(f'{" and ".join(given)}: for --bag only (--output writes --ticks rows)')
    output = _check_output_path(args.output, ('.npz', '.csv'))
    simulated = simulate_dataset(args.ticks, seed=args.seed, scenario=args.scenario,
                                 config=config, progress=not args.quiet)
    data = Dataset(X=simulated.X, Y=simulated.Y, feature_names=simulated.feature_names,
                   class_names=simulated.class_names, source=str(output))
    save_dataset(output, data)
    rates = ', '.join(f'{name} {rate:.1%}' for name, rate in simulated.positive_rates().items())
    print(f'wrote {output}: {data.n} ticks x {data.d} features, {data.c} classes '
          f'({simulated.skipped_ticks} ticks skipped as stale)')
    print(f'class presence: {rates}')
    return 0


def _simulate_bag(args: argparse.Namespace, config) -> int:
    """``simulate --bag``: raw sensor messages and ground truth written as a rosbag2."""
    from .bags import format_bag_info, write_simulated_bag
    from .features import load_default_config
    config = config if config is not None else load_default_config()
    # Enough simulated time for --ticks feature vectors after the first windows fill.
    longest_window_s = max(spec.window_s for spec in config.inputs)
    duration_s = args.duration or (args.ticks / config.rate_hz + longest_window_s + 1.0)
    info = write_simulated_bag(args.bag, duration_s, seed=args.seed, scenario=args.scenario,
                               config=config, storage=args.storage or 'sqlite3')
    print(f'wrote bag {args.bag}: {duration_s:g} s of simulated sensors and ground truth')
    print(format_bag_info(info), end='')
    return 0


def _cmd_bag_info(args: argparse.Namespace) -> int:
    from .bags import bag_info, format_bag_info
    print(format_bag_info(bag_info(args.bag)), end='')
    return 0


def _cmd_bag_extract(args: argparse.Namespace) -> int:
    from .bags import extract_bag
    output = _check_output_path(args.output, ('.npz', '.csv'), (args.config,))
    extraction = extract_bag(args.bag, _feature_config(args),
                             require_labels=not args.allow_unlabelled,
                             label_max_age_s=args.label_max_age)
    data = extraction.dataset
    save_dataset(output, Dataset(X=data.X, Y=data.Y, feature_names=data.feature_names,
                                 class_names=data.class_names, source=str(output)),
                 stamps_ns=extraction.stamps_ns if output.suffix.lower() == '.npz' else None)
    print(extraction.summary())
    print(f'wrote {output}')
    return 0


def _cmd_bag_play(args: argparse.Namespace) -> int:
    from .bag_player import PlaybackOptions, parse_remaps, play_bag
    options = PlaybackOptions(rate=args.rate, loop=args.loop, topics=tuple(args.topics or ()),
                              remaps=parse_remaps(args.remap or ()),
                              clock_rate_hz=args.clock_rate, delay_s=args.delay)
    stats = play_bag(args.bag, options)
    total = sum(stats.published.values())
    print(f'published {total} messages on {len(stats.published)} topics'
          f'{f" over {stats.loops + 1} loops" if stats.loops else ""}, '
          f'{stats.clock_messages} on /clock{" (interrupted)" if stats.interrupted else ""}')
    for topic, reason in stats.left_out.items():
        print(f'left out {topic}: {reason}')
    return 0


def _cmd_bag_record(args: argparse.Namespace) -> int:
    from .bag_player import RecordOptions, default_record_topics, record_bag
    if args.topics:
        topics = tuple(topic if topic.startswith('/') else '/' + topic for topic in args.topics)
    else:
        topics = default_record_topics(_feature_config(args))
    ros_args = ['--ros-args', '-p', 'use_sim_time:=true'] if args.use_sim_time else []
    depth = {'queue_depth': args.queue_depth} if args.queue_depth else {}
    stats = record_bag(args.bag, RecordOptions(topics=topics, storage=args.storage,
                                               duration_s=args.duration, **depth), ros_args)
    print(f'recorded {sum(stats.recorded.values())} messages into {args.bag}: ' + ', '.join(
        f'{topic} {count}' for topic, count in stats.recorded.items()))
    if stats.never_seen:
        print(f'no messages on: {", ".join(stats.never_seen)}')
    lost = {topic: count for topic, count in stats.lost.items() if count}
    if lost:
        print("lost (missing from their publisher's sequence): " + ', '.join(
            f'{topic} {count}' for topic, count in lost.items()))
    if stats.before_clock:
        print(f'dropped {stats.before_clock} messages for want of a /clock to stamp them with')
    return 0


def _train_config(args: argparse.Namespace):
    """The TrainConfig the options ask for. TRAIN_OPTIONS are None unless given, so that
    ``--brief-regime`` can refuse any of them given beside it: the regime sets each one
    (momentum too, which its sgd ignores), so it would be ignored."""
    from .training import BRIEF_REGIME, TrainConfig
    given = {dest: getattr(args, dest) for dest in TRAIN_OPTIONS
             if getattr(args, dest) is not None}
    if args.brief_regime:
        clashing = [_OPTION_NAMES.get(dest, '--' + dest.replace('_', '-')) for dest in given]
        if clashing:
            raise CliError(f'--brief-regime sets {", ".join(clashing)} itself: drop '
                           f'{"it" if len(clashing) == 1 else "them"}, or the regime')
        return TrainConfig(**BRIEF_REGIME, seed=args.seed)
    return TrainConfig(**given, seed=args.seed)


def _cmd_train(args: argparse.Namespace) -> int:
    from .metrics import best_f1_thresholds
    from .training import plot_history, split_indices, train_model
    # Every option is checked before the data are loaded and the model trained (minutes).
    inputs = (args.data, args.validation)
    output = _check_output_path(args.output, ('.npz',), inputs)
    config = _train_config(args)
    config.validate()
    if args.tune_thresholds and not args.validation and config.val_fraction == 0:
        raise CliError('--tune-thresholds needs validation data (--validation or '
                       '--val-fraction > 0; --brief-regime uses no validation split)')
    if args.plot:
        _check_output_path(args.plot, PLOT_SUFFIXES, inputs)
    data = _load_data(args.data, args)
    validation = _load_data(args.validation, args) if args.validation else None
    if validation is None and config.val_fraction > 0:
        train_idx, val_idx = split_indices(data.n, config.val_fraction, config.seed)
        data, validation = data.subset(train_idx), data.subset(val_idx)
    result = train_model(data, config, validation=validation, progress=not args.quiet)
    model = result.model
    discarded = sum(record.discarded_steps for record in result.history)
    if discarded:
        print(f'obstacle-classifier train: warning: {discarded} training steps were discarded '
              f'(non-finite loss, gradient or update); try a smaller --lr or --weight-decay',
              file=sys.stderr)
    not_finite = sum(record.val_loss is not None and not np.isfinite(record.val_loss)
                     for record in result.history)
    if not_finite:
        print(f'obstacle-classifier train: warning: the validation loss was not finite in '
              f'{not_finite} of {len(result.history)} epochs (the validation data overflow the '
              f'model?): early stopping could not compare them', file=sys.stderr)
    ignored = model.metadata['constant_features']
    if ignored:
        print(f'obstacle-classifier train: warning: features constant in the training data '
              f'are ignored (zero weights in the model): {", ".join(ignored)}', file=sys.stderr)
    model.metadata['training_data'] = str(args.data)
    validation_probabilities = (None if validation is None
                                else _probabilities(model, validation))
    if args.tune_thresholds:
        thresholds, _ = best_f1_thresholds(validation.Y, validation_probabilities,
                                           default_threshold=model.thresholds)
        model.thresholds = _storable_thresholds(thresholds)
        model.metadata['thresholds_tuned_on'] = str(args.validation or 'validation split')
    if validation is not None:
        report = _evaluation(model, validation, probabilities=validation_probabilities)
        model.metadata['validation'] = {'micro_f1': report['micro']['f1'],
                                        'macro_f1': report['macro']['f1']}
    model.save(output)
    last = result.history[-1]
    print(f'trained {model.network!r} for {len(result.history)} epochs '
          f'(best epoch {result.best_epoch}{", stopped early" if result.stopped_early else ""}); '
          f'final training loss {last.train_loss:.4f}')
    if validation is not None:
        tuned = ' (the thresholds were tuned on them: optimistic)' if args.tune_thresholds else ''
        print(f'validation ({validation.n} examples): micro F1 {report["micro"]["f1"]:.3f}, '
              f'macro F1 {report["macro"]["f1"]:.3f}{tuned}')
    print(f'wrote {output} (version {model.version})')
    if args.plot:
        try:
            plot_history(result.history, args.plot)
        except OSError as exc:
            raise CliError(f'wrote {output}, but not the plot: {exc}') from exc
        print(f'wrote {args.plot}')
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import format_report
    if args.plot:
        _check_output_path(args.plot, PLOT_SUFFIXES, (args.model, args.data))
    model = _load_model(args.model)
    data = _load_data(args.data, args)
    report = _evaluation(model, data, args.threshold)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f'{args.model} on {args.data} ({data.n} examples)')
        print(format_report(report), end='')
    if args.plot:
        _plot_report(report, args.plot)
        print(f'wrote {args.plot}', file=sys.stderr if args.json else sys.stdout)
    return 0


def _plot_report(report: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .training import save_figure

    names = list(report['per_class'])
    x = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    for offset, metric in zip((-0.27, 0, 0.27), ('precision', 'recall', 'f1')):
        axis.bar(x + offset, [report['per_class'][n][metric] for n in names], width=0.27,
                 label=metric)
    axis.set_xticks(x, names, rotation=30, ha='right')
    axis.set(ylim=(0, 1), ylabel='score',
             title=f'per-class scores (micro F1 {report["micro"]["f1"]:.3f}, '
                   f'macro F1 {report["macro"]["f1"]:.3f})')
    axis.legend(loc='lower right')
    save_figure(figure, path)


def _cmd_tune_thresholds(args: argparse.Namespace) -> int:
    from .metrics import best_f1_thresholds
    # (rewriting the model file itself is the default)
    output = _check_output_path(args.output or args.model, ('.npz',), (args.data,))
    model = _load_model(args.model)
    data = _load_data(args.data, args)
    check_compatible(data, model.feature_names, model.class_names)
    probabilities = _probabilities(model, data)
    before = _evaluation(model, data, probabilities=probabilities)
    # A class without positives in these data keeps the threshold the model has: the data
    # say nothing about it (an earlier tuning may have).
    thresholds, _ = best_f1_thresholds(data.Y, probabilities, default_threshold=model.thresholds)
    absent = np.count_nonzero(data.Y, axis=0) == 0
    model.thresholds = _storable_thresholds(thresholds)
    model.metadata['thresholds_tuned_on'] = str(args.data)
    after = _evaluation(model, data, probabilities=probabilities)  # the thresholds as stored
    model.save(output)
    for name, threshold, kept in zip(model.class_names, model.thresholds, absent):
        outcome = ('kept (no positives in the data)' if kept
                   else f'F1 {after["per_class"][name]["f1"]:.3f}')
        print(f'  {name:<12} threshold {threshold:.6g}  {outcome}')
    print(f'micro F1 {before["micro"]["f1"]:.3f} -> {after["micro"]["f1"]:.3f}, '
          f'macro F1 {before["macro"]["f1"]:.3f} -> {after["macro"]["f1"]:.3f} on {args.data}')
    print(f'wrote {output} (version {model.version})')
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    output = (None if args.output is None
              else _check_output_path(args.output, ('.npz', '.csv'), (args.model, args.input)))
    model = _load_model(args.model)
    # From a bag each row is a tick: its bag time goes first in every output, so the
    # predictions line up with what the node published for the same tick.
    data, stamps = _load_data_and_stamps(args.input, args, require_labels=False)
    check_compatible(data, model.feature_names, None)
    probabilities = _probabilities(model, data)
    labels = model.decide(probabilities, args.threshold)
    stamp_texts = [] if stamps is None else [str(int(stamp)) for stamp in stamps]
    if output is None:
        for k, (row_labels, row_probs) in enumerate(zip(labels, probabilities)):
            present = [name for name, flag in zip(model.class_names, row_labels) if flag]
            line = ','.join(present) + '\t' + ' '.join(f'{p:.4f}' for p in row_probs)
            print(f'{stamp_texts[k]}\t{line}' if stamp_texts else line)
        return 0
    if output.suffix.lower() == '.npz':
        from .atomic import atomic_write
        arrays = {'probabilities': probabilities, 'labels': labels,
                  'class_names': np.array(model.class_names)}
        if stamps is not None:
            arrays['stamps_ns'] = stamps
        atomic_write(output, lambda f: np.savez(f, **arrays))
    else:
        from .atomic import atomic_write_bytes
        header = (['stamp_ns'] * bool(stamp_texts) + [f'prob:{n}' for n in model.class_names]
                  + [f'label:{n}' for n in model.class_names])
        lines = [','.join(header)]
        lines += [','.join(stamp_texts[k:k + 1] + [repr(float(p)) for p in probs]
                           + [str(int(v)) for v in flags])
                  for k, (probs, flags) in enumerate(zip(probabilities, labels))]
        atomic_write_bytes(output, ('\n'.join(lines) + '\n').encode())
    print(f'wrote {output}: {len(labels)} predictions over {model.n_classes} classes')
    return 0


def _cmd_flops(args: argparse.Namespace) -> int:
    print(flops_report(mlp_shapes(args.d, args.h, args.c), args.n))
    return 0


# -- parser -----------------------------------------------------------------------------------

def _subcommand(commands, name: str, help_text: str, description: str):
    parser = commands.add_parser(name, help=help_text, description=description,
                                 epilog=EXAMPLES[name],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='obstacle-classifier',
        description='Offline tools for the NumPy obstacle classifier: simulate data, train, '
                    'evaluate, tune thresholds, predict, count FLOPs.')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

    simulate = _subcommand(
        commands, 'simulate', 'write a data set from the simulated sidewalk',
        'Run the seeded sidewalk simulator, feed every raw reading through the same feature '
        'pipeline the node uses, and write features and ground-truth labels at tick times.')
    simulate.add_argument('--ticks', type=_positive_int, default=20000,
                          help='feature vectors to produce (default 20000 = 1000 s at 20 Hz)')
    simulate.add_argument('--seed', type=_non_negative_int, default=0,
                          help='simulator seed (default 0)')
    simulate.add_argument('--scenario', default='default',
                          help='simulated world: default, quiet or busy (default: default)')
    simulate.add_argument('--config', help='feature config YAML (default: the installed one)')
    simulate.add_argument('--output', help='.npz or .csv file to write')
    simulate.add_argument('--bag', metavar='DIR',
                          help='instead: write the raw sensor messages and ground truth '
                               '(/obstacle_labels) as a rosbag2 into this new directory')
    simulate.add_argument('--storage', choices=('sqlite3', 'mcap'),
                          help='--bag storage format (default sqlite3)')
    simulate.add_argument('--duration', type=_positive_float,
                          help='--bag: simulated seconds (default: enough for --ticks ticks)')
    simulate.add_argument('--quiet', action='store_true', help='no progress bar')
    simulate.set_defaults(handler=_cmd_simulate)

    train = _subcommand(
        commands, 'train', 'train a model file from a data file',
        'Train the MLP (or the linear baseline) on a data file and write a model file holding '
        'the network, the feature and class names, the input normalisation and thresholds.')
    train.add_argument('data', help='training data (.npz or .csv)')
    train.add_argument('--output', required=True, help='model file to write (.npz)')
    train.add_argument('--validation', help='validation data file (default: a split of DATA)')
    train.add_argument('--val-fraction', type=_fraction,
                       help='validation split when --validation is not given (default 0.2)')
    train.add_argument('--architecture', choices=('mlp', 'linear'),
                       help="'mlp' (the brief's) or 'linear' (Linear + Sigmoid baseline)")
    train.add_argument('--hidden', type=_positive_int,
                       help='hidden width h (default 64)')
    train.add_argument('--activation', choices=sorted(ACTIVATIONS),
                       help='default scaled_relu (the brief\'s: 2x where x > 1, else 0)')
    train.add_argument('--dtype', choices=('float32', 'float64'),
                       help='default float64')
    train.add_argument('--optimizer', choices=OPTIMIZERS, help='default adam')
    train.add_argument('--lr', type=_positive_float,
                       help='learning rate (default: 0.1 sgd, 0.05 momentum, 1e-3 adam)')
    train.add_argument('--momentum', type=_fraction,
                       help='momentum for --optimizer momentum (default 0.9)')
    train.add_argument('--weight-decay', type=float,
                       help='L2 penalty on weights (default 0)')
    train.add_argument('--epochs', type=_positive_int, help='default 60')
    train.add_argument('--batch-size', type=_positive_int, help='default 100')
    train.add_argument('--no-shuffle', dest='shuffle', action='store_false',
                       help='keep data order (the brief does)')
    train.add_argument('--patience', type=int,
                       help='early stopping: epochs without a better validation loss '
                            '(default 8; 0: off)')
    train.add_argument('--pos-weight', choices=('none', 'balanced'),
                       help='per-class positive weights for imbalance (balanced: n_neg/n_pos)')
    train.add_argument('--no-normalise', dest='normalise', action='store_false',
                       help='do not standardise inputs')
    train.add_argument('--loss', choices=('logits', 'brief'),
                       help="'logits': exact, stable NLL gradient; 'brief': the brief's "
                            'Sigmoid + get_grad_log_loss(eps=1e-8)')
    train.add_argument('--brief-regime', action='store_true',
                       help="the brief's exact regime (overrides the options above): MLP h=64, "
                            'sgd lr 0.1, 10 epochs, batch 100, data order, no split, raw inputs')
    train.set_defaults(**{dest: None for dest in TRAIN_OPTIONS})  # (see _train_config)
    train.add_argument('--tune-thresholds', action='store_true',
                       help='choose per-class thresholds for best F1 on the validation data')
    train.add_argument('--seed', type=_non_negative_int, default=0,
                       help='initialisation / split / shuffle (default 0)')
    train.add_argument('--plot', help='write training curves to this image (.png, .svg or '
                                      '.pdf)')
    train.add_argument('--quiet', action='store_true', help='no progress bar')
    _add_data_options(train)
    train.set_defaults(handler=_cmd_train)

    evaluate = _subcommand(
        commands, 'evaluate', 'score a model on labelled data',
        'Per-class precision, recall, F1 and support; micro and macro F1; Hamming loss; subset '
        'accuracy.')
    evaluate.add_argument('model', help='model file (.npz)')
    evaluate.add_argument('data', help='labelled data (.npz or .csv)')
    evaluate.add_argument('--threshold', type=_probability,
                          help="one threshold for every class (default: the model's)")
    evaluate.add_argument('--json', action='store_true', help='print the report as JSON')
    evaluate.add_argument('--plot', help='write per-class score bars to this PNG')
    _add_data_options(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    tune = _subcommand(
        commands, 'tune-thresholds', 'choose per-class thresholds for best F1',
        'Choose, for each class, the decision threshold with the best F1 on validation data '
        '(not the test data!) and store them in the model file.')
    tune.add_argument('model', help='model file (.npz), rewritten unless --output')
    tune.add_argument('data', help='labelled validation data (.npz or .csv)')
    tune.add_argument('--output', help='write the tuned model here instead')
    _add_data_options(tune)
    tune.set_defaults(handler=_cmd_tune_thresholds)

    predict = _subcommand(
        commands, 'predict', 'labels and probabilities for feature vectors',
        'Run the model on a CSV or NPZ file of feature vectors, or on a bag through the '
        "node's feature pipeline (labels, if present, are ignored), and print or write the "
        'detected classes and the probabilities. From a bag every row starts with its tick\'s '
        'bag time in ns (stamp_ns), the stamp the node gives the same tick.')
    predict.add_argument('model', help='model file (.npz)')
    predict.add_argument('input', help='feature vectors (.npz or .csv) or a bag directory')
    predict.add_argument('--output', help='.csv (stamp_ns from a bag, prob:<class>, '
                                          'label:<class> columns) or .npz (stamps_ns from a '
                                          'bag, probabilities, labels, class_names)')
    predict.add_argument('--threshold', type=_probability,
                         help="one threshold for every class (default: the model's)")
    _add_data_options(predict)
    predict.set_defaults(handler=_cmd_predict)

    flops = _subcommand(
        commands, 'flops', "matrix-product FLOPs of training vs inference (the brief's question)",
        'Count the FLOPs of the matrix products the NumPy MLP performs for n examples, in '
        'inference and in one training step, and derive the ratio.')
    flops.add_argument('--d', type=_positive_int, default=16, help='input width (default 16)')
    flops.add_argument('--h', type=_positive_int, default=64, help='hidden width (default 64)')
    flops.add_argument('--c', type=_positive_int, default=8, help='classes (default 8)')
    flops.add_argument('--n', type=_positive_int, default=10000,
                       help='examples (default 10000)')
    flops.set_defaults(handler=_cmd_flops)
    _add_bag_commands(commands)
    return parser


def _add_bag_commands(commands) -> None:
    """The ``bag`` group: ``bag info`` and ``bag extract`` (rosbag2 via ``rosbags``)."""
    bag = _subcommand(commands, 'bag', 'inspect rosbag2 bags and extract data sets from them',
                      'rosbag2 bags (sqlite3 or MCAP), read with the rosbags library. Train and '
                      'evaluate also accept a bag directory wherever they accept a data file.')
    bag_commands = bag.add_subparsers(dest='bag_command', metavar='BAG_COMMAND', required=True)
    info = bag_commands.add_parser(
        'info', help='topics, types, counts, duration, storage', epilog=EXAMPLES['bag info'],
        description='Describe a bag from its metadata.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument('bag', help='bag directory')
    info.set_defaults(handler=_cmd_bag_info)
    play = bag_commands.add_parser(
        'play', help='publish a bag with its timing and /clock', epilog=EXAMPLES['bag play'],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Publish the raw messages of a bag with their original timing (times '
                    '1/--rate), each topic with its recorded QoS, and bag time on /clock so that '
                    'nodes started with use_sim_time:=true tick on bag time. Ctrl-C stops.')
    play.add_argument('bag', help='bag directory')
    play.add_argument('--rate', type=_positive_float, default=1.0,
                      help='playback speed factor (default 1)')
    play.add_argument('--loop', action='store_true', help='start over at the end')
    play.add_argument('--topics', type=_name_list, metavar='/A,/B',
                      help='play only these topics (as named in the bag)')
    play.add_argument('--remap', action='append', metavar='/FROM:=/TO',
                      help='publish a bag topic under another name (repeatable)')
    play.add_argument('--clock-rate', type=_non_negative_float, default=100.0, metavar='HZ',
                      help='/clock messages per second between bag messages (default 100; '
                           '0: only with each message)')
    play.add_argument('--delay', type=_non_negative_float, default=0.5, metavar='S',
                      help='seconds to wait before playing, for subscribers to match '
                           '(default 0.5)')
    play.set_defaults(handler=_cmd_bag_play)
    record = bag_commands.add_parser(
        'record', help='record topics into a new bag', epilog=EXAMPLES['bag record'],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Subscribe (raw, no re-encoding) to the configured input topics and '
                    '/obstacle_labels, or --topics, and write what arrives as a rosbag2 with '
                    "each topic's offered QoS, until Ctrl-C or --duration.")
    record.add_argument('bag', help='bag directory to create')
    record.add_argument('--topics', type=_name_list, metavar='/A,/B',
                        help='record these topics instead')
    record.add_argument('--config', help='feature config YAML whose inputs are recorded')
    record.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3')
    record.add_argument('--duration', type=_positive_float, metavar='S',
                        help='stop after this many seconds (default: at Ctrl-C)')
    record.add_argument('--queue-depth', type=_positive_int, metavar='N',
                        help='messages each topic may queue while the recorder writes (default '
                             '1000); memory is up to N times the message size per topic: lower '
                             'it for images')
    record.add_argument('--use-sim-time', action='store_true',
                        help='stamp messages with /clock time (bag time of a replay or a '
                             'simulator); what comes before the first /clock gets its time')
    record.set_defaults(handler=_cmd_bag_record)
    extract = bag_commands.add_parser(
        'extract', help='bag -> data set through the node feature pipeline',
        epilog=EXAMPLES['bag extract'], formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Replay the bag through the same feature pipeline the node uses, ticking at '
                    'rate_hz on bag time; labels from /obstacle_labels (std_msgs/String, '
                    'comma-separated class names), the newest one at or before each tick.')
    extract.add_argument('bag', help='bag directory')
    extract.add_argument('--output', required=True, help='.npz or .csv file to write')
    extract.add_argument('--config', help='feature config YAML (default: the installed one)')
    extract.add_argument('--label-max-age', type=_positive_float, default=0.5, metavar='S',
                         help='drop ticks whose newest label is older than this (default 0.5 s)')
    extract.add_argument('--allow-unlabelled', action='store_true',
                         help='extract features from a bag without the label topic (no labels)')
    extract.set_defaults(handler=_cmd_bag_extract)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # here, so that a reader gone away is handled below, not at exit
        return code
    except BrokenPipeError:
        # The reader of stdout went away (``predict ... | head``): stop quietly with the status
        # of a process killed by SIGPIPE (128 + 13), what the shell reports for cat or grep in
        # its place; 0 would claim the output was delivered. Python would try to flush stdout
        # again at exit and fail, so it is pointed at /dev/null first (as the Python docs do).
        _discard_stdout()
        return 141
    except (CliError, DatasetError, ModelFileError, ValueError, OSError) as exc:
        command = ' '.join(filter(None, (args.command, getattr(args, 'bag_command', None))))
        print(f'{parser.prog} {command}: error: {exc}', file=sys.stderr)
        return 2
    except MemoryError as exc:
        hint = MEMORY_HINTS.get(args.command, 'less data')
        print(f'{parser.prog} {args.command}: error: not enough memory ({exc or "MemoryError"}); '
              f'try {hint}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{parser.prog}: interrupted', file=sys.stderr)
        return 130


def _discard_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # stdout without a file descriptor
        pass


if __name__ == '__main__':
    sys.exit(main())
