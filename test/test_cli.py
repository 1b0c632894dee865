"""The obstacle-classifier command line end to end on small files; errors without tracebacks."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from obstacle_classifier.cli import main
from obstacle_classifier.datasets import Dataset, load_dataset, save_dataset
from obstacle_classifier.model import ObstacleModel

FEATURES = tuple(f'sensor{i}.mean' for i in range(6))
CLASSES = ('pedestrian', 'pole', 'dog')


def _write_data(path, n=1200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    Y = np.column_stack([X[:, 0] + X[:, 1] > 0.5, X[:, 2] * X[:, 3] > 0.3,
                         np.abs(X[:, 4]) > 1.2]).astype(np.uint8)
    save_dataset(path, Dataset(X=X, Y=Y, feature_names=FEATURES, class_names=CLASSES))
    return path


@pytest.fixture
def files(tmp_path):
    return {'train': _write_data(tmp_path / 'train.npz', seed=0),
            'test': _write_data(tmp_path / 'test.csv', n=400, seed=1),
            'dir': tmp_path}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_evaluate_tune_predict(files, capsys):
    model_path = files['dir'] / 'model.npz'
    code, out, _ = _run(capsys, 'train', files['train'], '--output', model_path, '--epochs', 15,
                        '--quiet', '--plot', files['dir'] / 'curves.png')
    assert code == 0 and 'validation' in out and model_path.exists()
    assert (files['dir'] / 'curves.png').read_bytes()[:4] == b'\x89PNG'
    model = ObstacleModel.load(model_path)
    assert model.feature_names == FEATURES and model.class_names == CLASSES

    code, out, _ = _run(capsys, 'evaluate', model_path, files['test'], '--json')
    report = json.loads(out)
    assert code == 0 and report['micro']['f1'] > 0.7 and report['n_samples'] == 400

    code, out, _ = _run(capsys, 'tune-thresholds', model_path, files['train'],
                        '--output', files['dir'] / 'tuned.npz')
    tuned = ObstacleModel.load(files['dir'] / 'tuned.npz')
    assert code == 0 and not np.array_equal(tuned.thresholds, model.thresholds)
    assert 'micro F1' in out

    code, out, _ = _run(capsys, 'predict', model_path, files['test'], '--output',
                        files['dir'] / 'pred.csv')
    lines = (files['dir'] / 'pred.csv').read_text().splitlines()
    assert code == 0 and len(lines) == 401
    assert lines[0].split(',')[:3] == ['prob:pedestrian', 'prob:pole', 'prob:dog']
    code, out, _ = _run(capsys, 'predict', model_path, files['test'], '--output',
                        files['dir'] / 'pred.npz')
    with np.load(files['dir'] / 'pred.npz') as saved:
        assert saved['probabilities'].shape == (400, 3) and saved['labels'].dtype == np.uint8
        expected = model.predict_proba(load_dataset(files['test']).X)
        assert np.array_equal(saved['probabilities'], expected)


def test_train_warns_about_features_constant_in_the_training_data(tmp_path, capsys):
    data = load_dataset(_write_data(tmp_path / 'train.npz', n=300))
    X = data.X.copy()
    X[:, 2] = 0.0
    path = tmp_path / 'constant.npz'
    save_dataset(path, Dataset(X=X, Y=data.Y, feature_names=FEATURES, class_names=CLASSES))
    code, _, err = _run(capsys, 'train', path, '--output', tmp_path / 'm.npz', '--epochs', 1,
                        '--quiet')
    assert code == 0
    assert 'warning: features constant in the training data' in err and 'sensor2.mean' in err
    assert ObstacleModel.load(tmp_path / 'm.npz').metadata['constant_features'] == [
        'sensor2.mean']
    code, _, err = _run(capsys, 'train', tmp_path / 'train.npz', '--output', tmp_path / 'm.npz',
                        '--epochs', 1, '--quiet')
    assert code == 0 and 'warning' not in err


def test_a_class_absent_from_the_tuning_data_keeps_its_threshold(files, capsys):
    model_path, tuned = files['dir'] / 'model.npz', files['dir'] / 'tuned.npz'
    _run(capsys, 'train', files['train'], '--output', model_path, '--epochs', 3, '--quiet')
    model = ObstacleModel.load(model_path)
    model.thresholds = np.array([0.3, 0.62, 0.45])  # as an earlier tuning left them
    model.save(model_path)
    data = load_dataset(files['test'])
    no_dogs = files['dir'] / 'no_dogs.npz'
    Y = data.Y.copy()
    Y[:, 2] = 0
    save_dataset(no_dogs, Dataset(X=data.X, Y=Y, feature_names=FEATURES, class_names=CLASSES))
    code, out, _ = _run(capsys, 'tune-thresholds', model_path, no_dogs, '--output', tuned)
    assert code == 0
    assert ObstacleModel.load(tuned).thresholds[2] == 0.45
    dog_line = next(line for line in out.splitlines() if line.strip().startswith('dog'))
    assert 'kept' in dog_line and 'F1' not in dog_line
    # train --tune-thresholds: a class absent from validation keeps the new model's 0.5
    code, out, _ = _run(capsys, 'train', files['train'], '--output', tuned, '--epochs', 3,
                        '--quiet', '--validation', no_dogs, '--tune-thresholds')
    assert code == 0 and ObstacleModel.load(tuned).thresholds[2] == 0.5
    assert ObstacleModel.load(tuned).metadata['thresholds_tuned_on'] == str(no_dogs)
    assert 'the thresholds were tuned on them: optimistic' in out


def test_train_with_an_overflowing_weight_decay_writes_a_loadable_model(files, capsys):
    model_path = files['dir'] / 'model.npz'
    code, _, err = _run(capsys, 'train', files['train'], '--output', model_path, '--epochs', 2,
                        '--quiet', '--weight-decay', '1e308')
    assert code == 0 and 'training steps were discarded' in err and '--weight-decay' in err
    model = ObstacleModel.load(model_path)
    assert all(np.isfinite(p).all() for p in model.network.parameters())
    assert _run(capsys, 'evaluate', model_path, files['test'])[0] == 0


def test_a_huge_learning_rate_and_an_overflowing_model_warn_in_words_not_numpy_warnings(
        files, capsys):
    # --lr 1e300 leaves enormous finite weights: validation overflowed with a RuntimeWarning
    # (an error under -W error, as this suite runs). A model whose logits are inf - inf
    # answers NaN for those rows: evaluate says so.
    model_path = files['dir'] / 'model.npz'
    code, _, err = _run(capsys, 'train', files['train'], '--output', model_path, '--epochs', 2,
                        '--quiet', '--lr', '1e300')
    assert code == 0 and 'RuntimeWarning' not in err
    model = ObstacleModel.load(model_path)
    first, second = model.network.linears[:2]
    first.W[...] = 1e308
    second.W[...] = np.where(np.arange(second.W.size).reshape(second.W.shape) % 2, 1.0, -1.0)
    model.save(model_path)
    code, out, err = _run(capsys, 'evaluate', model_path, files['test'])
    assert code == 0 and 'gives no answer (NaN) for' in err and 'of 400 rows' in err


def test_mlp_scores_clearly_above_the_linear_baseline(files, capsys):
    scores = {}
    for architecture in ('mlp', 'linear'):
        path = files['dir'] / f'{architecture}.npz'
        assert _run(capsys, 'train', files['train'], '--output', path, '--epochs', 25,
                    '--architecture', architecture, '--quiet', '--lr', '0.003')[0] == 0
        scores[architecture] = json.loads(_run(capsys, 'evaluate', path, files['test'],
                                               '--json')[1])['macro']['f1']
    assert scores['mlp'] > scores['linear'] + 0.1


def test_brief_regime_flag_equals_the_explicit_flags(files, capsys):
    brief = files['dir'] / 'brief.npz'
    explicit = files['dir'] / 'explicit.npz'
    assert _run(capsys, 'train', files['train'], '--output', brief, '--brief-regime',
                '--quiet')[0] == 0
    assert _run(capsys, 'train', files['train'], '--output', explicit, '--optimizer', 'sgd',
                '--lr', '0.1', '--epochs', '10', '--batch-size', '100', '--no-shuffle',
                '--val-fraction', '0', '--no-normalise', '--loss', 'brief', '--patience', '0',
                '--quiet')[0] == 0
    a, b = ObstacleModel.load(brief), ObstacleModel.load(explicit)
    pairs = zip(a.network.parameters(), b.network.parameters())
    assert all(np.array_equal(p, q) for p, q in pairs)
    # An option the regime sets was ignored without a word, even one equal to the default.
    for options, named in ((['--optimizer', 'adam'], '--optimizer'),
                           (['--hidden', '32', '--no-shuffle'], '--hidden, --no-shuffle')):
        code, _, err = _run(capsys, 'train', files['train'], '--output', brief,
                            '--brief-regime', '--quiet', *options)
        assert code == 2 and f'--brief-regime sets {named} itself' in err


def test_same_seed_gives_identical_model_bytes(files, capsys):
    for name in ('a.npz', 'b.npz'):
        assert _run(capsys, 'train', files['train'], '--output', files['dir'] / name,
                    '--epochs', 3, '--seed', 4, '--quiet')[0] == 0
    assert (files['dir'] / 'a.npz').read_bytes() == (files['dir'] / 'b.npz').read_bytes()


def test_simulate_writes_a_dataset_the_trainer_accepts(tmp_path, capsys):
    path = tmp_path / 'sim.npz'
    code, out, _ = _run(capsys, 'simulate', '--ticks', 400, '--seed', 3, '--output', path,
                        '--quiet')
    assert code == 0 and 'class presence' in out
    data = load_dataset(path)
    assert data.n == 400 and data.c == 8 and np.all(np.isfinite(data.X))


@pytest.mark.parametrize('argv,message', [
    (['train', '{dir}/missing.npz', '--output', '{dir}/m.npz'], 'file not found'),
    (['train', '{train}', '--output', '{dir}/m.txt'], 'must end in .npz'),
    (['train', '{train}', '--output', '{dir}/nodir/m.npz'], 'does not exist'),
    (['evaluate', '{train}', '{train}'], 'not an obstacle_classifier model'),
    (['evaluate', '{dir}/missing.npz', '{train}'], 'no such model file'),
    (['train', '{train}', '--output', '{dir}/m.npz', '--val-fraction', '0',
      '--tune-thresholds', '--epochs', '1', '--quiet'], 'needs validation data'),
])
def test_user_errors_exit_2_with_a_message_not_a_traceback(files, capsys, argv, message):
    argv = [a.format(dir=files['dir'], train=files['train']) for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and message in err and 'Traceback' not in err


@pytest.mark.parametrize('options,message', [
    (['--val-fraction', '0', '--tune-thresholds'], 'needs validation data'),
    (['--brief-regime', '--tune-thresholds'], 'needs validation data'),
    (['--plot', '{dir}/nodir/curves.png'], 'does not exist'),
    (['--plot', '{dir}/curves.txt'], 'must end in .png or .svg or .pdf'),
    (['--lr', '1', '--loss', 'brief', '--pos-weight', 'balanced'], 'positive class weights'),
])
def test_train_checks_its_options_before_loading_data(files, capsys, options, message):
    # The data file does not exist: an option error must come before it is read (and before
    # minutes of training), and no model file is written.
    model_path = files['dir'] / 'm.npz'
    options = [option.format(dir=files['dir']) for option in options]
    code, _, err = _run(capsys, 'train', files['dir'] / 'missing.npz', '--output', model_path,
                        '--quiet', *options)
    assert code == 2 and message in err and 'Traceback' not in err
    short = [] if '--brief-regime' in options else ['--epochs', 1]  # (the regime sets it)
    code, _, err = _run(capsys, 'train', files['train'], '--output', model_path, '--quiet',
                        *short, *options)
    assert code == 2 and message in err and not model_path.exists()


def test_out_of_memory_exits_2_naming_the_size_options(files, capsys, monkeypatch):
    from obstacle_classifier import training

    def too_big(*args, **kwargs):
        raise MemoryError('Unable to allocate 7.28 TiB for an array with shape '
                          '(1000000, 1000000) and data type float64')

    monkeypatch.setattr(training, 'train_model', too_big)
    code, _, err = _run(capsys, 'train', files['train'], '--output', files['dir'] / 'm.npz',
                        '--hidden', 1000000, '--quiet')
    assert code == 2 and 'Traceback' not in err
    assert 'not enough memory (Unable to allocate 7.28 TiB' in err and '--hidden' in err
    assert not (files['dir'] / 'm.npz').exists()


def test_predict_into_a_closed_pipe_stops_quietly(files, capsys, repo_root):
    # `predict model.npz data | head -1`: the reader leaves after one line.
    model_path = files['dir'] / 'model.npz'
    _run(capsys, 'train', files['train'], '--output', model_path, '--epochs', 1, '--quiet')
    many = _write_data(files['dir'] / 'many.npz', n=20000)  # ~600 kB of output, > a pipe
    process = subprocess.Popen(
        [sys.executable, '-m', 'obstacle_classifier.cli', 'predict', model_path, many],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, 'PYTHONPATH': str(repo_root)})
    assert process.stdout.readline()
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert err == ''
    process.stderr.close()


@pytest.mark.parametrize('command', [['train', '{train}', '--output', '{dir}/m.npz'],
                                     ['simulate', '--output', '{dir}/s.npz']])
@pytest.mark.parametrize('seed', ['-1', 'x'])
def test_a_bad_seed_is_refused_naming_the_option(files, capsys, command, seed):
    argv = [a.format(dir=files['dir'], train=files['train']) for a in command]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ['--seed', seed, '--quiet'])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert 'argument --seed: expected an integer >= 0' in err and 'Traceback' not in err


def test_model_and_data_width_mismatch_is_named(files, capsys):
    model_path = files['dir'] / 'model.npz'
    _run(capsys, 'train', files['train'], '--output', model_path, '--epochs', 1, '--quiet')
    other = files['dir'] / 'other.npz'
    rng = np.random.default_rng(0)
    save_dataset(other, Dataset(X=rng.standard_normal((10, 5)), Y=np.zeros((10, 3), np.uint8),
                                feature_names=FEATURES[:5], class_names=CLASSES))
    code, _, err = _run(capsys, 'evaluate', model_path, other)
    assert code == 2 and 'expected 6 features, got 5' in err and str(other) in err


@pytest.mark.parametrize('command', ['simulate', 'train', 'evaluate', 'tune-thresholds',
                                     'predict', 'flops'])
def test_every_subcommand_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, '--help'])
    assert exit_info.value.code == 0
    assert 'obstacle-classifier ' + command in capsys.readouterr().out.split('example')[-1]


@pytest.mark.parametrize('command', ['train', 'predict', 'tune-thresholds', 'evaluate-plot'])
@pytest.mark.parametrize('alias', ['same', 'symlink', 'hardlink'])
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(files, capsys, command, alias):
    # `predict model.npz data.npz --output model.npz` replaced the model with predictions, exit 0.
    model_path = files['dir'] / 'model.npz'
    assert _run(capsys, 'train', files['train'], '--output', model_path, '--epochs', 1,
                '--quiet')[0] == 0
    victim = {'train': files['train'], 'predict': model_path, 'tune-thresholds': files['train'],
              'evaluate-plot': files['train']}[command]
    if command == 'evaluate-plot':  # a data file named like a plot, to reach the input check
        plot = files['dir'] / 'data.png'
        victim.rename(plot)
        victim = files['train'] = plot
    output = {'same': victim, 'symlink': files['dir'] / f'alias{victim.suffix}',
              'hardlink': files['dir'] / f'alias{victim.suffix}'}[alias]
    if alias == 'symlink':
        output.symlink_to(victim)
    elif alias == 'hardlink':
        os.link(victim, output)
    before = victim.read_bytes()
    argv = {'train': ['train', files['train'], '--output', output, '--quiet', '--epochs', 1],
            'predict': ['predict', model_path, files['test'], '--output', output],
            'tune-thresholds': ['tune-thresholds', model_path, files['train'], '--output', output],
            'evaluate-plot': ['evaluate', model_path, files['train'], '--plot', output]}[command]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and 'would overwrite the input' in err and 'Traceback' not in err
    assert victim.read_bytes() == before


def test_tune_thresholds_rewrites_its_own_model_file_by_default(files, capsys):
    model_path = files['dir'] / 'model.npz'
    _run(capsys, 'train', files['train'], '--output', model_path, '--epochs', 3, '--quiet')
    before = ObstacleModel.load(model_path).thresholds
    code, out, _ = _run(capsys, 'tune-thresholds', model_path, files['train'])
    assert code == 0 and not np.array_equal(ObstacleModel.load(model_path).thresholds, before)


@pytest.mark.parametrize('argv,message', [
    (['evaluate', '{dir}/missing.npz', '{train}', '--plot', '{dir}/noext'], 'must end in .png'),
    (['evaluate', '{dir}/missing.npz', '{train}', '--plot', '{dir}/no/p.png'], 'does not exist'),
    (['predict', '{dir}/missing.npz', '{train}', '--output', '{dir}/p.txt'], 'must end in .npz'),
    (['predict', '{dir}/missing.npz', '{train}', '--output', '{dir}/d.csv'], 'is a directory'),
    # through a symlink: where the write lands is checked
    (['predict', '{dir}/missing.npz', '{train}', '--output', '{dir}/link.csv'],
     'nodir does not exist'),
])
def test_evaluate_and_predict_check_their_outputs_before_any_work(files, capsys, argv, message):
    # The model does not exist: an output error must come first (predict on a bag extracts
    # the whole bag before it writes; evaluate printed its report, then failed on the plot).
    (files['dir'] / 'd.csv').mkdir()
    (files['dir'] / 'link.csv').symlink_to(files['dir'] / 'nodir' / 'p.csv')
    argv = [a.format(dir=files['dir'], train=files['train']) for a in argv]
    code, out, err = _run(capsys, *argv)
    assert code == 2 and message in err and out == ''


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into a read-only mode directory')
def test_a_read_only_output_directory_is_refused_before_training(files, capsys):
    locked = files['dir'] / 'locked'
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, out, err = _run(capsys, 'train', files['train'], '--output', locked / 'm.npz',
                              '--quiet')
    finally:
        locked.chmod(0o755)
    assert code == 2 and 'is not writable' in err and 'trained' not in out


def test_tuned_thresholds_are_stored_as_found_and_report_their_own_f1(files, capsys):
    # A class the model scores around 1e-9: its best threshold was clipped up to 1e-6 when
    # stored, while the F1 printed was the unclipped threshold's.
    model_path, tuned = files['dir'] / 'model.npz', files['dir'] / 'tuned.npz'
    _run(capsys, 'train', files['train'], '--output', model_path, '--epochs', 3, '--quiet')
    model = ObstacleModel.load(model_path)
    model.network.linears[-1].b[0] -= 25.0  # pedestrian probabilities now about 1e-11..1e-9
    model.save(model_path)
    data = load_dataset(files['test'])
    probabilities = model.predict_proba(data.X)
    assert probabilities[:, 0].max() < 1e-6
    code, out, _ = _run(capsys, 'tune-thresholds', model_path, files['test'], '--output', tuned)
    assert code == 0
    thresholds = ObstacleModel.load(tuned).thresholds
    assert 0 < thresholds[0] < 1e-6
    from obstacle_classifier.metrics import best_f1_thresholds, multilabel_report
    best, best_f1 = best_f1_thresholds(data.Y, probabilities)
    assert np.array_equal(thresholds, best)
    report = multilabel_report(data.Y, (probabilities >= thresholds).astype(np.uint8), CLASSES)
    for name, f1 in zip(CLASSES, best_f1):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert report['per_class'][name]['f1'] == pytest.approx(f1)
        assert line.endswith(f'F1 {f1:.3f}')
    assert f'threshold {thresholds[0]:.6g}' in out


def test_train_warns_when_the_validation_loss_is_not_finite(files, capsys):
    data = load_dataset(files['test'])
    X = data.X.copy()
    X[0] = 1.7e308  # finite, yet the logits overflow: every validation loss is NaN
    huge = files['dir'] / 'huge_val.npz'
    save_dataset(huge, Dataset(X=X, Y=data.Y, feature_names=FEATURES, class_names=CLASSES))
    code, _, err = _run(capsys, 'train', files['train'], '--output', files['dir'] / 'm.npz',
                        '--epochs', 3, '--quiet', '--validation', huge, '--architecture',
                        'linear')  # (no rectifier to hide the inf - inf of a hidden layer)
    assert code == 0 and 'the validation loss was not finite in 3 of 3 epochs' in err
