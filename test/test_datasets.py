"""Data files: NPZ/CSV round trips, every bad-file case, compatibility checks, saving."""
import os
import pickle
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from obstacle_classifier import datasets
from obstacle_classifier.datasets import (Dataset, DatasetError, check_compatible, load_dataset,
                                          save_dataset)

FEATURES = ('range_front.mean', 'range_left.min', 'speed.last', 'imu_z.std')
CLASSES = ('pedestrian', 'bicycle', 'dog')

# Values that a decimal round trip gets wrong unless it is exact: subnormals, extremes, -0.0,
# and numbers with no short decimal form.
AWKWARD = np.array([5e-324, -2.2250738585072014e-308, 1.7976931348623157e308, -0.0, 0.1,
                    1 / 3, np.pi, -1e-7, 123456789.123456789, 2.0**-40, 1e22, 9007199254740993.0])


TINY32, MAX32 = np.finfo(np.float32).smallest_subnormal, np.finfo(np.float32).max
AWKWARD_32 = np.array([TINY32, -MAX32, -0.0, 0.1, 1 / 3, np.pi, 16777217.0,
                       np.finfo(np.float32).tiny], dtype=np.float32)


def make_dataset(n=12, dtype=np.float64, seed=0, source='<memory>'):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, len(FEATURES))).astype(dtype)
    awkward = AWKWARD if dtype == np.float64 else AWKWARD_32
    X[:2] = awkward[:2 * len(FEATURES)].reshape(2, len(FEATURES))
    Y = (rng.random((n, len(CLASSES))) < 0.4).astype(np.uint8)
    return Dataset(X, Y, FEATURES, CLASSES, source=source)


def assert_bitwise_equal(loaded, original):
    assert loaded.X.dtype == original.X.dtype
    assert loaded.X.shape == original.X.shape
    assert loaded.X.tobytes() == original.X.tobytes()
    assert loaded.Y.dtype == np.uint8
    np.testing.assert_array_equal(loaded.Y, original.Y)
    assert loaded.feature_names == original.feature_names
    assert loaded.class_names == original.class_names


def write_text(path, text, encoding='utf-8'):
    path.write_text(text, encoding=encoding)
    return path


def expect_error(path, *fragments, **load_kwargs):
    """Load ``path``, expect DatasetError naming the file and containing every fragment."""
    with pytest.raises(DatasetError) as caught:
        load_dataset(path, **load_kwargs)
    message = str(caught.value)
    assert message.startswith(f'{path}: '), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def write_npz(path, **arrays_to_write):
    np.savez(path, **arrays_to_write)
    return path


def valid_npz_arrays():
    ds = make_dataset(n=5)
    return {'X': ds.X, 'Y': ds.Y, 'feature_names': np.array(FEATURES),
            'class_names': np.array(CLASSES)}


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('suffix', ['.npz', '.csv'])
@pytest.mark.parametrize('dtype', [np.float64, np.float32])
def test_round_trip_is_bitwise(tmp_path, suffix, dtype):
    original = make_dataset(n=30, dtype=dtype)
    path = tmp_path / f'data{suffix}'
    save_dataset(path, original)
    loaded = load_dataset(path, dtype=dtype)
    assert_bitwise_equal(loaded, original)
    assert loaded.source == str(path)


def test_float32_csv_reads_back_exactly_as_float64(tmp_path):
    # A float32 value is written as its exact float64 widening, so either dtype reads it exactly.
    original = make_dataset(dtype=np.float32)
    save_dataset(tmp_path / 'data.csv', original)
    loaded = load_dataset(tmp_path / 'data.csv', dtype=np.float64)
    np.testing.assert_array_equal(loaded.X, original.X.astype(np.float64))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 4)),
              elements=st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)))
def test_csv_round_trip_property(tmp_path_factory, X):
    path = tmp_path_factory.mktemp('prop') / 'data.csv'
    Y = (np.arange(X.shape[0] * 2).reshape(-1, 2) % 3 == 0).astype(np.uint8)
    original = Dataset(X, Y, [f'f{j}' for j in range(X.shape[1])], ['a', 'b'])
    save_dataset(path, original)
    assert_bitwise_equal(load_dataset(path), original)


