"""Folding inference-mode BatchNorm into the convolution before it.

Every deployment runtime (XNNPACK, TFLite, ONNX Runtime) folds BatchNorm before it runs a CNN; a sparse 1x1
convolution left followed by a separate BatchNorm pays a full extra pass over its output, which on
EfficientNet-class networks costs as much as the sparsity saves. Zeros stay zeros under the per-channel
scale, so folding keeps every weight's sparsity.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = ["fold_batchnorm"]


class _ConvLeafTracer(fx.Tracer):
    # Conv2d / Linear subclasses with their own forward (TF-style "same" padding) must stay one node, so
    # patterns like conv -> bn and a layer's input stay visible whatever the subclass does inside.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear)) or super().is_leaf_module(m, qualname)


def trace_with_conv_leaves(model: nn.Module, caller: str, argname: str = "model") -> fx.Graph:
    """The fx graph of ``model`` with every Conv2d / Linear one node; RuntimeError naming ``caller`` and
    ``argname`` if it cannot be traced."""
    try:
        return _ConvLeafTracer().trace(model)
    except Exception as e:  # fx reports data-dependent control flow with many exception types
        raise RuntimeError(f"{caller}(): torch.fx could not trace argument '{argname}' ({type(e).__name__}: {e}); "
                           "apply it by hand") from e


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
        w = conv.weight  # a parametrized weight is the masked one; folding writes the plain tensor
        target = conv.parametrizations.weight.original if hasattr(conv, "parametrizations") else conv.weight
        target.copy_(w * scale.reshape(-1, 1, 1, 1))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.detach().clone())
        else:
            conv.bias.copy_(bias)


def fold_batchnorm(model: nn.Module) -> int:
    """Folds, in place, every ``BatchNorm2d`` that directly follows a ``Conv2d`` into that conv, and
    replaces the BatchNorm with ``nn.Identity``. Returns the number folded.

    Only exact foldings are done: the conv's output must feed nothing but the BatchNorm, each module must
    be called once in the traced graph, and the BatchNorm must track running statistics. The model must
    be in eval mode (a training-mode BatchNorm normalises by batch statistics, which cannot be folded).

    Raises:
        ValueError: ``model`` is in training mode.
        RuntimeError: ``model`` cannot be traced by ``torch.fx`` (the message names the cause).
    """
    if model.training:
        raise ValueError("fold_batchnorm(): argument 'model' must be in eval mode (call model.eval()); a training-mode "
                         "BatchNorm uses batch statistics and cannot be folded")
    graph = trace_with_conv_leaves(model, "fold_batchnorm")
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            continue
        bn = model.get_submodule(node.target)
        src = node.args[0]
        if not (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats and bn.running_var is not None):
            continue
        if src.op != "call_module" or len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        conv = model.get_submodule(src.target)
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != bn.num_features:
            continue
        _fold_into(conv, bn)
        folded.append(node.target)
    for name in folded:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return len(folded)
