"""Metrics against scikit-learn (test-only oracle) and thresholds against brute force."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, hamming_loss, precision_recall_fscore_support

from obstacle_classifier.metrics import (best_f1_thresholds, format_report, multilabel_report,
                                         threshold_predictions)

SKLEARN_SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def label_pairs(draw):
    """(Y_true, Y_pred) (n, c) uint8, often with empty classes and all-zero predictions."""
    n = draw(st.integers(1, 40))
    c = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    density_true = draw(st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.9, 1.0]))
    density_pred = draw(st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.9, 1.0]))
    Y_true = (rng.random((n, c)) < density_true).astype(np.uint8)
    Y_pred = (rng.random((n, c)) < density_pred).astype(np.uint8)
    # Empty classes in the truth and never-predicted classes, independently per column.
    Y_true[:, rng.random(c) < 0.25] = 0
    Y_pred[:, rng.random(c) < 0.25] = 0
    if draw(st.booleans()):
        # Predictions correlated with the truth, so high scores are exercised too.
        flip = rng.random((n, c)) < 0.1
        Y_pred = np.where(flip, 1 - Y_true, Y_true).astype(np.uint8)
    return Y_true, Y_pred


def names(c):
    return [f'class_{k}' for k in range(c)]


def sklearn_prfs(Y_true, Y_pred, average):
    """precision_recall_fscore_support on (n, c) indicator matrices, zero_division=0."""
    # scikit-learn reads a single column as a binary target and would then report on the label
    # values present (0 and/or 1); labels=[1] pins it to the positive class, as for c > 1.
    labels = [1] if Y_true.shape[1] == 1 else None
    return precision_recall_fscore_support(Y_true, Y_pred, average=average, labels=labels,
                                           zero_division=0)


@SKLEARN_SETTINGS
@given(label_pairs())
def test_report_matches_sklearn(pair):
    Y_true, Y_pred = pair
    c = Y_true.shape[1]
    report = multilabel_report(Y_true, Y_pred, names(c))

    precision, recall, f1, support = sklearn_prfs(Y_true, Y_pred, None)
    for k, name in enumerate(names(c)):
        scores = report['per_class'][name]
        assert scores['precision'] == pytest.approx(precision[k], abs=1e-12)
        assert scores['recall'] == pytest.approx(recall[k], abs=1e-12)
        assert scores['f1'] == pytest.approx(f1[k], abs=1e-12)
        assert scores['support'] == support[k]
    for average in ('micro', 'macro'):
        precision, recall, f1, _ = sklearn_prfs(Y_true, Y_pred, average)
        assert report[average]['precision'] == pytest.approx(precision, abs=1e-12)
        assert report[average]['recall'] == pytest.approx(recall, abs=1e-12)
        assert report[average]['f1'] == pytest.approx(f1, abs=1e-12)
    assert report['hamming_loss'] == pytest.approx(hamming_loss(Y_true, Y_pred), abs=1e-12)
    assert report['subset_accuracy'] == pytest.approx(accuracy_score(Y_true, Y_pred), abs=1e-12)
    assert report['n_samples'] == Y_true.shape[0]


def test_all_zero_predictions_and_empty_classes():
    Y_true = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=np.uint8)
    Y_pred = np.zeros_like(Y_true)
    report = multilabel_report(Y_true, Y_pred, ['a', 'b', 'c'])
    assert report['per_class']['a'] == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0,
                                        'support': 2}
    assert report['per_class']['b'] == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0,
                                        'support': 0}
    assert report['micro'] == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0}
    assert report['hamming_loss'] == pytest.approx(2 / 9)
    assert report['subset_accuracy'] == pytest.approx(1 / 3)


def test_report_is_plain_json():
    rng = np.random.default_rng(0)
    Y_true = rng.integers(0, 2, (20, 3)).astype(bool)
    Y_pred = rng.integers(0, 2, (20, 3)).astype(np.float32)
    report = multilabel_report(Y_true, Y_pred, ['pedestrian', 'dog', 'pole'])
    assert json.loads(json.dumps(report)) == report

    def leaves(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from leaves(value)
        else:
            yield node
    assert all(type(value) in (float, int) for value in leaves(report))
    assert list(report['per_class']) == ['pedestrian', 'dog', 'pole']


@pytest.mark.parametrize('Y_true, Y_pred, class_names, match', [
    (np.zeros((3, 2)), np.zeros((3, 3)), ['a', 'b'], 'shape'),
    (np.zeros(3), np.zeros(3), ['a'], '2-D'),
    (np.full((2, 2), 2), np.zeros((2, 2)), ['a', 'b'], r'only 0 and 1; Y_true\[0, 0\] is 2'),
    (np.zeros((2, 2)), np.full((2, 2), np.nan), ['a', 'b'], 'only 0 and 1'),
    (np.zeros((2, 2)), np.zeros((2, 2)), ['a'], '2 unique names'),
    (np.zeros((2, 2)), np.zeros((2, 2)), ['a', 'a'], '2 unique names'),
    (np.zeros((0, 2)), np.zeros((0, 2)), ['a', 'b'], 'at least one sample'),
])
def test_report_refuses_bad_input(Y_true, Y_pred, class_names, match):
    with pytest.raises(ValueError, match=match):
        multilabel_report(Y_true, Y_pred, class_names)


def test_format_report_is_aligned_and_complete():
    rng = np.random.default_rng(1)
    Y_true = rng.integers(0, 2, (50, 3))
    Y_pred = rng.integers(0, 2, (50, 3))
    report = multilabel_report(Y_true, Y_pred, ['pedestrian', 'trash_can', 'a_very_long_name'])
    text = format_report(report)
    lines = text.splitlines()
    table = [line for line in lines[:8] if line]
    # Header, three classes and two averages share one width: the columns line up.
    assert len(table) == 6
    assert len({len(line) for line in table}) == 1
    for name in ('pedestrian', 'trash_can', 'a_very_long_name', 'micro avg', 'macro avg',
                 'hamming loss', 'subset accuracy', 'samples: 50'):
        assert name in text
    ped = report['per_class']['pedestrian']
    assert f'{ped["precision"]:.3f}' in next(line for line in lines if 'pedestrian' in line)
    total = sum(scores['support'] for scores in report['per_class'].values())
    assert next(line for line in lines if 'macro avg' in line).endswith(str(total))
    assert f'{report["micro"]["f1"]:.2f}' in format_report(report, digits=2)


# ---------------------------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------------------------

def brute_force_best_f1(y, p, candidates):
    """Try every candidate; return the lowest threshold reaching the best F1, and that F1."""
    best_threshold, best = None, -1.0
    for threshold in sorted(candidates):
        predicted = p >= threshold
        tp = np.count_nonzero(predicted & y)
        fp = np.count_nonzero(predicted & ~y)
        fn = np.count_nonzero(~predicted & y)
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        if f1 > best:  # strict: the first (lowest) threshold keeps a tie
            best_threshold, best = threshold, f1
    return best_threshold, best


@st.composite
def scored_labels(draw):
    """(Y_true (n, c) bool, P (n, c) float64) with many tied scores and some empty classes."""
    n = draw(st.integers(1, 40))
    c = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    Y_true = rng.random((n, c)) < draw(st.sampled_from([0.1, 0.4, 0.8, 1.0]))
    Y_true[:, rng.random(c) < 0.2] = False
    if draw(st.booleans()):
        P = rng.integers(0, 6, (n, c)) / 5.0  # heavy ties
    else:
        P = np.clip(0.35 * Y_true + rng.random((n, c)) * 0.65, 0.0, 1.0)
    return Y_true, P


@SKLEARN_SETTINGS
@given(scored_labels())
def test_best_f1_thresholds_match_brute_force(data):
    Y_true, P = data
    thresholds, best_f1 = best_f1_thresholds(Y_true, P)
    assert thresholds.shape == best_f1.shape == (Y_true.shape[1],)
    for k in range(Y_true.shape[1]):
        if not Y_true[:, k].any():
            assert thresholds[k] == 0.5 and best_f1[k] == 0.0
            continue
        expected_threshold, expected_f1 = brute_force_best_f1(Y_true[:, k], P[:, k],
                                                              np.unique(P[:, k]))
        assert thresholds[k] == expected_threshold
        assert best_f1[k] == pytest.approx(expected_f1, abs=1e-12)
    # The returned thresholds really achieve the returned F1 (sklearn as the judge).
    predicted = threshold_predictions(P, thresholds)
    np.testing.assert_allclose(sklearn_prfs(Y_true.astype(np.uint8), predicted, None)[2],
                               best_f1, atol=1e-12)


@SKLEARN_SETTINGS
@given(scored_labels(), st.sampled_from([np.linspace(0, 1, 11), np.linspace(0.05, 0.95, 7),
                                         np.array([0.5]), np.array([0.7, 0.2, 0.2, 0.4])]))
def test_best_f1_thresholds_over_candidates_match_brute_force(data, candidates):
    Y_true, P = data
    thresholds, best_f1 = best_f1_thresholds(Y_true, P, candidates, default_threshold=0.3)
    for k in range(Y_true.shape[1]):
        if not Y_true[:, k].any():
            assert thresholds[k] == 0.3 and best_f1[k] == 0.0
            continue
        expected_threshold, expected_f1 = brute_force_best_f1(Y_true[:, k], P[:, k], candidates)
        assert thresholds[k] == expected_threshold
        assert best_f1[k] == pytest.approx(expected_f1, abs=1e-12)


def test_ties_in_f1_pick_the_lowest_threshold():
    # Thresholds 0.9 and 0.6 both give F1 = 2/3; the lower one has the higher recall.
    y = np.array([[1], [0], [0], [1], [0]], dtype=np.uint8)
    p = np.array([[0.9], [0.8], [0.7], [0.6], [0.1]])
    thresholds, best_f1 = best_f1_thresholds(y, p)
    assert thresholds[0] == 0.6
    assert best_f1[0] == pytest.approx(2 / 3)
    thresholds, _ = best_f1_thresholds(y, p, candidates=[0.6, 0.9, 0.95])
    assert thresholds[0] == 0.6


def test_tied_scores_are_cut_together():
    # A cut between the two samples scored 0.5 is not achievable with P >= t.
    y = np.array([[1], [1], [0]], dtype=np.uint8)
    p = np.array([[0.5], [0.5], [0.5]])
    thresholds, best_f1 = best_f1_thresholds(y, p)
    assert thresholds[0] == 0.5
    assert best_f1[0] == pytest.approx(0.8)  # 2 * 2 / (3 + 2)


def test_best_f1_thresholds_float32_and_default_threshold():
    y = np.array([[1, 0], [0, 0], [1, 0]], dtype=np.uint8)
    p = np.array([[0.7, 0.9], [0.2, 0.8], [0.6, 0.1]], dtype=np.float32)
    thresholds, best_f1 = best_f1_thresholds(y, p, default_threshold=0.42)
    assert thresholds.dtype == best_f1.dtype == np.float64
    assert thresholds[0] == np.float32(0.6) and best_f1[0] == 1.0
    assert thresholds[1] == 0.42 and best_f1[1] == 0.0
    np.testing.assert_array_equal(threshold_predictions(p, thresholds)[:, 0], y[:, 0])


def test_best_f1_thresholds_default_per_class():
    # e.g. a model's current thresholds: a class absent from the data keeps its own
    y = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=np.uint8)
    p = np.array([[0.7, 0.9, 0.1], [0.2, 0.8, 0.3], [0.6, 0.1, 0.2]])
    thresholds, best_f1 = best_f1_thresholds(y, p, default_threshold=[0.5, 0.31, 0.77])
    assert thresholds.tolist() == [0.6, 0.31, 0.77] and best_f1.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r'one per class \(3,\), got shape \(2,\)'):
        best_f1_thresholds(y, p, default_threshold=[0.5, 0.5])


def test_best_f1_thresholds_scale():
    # Vectorised: 200,000 samples x 8 classes must be quick (a Python loop over samples is not).
    rng = np.random.default_rng(3)
    Y_true = rng.random((200_000, 8)) < 0.2
    P = np.clip(0.3 * Y_true + 0.7 * rng.random(Y_true.shape), 0, 1)
    thresholds, best_f1 = best_f1_thresholds(Y_true, P)
    assert np.all((best_f1 > 0.5) & (best_f1 <= 1.0))
    assert np.all((thresholds > 0.0) & (thresholds < 1.0))


@pytest.mark.parametrize('P, candidates, match', [
    (np.full((2, 2), np.nan), None, 'NaN'),
    (np.zeros((2, 3)), None, 'shape'),
    (np.zeros((2, 2)), [], 'non-empty'),
    (np.zeros((2, 2)), [[0.5]], '1-D'),
    (np.array([['a', 'b'], ['c', 'd']]), None, 'real numbers'),
])
def test_best_f1_thresholds_refuses_bad_input(P, candidates, match):
    with pytest.raises(ValueError, match=match):
        best_f1_thresholds(np.zeros((2, 2)), P, candidates)


def test_threshold_predictions():
    P = np.array([[0.5, 0.2, 0.9], [0.49, 0.3, 0.95]])
    predicted = threshold_predictions(P, np.array([0.5, 0.3, 0.95]))
    assert predicted.dtype == np.uint8
    # Positive iff P >= threshold: equality counts.
    np.testing.assert_array_equal(predicted, [[1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(threshold_predictions(P, 0.5), [[1, 0, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match=r'shape \(3,\)'):
        threshold_predictions(P, [0.5, 0.5])
    with pytest.raises(ValueError, match='2-D'):
        threshold_predictions(P[0], 0.5)
