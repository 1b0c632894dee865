"""Model files: bitwise round trip, deterministic bytes, atomic writes and every refusal."""
import io
import warnings
import zipfile

import numpy as np
import pytest

from obstacle_classifier import model as model_module
from obstacle_classifier.model import (MAX_MODEL_BYTES, ModelFileError, ObstacleModel,
                                       name_mismatch)

FEATURES = ('range_front.mean', 'range_front.min', 'speed.last', 'noise.max')
CLASSES = ('pedestrian', 'bicycle', 'pole')


def _model(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    model = ObstacleModel.create(FEATURES, CLASSES, hidden=8, dtype=dtype, rng=seed,
                                 input_mean=rng.standard_normal(4),
                                 input_std=rng.random(4) + 0.5,
                                 metadata={'trained_on': 'unit test', 'seed': seed})
    model.thresholds[:] = [0.3, 0.5, 0.7]
    return model


def _raw_arrays(path):
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _write_raw(path, arrays):
    buffer = io.BytesIO()
    model_module._write_npz(buffer, arrays)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_round_trip_is_bitwise(tmp_path, dtype):
    original = _model(dtype)
    path = tmp_path / 'model.npz'
    original.save(path)
    loaded = ObstacleModel.load(path)
    assert loaded.network.dtype == dtype
    for a, b in zip(original.network.parameters(), loaded.network.parameters()):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert loaded.class_names == CLASSES and loaded.feature_names == FEATURES
    assert np.array_equal(loaded.input_mean, original.input_mean)
    assert np.array_equal(loaded.input_std, original.input_std)
    assert np.array_equal(loaded.thresholds, original.thresholds)
    assert loaded.metadata == original.metadata
    X = np.random.default_rng(1).standard_normal((5, 4))
    assert np.array_equal(loaded.predict_proba(X), original.predict_proba(X))
    assert loaded.version == original.version


def test_numpy_values_in_metadata_are_saved_and_other_objects_refused(tmp_path):
    # A score computed with NumPy is a NumPy scalar; json alone refuses it, at save time.
    model = _model()
    model.metadata.update(best_f1=np.float32(0.5), epochs=np.int64(3), counts=np.arange(2))
    model.save(tmp_path / 'model.npz')
    assert ObstacleModel.load(tmp_path / 'model.npz').metadata == {
        **model.metadata, 'best_f1': 0.5, 'epochs': 3, 'counts': [0, 1]}
    model.metadata['classes'] = {'dog'}
    with pytest.raises(ValueError, match='metadata must be JSON-serialisable: set'):
        model.save(tmp_path / 'other.npz')
    assert not (tmp_path / 'other.npz').exists()


def test_same_model_gives_identical_bytes(tmp_path):
    _model().save(tmp_path / 'a.npz')
    _model().save(tmp_path / 'b.npz')
    assert (tmp_path / 'a.npz').read_bytes() == (tmp_path / 'b.npz').read_bytes()
    assert _model(seed=1).version != _model().version


def test_predict_normalises_and_applies_thresholds():
    model = _model()
    x = np.array([0.5, 0.2, 1.0, 60.0])
    expected = model.network.predict_proba((x - model.input_mean) / model.input_std)
    assert np.array_equal(model.predict_proba(x), expected)
    assert np.array_equal(model.predict(x), (expected >= model.thresholds).astype(np.uint8))
    assert np.array_equal(model.predict(x, threshold=0.0), np.ones(3, dtype=np.uint8))
    with pytest.raises(ValueError, match=r'\(n, 4\).*\(3,\)'):
        model.predict_proba(np.zeros(3))
    with pytest.raises(ValueError, match='NaN or Inf'):
        model.predict_proba(np.array([np.nan, 0, 0, 0]))


def test_normalise_tells_large_finite_features_from_ones_that_overflow():
    # A float32 model: features of 1e37 normalise to finite values whose sum overflows, which
    # was refused as "NaN or Inf" with a RuntimeWarning; one that overflows is named.
    model = _model(np.float32)
    model.input_mean[:] = 0.0
    model.input_std[:] = 1.0
    big = np.full((2, 4), 1e37)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert np.isfinite(model.normalise(big)).all()
        big[1, 2] = 1e39  # beyond float32
        with pytest.raises(ValueError,
                           match=r"row 1, feature 'speed.last' = 1e\+39 overflows float32"):
            model.normalise(big)
        with pytest.raises(ValueError, match=r"feature 'range_front.mean' = nan is not finite"):
            model.normalise(np.array([np.nan, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_predict_one_is_normalise_predict_proba_and_decide_on_one_vector(dtype):
    model = _model(dtype)
    rng = np.random.default_rng(2)
    out = np.empty(3, dtype)
    for k in range(300):
        x = model.input_mean + model.input_std * rng.standard_normal(4) * (1 + k % 7)
        expected = model.predict_proba(x)
        for threshold in (None, 0.5, float(expected[k % 3])):  # the last: a tie, p == limit
            normalised, probabilities, labels = model.predict_one(x, out, threshold)
            assert np.array_equal(normalised, model.normalise(x))
            assert normalised.dtype == dtype
            assert np.array_equal(out, expected)
            assert probabilities == expected.tolist()
            decided = model.decide(expected, threshold)
            assert labels == [name for name, hit in zip(CLASSES, decided) if hit]
    kept, _, _ = model.predict_one(x, out)
    model.predict_one(x + 1, out)
    assert np.array_equal(kept, model.normalise(x))  # a new array each call


def test_predict_one_refuses_bad_features_and_nan_probabilities():
    model = _model()
    out = np.empty(3)
    with pytest.raises(ValueError, match=r'\(4,\).*\(3,\)'):
        model.predict_one(np.zeros(3), out)
    model.input_std[0] = 0.5  # so that the largest float overflows when normalised
    for bad in (np.nan, np.inf, -np.inf, np.finfo(np.float64).max):
        with pytest.raises(ValueError, match='NaN or Inf'), np.errstate(over='ignore'):
            model.predict_one(np.array([bad, 0.0, 0.0, 0.0]), out)
    assert model.predict_one([0.5, 0.2, 1.0, 60.0], out)[1] == \
        model.predict_proba(np.array([0.5, 0.2, 1.0, 60.0])).tolist()  # a list is converted
    hidden, last = model.network.layers[2], model.network.layers[4]
    hidden.W[:] = 0.0  # every unit of the second hidden layer at 2 * 10, whatever the input
    hidden.b[:] = 10.0
    last.W[0::2] = np.inf  # then +inf and -inf terms meet in every logit: NaN
    last.W[1::2] = -np.inf
    with pytest.raises(FloatingPointError, match='NaN'), \
            np.errstate(over='ignore', invalid='ignore'):
        model.predict_one(np.ones(4) * 3, out)


def test_feature_name_check_names_the_difference():
    model = _model()
    model.check_features(FEATURES)
    with pytest.raises(ValueError, match=r"missing features: 'noise.max'.*unexpected features: "
                                         r"'lidar.min'"):
        model.check_features(FEATURES[:3] + ('lidar.min',))
    with pytest.raises(ValueError, match="features reordered: position 0 is 'noise.max'"):
        model.check_features(FEATURES[::-1])
    assert name_mismatch(['a'], ['a'], 'class') is None


def test_save_is_atomic_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'model.npz'
    _model().save(path)
    before = path.read_bytes()

    def crash(fileobj, arrays):
        fileobj.write(b'PK\x03\x04 half a file')
        raise OSError('disk full')

    monkeypatch.setattr(model_module, '_write_npz', crash)
    with pytest.raises(OSError, match='disk full'):
        _model(seed=3).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ['model.npz']
    ObstacleModel.load(path)


@pytest.mark.parametrize('value', [np.nan, np.inf])
def test_save_refuses_non_finite_weights_and_keeps_the_file(tmp_path, value):
    # load refuses such a file, so save must not write one (over a good model)
    path = tmp_path / 'model.npz'
    _model().save(path)
    before = path.read_bytes()
    broken = _model(seed=3)
    broken.network.layers[2].W[1, 2] = value
    with pytest.raises(ValueError, match=r'layers\.2\.W contains NaN or Inf'):
        broken.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ['model.npz']


def test_refuses_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelFileError, match='no such model file'):
        ObstacleModel.load(tmp_path / 'absent.npz')
    with pytest.raises(ModelFileError, match='is a directory'):
        ObstacleModel.load(tmp_path)


def test_refuses_a_fifo_and_a_huge_file_without_reading_them(tmp_path):
    import os
    # Opening a FIFO for reading waits for a writer: the node's executor would hang.
    fifo = tmp_path / 'model.npz'
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match='not a regular file'):
        ObstacleModel.load(fifo)
    # A sparse file of more than 1 GiB: refused from its size, not read into memory.
    huge = tmp_path / 'huge.npz'
    with open(huge, 'wb') as stream:
        stream.write(b'PK\x03\x04')
        stream.truncate(MAX_MODEL_BYTES + 1)
    with pytest.raises(ModelFileError, match=f'{MAX_MODEL_BYTES + 1} bytes, more than any'):
        ObstacleModel.load(huge)
    garbage = tmp_path / 'garbage.npz'
    with open(garbage, 'wb') as stream:
        stream.truncate(MAX_MODEL_BYTES + 1)
    with pytest.raises(ModelFileError, match='no zip signature'):
        ObstacleModel.load(garbage)


def test_refuses_pickled_file(tmp_path):
    path = tmp_path / 'pickled.npz'
    np.savez(path, format=np.array('obstacle_classifier.model'),
             payload=np.array([{'evil': 1}], dtype=object))
    with pytest.raises(ModelFileError, match='pickled objects'):
        ObstacleModel.load(path)


@pytest.mark.parametrize('keep_fraction', [0.0, 0.1, 0.5, 0.99])
def test_refuses_truncated_file(tmp_path, keep_fraction):
    path = tmp_path / 'model.npz'
    _model().save(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep_fraction)])
    with pytest.raises(ModelFileError, match=str(path)):
        ObstacleModel.load(path)


