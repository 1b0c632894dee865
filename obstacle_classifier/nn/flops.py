"""FLOPs of the matrix products of the brief's training step and inference, and their ratio.

A product of an (n, i) and an (i, o) matrix costs ``2 n i o`` FLOPs (n o dot products of length
i, one multiply and one add per term). Per Linear(i, o) and batch of n:

- inference: the forward product ``X @ W``: ``2 n i o``;
- training: forward, plus ``grad_W = X.T @ G`` (``2 n i o``), plus ``grad_X = G @ W.T``
  (``2 n i o``) when the layer passes a gradient to its input.

With every layer passing its input gradient (the brief's ``MLP.single_step_sgd`` does), training
costs exactly 3x inference, for any n. Only matrix products count; elementwise work (bias,
activations, the loss) is O(n (h + c)) against O(n h^2) and is left out, as the brief asks.

The package's own fused step (:meth:`~obstacle_classifier.nn.mlp.Network.single_step_sgd`) skips
the first layer's input gradient, dL/dX of the data, which nothing uses: it performs ``2 n d h``
FLOPs fewer than counted here (2.82x inference at (d, h, c) = (16, 64, 8)). Setting that layer's
``needs_input_grad = False`` makes the count follow it.

The counts need only the layer shapes: :func:`mlp_shapes` describes ``MLP(d, h, c)`` without
allocating its weights, so any size can be counted (d = h = 10^6 would need 8 TB of weights).
"""
from __future__ import annotations

from dataclasses import dataclass

from .layers import Linear


@dataclass(frozen=True)
class LinearShape:
    """What the FLOP count needs of a :class:`~obstacle_classifier.nn.Linear` layer: its
    widths (W is (d_in, d_out)) and whether it passes a gradient to its input."""

    d_in: int
    d_out: int
    needs_input_grad: bool = True

    def __repr__(self) -> str:
        return f'Linear({self.d_in}, {self.d_out})'  # as Linear's, for the report


@dataclass(frozen=True)
class NetworkShapes:
    """Stands in for a network in :func:`layer_flops`: ``layers`` at the network's positions,
    each Linear as a :class:`LinearShape` and each parameter-free layer by its name."""

    layers: tuple


def mlp_shapes(d: int, h: int, c: int) -> NetworkShapes:
    """The layers of the brief's ``MLP(d, h, c)`` as shapes, allocating nothing:
    Linear(d, h), activation, Linear(h, h), activation, Linear(h, c), Sigmoid."""
    if min(d, h, c) < 1:
        raise ValueError(f'widths must be positive, got d={d}, h={h}, c={c}')
    d, h, c = int(d), int(h), int(c)
    return NetworkShapes(layers=(LinearShape(d, h), 'activation', LinearShape(h, h),
                                 'activation', LinearShape(h, c), 'Sigmoid'))


@dataclass(frozen=True)
class LayerFlops:
    """Matmul FLOPs of one Linear layer for a batch of n."""

    name: str
    forward: int
    grad_weight: int
    grad_input: int

    @property
    def training(self) -> int:
        return self.forward + self.grad_weight + self.grad_input


def layer_flops(model, n: int) -> list[LayerFlops]:
    """Per-Linear FLOP counts of ``model`` (anything with ``.layers``, e.g. a network or
    :func:`mlp_shapes`) for n examples."""
    if n < 0:
        raise ValueError(f'n must be non-negative, got {n}')
    rows = []
    for index, layer in enumerate(model.layers):
        if not isinstance(layer, (Linear, LinearShape)):
            continue
        product = 2 * n * layer.d_in * layer.d_out
        rows.append(LayerFlops(name=f'layers[{index}] {layer!r}', forward=product,
                               grad_weight=product,
                               grad_input=product if layer.needs_input_grad else 0))
    return rows


def matmul_flops(model, n: int, training: bool) -> int:
    """Total matrix-product FLOPs for n examples: one training step or one inference pass."""
    rows = layer_flops(model, n)
    return sum(row.training if training else row.forward for row in rows)


def flops_report(model, n: int) -> str:
    """A human-readable answer to the brief's question: per-layer counts, totals, ratio."""
    rows = layer_flops(model, n)
    width = max(len(row.name) for row in rows)
    lines = [f'Matrix-product FLOPs for n = {n:,} examples',
             f'{"layer":<{width}}  {"inference":>15}  {"training":>15}']
    for row in rows:
        lines.append(f'{row.name:<{width}}  {row.forward:>15,}  {row.training:>15,}')
    infer = matmul_flops(model, n, training=False)
    train = matmul_flops(model, n, training=True)
    ratio = train / infer if infer else float('nan')
    lines += [
        f'{"total":<{width}}  {infer:>15,}  {train:>15,}',
        f'training / inference = {ratio:.4f} (rounded: {round(ratio)})',
        '',
        'Derivation: a Linear(i, o) layer multiplies (n, i) by (i, o): 2*n*i*o FLOPs forward.',
        'Backward adds two products of the same size: grad_W = X^T G and grad_X = G W^T,',
        'so training costs 2*n*i*o + 4*n*i*o = 6*n*i*o per layer against 2*n*i*o for inference.',
        'Summed over layers the ratio is 6/2 = 3, independent of n, d, h and c.',
        'Training here is one pass over the n examples (one epoch, in batches or not: the',
        "products' FLOPs add up the same); the brief's sgd() makes 10 passes, 10x this column.",
    ]
    return '\n'.join(lines)