def test_csv_label_columns_by_explicit_list(tmp_path):
    # Labels interleaved with features, named without any prefix.
    path = write_text(tmp_path / 'mixed.csv',
                      'speed,pedestrian,range,dog\n'
                      '1.5,1,0.25,0\n'
                      '-2,0,3e-5,1\n')
    ds = load_dataset(path, label_columns=['dog', 'pedestrian'])
    assert ds.feature_names == ('speed', 'range')
    assert ds.class_names == ('dog', 'pedestrian')  # in the order asked for
    np.testing.assert_array_equal(ds.X, [[1.5, 0.25], [-2.0, 3e-5]])
    np.testing.assert_array_equal(ds.Y, [[0, 1], [1, 0]])


def test_csv_label_columns_by_prefix(tmp_path):
    path = write_text(tmp_path / 'prefixed.csv',
                      '\ufeffy_dog, speed ,y_pole,range\n'  # BOM and padded names are tolerated
                      '1,0.5,0,2\n'
                      '\n'  # blank lines are skipped
                      '0,1.0,1.0,3\n')
    ds = load_dataset(path, label_prefix='y_')
    assert ds.feature_names == ('speed', 'range')
    assert ds.class_names == ('dog', 'pole')
    np.testing.assert_array_equal(ds.Y, [[1, 0], [0, 1]])
    assert ds.n == 2 and ds.d == 2 and ds.c == 2


def test_save_csv_with_custom_prefix_and_quoted_names(tmp_path):
    ds = Dataset(np.eye(2), np.eye(2, dtype=np.uint8), ['a,b', 'say "hi"'], ['x', 'y\nz'])
    save_dataset(tmp_path / 'odd.csv', ds, label_prefix='cls/')
    assert_bitwise_equal(load_dataset(tmp_path / 'odd.csv', label_prefix='cls/'), ds)


def test_unlabelled_data_loads_when_labels_are_not_required(tmp_path):
    path = write_text(tmp_path / 'features.csv', 'a,b\n1,2\n3,4\n')
    expect_error(path, 'no label columns found', "'label:'")
    ds = load_dataset(path, require_labels=False)
    assert ds.c == 0 and ds.Y.shape == (2, 0) and ds.class_names == ()
    save_dataset(tmp_path / 'features.npz', ds)
    assert_bitwise_equal(load_dataset(tmp_path / 'features.npz', require_labels=False), ds)
    arrays_without_labels = {'X': ds.X, 'feature_names': np.array(['a', 'b'])}
    npz = write_npz(tmp_path / 'nolabels.npz', **arrays_without_labels)
    assert load_dataset(npz, require_labels=False).c == 0
    expect_error(npz, "missing array(s) 'Y', 'class_names'")
    # The .npz written from unlabelled data has a Y of 0 columns: not labels either.
    expect_error(tmp_path / 'features.npz', 'has no label classes (Y has 0 columns')


def test_npz_accepts_integer_features_and_bool_labels(tmp_path):
    path = write_npz(tmp_path / 'ints.npz', X=np.arange(6).reshape(3, 2),
                     Y=np.array([[True], [False], [True]]),
                     feature_names=np.array(['a', 'b']), class_names=np.array(['c']))
    ds = load_dataset(path, dtype=np.float32)
    assert ds.X.dtype == np.float32 and ds.Y.dtype == np.uint8
    np.testing.assert_array_equal(ds.Y[:, 0], [1, 0, 1])


def test_npz_bytes_are_reproducible(tmp_path):
    # Same data -> same file bytes, so data files can be compared by hash.
    save_dataset(tmp_path / 'a.npz', make_dataset())
    save_dataset(tmp_path / 'b.npz', make_dataset())
    assert (tmp_path / 'a.npz').read_bytes() == (tmp_path / 'b.npz').read_bytes()


# ---------------------------------------------------------------------------------------------
# Bad files: every message names the file and the problem
# ---------------------------------------------------------------------------------------------

