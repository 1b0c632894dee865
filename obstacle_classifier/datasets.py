"""Data files for training and evaluation: NPZ and CSV readers and writers, validated on load.

A data set is a feature matrix ``X`` (n, d) with a multi-hot label matrix ``Y`` (n, c), plus the
names of the d features and the c classes. Names travel with the numbers so that a file can be
checked against a model (:func:`check_compatible`) before anything is computed from it.

File formats (chosen by extension):

* ``.npz``: arrays ``X`` (n, d) real, ``Y`` (n, c) in {0, 1}, ``feature_names`` (d,) and
  ``class_names`` (c,) as string arrays. Loaded with ``allow_pickle=False``: a file holding
  pickled or object arrays is refused, because unpickling runs arbitrary code.
* ``.csv``: UTF-8, one header row, one sample per row. Label columns are either listed
  explicitly or recognised by a name prefix (default ``label:``, stripped to form the class
  name); every other column is a feature. Floats are written with ``repr`` so float64 values
  survive a round trip bit for bit.

Every problem with a file raises :class:`DatasetError` whose message starts with the file name and
says what is wrong and where (line and column for CSV, array index for NPZ).
"""
from __future__ import annotations

import csv
import io
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Optional, Sequence, Union

import numpy as np

from obstacle_classifier.atomic import atomic_write

__all__ = ['Dataset', 'DatasetError', 'check_compatible', 'class_name_problem', 'load_dataset',
           'save_dataset', 'DEFAULT_LABEL_PREFIX']

PathLike = Union[str, os.PathLike]
DEFAULT_LABEL_PREFIX = 'label:'
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_SUPPORTED_SUFFIXES = ('.npz', '.csv')
_MAX_LISTED = 8  # names listed in one message before "... and N more"

# Leading bytes of the formats a ``.npz`` path may really contain.
_ZIP_MAGIC = (b'PK\x03\x04', b'PK\x05\x06')  # local file header; empty archive
_NPY_MAGIC = b'\x93NUMPY'
_PICKLE_MAGIC = b'\x80'  # protocol 2+ opcode

#: What ``np.load`` and reading an ``NpzFile`` member raise on damaged bytes, besides
#: ValueError: zipfile's NotImplementedError (an unknown compression method or version) and
#: RuntimeError (a member flagged as encrypted); the .npy header parser's SyntaxError and
#: tokenize.TokenError.
NPZ_DAMAGE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
                     RuntimeError, SyntaxError, tokenize.TokenError)


def npz_signature_problem(head: bytes) -> str | None:
    """Why a file starting with ``head`` (its first 8 bytes) is not an .npz archive, or None.

    np.load would read a single-array .npy file without complaint, and call a text file
    "pickled data"."""
    if head.startswith(_NPY_MAGIC):
        return 'is a single-array .npy file, not an .npz archive'
    if head.startswith(_PICKLE_MAGIC):
        return ('is a Python pickle, not an .npz archive; pickles are refused because loading '
                'one can run arbitrary code')
    if not head.startswith(_ZIP_MAGIC):
        return 'is not an .npz archive (no zip signature)'
    return None


class DatasetError(ValueError):
    """A data file (or in-memory data set) is missing, malformed or does not fit.

    The message always begins with the file name (``<memory>`` for arrays built in code) followed
    by the problem, e.g. ``data/val.csv: line 7 has 12 fields, the header has 13``.
    """


def _error(source: object, problem: str) -> DatasetError:
    return DatasetError(f'{source}: {problem}')


