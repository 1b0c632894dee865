"""The pure-NumPy network core. Importing it imports no ROS (and nothing but NumPy)."""
from .flops import LinearShape, NetworkShapes, flops_report, layer_flops, matmul_flops, mlp_shapes
from .functional import log_softmax, sigmoid, softplus_neg
from .gradcheck import check_gradient, numerical_gradient, rel_error
from .layers import Bias, Layer, Linear, ReLU, ScaledReLU, Sigmoid, cached_nbytes
from .losses import (BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss,
                     get_grad_log_loss, log_loss)
from .mlp import ACTIVATIONS, MLP, LinearClassifier, Network

__all__ = [
    'ACTIVATIONS', 'BCELoss', 'BCEWithLogitsLoss', 'Bias', 'CrossEntropyLoss', 'Layer', 'Linear',
    'LinearClassifier', 'LinearShape', 'Loss', 'MLP', 'MSELoss', 'Network', 'NetworkShapes',
    'ReLU', 'ScaledReLU', 'Sigmoid', 'cached_nbytes', 'check_gradient',
    'flops_report', 'get_grad_log_loss', 'layer_flops', 'log_loss', 'log_softmax',
    'matmul_flops', 'mlp_shapes', 'numerical_gradient', 'rel_error', 'sigmoid', 'softplus_neg',
]