def test_missing_file_directory_and_extension(tmp_path):
    expect_error(tmp_path / 'nope.csv', 'file not found')
    expect_error(tmp_path / 'nope.npz', 'file not found')
    (tmp_path / 'dir.csv').mkdir()
    expect_error(tmp_path / 'dir.csv', 'is a directory')
    expect_error(write_text(tmp_path / 'data.txt', 'a\n1\n'), "unsupported file type ('.txt')",
                 '.npz or .csv')
    expect_error(write_text(tmp_path / 'data', 'a\n1\n'), 'no extension')


@pytest.mark.parametrize('name', ['empty.csv', 'empty.npz'])
def test_empty_file(tmp_path, name):
    (tmp_path / name).touch()
    expect_error(tmp_path / name, 'file is empty')


def test_a_large_csv_loads_exactly_in_about_twice_its_size(tmp_path):
    import tracemalloc
    rng = np.random.default_rng(0)
    n = 3 * 4096 + 7  # several of the loader's chunks (4096 rows) and a short last one
    data = Dataset(X=rng.standard_normal((n, 12)), Y=(rng.random((n, 3)) < 0.3).astype(np.uint8),
                   feature_names=[f'f{i}' for i in range(12)], class_names=CLASSES)
    path = tmp_path / 'big.csv'
    save_dataset(path, data)
    tracemalloc.start()
    try:
        loaded = load_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(loaded.X, data.X) and np.array_equal(loaded.Y, data.Y)
    # the table of float64 values is (n, 15); the old loader peaked at ~7 times it
    assert peak < 3.5 * n * 15 * 8
    # line numbers still count across chunks: header is line 1, row k is line k + 2
    lines = path.read_text().splitlines()
    lines[n - 1] = 'oops' + lines[n - 1][lines[n - 1].index(','):]
    path.write_text('\n'.join(lines) + '\n')
    with pytest.raises(DatasetError, match=f'line {n}, column 1'):
        load_dataset(path)


def test_csv_without_header_or_rows(tmp_path):
    expect_error(write_text(tmp_path / 'blank.csv', '\n\n'), 'no header row')
    expect_error(write_text(tmp_path / 'header.csv', 'a,label:b\n'), 'no data rows')


def test_csv_ragged_row_names_the_line(tmp_path):
    path = write_text(tmp_path / 'ragged.csv', 'a,b,label:c\n1,2,0\n\n3,4\n')
    expect_error(path, 'line 4 has 2 fields, the header has 3')
    path = write_text(tmp_path / 'long.csv', 'a,b,label:c\n1,2,0,9\n')
    expect_error(path, 'line 2 has 4 fields, the header has 3')


def test_csv_non_numeric_cell_names_line_and_column(tmp_path):
    path = write_text(tmp_path / 'text.csv', 'a,b,label:c\n1,2,0\n1,fast,1\n')
    expect_error(path, "line 3, column 2 ('b'): non-numeric value 'fast'")
    path = write_text(tmp_path / 'hole.csv', 'a,b,label:c\n1,,0\n')
    expect_error(path, "line 2, column 2 ('b'): empty cell")
    # One column: the empty cell is a blank line, which must not shift the later rows (blank
    # lines at the end are only the end).
    path = write_text(tmp_path / 'one.csv', 'speed\n1.0\n\n3.0\n')
    with pytest.raises(DatasetError, match=r"line 3, column 1 \('speed'\): empty cell"):
        load_dataset(path, require_labels=False)
    path = write_text(tmp_path / 'tail.csv', 'speed\n1.0\n3.0\n\n\n')
    assert load_dataset(path, require_labels=False).X.ravel().tolist() == [1.0, 3.0]
    path = write_text(tmp_path / 'badlabel.csv', 'a,b,label:c\n1,2,yes\n')
    expect_error(path, "line 2, column 3 ('label:c'): non-numeric value 'yes'")