@pytest.mark.parametrize('offset, value, error', [
    (6, b'\xff\x00', 'NotImplementedError: zip file version'),  # version needed: 25.5
    (8, b'\x01\x00', 'RuntimeError'),  # general-purpose flags: encrypted
])
def test_refuses_a_damaged_zip_directory(tmp_path, offset, value, error):
    # One bad byte in the zip directory: zipfile raises neither OSError nor ValueError.
    path = tmp_path / 'model.npz'
    _model().save(path)
    data = path.read_bytes()
    entry = data.index(b'PK\x01\x02') + offset  # the first central-directory entry
    path.write_bytes(data[:entry] + value + data[entry + len(value):])
    with pytest.raises(ModelFileError, match=f'corrupt model file \\({error}'):
        ObstacleModel.load(path)


def test_refuses_a_single_array_npy_file(tmp_path):
    path = tmp_path / 'weights.npy'
    np.save(path, np.zeros((4, 8)))
    with pytest.raises(ModelFileError, match='single-array .npy file'):
        ObstacleModel.load(path)


def test_refuses_a_flipped_byte_anywhere_in_the_weights(tmp_path):
    path = tmp_path / 'model.npz'
    _model().save(path)
    arrays = _raw_arrays(path)
    arrays['layers.2.W'] = arrays['layers.2.W'].copy()
    arrays['layers.2.W'][0, 0] += 1e-9
    _write_raw(path, arrays)
    with pytest.raises(ModelFileError, match='checksum mismatch'):
        ObstacleModel.load(path)


