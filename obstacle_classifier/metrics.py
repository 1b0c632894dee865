"""Multi-label classification metrics and per-class decision thresholds, in NumPy.

Conventions (the same as scikit-learn's with ``zero_division=0``, against which they are tested):

* A label matrix is (n, c) with entries in {0, 1}; column k is class k.
* A ratio whose denominator is zero is 0: precision of a class never predicted, recall of a class
  that never occurs, and F1 when both are undefined.
* F1 is computed as 2 TP / (2 TP + FP + FN), which equals the harmonic mean of precision and
  recall whenever both are defined and needs no special case when one of them is zero.
* Macro averages are unweighted means over ALL classes, including empty ones; micro averages pool
  the counts of all classes.
* Decision rule everywhere: class k is predicted iff P[:, k] >= threshold[k].
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np

__all__ = ['best_f1_thresholds', 'format_report', 'multilabel_report', 'threshold_predictions']

ArrayLike = Union[np.ndarray, Sequence]


def _binary_matrix(name: str, labels: ArrayLike) -> np.ndarray:
    """Validate an (n, c) {0, 1} matrix of any real or bool dtype; return it as bool."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f'{name} must be 2-D (n, c), got shape {labels.shape}')
    if labels.dtype.kind not in 'biuf':
        raise ValueError(f'{name} must hold 0/1 numbers, got dtype {labels.dtype}')
    if labels.dtype != np.bool_:
        not_binary = (labels != 0) & (labels != 1)  # NaN is caught here too
        if not_binary.any():
            row, column = np.argwhere(not_binary)[0]
            raise ValueError(f'{name} must contain only 0 and 1; {name}[{row}, {column}] is '
                             f'{labels[row, column].item()!r}')
    return labels.astype(bool, copy=False)