@pytest.mark.parametrize('cell', ['nan', 'inf', '-Infinity', '1e999'])
def test_csv_non_finite_feature(tmp_path, cell):
    path = write_text(tmp_path / 'nan.csv', f'a,b,label:c\n1,2,0\n{cell},3,1\n5,{cell},1\n')
    expect_error(path, '2 non-finite feature value(s)', "line 3, column 1 ('a')")


def test_npz_non_finite_feature(tmp_path):
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['X'][[1, 3], 2] = [np.inf, np.nan]
    path = write_npz(tmp_path / 'nan.npz', **arrays_to_write)
    expect_error(path, '2 non-finite value(s)', 'X[1, 2]', "'speed.last'")


def test_float32_overflow_is_reported(tmp_path):
    path = write_text(tmp_path / 'big.csv', 'a,label:c\n1e300,1\n')
    expect_error(path, 'exceed the float32 range', "line 2, column 1 ('a')", dtype=np.float32)
    assert load_dataset(path).X[0, 0] == 1e300


@pytest.mark.parametrize('cell', ['2', '0.5', '-1', 'nan'])
def test_csv_labels_not_binary(tmp_path, cell):
    path = write_text(tmp_path / 'labels.csv', f'a,label:c,label:d\n1,0,1\n2,1,{cell}\n')
    expect_error(path, '1 label(s) are not 0 or 1', "line 3, column 3 ('label:d')")


def test_csv_labels_written_as_floats_are_accepted(tmp_path):
    path = write_text(tmp_path / 'labels.csv', 'a,label:c\n1,1.0\n2,0.0\n')
    np.testing.assert_array_equal(load_dataset(path).Y[:, 0], [1, 0])


def test_npz_labels_not_binary(tmp_path):
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['Y'] = arrays_to_write['Y'].astype(np.int64)
    arrays_to_write['Y'][4, 1] = 7
    path = write_npz(tmp_path / 'labels.npz', **arrays_to_write)
    expect_error(path, 'are not 0 or 1', 'the first is 7', "Y[4, 1] (class 'bicycle')")


def test_no_label_columns(tmp_path):
    path = write_text(tmp_path / 'nolabels.csv', 'a,b,c\n1,2,3\n')
    expect_error(path, 'no label columns found', "'label:'", "'a', 'b', 'c'")
    expect_error(path, 'no label columns found', label_columns=[])
    expect_error(path, "label column(s) 'dog' not in the header", label_columns=['c', 'dog'])
    expect_error(path, 'no feature columns', label_columns=['a', 'b', 'c'])
    expect_error(write_text(tmp_path / 'bare.csv', 'a,label:\n1,0\n'), 'column 2 is the bare '
                 "label prefix 'label:'")


def test_a_misspelt_label_prefix_is_refused_not_trained_on_as_a_feature(tmp_path):
    # 'lable:pole' was read as a feature (a copy of the labels) and trained on, silently.
    path = write_text(tmp_path / 'typo.csv', 'a,b,label:dog,lable:pole\n1,2,0,1\n')
    expect_error(path, "column 4 'lable:pole' has a ':' as label columns do, but not their "
                       "prefix 'label:'")
    ds = load_dataset(path, label_columns=['label:dog', 'lable:pole'])  # named: as asked
    assert ds.class_names == ('label:dog', 'lable:pole') and ds.feature_names == ('a', 'b')
    custom = write_text(tmp_path / 'custom.csv', 'a,cls/dog,cl/pole\n1,0,1\n')
    expect_error(custom, "column 3 'cl/pole' has a '/'", label_prefix='cls/')


def test_cells_with_underscores_and_other_separators_are_refused(tmp_path):
    # Python's float() reads '1_0' as 10.0; a semicolon export used to dump its whole header.
    expect_error(write_text(tmp_path / 'u.csv', 'a,label:c\n1_0,1\n'),
                 "line 2, column 1 ('a'): non-numeric value '1_0'")
    expect_error(write_text(tmp_path / 's.csv', 'a;b;label:c\n1;2;1\n'),
                 'the header is one column holding semicolons', 'commas')
    expect_error(write_text(tmp_path / 't.csv', 'a\tlabel:c\n1\t1\n'),
                 'one column holding tabs')