def _quote_list(names: Iterable[str]) -> str:
    """``'a', 'b', 'c' ... and 4 more``: bounded, so one bad header cannot flood a terminal."""
    names = list(names)
    shown = ', '.join(repr(name) for name in names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f' ... and {len(names) - _MAX_LISTED} more'
    return shown


def _duplicates(names: Sequence[str]) -> dict[str, list[int]]:
    """Map each repeated name to all of its 0-based positions."""
    positions: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        positions.setdefault(name, []).append(index)
    return {name: where for name, where in positions.items() if len(where) > 1}


def _first_true(mask: np.ndarray) -> tuple[int, int, int]:
    """Return (count, row, column) of the True entries of a 2-D mask: how many, and the first."""
    flat = np.flatnonzero(mask)
    row, column = np.unravel_index(flat[0], mask.shape)
    return flat.size, int(row), int(column)


def class_name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot be a class name, or None if it can.

    Class names travel comma-separated on ``obstacle_labels`` and are read back stripped, so a
    comma or surrounding white space would come back as different names.
    """
    if not name:
        return 'is empty'
    if ',' in name:
        return f'{name!r} contains a comma (obstacle_labels separates names with commas)'
    if name != name.strip():
        return f'{name!r} starts or ends with white space (obstacle_labels strips it)'
    return None


def _as_names(source: str, kind: str, names: object) -> tuple[str, ...]:
    """Normalise a sequence of names to a tuple of ``str``, refusing anything that is not one."""
    if isinstance(names, (str, bytes)):
        # tuple('speed') would silently become five one-letter names.
        raise _error(source, f'{kind} names must be a sequence of strings, got a single string '
                             f'{names!r}')
    try:
        items = list(names)  # type: ignore[call-overload]
    except TypeError:
        raise _error(source, f'{kind} names must be a sequence of strings, got '
                             f'{type(names).__name__}') from None
    for index, name in enumerate(items):
        if not isinstance(name, str):  # np.str_ is a str subclass and passes
            raise _error(source, f'{kind} name {index} is {type(name).__name__} {name!r}, not a '
                                 f'string')
        if not name:
            raise _error(source, f'{kind} name {index} is empty')
        problem = class_name_problem(name) if kind == 'class' else None
        if problem:
            raise _error(source, f'class name {index} {problem}')
    return tuple(str(name) for name in items)


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A validated multi-label data set.

    Attributes:
        X: (n, d) float32 or float64 feature matrix; every value finite.
        Y: (n, c) uint8 label matrix; Y[i, k] == 1 iff sample i shows class k. c may be 0 for
            unlabelled data (e.g. input to ``predict``).
        feature_names: d unique, non-empty names, column order of X.
        class_names: c unique, non-empty names, column order of Y.
        source: where the data came from, used in every error message.

    Construction validates all of the above and raises :class:`DatasetError`. The arrays are
    stored as given (no copy); treat them as read-only.
    """

    # eq=False: the generated __eq__ would compare arrays element-wise and fail on truth value;
    # identity semantics are what a container of large arrays should have.
    X: np.ndarray
    Y: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    source: str = '<memory>'

    def __post_init__(self) -> None:
        source = str(self.source)
        object.__setattr__(self, 'source', source)
        object.__setattr__(self, 'feature_names', _as_names(source, 'feature',
                                                            self.feature_names))
        object.__setattr__(self, 'class_names', _as_names(source, 'class', self.class_names))
        X, Y = self.X, self.Y
        for key, array in (('X', X), ('Y', Y)):
            if not isinstance(array, np.ndarray):
                raise _error(source, f'{key} must be a NumPy array, got {type(array).__name__}')
            if array.ndim != 2:
                expected = '(n, d)' if key == 'X' else '(n, c)'
                raise _error(source, f'{key} must be 2-D {expected}, got shape {array.shape}')
        if X.dtype not in _FLOAT_DTYPES:
            raise _error(source, f'X must be float32 or float64, got {X.dtype}')
        if Y.dtype != np.uint8:
            raise _error(source, f'Y must be uint8, got {Y.dtype}')
        if X.shape[0] != Y.shape[0]:
            raise _error(source, f'X has {X.shape[0]} rows but Y has {Y.shape[0]}; both need one '
                                 f'row per sample')
        if X.shape[1] == 0:
            raise _error(source, 'X has no feature columns')
        _check_name_count(source, 'feature', self.feature_names, X.shape[1], 'X')
        _check_name_count(source, 'class', self.class_names, Y.shape[1], 'Y')
        _check_finite(source, X, self.feature_names)
        _check_binary(source, Y, self.class_names)

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        """Number of features."""
        return int(self.X.shape[1])

    @property
    def c(self) -> int:
        """Number of classes."""
        return int(self.Y.shape[1])

    def subset(self, idx: Union[slice, Sequence[int], np.ndarray]) -> Dataset:
        """Return the rows selected by ``idx``: a slice, 1-D integer indices or a mask (n,) bool.

        Indexing copies for integer/boolean ``idx`` and returns views for a slice, as NumPy does.
        """
        if not isinstance(idx, slice):
            idx = np.asarray(idx)
            if idx.ndim != 1:
                raise IndexError(f'subset index must be a slice or 1-D, got shape {idx.shape}')
            if idx.size == 0:
                idx = idx.astype(np.intp)  # np.asarray([]) is float64
            elif idx.dtype == np.bool_:
                if idx.shape[0] != self.n:
                    raise IndexError(f'boolean subset mask has length {idx.shape[0]}, data set '
                                     f'has {self.n} samples')
            elif idx.dtype.kind not in 'iu':
                raise IndexError(f'subset index must be integers or booleans, got {idx.dtype}')
        return Dataset(self.X[idx], self.Y[idx], self.feature_names, self.class_names,
                       self.source)

    def __repr__(self) -> str:
        return (f'Dataset(n={self.n}, d={self.d}, c={self.c}, X.dtype={self.X.dtype}, '
                f'source={self.source!r})')


def _check_name_count(source: str, kind: str, names: tuple[str, ...], width: int,
                      key: str) -> None:
    if len(names) != width:
        raise _error(source, f'{key} has {width} columns but there are {len(names)} {kind} names')
    repeated = _duplicates(names)
    if repeated:
        described = ', '.join(f'{name!r} (positions {", ".join(map(str, where))})'
                              for name, where in list(repeated.items())[:_MAX_LISTED])
        raise _error(source, f'duplicate {kind} names: {described}')


def _check_finite(source: str, X: np.ndarray, feature_names: Sequence[str]) -> None:
    bad = ~np.isfinite(X)
    if bad.any():
        count, row, column = _first_true(bad)
        raise _error(source, f'X has {count} non-finite value(s) (NaN or Inf); the first is '
                             f'{X[row, column]} at X[{row}, {column}] (feature '
                             f'{feature_names[column]!r})')


def _check_binary(source: str, Y: np.ndarray, class_names: Sequence[str]) -> None:
    bad = Y > 1  # uint8: the only values that are not 0/1
    if bad.any():
        count, row, column = _first_true(bad)
        raise _error(source, f'Y has {count} label(s) that are not 0 or 1; the first is '
                             f'{Y[row, column]} at Y[{row}, {column}] (class '
                             f'{class_names[column]!r})')


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_dataset(path: PathLike, *, label_columns: Sequence[str] | None = None,
                 label_prefix: str = DEFAULT_LABEL_PREFIX, dtype: object = np.float64,
                 require_labels: bool = True) -> Dataset:
    """Read a data set from a ``.npz`` or ``.csv`` file.

    Args:
        path: the file; the format is chosen by its extension.
        label_columns: CSV only: the exact header names of the label columns (used verbatim as
            class names). When given, ``label_prefix`` is ignored.
        label_prefix: CSV only: columns whose name starts with it are labels; the class name is
            the rest of the column name.
        dtype: float32 or float64, the dtype of the returned X.
        require_labels: if False, a file without labels loads with c == 0 (input for prediction).

    Returns:
        A validated :class:`Dataset` with ``source`` set to ``str(path)``.

    Raises:
        DatasetError: the file is missing, unreadable, malformed, or its contents are invalid.
    """
    target_dtype = np.dtype(dtype)
    if target_dtype not in _FLOAT_DTYPES:
        raise ValueError(f'dtype must be float32 or float64, got {target_dtype}')
    if label_columns is not None and isinstance(label_columns, (str, bytes)):
        raise TypeError('label_columns must be a sequence of column names, not a single string')
    if label_columns is None and not label_prefix:
        raise ValueError('label_prefix must be non-empty (or pass label_columns)')
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise _error(path, 'file not found')
    if path.is_dir():
        raise _error(path, 'is a directory, not a data file')
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _error(path, f'cannot read: {exc.strerror}') from exc
    if size == 0:
        raise _error(path, 'file is empty')
    try:
        if suffix == '.npz':
            if label_columns is not None:  # the file names its classes (class_names)
                raise _error(path, 'label_columns applies to CSV files: an .npz file holds '
                                   'its labels (Y) and class names itself')
            return _load_npz(path, target_dtype, require_labels)
        return _load_csv(path, target_dtype, label_columns, label_prefix, require_labels)
    except PermissionError as exc:
        raise _error(path, f'cannot read: {exc.strerror}') from exc


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _SUPPORTED_SUFFIXES:
        shown = repr(path.suffix) if path.suffix else 'no extension'
        raise _error(path, f'unsupported file type ({shown}); expected .npz or .csv')
    return suffix


def _load_npz(path: Path, dtype: np.dtype, require_labels: bool) -> Dataset:
    required = ['X', 'feature_names']
    optional = ['Y', 'class_names']
    if require_labels:
        required, optional = required + optional, []
    with open(path, 'rb') as file:
        problem = npz_signature_problem(file.read(8))
        if problem:
            raise _error(path, problem)
        file.seek(0)
        try:
            # np.load gets our file object: given a path, it leaks its own handle when the zip
            # directory is corrupt.
            with np.load(file, allow_pickle=False) as archive:
                present = set(archive.files)
                missing = [key for key in required if key not in present]
                if missing:
                    raise _error(path, f'missing array(s) {_quote_list(missing)}; the archive '
                                       f'has {_quote_list(sorted(present)) or "none"}')
                has_labels = all(key in present for key in optional)
                if optional and not has_labels and any(key in present for key in optional):
                    raise _error(path, "has only one of 'Y' and 'class_names'; both or neither")
                keys = required + (optional if has_labels else [])
                arrays = {key: _read_npz_member(path, archive, key) for key in keys}
        except NPZ_DAMAGE_ERRORS as exc:
            raise _error(path, f'corrupt .npz archive ({type(exc).__name__}: {exc})') from exc

    X = _npz_matrix(path, 'X', arrays['X'], '(n, d)')
    feature_names = _npz_names(path, 'feature_names', arrays['feature_names'])
    if 'Y' in arrays:
        Y_raw = _npz_matrix(path, 'Y', arrays['Y'], '(n, c)')
        class_names = _npz_names(path, 'class_names', arrays['class_names'])
    else:
        Y_raw = np.zeros((X.shape[0], 0), dtype=np.uint8)
        class_names = ()
    if require_labels and Y_raw.shape[1] == 0:
        raise _error(path, 'has no label classes (Y has 0 columns, as written for unlabelled '
                           'data); training and evaluation need labels')
    if X.shape[0] != Y_raw.shape[0]:
        raise _error(path, f'X has {X.shape[0]} rows but Y has {Y_raw.shape[0]}; both need one '
                           f'row per sample')
    if X.shape[0] == 0:
        raise _error(path, 'contains no samples (X has 0 rows)')
    if X.shape[1] != len(feature_names):
        raise _error(path, f'X has {X.shape[1]} columns but feature_names has '
                           f'{len(feature_names)} entries')
    if Y_raw.shape[1] != len(class_names):
        raise _error(path, f'Y has {Y_raw.shape[1]} columns but class_names has '
                           f'{len(class_names)} entries')
    if X.dtype.kind == 'f':
        _check_finite(str(path), X, feature_names)
    Y = _labels_to_uint8(path, Y_raw, lambda row, column: (
        f'Y[{row}, {column}] (class {class_names[column]!r})'))
    X = _cast_features(path, X, dtype, lambda row, column: (
        f'X[{row}, {column}] (feature {feature_names[column]!r})'))
    return Dataset(X, Y, feature_names, class_names, source=str(path))


def _read_npz_member(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        array = archive[key]
    except ValueError as exc:
        if 'allow_pickle' in str(exc) or 'pickle' in str(exc).lower():
            raise _error(path, f'array {key!r} is a pickled object array; refused because '
                               f'loading it can run arbitrary code (store numbers and strings '
                               f'as plain arrays)') from exc
        raise _error(path, f'array {key!r} is corrupt: {exc}') from exc
    if not isinstance(array, np.ndarray):
        # NpzFile hands back the raw bytes of a member without the .npy header.
        raise _error(path, f'array {key!r} is corrupt: not in .npy format')
    return array


def _npz_matrix(path: Path, key: str, array: np.ndarray, shape: str) -> np.ndarray:
    if array.ndim != 2:
        raise _error(path, f'{key} must be 2-D {shape}, got shape {array.shape}')
    if array.dtype.kind not in 'biuf':
        raise _error(path, f'{key} must hold real numbers, got dtype {array.dtype}')
    return array


def _npz_names(path: Path, key: str, array: np.ndarray) -> tuple[str, ...]:
    if array.ndim != 1:
        raise _error(path, f'{key} must be 1-D, got shape {array.shape}')
    if array.size and array.dtype.kind not in 'US':
        raise _error(path, f'{key} must be an array of strings, got dtype {array.dtype}')
    if array.dtype.kind == 'S':
        try:
            return tuple(item.decode('utf-8') for item in array.tolist())
        except UnicodeDecodeError as exc:
            raise _error(path, f'{key} is not valid UTF-8: {exc}') from exc
    # Empty and duplicate names are refused by Dataset itself, with the same file name.
    return tuple(str(item) for item in array.tolist())


def _labels_to_uint8(path: Path, values: np.ndarray, locate) -> np.ndarray:
    """Convert a label matrix (n, c) of any real dtype to uint8, refusing anything but 0 and 1.

    ``locate(row, column)`` describes a position for the message (array index or CSV line).
    """
    if values.dtype == np.uint8 or values.dtype == np.bool_:
        bad = values > 1
    else:
        bad = ~((values == 0) | (values == 1))  # NaN compares unequal to both and is caught
    if bad.any():
        count, row, column = _first_true(bad)
        raise _error(path, f'{count} label(s) are not 0 or 1; the first is '
                           f'{values[row, column].item()!r} at {locate(row, column)}')
    return values.astype(np.uint8)


def _cast_features(path: Path, values: np.ndarray, dtype: np.dtype, locate) -> np.ndarray:
    """Cast finite real features (n, d) to ``dtype``, refusing values that overflow float32."""
    if values.dtype == dtype:
        return values
    with np.errstate(over='ignore'):  # an overflow becomes inf and is reported below
        cast = values.astype(dtype)
    overflowed = ~np.isfinite(cast)
    if overflowed.any():
        count, row, column = _first_true(overflowed)
        raise _error(path, f'{count} feature value(s) exceed the {dtype} range; the first is '
                           f'{values[row, column].item()!r} at {locate(row, column)}')
    return cast


_CSV_CHUNK_ROWS = 4096


def _load_csv(path: Path, dtype: np.dtype, label_columns: Sequence[str] | None,
              label_prefix: str, require_labels: bool) -> Dataset:
    # Rows are parsed into Python floats (32+ bytes each) only a chunk at a time, then packed
    # into float64 arrays: the peak stays near twice the table instead of ~8 times.
    chunks: list[np.ndarray] = []
    rows: list[list[float]] = []
    line_numbers: list[int] = []  # physical line of each data row (quoted fields may span lines)
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with open(path, newline='', encoding='utf-8-sig') as file:
            reader = csv.reader(file)
            header = _read_header(path, reader)
            width = len(header)
            blank_line = None  # a blank line, unless only blank lines follow it
            for row in reader:
                if not row:
                    blank_line = reader.line_num
                    continue
                if blank_line is not None and width == 1:
                    # With one column an empty cell is a blank line: skipping it would shift
                    # every later row.
                    raise _error(path, f'line {blank_line}, column 1 ({header[0]!r}): empty '
                                       f'cell (a blank line in a one-column file)')
                blank_line = None
                if len(row) != width:
                    raise _error(path, f'line {reader.line_num} has {len(row)} fields, the header '
                                       f'has {width}')
                try:
                    if '_' in ''.join(row):  # float() reads '1_0' as 10.0: no number here
                        raise ValueError('an underscore')
                    rows.append(list(map(float, row)))
                except ValueError:
                    raise _bad_cell_error(path, reader.line_num, header, row) from None
                line_numbers.append(reader.line_num)
                if len(rows) == _CSV_CHUNK_ROWS:
                    chunks.append(np.array(rows, dtype=np.float64))
                    rows = []
    except UnicodeDecodeError as exc:
        raise _error(path, f'is not UTF-8 text ({exc.reason} at byte {exc.start})') from exc
    except csv.Error as exc:
        raise _error(path, f'malformed CSV: {exc}') from exc
    if rows:
        chunks.append(np.array(rows, dtype=np.float64))
    del rows
    if not chunks:
        raise _error(path, 'has a header but no data rows')

    label_index, class_names = _select_label_columns(path, header, label_columns, label_prefix)
    if require_labels and not label_index:
        how = (f'none of the header names start with {label_prefix!r}'
               if label_columns is None else 'label_columns is empty')
        raise _error(path, f'no label columns found: {how}; the header is '
                           f'{_quote_list(header)}')
    is_label = set(label_index)
    feature_index = [column for column in range(width) if column not in is_label]
    if not feature_index:
        raise _error(path, 'has no feature columns (every column is a label)')
    feature_names = tuple(header[column] for column in feature_index)

    # Python's float() parsed each cell exactly.
    table = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    del chunks
    features = table[:, feature_index]
    labels = table[:, label_index] if label_index else np.zeros((len(table), 0))
    del table

    def locate(columns: list[int]):
        return lambda row, column: (f'line {line_numbers[row]}, column {columns[column] + 1} '
                                    f'({header[columns[column]]!r})')

    non_finite = ~np.isfinite(features)
    if non_finite.any():
        count, row, column = _first_true(non_finite)
        raise _error(path, f'{count} non-finite feature value(s) (NaN or Inf); the first is '
                           f'{features[row, column]} at {locate(feature_index)(row, column)}')
    Y = _labels_to_uint8(path, labels, locate(label_index))
    X = _cast_features(path, features, dtype, locate(feature_index))
    return Dataset(X, Y, feature_names, class_names, source=str(path))


def _read_header(path: Path, reader) -> list[str]:
    for header in reader:
        if header:
            break
    else:
        raise _error(path, 'file is empty (no header row)')
    header = [name.strip() for name in header]
    if len(header) == 1:
        separators = [name for name, char in (('semicolons', ';'), ('tabs', '\t'))
                      if char in header[0]]
        if separators:
            raise _error(path, f'the header is one column holding {separators[0]}: a CSV file '
                               f'here separates its columns with commas')
    empty = [index + 1 for index, name in enumerate(header) if not name]
    if empty:
        raise _error(path, f'header (line {reader.line_num}) has an empty name in column '
                           f'{empty[0]}')
    repeated = _duplicates(header)
    if repeated:
        described = ', '.join(f'{name!r} (columns {", ".join(str(i + 1) for i in where)})'
                              for name, where in list(repeated.items())[:_MAX_LISTED])
        raise _error(path, f'duplicate column names in the header: {described}')
    return header


def _bad_cell_error(path: Path, line: int, header: list[str], row: list[str]) -> DatasetError:
    """Locate the first cell of ``row`` that is no number (the slow path, errors only)."""
    for column, cell in enumerate(row):
        try:
            if '_' in cell:
                raise ValueError(cell)
            float(cell)
        except ValueError:
            shown = 'empty cell' if not cell.strip() else f'non-numeric value {cell!r}'
            return _error(path, f'line {line}, column {column + 1} ({header[column]!r}): {shown}')
    return _error(path, f'line {line}: unparsable row')  # unreachable: some cell failed above


def _select_label_columns(path: Path, header: list[str], label_columns: Sequence[str] | None,
                          label_prefix: str) -> tuple[list[int], tuple[str, ...]]:
    """Return the 0-based header indices of the label columns and the class names, in order."""
    if label_columns is not None:
        wanted = [str(name) for name in label_columns]
        repeated = _duplicates(wanted)
        if repeated:
            raise _error(path, f'label_columns lists {_quote_list(repeated)} more than once')
        position = {name: index for index, name in enumerate(header)}
        missing = [name for name in wanted if name not in position]
        if missing:
            raise _error(path, f'label column(s) {_quote_list(missing)} not in the header '
                               f'{_quote_list(header)}')
        return [position[name] for name in wanted], tuple(wanted)
    label_index = [index for index, name in enumerate(header) if name.startswith(label_prefix)]
    class_names = tuple(header[index][len(label_prefix):] for index in label_index)
    for index, name in zip(label_index, class_names):
        if not name:
            raise _error(path, f'column {index + 1} is the bare label prefix {label_prefix!r} '
                               f'with no class name after it')
    # A misspelt prefix ('lable:pole') would make a copy of the labels a feature, silently.
    # Feature names (the feature config's) never hold the prefix's separator.
    separator = label_prefix[-1:] if label_prefix[-1:] in (':', '/', '=') else ''
    labels = set(label_index)
    for index, name in enumerate(header):
        if separator and index not in labels and separator in name:
            raise _error(path, f'column {index + 1} {name!r} has a {separator!r} as label '
                               f'columns do, but not their prefix {label_prefix!r}: a typo? '
                               f'(feature names have none; or name the label columns)')
    return label_index, class_names


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

def save_dataset(path: PathLike, ds: Dataset, *, label_prefix: str = DEFAULT_LABEL_PREFIX,
                 stamps_ns: Optional[np.ndarray] = None) -> None:
    """Write ``ds`` to a ``.npz`` or ``.csv`` file, atomically.

    The file appears complete or not at all (see :mod:`obstacle_classifier.atomic`); an existing
    file is replaced only once the new one is fully on disk.

    NPZ keeps X's dtype; ``stamps_ns`` (int64 (n,), NPZ only), the time of each row (a bag's
    tick times), is stored beside the data as ``stamps_ns`` (loading ignores it). CSV writes
    each feature as ``repr(float(value))``: the shortest decimal that reads back to the same
    float64 (a float32 value is written as its exact float64 widening, so reading it back as
    float32 is exact too), labels as ``0``/``1``, and label columns as
    ``label_prefix + class name``.

    Raises:
        DatasetError: unsupported extension, missing directory, or (CSV) names that would not
            read back as written.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.parent.is_dir():
        raise _error(path, f'cannot write: directory {str(path.parent)!r} does not exist')
    if suffix == '.npz':
        arrays = {
            'X': ds.X,
            'Y': ds.Y,
            # dtype=str gives a fixed-width unicode array, loadable without pickle (even if empty).
            'feature_names': np.array(ds.feature_names, dtype=str),
            'class_names': np.array(ds.class_names, dtype=str),
        }
        if stamps_ns is not None:
            stamps = np.asarray(stamps_ns, dtype=np.int64)
            if stamps.shape != (ds.n,):
                raise _error(path, f'stamps_ns has shape {stamps.shape}, expected ({ds.n},)')
            arrays['stamps_ns'] = stamps
        atomic_write(path, lambda file: np.savez(file, **arrays))
        return
    if stamps_ns is not None:
        raise _error(path, 'stamps_ns can only be stored in an .npz file')
    if not label_prefix:
        raise ValueError('label_prefix must be non-empty')
    _check_csv_names(path, ds, label_prefix)
    atomic_write(path, lambda file: _write_csv(file, ds, label_prefix))


def _check_csv_names(path: Path, ds: Dataset, label_prefix: str) -> None:
    clashing = [name for name in ds.feature_names if name.startswith(label_prefix)]
    if clashing:
        raise _error(path, f'feature name(s) {_quote_list(clashing)} start with the label prefix '
                           f'{label_prefix!r} and would be read back as classes')
    padded = [name for name in ds.feature_names + ds.class_names if name != name.strip()]
    if padded:
        raise _error(path, f'name(s) {_quote_list(padded)} have leading or trailing whitespace, '
                           f'which the CSV reader strips')


def _write_csv(file: BinaryIO, ds: Dataset, label_prefix: str) -> None:
    text = io.TextIOWrapper(file, encoding='utf-8', newline='')
    # Names may need quoting, so the header goes through the csv module; numbers never do, and
    # joining them directly is about a quarter faster.
    csv.writer(text, lineterminator='\n').writerow(
        list(ds.feature_names) + [label_prefix + name for name in ds.class_names])
    # tolist() widens float32 to the exactly equal Python float; repr is round-trip exact.
    for features, labels in zip(ds.X.tolist(), ds.Y.tolist()):
        text.write(','.join([*map(repr, features), *map(str, labels)]) + '\n')
    text.flush()
    text.detach()  # leave the binary file open for atomic_write to fsync and close


# --------------------------------------------------------------------------------------------
# Compatibility with a model
# --------------------------------------------------------------------------------------------

def check_compatible(ds: Dataset, feature_names: Sequence[str],
                     class_names: Sequence[str] | None) -> None:
    """Check that ``ds`` has exactly the expected feature (and class) names, in the same order.

    Args:
        ds: the data set, e.g. as loaded for ``evaluate`` or ``predict``.
        feature_names: the d names the model was trained on, in input order.
        class_names: the model's c class names in output order, or None to skip the class check
            (unlabelled input for prediction).

    Raises:
        DatasetError: naming ``ds.source`` and every difference: width mismatch, missing,
            unexpected and reordered names.
    """
    problems = name_differences('feature', ds.feature_names, list(feature_names))
    if class_names is not None:
        problems += name_differences('class', ds.class_names, list(class_names))
    if problems:
        raise _error(ds.source, 'does not match the model: ' + '; '.join(problems))


def name_differences(kind: str, actual: Sequence[str], expected: Sequence[str]) -> list[str]:
    """Describe how ``actual`` differs from ``expected`` (empty list: identical)."""
    if list(actual) == list(expected):
        return []
    plural = {'feature': 'features', 'class': 'classes'}[kind]
    problems = []
    if len(actual) != len(expected):
        problems.append(f'width mismatch: expected {len(expected)} {plural}, got {len(actual)}')
    actual_set, expected_set = set(actual), set(expected)
    missing = [name for name in expected if name not in actual_set]
    unexpected = [name for name in actual if name not in expected_set]
    if missing:
        problems.append(f'missing {plural}: {_quote_list(missing)}')
    if unexpected:
        problems.append(f'unexpected {plural}: {_quote_list(unexpected)}')
    if not missing and not unexpected:
        # Same names, different order: a silent disaster for a model, so show where.
        moved = [f'position {index} is {got!r}, expected {want!r}'
                 for index, (got, want) in enumerate(zip(actual, expected)) if got != want]
        shown = '; '.join(moved[:_MAX_LISTED])
        if len(moved) > _MAX_LISTED:
            shown += f' ... and {len(moved) - _MAX_LISTED} more'
        problems.append(f'{plural} reordered: {shown}')
    return problems
