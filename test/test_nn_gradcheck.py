"""check_gradient: accepts right gradients, rejects wrong ones, leaves its argument alone."""
import numpy as np
import pytest

from obstacle_classifier.nn import check_gradient, numerical_gradient, rel_error


def _square_loss(Y):
    """Seed 004's SquareLoss as a function of the input: (1/2M) ||X - Y||^2."""
    return (lambda X: 0.5 / len(X) * np.sum((X - Y) ** 2),
            lambda X: (X - Y) / len(X))


def test_accepts_the_right_gradient_and_rejects_a_wrong_one():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((10, 3))
    loss, grad = _square_loss(Y)
    x = rng.standard_normal((10, 3))
    assert check_gradient(loss, grad, x)
    assert not check_gradient(loss, lambda X: 1.01 * grad(X), x)
    assert not check_gradient(loss, lambda X: grad(X).T.reshape(X.shape), x)


def test_does_not_modify_the_point_even_when_f_writes_into_it():
    x = np.arange(6.0).reshape(2, 3)
    before = x.copy()

    def f(value):
        value *= 2  # a careless f that scribbles on its argument
        return float(np.sum(value ** 2))

    numerical_gradient(f, x)
    assert np.array_equal(x, before)


def test_central_differences_are_second_order_accurate():
    x = np.array([0.3, -1.2, 2.0])
    numeric = numerical_gradient(lambda v: float(np.sum(np.sin(v))), x)
    assert rel_error(numeric, np.cos(x)) < 1e-9


def test_rel_error_of_two_zero_arrays_is_zero():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0


def test_rel_error_refuses_arrays_of_different_shapes():
    # Broadcast, a (1,) gradient "matched" a (4,) one and a column matched a row.
    with pytest.raises(ValueError, match=r'shapes \(4,\) and \(1,\)'):
        rel_error(np.ones(4), np.ones(1))
    with pytest.raises(ValueError, match='differ'):
        rel_error(np.ones((3, 1)), np.ones((1, 3)))


def test_rel_error_is_scale_free_at_the_ends_of_float64():
    # Squared norms of 1e-170 underflow to 0: every gradient, even the negated one, passed.
    for scale in (1e-170, 1e-300, 1e170, 1e300):
        right = scale * np.array([1.0, -2.0, 3.0])
        assert rel_error(right, right * (1 + 1e-12)) < 1e-11
        assert rel_error(right, -right) == 1.0
        assert rel_error(right, 2 * right) > 0.3
    assert np.isnan(rel_error(np.array([np.inf]), np.array([1.0])))
    assert np.isnan(rel_error(np.array([np.nan]), np.array([1.0])))
    # Either way round: a zero gradient does not pass against a NaN one (a NaN loss).
    assert np.isnan(rel_error(np.zeros(2), np.array([np.nan, 0.0])))
    with np.errstate(invalid='ignore'):  # log(-1): the loss is NaN
        assert not check_gradient(lambda v: float(np.sum(np.log(v))), np.zeros_like,
                                  np.array([-1.0, 2.0]))


def test_check_gradient_rejects_a_wrong_gradient_that_is_tiny():
    # sum(sigmoid(x)) at x near -400: a right gradient of ~1e-174.
    def f(x):
        return float(np.sum(np.exp(x)))

    x = np.linspace(-410.0, -400.0, 4)
    assert check_gradient(f, np.exp, x, step=1e-4)
    assert not check_gradient(f, lambda v: -np.exp(v), x, step=1e-4)
    assert not check_gradient(f, lambda v: 2 * np.exp(v), x, step=1e-4)