def test_label_columns_for_an_npz_file_are_refused_not_ignored(tmp_path):
    path = tmp_path / 'd.npz'
    save_dataset(path, Dataset(np.eye(2), np.eye(2, dtype=np.uint8), ['a', 'b'], ['x', 'y']))
    expect_error(path, 'label_columns applies to CSV files', label_columns=['a'])


def test_duplicate_names(tmp_path):
    path = write_text(tmp_path / 'dup.csv', 'a,b,a,label:c\n1,2,3,0\n')
    expect_error(path, "duplicate column names in the header: 'a' (columns 1, 3)")
    path = write_text(tmp_path / 'dupclass.csv', 'a,label:c,c\n1,0,1\n')
    # Two columns, one class name 'c' after stripping: only an issue if both are labels.
    assert load_dataset(path).class_names == ('c',)
    expect_error(path, "label_columns lists 'c' more than once", label_columns=['c', 'c'])

    arrays_to_write = valid_npz_arrays()
    arrays_to_write['feature_names'] = np.array(['a', 'b', 'a', 'b'])
    expect_error(write_npz(tmp_path / 'dupf.npz', **arrays_to_write),
                 "duplicate feature names: 'a' (positions 0, 2), 'b' (positions 1, 3)")
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['class_names'] = np.array(['dog', 'dog', 'pole'])
    expect_error(write_npz(tmp_path / 'dupc.npz', **arrays_to_write),
                 "duplicate class names: 'dog'")


def test_npz_shape_problems(tmp_path):
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['Y'] = arrays_to_write['Y'][:4]
    expect_error(write_npz(tmp_path / 'rows.npz', **arrays_to_write),
                 'X has 5 rows but Y has 4')
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['X'] = arrays_to_write['X'].ravel()
    expect_error(write_npz(tmp_path / 'x1d.npz', **arrays_to_write),
                 'X must be 2-D (n, d), got shape (20,)')
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['Y'] = arrays_to_write['Y'][None]
    expect_error(write_npz(tmp_path / 'y3d.npz', **arrays_to_write),
                 'Y must be 2-D (n, c), got shape (1, 5, 3)')
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['feature_names'] = np.array(FEATURES[:3])
    expect_error(write_npz(tmp_path / 'width.npz', **arrays_to_write),
                 'X has 4 columns but feature_names has 3 entries')
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['class_names'] = np.array([CLASSES])
    expect_error(write_npz(tmp_path / 'names2d.npz', **arrays_to_write),
                 'class_names must be 1-D')
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['X'] = arrays_to_write['X'][:0]
    arrays_to_write['Y'] = arrays_to_write['Y'][:0]
    expect_error(write_npz(tmp_path / 'none.npz', **arrays_to_write), 'no samples')


def test_npz_wrong_dtypes(tmp_path):
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['X'] = np.full((5, 4), 'x')
    expect_error(write_npz(tmp_path / 'strx.npz', **arrays_to_write),
                 'X must hold real numbers, got dtype <U1')
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['feature_names'] = np.arange(4)
    expect_error(write_npz(tmp_path / 'intnames.npz', **arrays_to_write),
                 'feature_names must be an array of strings')


def test_npz_missing_key(tmp_path):
    arrays_to_write = valid_npz_arrays()
    del arrays_to_write['Y']
    expect_error(write_npz(tmp_path / 'noy.npz', **arrays_to_write), "missing array(s) 'Y'",
                 "the archive has 'X', 'class_names', 'feature_names'")
    arrays_to_write = valid_npz_arrays()
    del arrays_to_write['class_names']
    expect_error(write_npz(tmp_path / 'half.npz', **arrays_to_write),
                 "only one of 'Y' and 'class_names'", require_labels=False)


