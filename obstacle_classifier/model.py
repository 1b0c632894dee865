"""A deployable obstacle model: the network plus everything needed to run it on a robot.

:class:`ObstacleModel` bundles the :class:`~obstacle_classifier.nn.MLP` with its class names,
feature names (the contract with the feature pipeline), input normalisation, per-class decision
thresholds and free-form metadata, and saves / loads it as one ``.npz`` file:

- read with ``allow_pickle=False`` (a file can never execute code), every array checked against
  the declared architecture, and a SHA-256 over every entry so an edited file is refused;
- written deterministically (fixed zip timestamps, sorted entries): the same model gives the same
  bytes, so "same seed and data -> identical model file" is testable;
- written atomically (temporary file, fsync, rename): a crash mid-write leaves the previous file.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .atomic import atomic_write
from .datasets import (NPZ_DAMAGE_ERRORS, class_name_problem, name_differences,
                       npz_signature_problem)
from .nn import MLP, Linear, LinearClassifier, Network

FORMAT_NAME = 'obstacle_classifier.model'
FORMAT_VERSION = 1
#: Largest model file loaded (1 GiB: a float64 MLP with h = 8192 is 0.5 GiB). A node reads its
#: model on the executor thread: a file beyond any model it could run at rate is refused before
#: it is read.
MAX_MODEL_BYTES = 1 << 30
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: identical models give identical bytes


class ModelFileError(ValueError):
    """A model file that cannot be used; the message names the file and what is wrong."""


def name_mismatch(expected: Sequence[str], actual: Sequence[str], kind: str) -> Optional[str]:
    """Describe how two ordered name lists differ (``kind``: 'feature' or 'class'), or None."""
    problems = name_differences(kind, actual, expected)
    return '; '.join(problems) if problems else None


@dataclass
class ObstacleModel:
    """The network and its deployment contract.

    Attributes:
        network: the MLP (or the linear baseline); input width d = len(feature_names), output
            c = len(class_names).
        class_names: (c,) obstacle classes, in output order.
        feature_names: (d,) names of the feature vector the network expects, in order.
        input_mean, input_std: (d,) float64 normalisation fitted on training data;
            the network sees ``(x - input_mean) / input_std``.
        thresholds: (c,) float64 per-class decision thresholds (positive iff p >= threshold).
        metadata: JSON-serialisable dict (how it was trained, scores, ...).
    """

    network: Network
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...]
    input_mean: np.ndarray
    input_std: np.ndarray
    thresholds: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.class_names = tuple(str(name) for name in self.class_names)
        self.feature_names = tuple(str(name) for name in self.feature_names)
        self.input_mean = np.asarray(self.input_mean, dtype=np.float64)
        self.input_std = np.asarray(self.input_std, dtype=np.float64)
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        problem = self._consistency_problem()
        if problem:
            raise ValueError(problem)

    @classmethod
    def create(cls, feature_names: Sequence[str], class_names: Sequence[str], hidden: int = 64,
               *, dtype: np.dtype | type = np.float64, activation: str = 'scaled_relu',
               architecture: str = 'mlp', rng: Any = None,
               input_mean: Optional[np.ndarray] = None, input_std: Optional[np.ndarray] = None,
               metadata: Optional[dict] = None) -> 'ObstacleModel':
        """A freshly initialised model (identity normalisation unless given, thresholds 0.5).

        ``architecture``: 'mlp' (the brief's, width ``hidden``) or 'linear' (the baseline).
        """
        d, c = len(feature_names), len(class_names)
        network = _build_network(architecture, d, hidden, c, dtype, activation, rng)
        return cls(network=network, class_names=tuple(class_names),
                   feature_names=tuple(feature_names),
                   input_mean=np.zeros(d) if input_mean is None else input_mean,
                   input_std=np.ones(d) if input_std is None else input_std,
                   thresholds=np.full(c, 0.5), metadata=dict(metadata or {}))

    # -- inference -------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def normalise(self, X: np.ndarray) -> np.ndarray:
        """(n, d) or (d,) raw features -> ``(X - input_mean) / input_std``, computed in float64
        and rounded to the network's dtype (a new array). ValueError if the shape is wrong or a
        value is not finite, in the features or once normalised (an overflow)."""
        X = np.asarray(X)
        if X.shape[-1:] != (self.n_features,) or X.ndim not in (1, 2):
            raise ValueError(f'expected features of shape (n, {self.n_features}) or '
                             f'({self.n_features},), got {X.shape}')
        Z = np.subtract(X, self.input_mean)
        with np.errstate(over='ignore', invalid='ignore'):  # an overflow is reported below
            Z = np.divide(Z, self.input_std, out=np.empty(Z.shape, self.network.dtype))
            # One pass finds NaN and inf anywhere: a sum propagates both. Only a sum that
            # overflows from finite values (features of 1e36) needs the exact test.
            total = np.add.reduce(Z, axis=None)
        if not math.isfinite(total) and not np.isfinite(Z).all():
            raise ValueError(self._not_finite(X, Z))
        return Z

    def _not_finite(self, X: np.ndarray, Z: np.ndarray) -> str:
        """Where the first feature that is not finite, raw or once normalised, is."""
        flat = int(np.flatnonzero(~np.isfinite(Z))[0])
        row, column = divmod(flat, self.n_features)
        where = (f'row {row}, ' if X.ndim == 2 else '') + f'feature {self.feature_names[column]!r}'
        value = float(X.reshape(-1)[flat])
        what = ('is not finite' if not math.isfinite(value) else
                f'overflows {self.network.dtype} once normalised')
        return (f'features contain NaN or Inf ({where} = {value!r} {what}); the feature '
                'pipeline must reject or fill such readings before inference')

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities (n, c) for raw features (n, d), or (c,) for one vector (d,).

        Logits that overflow give probabilities of exactly 0 or 1, a valid answer, without a
        warning; NaN (inf - inf inside a network with enormous weights) means no answer, and is
        the caller's to check, as the node does per tick (``decide`` takes NaN as absent).
        """
        Z = self.normalise(X)
        with np.errstate(over='ignore', invalid='ignore'):
            return self.network.predict_proba(Z)

    def decide(self, probabilities: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
        """Multi-hot uint8 decisions for probabilities (..., c): ``p >= threshold`` per class
        (the model's per-class thresholds, or one global ``threshold`` overriding them)."""
        limit = self.thresholds if threshold is None else threshold
        return (np.asarray(probabilities) >= limit).astype(np.uint8)

    def predict_one(self, features: np.ndarray, out: np.ndarray,
                    threshold: Optional[float] = None
                    ) -> tuple[np.ndarray, list[float], list[str]]:
        """One feature vector's answer, for a node's tick: raw ``features`` (d,) float64 ->
        (the normalised features (d,) in the network's dtype, a new array; the c probabilities
        as Python floats; the names of the classes decided present).

        ``out`` (c,), in the network's dtype, receives the probabilities
        (``network.predict_proba_into``). The same answer as ``predict_proba`` then
        ``decide`` on one vector (a test holds it) with half of their NumPy calls around
        the network's: a node wakes for each tick with its caches cold, where every NumPy
        call costs several microseconds, so the probabilities are checked and decided on as
        Python floats. Raises ValueError as :meth:`normalise` (and for a batch),
        FloatingPointError if the network gives NaN.
        """
        x = self.normalise(features)
        if x.ndim != 1:
            raise ValueError(f'expected features of shape ({self.n_features},), got '
                             f'{x.shape}')
        probabilities = self.network.predict_proba_into(x, out).tolist()
        limits = self.thresholds.tolist() if threshold is None else None
        labels = []
        for k, p in enumerate(probabilities):
            if not 0.0 <= p <= 1.0:  # NaN: overflowing activations met (inf - inf)
                raise FloatingPointError('the model gave NaN probabilities (its activations '
                                         'overflow on these features)')
            if p >= (threshold if limits is None else limits[k]):
                labels.append(self.class_names[k])
        return x, probabilities, labels

    def predict(self, X: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
        """Multi-hot uint8 decisions (n, c) or (c,)."""
        return self.decide(self.predict_proba(X), threshold)

    def check_features(self, feature_names: Sequence[str]) -> None:
        """Raise ValueError naming the difference if the pipeline's names are not the model's."""
        problem = name_mismatch(self.feature_names, feature_names, 'feature')
        if problem:
            raise ValueError(f'model and feature config disagree: {problem}')

    @property
    def version(self) -> str:
        """Short content hash: identifies exactly which weights are serving."""
        return self._checksum(self._arrays())[:12]

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the model atomically as a deterministic ``.npz``. ValueError (and the file
        untouched) if a weight is NaN or infinite: :meth:`load` would refuse the file."""
        arrays = self._arrays()
        for key, value in arrays.items():
            if key.startswith('layers.') and not np.all(np.isfinite(value)):
                raise ValueError(f'{key} contains NaN or Inf; refusing to save a model that '
                                 f'cannot be loaded')
        arrays['checksum'] = np.array(self._checksum(arrays))
        atomic_write(Path(path), lambda fileobj: _write_npz(fileobj, arrays))

    @classmethod
    def load(cls, path: str | Path) -> 'ObstacleModel':
        """Load and fully validate a model file; raise :class:`ModelFileError` otherwise."""
        path = Path(path)
        try:
            # Only a regular file: opening a FIFO (or a device) would wait for a writer.
            if path.exists() and not path.is_dir() and not path.is_file():
                raise ModelFileError(f'{path}: not a regular file, not a model file')
            with open(path, 'rb') as stream:
                size = os.fstat(stream.fileno()).st_size
                problem = npz_signature_problem(stream.read(8))
                if problem:
                    raise ModelFileError(f'{path}: {problem}; a model file is an .npz archive')
                if size > MAX_MODEL_BYTES:
                    raise ModelFileError(f'{path}: {size} bytes, more than any model file '
                                         f'({MAX_MODEL_BYTES} bytes at most)')
                # All of it first: np.load leaks its file handle when the zip is corrupt.
                stream.seek(0)
                data = stream.read()
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        except FileNotFoundError:
            raise ModelFileError(f'{path}: no such model file') from None
        except IsADirectoryError:
            raise ModelFileError(f'{path}: is a directory, not a model file') from None
        except ModelFileError:
            raise
        except ValueError as exc:
            if 'allow_pickle' in str(exc):
                raise ModelFileError(f'{path}: contains pickled objects; refusing to load '
                                     f'(model files hold plain arrays only)') from None
            raise ModelFileError(f'{path}: not a valid model file ({exc})') from None
        except (KeyError, *NPZ_DAMAGE_ERRORS) as exc:
            raise ModelFileError(f'{path}: unreadable, truncated or corrupt model file '
                                 f'({type(exc).__name__}: {exc})') from None
        try:
            return cls._from_arrays(arrays)
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise ModelFileError(f'{path}: {message}') from None

    def _arrays(self) -> dict[str, np.ndarray]:
        net = self.network
        architecture = {'type': net.kind, 'd': net.d, 'h': net.h, 'c': net.c,
                        'activation': net.activation, 'dtype': net.dtype.name,
                        'layers': [repr(layer) for layer in net.layers]}
        arrays = {
            'format': np.array(FORMAT_NAME),
            'format_version': np.array(FORMAT_VERSION, dtype=np.int64),
            'architecture': np.array(json.dumps(architecture, sort_keys=True)),
            'class_names': np.array(self.class_names, dtype=np.str_),
            'feature_names': np.array(self.feature_names, dtype=np.str_),
            'input_mean': self.input_mean,
            'input_std': self.input_std,
            'thresholds': self.thresholds,
            'metadata': np.array(_metadata_json(self.metadata)),
        }
        for index, layer in enumerate(net.layers):
            if isinstance(layer, Linear):
                arrays[f'layers.{index}.W'] = layer.W
                arrays[f'layers.{index}.b'] = layer.b
        return arrays

    @staticmethod
    def _checksum(arrays: dict[str, np.ndarray]) -> str:
        digest = hashlib.sha256()
        for key in sorted(arrays):
            if key == 'checksum':
                continue
            value = np.ascontiguousarray(arrays[key])
            digest.update(f'{key}|{value.dtype.str}|{value.shape}|'.encode())
            digest.update(value.tobytes())
        return digest.hexdigest()

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray]) -> 'ObstacleModel':
        if str(arrays.get('format', '')) != FORMAT_NAME:
            raise ValueError(f'not an obstacle_classifier model (no "format" entry equal to '
                             f'{FORMAT_NAME!r})')
        version = int(arrays['format_version'])
        if version != FORMAT_VERSION:
            raise ValueError(f'format version {version} is not supported (this build reads '
                             f'version {FORMAT_VERSION})')
        if 'checksum' not in arrays:
            raise ValueError('no checksum entry; the file is incomplete or was not written by '
                             'obstacle_classifier')
        if str(arrays['checksum']) != cls._checksum(arrays):
            raise ValueError('checksum mismatch: the file was modified or corrupted after it '
                             'was written')
        arch = json.loads(str(arrays['architecture']))
        network = _build_network(arch.get('type'), int(arch['d']), int(arch['h']),
                                 int(arch['c']), arch['dtype'], arch['activation'], rng=0)
        for index, layer in enumerate(network.layers):
            if not isinstance(layer, Linear):
                continue
            for name, target in (('W', layer.W), ('b', layer.b)):
                key = f'layers.{index}.{name}'
                value = arrays[key]
                if value.shape != target.shape or value.dtype != target.dtype:
                    raise ValueError(f'{key} has shape {value.shape} and dtype {value.dtype}, '
                                     f'the architecture needs {target.shape} {target.dtype}')
                if not np.all(np.isfinite(value)):
                    raise ValueError(f'{key} contains NaN or Inf')
                target[...] = value
        model = cls(network=network,
                    class_names=tuple(arrays['class_names'].tolist()),
                    feature_names=tuple(arrays['feature_names'].tolist()),
                    input_mean=arrays['input_mean'], input_std=arrays['input_std'],
                    thresholds=arrays['thresholds'],
                    metadata=json.loads(str(arrays['metadata'])))
        return model

    def _consistency_problem(self) -> Optional[str]:
        d, c = self.network.d, self.network.c
        checks = [
            (len(self.feature_names) == d, f'{len(self.feature_names)} feature names for a '
                                           f'network with {d} inputs'),
            (len(self.class_names) == c, f'{len(self.class_names)} class names for a network '
                                         f'with {c} outputs'),
            (len(set(self.feature_names)) == d, 'duplicate feature names'),
            (len(set(self.class_names)) == c, 'duplicate class names'),
            (self.input_mean.shape == (d,), f'input_mean has shape {self.input_mean.shape}, '
                                            f'expected ({d},)'),
            (self.input_std.shape == (d,), f'input_std has shape {self.input_std.shape}, '
                                           f'expected ({d},)'),
            (self.thresholds.shape == (c,), f'thresholds have shape {self.thresholds.shape}, '
                                            f'expected ({c},)'),
        ]
        for ok, problem in checks:
            if not ok:
                return problem
        for index, name in enumerate(self.class_names):
            problem = class_name_problem(name)
            if problem:
                return f'class name {index} {problem}'
        if not (np.all(np.isfinite(self.input_mean)) and np.all(np.isfinite(self.input_std))
                and np.all(self.input_std > 0)):
            return 'input normalisation must be finite with positive std'
        if not np.all((self.thresholds > 0) & (self.thresholds < 1)):
            return f'thresholds must lie in (0, 1), got {self.thresholds.tolist()}'
        return None


ARCHITECTURES = ('mlp', 'linear')


def _metadata_json(metadata: dict[str, Any]) -> str:
    """The metadata as JSON; NumPy scalars and arrays (a score, a count) become their Python
    values, anything else that JSON cannot hold is a ValueError (before the file is touched)."""
    def numpy_value(value: Any) -> Any:
        if isinstance(value, (np.generic, np.ndarray)):
            return value.tolist()
        raise TypeError(f'{type(value).__name__} {value!r}')

    try:
        return json.dumps(metadata, sort_keys=True, default=numpy_value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'model metadata must be JSON-serialisable: {exc}') from None


def _build_network(architecture: Any, d: int, h: int, c: int, dtype: Any, activation: str,
                   rng: Any) -> Network:
    if architecture == 'mlp':
        return MLP(d, h, c, dtype=dtype, activation=activation, rng=rng)
    if architecture == 'linear':
        return LinearClassifier(d, c, dtype=dtype, rng=rng)
    raise ValueError(f'unsupported architecture {architecture!r} (known: {ARCHITECTURES})')


def _write_npz(fileobj, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` with fixed timestamps, in sorted order."""
    with zipfile.ZipFile(fileobj, mode='w', compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f'{key}.npy', date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())
