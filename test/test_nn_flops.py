"""FLOP counting: the brief's ratio of 3, per-layer formulas, and the CLI answer."""
import pytest

from obstacle_classifier.cli import main
from obstacle_classifier.nn import MLP, flops_report, layer_flops, matmul_flops, mlp_shapes


def test_briefs_mlp_trains_at_exactly_three_times_inference_at_n_10000():
    model = MLP(16, 64, 8, rng=0)
    inference = matmul_flops(model, 10_000, training=False)
    training = matmul_flops(model, 10_000, training=True)
    assert inference == 2 * 10_000 * (16 * 64 + 64 * 64 + 64 * 8)
    assert training == 3 * inference


@pytest.mark.parametrize('d,h,c,n', [(3, 5, 2, 1), (64, 1024, 16, 100), (7, 11, 13, 17)])
def test_ratio_is_three_for_any_shape_and_batch(d, h, c, n):
    model = MLP(d, h, c, rng=0)
    assert matmul_flops(model, n, True) == 3 * matmul_flops(model, n, False)


def test_a_first_layer_that_skips_its_input_gradient_is_counted_honestly():
    model = MLP(16, 64, 8, rng=0)
    model.layers[0].needs_input_grad = False
    rows = layer_flops(model, 10)
    assert rows[0].grad_input == 0 and rows[1].grad_input == 2 * 10 * 64 * 64
    assert matmul_flops(model, 10, True) == 3 * matmul_flops(model, 10, False) - 2 * 10 * 16 * 64


def test_cli_prints_counts_ratio_and_derivation(capsys):
    assert main(['flops', '--d', '16', '--h', '64', '--c', '8', '--n', '10000']) == 0
    out = capsys.readouterr().out
    assert '112,640,000' in out and '337,920,000' in out
    assert 'training / inference = 3.0000 (rounded: 3)' in out
    assert 'Derivation' in out


def test_cli_rejects_bad_numbers_without_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['flops', '--h', '-3'])
    assert exit_info.value.code == 2
    assert 'positive integer' in capsys.readouterr().err


@pytest.mark.parametrize('d,h,c', [(16, 64, 8), (3, 5, 2), (7, 1, 13)])
def test_shapes_count_exactly_as_the_mlp_itself(d, h, c):
    assert layer_flops(mlp_shapes(d, h, c), 17) == layer_flops(MLP(d, h, c, rng=0), 17)
    assert flops_report(mlp_shapes(d, h, c), 17) == flops_report(MLP(d, h, c, rng=0), 17)


def test_cli_counts_any_size_without_allocating_the_network(capsys):
    # An MLP of these widths needs 8 TB of weights; the count needs none.
    assert main(['flops', '--d', '1000000', '--h', '1000000', '--c', '8', '--n', '10']) == 0
    out = capsys.readouterr().out
    inference = 2 * 10 * (10**6 * 10**6 + 10**6 * 10**6 + 10**6 * 8)
    assert f'{inference:,}' in out and f'{3 * inference:,}' in out
    with pytest.raises(ValueError, match='positive'):
        mlp_shapes(0, 4, 2)