def _score_matrix(name: str, scores: ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
    """Validate an (n, c) real score matrix of the given shape without NaN."""
    scores = np.asarray(scores)
    if scores.dtype.kind not in 'biuf':
        raise ValueError(f'{name} must hold real numbers, got dtype {scores.dtype}')
    if scores.shape != shape:
        raise ValueError(f'{name} has shape {scores.shape}, expected {shape}')
    if scores.dtype.kind == 'f' and np.isnan(scores).any():
        # NaN compares False with every threshold and has no place in a sort order.
        raise ValueError(f'{name} contains NaN')
    return scores


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator element-wise, 0 where the denominator is 0 (zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _precision_recall_f1(tp: np.ndarray, fp: np.ndarray,
                         fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def multilabel_report(Y_true: ArrayLike, Y_pred: ArrayLike, class_names: Sequence[str]) -> dict:
    """Per-class and averaged precision, recall, F1, plus Hamming loss and subset accuracy.

    Args:
        Y_true: (n, c) ground truth in {0, 1} (bool, integer or float dtype).
        Y_pred: (n, c) predictions in {0, 1}.
        class_names: c names, the keys of ``report['per_class']`` (column order).

    Returns:
        A JSON-serialisable dict of plain Python numbers::

            {'per_class': {name: {'precision', 'recall', 'f1', 'support'}},
             'micro': {'precision', 'recall', 'f1'},
             'macro': {'precision', 'recall', 'f1'},
             'hamming_loss': fraction of the n * c label slots that are wrong,
             'subset_accuracy': fraction of samples whose whole label row is right,
             'n_samples': n}

        ``support`` is the number of true positives plus false negatives (occurrences) per class.
    """
    truth = _binary_matrix('Y_true', Y_true)
    predicted = _binary_matrix('Y_pred', Y_pred)
    if truth.shape != predicted.shape:
        raise ValueError(f'Y_true has shape {truth.shape} but Y_pred has {predicted.shape}')
    n_samples, n_classes = truth.shape
    if n_samples == 0 or n_classes == 0:
        raise ValueError(f'need at least one sample and one class, got shape {truth.shape}')
    names = list(class_names)
    if len(names) != n_classes or len(set(names)) != n_classes:
        raise ValueError(f'class_names must be {n_classes} unique names, got {names!r}')

    # Counts per class (c,), int64 so the sums below cannot overflow.
    tp = np.count_nonzero(truth & predicted, axis=0).astype(np.int64)
    fp = np.count_nonzero(~truth & predicted, axis=0).astype(np.int64)
    fn = np.count_nonzero(truth & ~predicted, axis=0).astype(np.int64)
    precision, recall, f1 = _precision_recall_f1(tp, fp, fn)
    micro = _precision_recall_f1(tp.sum(), fp.sum(), fn.sum())

    return {
        'per_class': {
            name: {'precision': float(precision[k]), 'recall': float(recall[k]),
                   'f1': float(f1[k]), 'support': int(tp[k] + fn[k])}
            for k, name in enumerate(names)
        },
        'micro': {key: float(value) for key, value in zip(('precision', 'recall', 'f1'), micro)},
        'macro': {'precision': float(precision.mean()), 'recall': float(recall.mean()),
                  'f1': float(f1.mean())},
        'hamming_loss': float(np.count_nonzero(truth != predicted) / truth.size),
        'subset_accuracy': float(np.count_nonzero((truth == predicted).all(axis=1)) / n_samples),
        'n_samples': int(n_samples),
    }


def format_report(report: dict, digits: int = 3) -> str:
    """Render a :func:`multilabel_report` dict as an aligned text table.

    Laid out like scikit-learn's ``classification_report``: one row per class, then the micro and
    macro averages (their support is the total number of positive labels), then the sample-level
    scores.
    """
    per_class = report['per_class']
    averages = {'micro avg': report['micro'], 'macro avg': report['macro']}
    total_support = sum(scores['support'] for scores in per_class.values())
    name_width = max(len(name) for name in [*per_class, *averages])
    column_width = max(10, digits + 7)  # 'precision' or '1.' + digits, plus a gap
    columns = ('precision', 'recall', 'f1-score', 'support')

    def row(name: str, scores: dict, support: int) -> str:
        values = ''.join(f'{scores[key]:>{column_width}.{digits}f}'
                         for key in ('precision', 'recall', 'f1'))
        return f'{name:>{name_width}} {values}{support:>{column_width}d}'

    lines = [f'{"":>{name_width}} ' + ''.join(f'{title:>{column_width}}' for title in columns),
             '']
    lines += [row(name, scores, scores['support']) for name, scores in per_class.items()]
    lines.append('')
    lines += [row(name, scores, total_support) for name, scores in averages.items()]
    lines.append('')
    summary = {'hamming loss': f'{report["hamming_loss"]:.{digits + 1}f}',
               'subset accuracy': f'{report["subset_accuracy"]:.{digits}f}',
               'samples': str(report['n_samples'])}
    label_width = max(len(label) for label in summary)
    lines += [f'{label:>{label_width}}: {value}' for label, value in summary.items()]
    return '\n'.join(lines) + '\n'


def best_f1_thresholds(Y_true: ArrayLike, P: ArrayLike, candidates: ArrayLike | None = None, *,
                       default_threshold: float | ArrayLike = 0.5
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the decision threshold that maximises F1 on (Y_true, P).

    Args:
        Y_true: (n, c) ground truth in {0, 1}.
        P: (n, c) predicted probabilities (any real scores work; NaN is refused).
        candidates: optional 1-D thresholds shared by all classes. If None, every distinct score
            of the class is a candidate, which covers every achievable prediction set.
        default_threshold: returned for a class with no positive sample in Y_true: one number,
            or one per class (c,), e.g. the thresholds a model already has.

    Returns:
        ``(thresholds, best_f1)``, both float64 (c,). Predicting ``P[:, k] >= thresholds[k]``
        scores exactly ``best_f1[k]`` on the given data.

    Choices, made deliberately:

    * Ties: among thresholds with the same best F1, the LOWEST is returned. It predicts the
      class more often, i.e. at equal F1 it has the higher recall; for a robot a missed obstacle
      costs more than a false alarm. (It is also what ``argmax`` over scikit-learn's
      ``precision_recall_curve`` picks.)
    * A class with no positives has F1 = 0 at every threshold (zero_division=0), so the data
      say nothing about it: it keeps ``default_threshold`` and reports best F1 0.0, rather than
      being tuned to "never fire" on the strength of a validation set that lacks it.
    * With ``candidates=None`` the threshold is one of the observed scores itself (the lowest
      score still predicted positive), not a midpoint, so the result is exact and reproducible.

    Cost: one sort per class, O(n log n), plus O(n) cumulative counts (O(k log n) per class for
    k explicit candidates).
    """
    truth = _binary_matrix('Y_true', Y_true)
    scores = _score_matrix('P', P, truth.shape)
    n_samples, n_classes = truth.shape
    if n_samples == 0:
        raise ValueError('need at least one sample')
    try:
        defaults = np.broadcast_to(np.asarray(default_threshold, dtype=np.float64), n_classes)
    except ValueError:
        raise ValueError(f'default_threshold must be one number or one per class '
                         f'({n_classes},), got shape {np.shape(default_threshold)}') from None
    n_positive = np.count_nonzero(truth, axis=0)  # (c,)
    if candidates is None:
        thresholds, best_f1 = _best_over_observed_scores(truth, scores, n_positive)
    else:
        thresholds, best_f1 = _best_over_candidates(truth, scores, n_positive, candidates)
    no_positives = n_positive == 0
    thresholds[no_positives] = defaults[no_positives]
    best_f1[no_positives] = 0.0
    return thresholds, best_f1


def _best_over_observed_scores(truth: np.ndarray, scores: np.ndarray,
                               n_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates = the distinct scores of each class; all classes at once, (n, c) work arrays."""
    n_samples, n_classes = truth.shape
    # Sort each column once, highest score first: predicting the top m samples positive is the
    # threshold "score of the m-th sample" whenever that score differs from the (m+1)-th.
    order = np.argsort(scores, axis=0, kind='stable')[::-1]
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    true_positives = np.cumsum(np.take_along_axis(truth, order, axis=0), axis=0)  # (n, c)
    n_predicted = np.arange(1, n_samples + 1)[:, None]  # (n, 1)
    # 2TP + FP + FN == (TP + FP) + (TP + FN) == predicted + actual positives; never 0 here.
    f1 = 2.0 * true_positives / (n_predicted + n_positive)
    # Tied scores are predicted together under P >= t: only the last row of a run of equal
    # scores is an achievable cut.
    run_end = np.ones((n_samples, n_classes), dtype=bool)
    run_end[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    f1 = np.where(run_end, f1, -1.0)
    # Lowest threshold among equal F1 = the LAST maximum in this descending order.
    best_row = n_samples - 1 - np.argmax(f1[::-1], axis=0)
    columns = np.arange(n_classes)
    return (sorted_scores[best_row, columns].astype(np.float64),
            f1[best_row, columns].astype(np.float64))


def _best_over_candidates(truth: np.ndarray, scores: np.ndarray, n_positive: np.ndarray,
                          candidates: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Candidates given explicitly: per candidate, count the scores at or above it by bisection."""
    grid = np.asarray(candidates, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.isnan(grid).any():
        raise ValueError('candidates must be a non-empty 1-D array of thresholds without NaN')
    grid = np.unique(grid)  # ascending, so the first maximum is the lowest threshold
    n_samples, n_classes = truth.shape
    thresholds = np.empty(n_classes)
    best_f1 = np.empty(n_classes)
    for k in range(n_classes):
        column = scores[:, k]
        all_sorted = np.sort(column)
        positives_sorted = np.sort(column[truth[:, k]])
        # searchsorted(..., 'left') counts the scores strictly below each candidate.
        n_predicted = n_samples - np.searchsorted(all_sorted, grid, side='left')
        true_positives = n_positive[k] - np.searchsorted(positives_sorted, grid, side='left')
        f1 = _ratio(2 * true_positives, n_predicted + n_positive[k])
        best = int(np.argmax(f1))
        thresholds[k], best_f1[k] = grid[best], f1[best]
    return thresholds, best_f1


def threshold_predictions(P: ArrayLike, thresholds: Union[float, ArrayLike]) -> np.ndarray:
    """Apply per-class thresholds: ``(P >= thresholds)`` as uint8.

    Args:
        P: (n, c) probabilities.
        thresholds: (c,) per-class thresholds, or one scalar for all classes.

    Returns:
        (n, c) uint8 in {0, 1}. A NaN probability compares False and yields 0.
    """
    P = np.asarray(P)
    if P.ndim != 2:
        raise ValueError(f'P must be 2-D (n, c), got shape {P.shape}')
    thresholds = np.asarray(thresholds)
    if thresholds.ndim not in (0, 1) or (thresholds.ndim == 1
                                         and thresholds.shape[0] != P.shape[1]):
        raise ValueError(f'thresholds must be a scalar or have shape ({P.shape[1]},), got '
                         f'{thresholds.shape}')
    return (P >= thresholds).astype(np.uint8)