@pytest.mark.parametrize('offset, value, error', [
    (6, b'\xff\x00', 'NotImplementedError: zip file version'),  # version needed: 25.5
    (8, b'\x01\x00', 'RuntimeError'),  # general-purpose flags: encrypted
])
def test_npz_with_a_damaged_zip_directory(tmp_path, offset, value, error):
    path = tmp_path / 'damaged.npz'
    save_dataset(path, Dataset(np.eye(3), np.eye(3, dtype=np.uint8), list('abc'), list('xyz')))
    data = path.read_bytes()
    entry = data.index(b'PK\x01\x02') + offset  # the first central-directory entry
    path.write_bytes(data[:entry] + value + data[entry + len(value):])
    expect_error(path, f'corrupt .npz archive ({error}')


def test_npz_pickles_are_refused(tmp_path):
    arrays_to_write = valid_npz_arrays()
    arrays_to_write['feature_names'] = np.array(FEATURES, dtype=object)
    expect_error(write_npz(tmp_path / 'object.npz', **arrays_to_write),
                 "array 'feature_names' is a pickled object array; refused")
    path = tmp_path / 'pickle.npz'
    path.write_bytes(pickle.dumps(valid_npz_arrays()))
    expect_error(path, 'is a Python pickle, not an .npz archive')


def test_npz_that_is_something_else(tmp_path):
    expect_error(write_text(tmp_path / 'text.npz', 'X,Y\n1,0\n'), 'not an .npz archive')
    np.save(tmp_path / 'single.npy', np.zeros((2, 2)))
    os.replace(tmp_path / 'single.npy', tmp_path / 'single.npz')
    expect_error(tmp_path / 'single.npz', 'single-array .npy file')
    good = write_npz(tmp_path / 'good.npz', **valid_npz_arrays())
    truncated = tmp_path / 'truncated.npz'
    truncated.write_bytes(good.read_bytes()[:200])
    expect_error(truncated, 'corrupt .npz archive')
    with zipfile.ZipFile(tmp_path / 'garbage.npz', 'w') as archive:
        for key in ('X', 'Y', 'feature_names', 'class_names'):
            archive.writestr(f'{key}.npy', b'not an array')
    expect_error(tmp_path / 'garbage.npz', "array 'X' is corrupt")


def test_csv_not_utf8(tmp_path):
    path = tmp_path / 'latin1.csv'
    path.write_bytes('caf\xe9,label:c\n1,0\n'.encode('latin-1'))
    expect_error(path, 'is not UTF-8 text')


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip('root reads every file')
    path = write_text(tmp_path / 'secret.csv', 'a,label:c\n1,0\n')
    path.chmod(0)
    try:
        expect_error(path, 'cannot read: Permission denied')
    finally:
        path.chmod(0o600)


def test_permission_denied_is_reported(tmp_path, monkeypatch):
    # Runs even as root (which the chmod test above cannot): make open() itself refuse.
    path = write_text(tmp_path / 'data.npz', 'PK')

    def refuse(*args, **kwargs):
        raise PermissionError(13, 'Permission denied', str(path))

    monkeypatch.setattr(datasets, 'open', refuse, raising=False)
    expect_error(path, 'cannot read: Permission denied')


def test_bad_arguments_are_programming_errors(tmp_path):
    path = write_text(tmp_path / 'ok.csv', 'a,label:c\n1,0\n')
    with pytest.raises(ValueError, match='float32 or float64'):
        load_dataset(path, dtype=np.int32)
    with pytest.raises(TypeError, match='not a single string'):
        load_dataset(path, label_columns='label:c')
    with pytest.raises(ValueError, match='label_prefix must be non-empty'):
        load_dataset(path, label_prefix='')


# ---------------------------------------------------------------------------------------------
# The Dataset container itself
# ---------------------------------------------------------------------------------------------

def memory_error(match, X=None, Y=None, feature_names=FEATURES[:2], class_names=CLASSES[:1]):
    X = np.zeros((3, 2)) if X is None else X
    Y = np.zeros((3, 1), dtype=np.uint8) if Y is None else Y
    with pytest.raises(DatasetError, match=match) as caught:
        Dataset(X, Y, feature_names, class_names)
    assert str(caught.value).startswith('<memory>: ')


