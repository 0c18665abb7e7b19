"""Multiply-accumulates counted by fvcore on a traced model, with the operators fvcore skips counted too.

fvcore's "flops" are MACs (one multiply-add counts once). Three operators it leaves out are counted here:
``aten::scaled_dot_product_attention`` (without it, a model using the fused kernel silently loses its
attention), average pooling (PoolFormer's mixer) and real FFTs (GFNet's mixer). A torch.ao int8 model cannot
be traced; it runs the multiply-adds of its float twin (:func:`float_twin`), which is what gets counted.
The formulas these counts are checked against live in :mod:`vitsurvey.models.counts`.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models import mixers
from ..models.counts import packed_weights
from .timing import check_materialised, mode_kept

__all__ = ["MacCount", "count_macs", "float_twin"]


@dataclass(frozen=True)
class MacCount:
    """fvcore's count of multiply-accumulates, in total and per operator type."""

    total: int
    by_operator: dict[str, int]
    skipped_operators: dict[str, int]
    """Operators fvcore saw but does not count (element-wise ops, softmax, GELU...), with call counts."""


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of softmax(Q K^T) V for Q (..., L, E), K (..., S, E), V (..., S, Ev): L*S*E + L*S*Ev."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    length, e = q[-2], q[-1]
    s, ev = k[-2], v[-1]
    return batch * length * s * (e + ev)


def _constant(value: Any) -> Any:
    """A traced argument's value; lists of constants are traced as a node that constructs them."""
    out = value.toIValue()
    return out if out is not None else [v.toIValue() for v in value.node().inputs()]


def _avg_pool_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """One MAC per input element read: k x k per output element (padding included, as for a convolution)."""
    from fvcore.nn.jit_handles import get_shape

    kernel = _constant(inputs[1])
    kernel = [kernel] * 2 if isinstance(kernel, int) else list(kernel) * (2 if len(kernel) == 1 else 1)
    return math.prod(get_shape(outputs[0])) * math.prod(kernel)


def _rfft_macs(real_side: int) -> Callable[[list[Any], list[Any]], int]:
    """MACs of a real n-dimensional FFT or its inverse, by
    :data:`vitsurvey.models.mixers.RFFT_MACS_PER_POINT_LOG2` (``real_side``: 0 for the forward transform,
    whose input is real; 1 for the inverse, whose output is)."""
    from fvcore.nn.jit_handles import get_shape

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        shape = get_shape(inputs[0] if real_side == 0 else outputs[0])
        dims = _constant(inputs[2])
        points = math.prod(shape[d] for d in dims)
        return mixers.rfft_macs(points, math.prod(shape) // points)

    return handle


def count_macs(
    model: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...],
    count_fused_attention: bool = True,
) -> MacCount:
    """Count MACs with fvcore, attention included (fused or not), with fvcore's warnings silenced.

    Beyond fvcore's own counts, three operators it skips are counted: fused attention (``L*S*(E+Ev)``),
    average pooling (k x k per output, the mixer of PoolFormer) and real FFTs (GFNet's mixer; by the
    convention of :data:`vitsurvey.models.mixers.RFFT_MACS_PER_POINT_LOG2`).

    ``count_fused_attention=False`` reproduces plain fvcore, which skips the fused attention kernel
    (notebook 02 shows the trap); every other caller keeps the default.
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    check_materialised(model, "count_macs")
    if packed_weights(model):  # fvcore cannot trace int8 kernels; they run the multiply-adds of their float twin
        model = float_twin(model)
    with mode_kept(model):
        model.eval()
        with warnings.catch_warnings():
            # fvcore's import uses the deprecated torch.jit.script; tracing warns about constants
            warnings.simplefilter("ignore")
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(model, args)
            if count_fused_attention:
                analysis = analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
            analysis = analysis.set_op_handle("aten::avg_pool2d", _avg_pool_macs)
            analysis = analysis.set_op_handle("aten::fft_rfft2", _rfft_macs(0), "aten::fft_irfft2", _rfft_macs(1))
            analysis = (
                analysis.unsupported_ops_warnings(False)
                .uncalled_modules_warnings(False)
                .tracer_warnings("none")
            )
            total = int(analysis.total())
            by_op = {k: int(v) for k, v in analysis.by_operator().items()}
            skipped = dict(analysis.unsupported_ops())
    return MacCount(total, by_op, skipped)


def float_twin(model: nn.Module) -> nn.Module:
    """A copy of a torch.ao dynamically quantized model with every int8 ``Linear`` replaced by a float one
    holding its dequantized weights: the same layers and multiply-adds, in a form fvcore can trace."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, DynamicLinear):
            weight, bias = module._weight_bias()
            linear = nn.Linear(module.in_features, module.out_features, bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight.dequantize())
                if bias is not None:
                    linear.bias.copy_(bias)
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, linear)
    if packed_weights(twin):
        kinds = sorted({type(m).__name__ for m in twin.modules() if callable(getattr(m, "_weight_bias", None))})
        raise ValueError(f"Only torch.ao's dynamic int8 Linear layers can be read back as float; this model also "
                         f"has {kinds}: count the float model it was made from.")
    return twin
