"""The ``bag`` subcommands, ``simulate --bag`` and bag directories in train / evaluate."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from obstacle_classifier.bags import extract_bag
from obstacle_classifier.cli import main
from obstacle_classifier.datasets import load_dataset

#: rclpy's vendored lark imports deprecated modules when the first type support loads.
pytestmark = pytest.mark.filterwarnings(
    "ignore:module 'sre_parse' is deprecated:DeprecationWarning",
    "ignore:module 'sre_constants' is deprecated:DeprecationWarning")


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope='module')
def simulated_bag(tmp_path_factory) -> Path:
    """``simulate --bag`` output for 300 ticks, seed 2 (MCAP), shared by the module."""
    path = tmp_path_factory.mktemp('cli') / 'sim_bag'
    assert main(['simulate', '--ticks', '300', '--seed', '2', '--bag', str(path),
                 '--storage', 'mcap']) == 0
    return path


def test_simulate_bag_writes_a_bag_that_bag_info_describes(simulated_bag, capsys):
    code, out, err = _run(capsys, 'bag', 'info', simulated_bag)
    assert code == 0 and err == ''
    assert 'storage:   mcap' in out
    assert '/obstacle_labels' in out and 'std_msgs/msg/String' in out
    assert '/sensors/scan' in out and 'sensor_msgs/msg/LaserScan' in out


def test_extract_then_train_and_evaluate_on_the_bag_directory(simulated_bag, tmp_path, capsys):
    data_path = tmp_path / 'from_bag.npz'
    code, out, _ = _run(capsys, 'bag', 'extract', simulated_bag, '--output', data_path)
    assert code == 0 and f'wrote {data_path}' in out and 'ticks x 100 features' in out
    extracted = load_dataset(data_path)
    assert extracted.n >= 300 and extracted.c == 8

    model_path = tmp_path / 'model.npz'
    code, out, _ = _run(capsys, 'train', simulated_bag, '--output', model_path, '--epochs', 2,
                        '--quiet')
    assert code == 0 and model_path.exists()
    code, from_bag, _ = _run(capsys, 'evaluate', model_path, simulated_bag, '--json')
    assert code == 0
    code, from_file, _ = _run(capsys, 'evaluate', model_path, data_path, '--json')
    assert code == 0 and from_bag == from_file  # the bag and its extraction are the same data


def test_predict_accepts_an_unlabelled_bag(simulated_bag, tmp_path, capsys):
    model_path = tmp_path / 'model.npz'
    assert _run(capsys, 'train', simulated_bag, '--output', model_path, '--epochs', 1,
                '--quiet')[0] == 0
    # The same bag without its label topic: copied message by message (raw CDR), labels dropped.
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer
    unlabelled = tmp_path / 'unlabelled'
    with Reader(simulated_bag) as reader, \
            Writer(unlabelled, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        kept = {}
        for connection in reader.connections:
            if connection.topic != '/obstacle_labels':
                kept[connection.id] = writer.add_connection(
                    connection.topic, connection.msgtype, msgdef=connection.msgdef.data,
                    rihs01=connection.digest)
        for connection, timestamp, raw in reader.messages():
            if connection.id in kept:
                writer.write(kept[connection.id], timestamp, raw)
    output = tmp_path / 'predictions.npz'
    code, out, _ = _run(capsys, 'predict', model_path, unlabelled, '--output', output)
    assert code == 0 and 'predictions over 8 classes' in out
    assert np.load(output)['probabilities'].shape[1] == 8

    # Every row carries its tick's bag time (the stamp the node gives the same tick), so the
    # predictions can be lined up with the node's output and with the extraction.
    extraction = extract_bag(unlabelled, require_labels=False, ignore_labels=True)
    predictions = np.load(output)
    assert np.array_equal(predictions['stamps_ns'], extraction.stamps_ns)
    code, out, _ = _run(capsys, 'predict', model_path, unlabelled)
    first = out.splitlines()[0].split('\t')
    assert code == 0 and int(first[0]) == extraction.stamps_ns[0] and len(first) == 3
    as_csv = tmp_path / 'predictions.csv'
    assert _run(capsys, 'predict', model_path, unlabelled, '--output', as_csv)[0] == 0
    header, row = as_csv.read_text().splitlines()[:2]
    assert header.startswith('stamp_ns,prob:') and row.split(',')[0] == first[0]
    extracted = tmp_path / 'extracted.npz'
    assert _run(capsys, 'bag', 'extract', unlabelled, '--output', extracted,
                '--allow-unlabelled')[0] == 0
    assert np.array_equal(np.load(extracted)['stamps_ns'], extraction.stamps_ns)
    assert load_dataset(extracted, require_labels=False).n == len(extraction.stamps_ns)

    code, _, err = _run(capsys, 'train', unlabelled, '--output', tmp_path / 'm2.npz')
    assert code == 2 and 'no label topic /obstacle_labels' in err and 'Traceback' not in err
    code, _, err = _run(capsys, 'bag', 'extract', unlabelled, '--output', tmp_path / 'x.npz')
    assert code == 2 and 'no label topic' in err
    code, out, _ = _run(capsys, 'bag', 'extract', unlabelled, '--output', tmp_path / 'x.npz',
                        '--allow-unlabelled')
    assert code == 0 and load_dataset(tmp_path / 'x.npz', require_labels=False).c == 0


@pytest.mark.parametrize('damage, expected', [
    ('metadata', 'missing metadata.yaml'),
    ('truncate', 'cannot open bag'),
])
@pytest.mark.parametrize('command', ['info', 'extract', 'train'])
def test_damaged_bags_are_named_errors_not_tracebacks(simulated_bag, tmp_path, capsys, damage,
                                                      expected, command):
    broken = shutil.copytree(simulated_bag, tmp_path / 'broken')
    if damage == 'metadata':
        (broken / 'metadata.yaml').unlink()
    else:
        (storage_file,) = broken.glob('*.mcap')
        storage_file.write_bytes(storage_file.read_bytes()[:5000])
    argv = {'info': ['bag', 'info', broken],
            'extract': ['bag', 'extract', broken, '--output', tmp_path / 'x.npz'],
            'train': ['train', broken, '--output', tmp_path / 'm.npz']}[command]
    code, _, err = _run(capsys, *argv)
    if command == 'info' and damage == 'truncate':
        assert code == 0, err  # info reads metadata.yaml alone: the storage is not opened
        return
    assert code == 2
    assert str(broken) in err and expected in err and 'Traceback' not in err


def test_simulate_needs_exactly_one_of_output_and_bag(tmp_path, capsys):
    code, _, err = _run(capsys, 'simulate', '--ticks', 10)
    assert code == 2 and 'exactly one of --output' in err
    code, _, err = _run(capsys, 'simulate', '--ticks', 10, '--output', tmp_path / 'a.npz',
                        '--bag', tmp_path / 'bag')
    assert code == 2 and 'exactly one of --output' in err


@pytest.mark.parametrize('options', [['--duration', '5'], ['--storage', 'mcap']])
def test_simulate_refuses_bag_options_with_a_data_file(tmp_path, capsys, options):
    code, _, err = _run(capsys, 'simulate', '--ticks', 10, '--output', tmp_path / 'a.npz',
                        *options)
    assert code == 2 and f'{options[0]}: for --bag only' in err
    assert not (tmp_path / 'a.npz').exists()


def test_simulate_bag_refuses_an_existing_directory(tmp_path, capsys):
    code, _, err = _run(capsys, 'simulate', '--ticks', 10, '--bag', tmp_path)
    assert code == 2 and 'already exists' in err


def test_bag_errors_name_the_bag_subcommand(tmp_path, capsys):
    code, _, err = _run(capsys, 'bag', 'extract', tmp_path / 'absent', '--output',
                        tmp_path / 'x.npz')
    assert code == 2 and err.startswith('obstacle-classifier bag extract: error: ')
    code, _, err = _run(capsys, 'bag', 'info', tmp_path / 'absent')
    assert code == 2 and err.startswith('obstacle-classifier bag info: error: ')


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
@pytest.mark.parametrize('failure', ['disk_full', 'interrupted'])
def test_simulate_bag_that_fails_midway_leaves_no_directory_behind(tmp_path, capsys,
                                                                   monkeypatch, storage,
                                                                   failure):
    # A full disk gave a sqlite3 traceback and left a bag without metadata.yaml, which made the
    # same command fail again with 'already exists'.
    import sqlite3

    from rosbags.rosbag2 import Writer
    write, calls = Writer.write, []

    def failing_write(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 200:
            raise (sqlite3.OperationalError('database or disk is full') if failure == 'disk_full'
                   else KeyboardInterrupt())
        return write(self, *args, **kwargs)
    monkeypatch.setattr(Writer, 'write', failing_write)
    bag = tmp_path / 'bag'
    code, _, err = _run(capsys, 'simulate', '--ticks', 100, '--bag', bag, '--storage', storage)
    if failure == 'disk_full':
        assert code == 2 and 'database or disk is full' in err and 'Traceback' not in err
    else:
        assert code == 130 and 'interrupted' in err
    assert not bag.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Writer, 'write', write)
    assert _run(capsys, 'simulate', '--ticks', 100, '--bag', bag, '--storage', storage)[0] == 0


def test_simulate_bag_never_removes_a_bag_another_run_made_meanwhile(tmp_path, capsys,
                                                                     monkeypatch):
    # Two runs on one name: the loser's cleanup removed the winner's bag as it was written.
    from obstacle_classifier import bags
    bag = tmp_path / 'bag'
    checked = bags.new_bag_directory

    def then_another_run_starts(path, storage):
        result = checked(path, storage)
        bag.mkdir()
        (bag / 'metadata.yaml').write_text('the other run')
        return result
    monkeypatch.setattr(bags, 'new_bag_directory', then_another_run_starts)
    code, _, err = _run(capsys, 'simulate', '--ticks', 100, '--bag', bag)
    assert code == 2 and 'exists already' in err and 'Traceback' not in err
    assert (bag / 'metadata.yaml').read_text() == 'the other run'


@pytest.mark.parametrize('argv', [['bag', '--help'], ['bag', 'info', '--help'],
                                  ['bag', 'extract', '--help']])
def test_bag_commands_have_help_with_examples(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert 'obstacle-classifier bag ' in capsys.readouterr().out.split('example')[-1]


def test_the_commands_read_a_bag_with_the_feature_config_the_node_runs(simulated_bag, tmp_path,
                                                                       capsys):
    # Another window on one input: the feature names are the same, the features are not.
    from obstacle_classifier.paths import config_path
    custom = tmp_path / 'features.yaml'
    text = Path(config_path('features.yaml')).read_text()
    assert '    window_s: 0.5 ' in text
    custom.write_text(text.replace('    window_s: 0.5 ', '    window_s: 1.5 ', 1))
    model = config_path('default_model.npz')
    extracted = tmp_path / 'extracted.npz'
    assert _run(capsys, 'bag', 'extract', simulated_bag, '--output', extracted,
                '--config', custom)[0] == 0
    outputs = {}
    for name, argv in (('bag', [simulated_bag, '--config', custom]), ('file', [extracted]),
                       ('default', [simulated_bag])):
        outputs[name] = tmp_path / f'{name}.npz'
        code, _, err = _run(capsys, 'predict', model, *argv, '--output', outputs[name])
        assert code == 0, err
    bag, file, default = (np.load(outputs[name]) for name in ('bag', 'file', 'default'))
    assert np.array_equal(bag['probabilities'], file['probabilities'])
    assert np.array_equal(bag['stamps_ns'], np.load(extracted)['stamps_ns'])
    common = np.isin(default['stamps_ns'], bag['stamps_ns'])
    assert not np.array_equal(default['probabilities'][common], bag['probabilities'])
    code, out, _ = _run(capsys, 'evaluate', model, simulated_bag, '--config', custom, '--json')
    assert code == 0 and json.loads(out)['micro']['f1'] >= 0


def test_commands_on_a_bag_warn_of_windows_a_low_max_rate_truncated(simulated_bag, tmp_path,
                                                                    capsys):
    # A feature config whose max_rate_hz is below the recorded rate: the features differ from
    # the node's at every tick, which only the pipeline's counters knew.
    from obstacle_classifier.paths import config_path
    custom = tmp_path / 'features.yaml'
    text = Path(config_path('features.yaml')).read_text()
    custom.write_text(text.replace('max_rate_hz: 250', 'max_rate_hz: 2'))
    model = config_path('default_model.npz')
    code, out, err = _run(capsys, 'bag', 'extract', simulated_bag, '--output',
                          tmp_path / 'x.npz', '--config', custom)
    assert code == 0 and 'warning: features from truncated windows' in out
    code, _, err = _run(capsys, 'evaluate', model, simulated_bag, '--config', custom)
    assert code == 0 and 'evaluate: warning: ' in err and 'truncated windows' in err
    code, _, err = _run(capsys, 'evaluate', model, simulated_bag)
    assert code == 0 and 'warning' not in err