def test_dataset_validates():
    memory_error('X must be float32 or float64, got int64', X=np.zeros((3, 2), dtype=np.int64))
    memory_error('Y must be uint8, got int64', Y=np.zeros((3, 1), dtype=np.int64))
    memory_error('X must be a NumPy array', X=[[0.0, 0.0]] * 3)
    memory_error(r'Y must be 2-D \(n, c\), got shape \(3,\)', Y=np.zeros(3, dtype=np.uint8))
    memory_error('X has 3 rows but Y has 2', Y=np.zeros((2, 1), dtype=np.uint8))
    memory_error('X has no feature columns', X=np.zeros((3, 0)), feature_names=())
    memory_error(r"1 non-finite value\(s\).*X\[1, 0\] \(feature 'range_front.mean'\)",
                 X=np.array([[0, 0], [np.nan, 0], [0, 0]]))
    memory_error(r"label\(s\) that are not 0 or 1; the first is 3 at Y\[2, 0\]",
                 Y=np.array([[0], [1], [3]], dtype=np.uint8))
    memory_error('X has 2 columns but there are 3 feature names', feature_names=FEATURES[:3])
    memory_error("duplicate feature names: 'a'", feature_names=('a', 'a'))
    memory_error('single string', feature_names='ab')
    memory_error('feature name 1 is empty', feature_names=('a', ''))
    memory_error('class name 0 is int', class_names=(3,))
    # Class names travel comma-separated on obstacle_labels and come back stripped.
    memory_error("class name 0 'trash,can' contains a comma", class_names=('trash,can',))
    memory_error("class name 0 'dog ' starts or ends with white space", class_names=('dog ',))


def test_dataset_accepts_name_sequences_and_is_frozen():
    ds = Dataset(np.zeros((2, 2), np.float32), np.zeros((2, 1), np.uint8), ['a', 'b'],
                 np.array(['c']))
    assert ds.feature_names == ('a', 'b') and ds.class_names == ('c',)
    assert type(ds.class_names[0]) is str
    with pytest.raises(AttributeError):
        ds.X = np.ones((2, 2))
    assert 'n=2, d=2, c=1' in repr(ds)
    assert ds == ds and ds != Dataset(ds.X, ds.Y, ds.feature_names, ds.class_names)


def test_subset():
    ds = make_dataset(n=10, source='train.npz')
    picked = ds.subset([3, 1, 3])
    np.testing.assert_array_equal(picked.X, ds.X[[3, 1, 3]])
    np.testing.assert_array_equal(picked.Y, ds.Y[[3, 1, 3]])
    assert picked.source == 'train.npz' and picked.feature_names == ds.feature_names
    mask = np.arange(10) % 2 == 0
    assert ds.subset(mask).n == 5
    assert ds.subset(slice(2, 5)).n == 3
    assert ds.subset([]).n == 0
    assert ds.subset(np.array([], dtype=np.int64)).X.shape == (0, ds.d)
    with pytest.raises(IndexError, match='length 3'):
        ds.subset(np.array([True, False, True]))
    with pytest.raises(IndexError, match='1-D'):
        ds.subset(4)
    with pytest.raises(IndexError, match='integers or booleans'):
        ds.subset([0.5])


# ---------------------------------------------------------------------------------------------
# Compatibility with a model
# ---------------------------------------------------------------------------------------------

def compatibility_message(ds, feature_names, class_names):
    with pytest.raises(DatasetError) as caught:
        check_compatible(ds, feature_names, class_names)
    message = str(caught.value)
    assert message.startswith('val.csv: does not match the model: '), message
    return message