def test_refuses_a_file_without_checksum_or_of_another_format(tmp_path):
    path = tmp_path / 'model.npz'
    _model().save(path)
    arrays = _raw_arrays(path)
    del arrays['checksum']
    _write_raw(path, arrays)
    with pytest.raises(ModelFileError, match='no checksum'):
        ObstacleModel.load(path)
    np.savez(path, X=np.zeros((2, 2)))
    with pytest.raises(ModelFileError, match='not an obstacle_classifier model'):
        ObstacleModel.load(path)


def _rewrite_consistently(path, edit):
    """Apply ``edit`` to the arrays and re-sign them, so only the semantic check can object."""
    arrays = _raw_arrays(path)
    edit(arrays)
    arrays['checksum'] = np.array(ObstacleModel._checksum(arrays))
    _write_raw(path, arrays)


@pytest.mark.parametrize('edit,message', [
    (lambda a: a.__setitem__('layers.2.W', np.zeros((8, 9))), r'layers.2.W has shape \(8, 9\)'),
    (lambda a: a.__setitem__('layers.0.b', np.zeros(8, np.float32)), 'dtype float32'),
    (lambda a: a.__setitem__('layers.4.W', np.full((8, 3), np.nan)), 'NaN or Inf'),
    (lambda a: a.__setitem__('format_version', np.array(99)), 'format version 99'),
    (lambda a: a.__setitem__('class_names', np.array(['a', 'b'])), '2 class names'),
    (lambda a: a.__setitem__('class_names', np.array(['a', 'b,c', 'd'])), 'contains a comma'),
    (lambda a: a.__setitem__('input_std', np.zeros(4)), 'positive std'),
    (lambda a: a.__setitem__('thresholds', np.array([0.5, 1.5, 0.5])), r'thresholds must lie'),
    (lambda a: a.pop('layers.4.b'), 'layers.4.b'),
])
def test_refuses_arrays_that_do_not_match_the_architecture(tmp_path, edit, message):
    path = tmp_path / 'model.npz'
    _model().save(path)
    _rewrite_consistently(path, edit)
    with pytest.raises(ModelFileError, match=message):
        ObstacleModel.load(path)


def test_written_file_is_a_plain_npz(tmp_path):
    path = tmp_path / 'model.npz'
    _model().save(path)
    with zipfile.ZipFile(path) as archive:
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in archive.infolist())
    assert set(_raw_arrays(path)) >= {'architecture', 'feature_names', 'class_names',
                                      'input_mean', 'input_std', 'format_version', 'checksum'}


def test_linear_baseline_round_trips(tmp_path):
    model = ObstacleModel.create(FEATURES, CLASSES, architecture='linear', rng=0)
    assert [repr(layer) for layer in model.network.layers] == ['Linear(4, 3)', 'Sigmoid(3)']
    model.save(tmp_path / 'linear.npz')
    loaded = ObstacleModel.load(tmp_path / 'linear.npz')
    assert loaded.network.kind == 'linear'
    X = np.ones((2, 4))
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))
    with pytest.raises(ValueError, match='unsupported architecture'):
        ObstacleModel.create(FEATURES, CLASSES, architecture='transformer')