def test_check_compatible():
    ds = make_dataset(source='val.csv')
    check_compatible(ds, FEATURES, CLASSES)
    check_compatible(ds, list(FEATURES), None)  # classes not checked

    message = compatibility_message(ds, FEATURES + ('lidar.min',), CLASSES)
    assert 'width mismatch: expected 5 features, got 4' in message
    assert "missing features: 'lidar.min'" in message
    assert 'classes' not in message

    message = compatibility_message(ds, FEATURES[:3], CLASSES)
    assert 'expected 3 features, got 4' in message
    assert "unexpected features: 'imu_z.std'" in message

    renamed = ('range_front.max',) + FEATURES[1:]
    message = compatibility_message(ds, renamed, CLASSES)
    assert 'width' not in message
    assert "missing features: 'range_front.max'; unexpected features: 'range_front.mean'" in (
        message)

    swapped = (FEATURES[1], FEATURES[0]) + FEATURES[2:]
    message = compatibility_message(ds, swapped, CLASSES)
    assert ("features reordered: position 0 is 'range_front.mean', expected "
            "'range_left.min'; position 1 is 'range_left.min', expected 'range_front.mean'"
            ) in message

    message = compatibility_message(ds, FEATURES, ('pedestrian', 'dog', 'bicycle', 'scooter'))
    assert 'width mismatch: expected 4 classes, got 3' in message
    assert "missing classes: 'scooter'" in message and 'features' not in message

    message = compatibility_message(ds, FEATURES[::-1], CLASSES[::-1])
    assert 'features reordered' in message and 'classes reordered' in message

    many = tuple(f'f{j}' for j in range(20))
    message = compatibility_message(ds, many, CLASSES)
    assert "'f7' ... and 12 more" in message  # bounded, however wide the mismatch


# ---------------------------------------------------------------------------------------------
# Saving (the atomic writes themselves: test_atomic.py)
# ---------------------------------------------------------------------------------------------

def test_stamps_are_stored_beside_an_npz_data_set_only(tmp_path):
    data = Dataset(np.zeros((3, 2)), np.zeros((3, 1), np.uint8), ['a', 'b'], ['c'])
    save_dataset(tmp_path / 'with_stamps.npz', data, stamps_ns=[5, 6, 7])
    with np.load(tmp_path / 'with_stamps.npz') as arrays:
        assert arrays['stamps_ns'].tolist() == [5, 6, 7] and arrays['stamps_ns'].dtype == np.int64
    assert load_dataset(tmp_path / 'with_stamps.npz').n == 3
    with pytest.raises(DatasetError, match=r'stamps_ns has shape \(2,\), expected \(3,\)'):
        save_dataset(tmp_path / 'short.npz', data, stamps_ns=[5, 6])
    with pytest.raises(DatasetError, match='only be stored in an .npz file'):
        save_dataset(tmp_path / 'stamps.csv', data, stamps_ns=[5, 6, 7])
    assert not (tmp_path / 'short.npz').exists() and not (tmp_path / 'stamps.csv').exists()


def test_save_refuses_what_would_not_read_back(tmp_path):
    X, Y = np.zeros((1, 2)), np.zeros((1, 1), np.uint8)
    with pytest.raises(DatasetError, match="'label:x'.*would be read back as classes") as caught:
        save_dataset(tmp_path / 'clash.csv', Dataset(X, Y, ['a', 'label:x'], ['x']))
    assert str(caught.value).startswith(f'{tmp_path / "clash.csv"}: ')
    with pytest.raises(DatasetError, match="' a' have leading or trailing whitespace"):
        save_dataset(tmp_path / 'pad.csv', Dataset(X, Y, [' a', 'b'], ['x']))
    with pytest.raises(DatasetError, match='does not exist'):
        save_dataset(tmp_path / 'missing' / 'data.npz', make_dataset())
    with pytest.raises(DatasetError, match='unsupported file type'):
        save_dataset(tmp_path / 'data.json', make_dataset())
    assert sorted(os.listdir(tmp_path)) == []


class Boom(RuntimeError):
    pass


def test_failed_save_dataset_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'data.npz'
    original = make_dataset(seed=1)
    save_dataset(path, original)
    before = path.read_bytes()

    def exploding_savez(file, **arrays_to_write):
        file.write(b'PK\x03\x04 partial')
        raise Boom('interrupted')

    monkeypatch.setattr(np, 'savez', exploding_savez)
    with pytest.raises(Boom):
        save_dataset(path, make_dataset(seed=2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['data.npz']
