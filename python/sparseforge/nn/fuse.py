"""Fusing the ReLU / ReLU6 that follows a sparse 1x1 convolution into its kernel.

The spmm_conv kernel clamps in the store it already does; a separate ReLU6 module is one more full pass
over the conv's output (on EfficientNet-lite0, its expansion convs' ReLU6s cost a fifth of the sparse
model's time). Activation modules are often shared (one ``self._swish`` called three times per block),
so the fusion cannot swap modules in place: it rewrites the traced graph and returns a GraphModule.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from sparseforge.nn.fold import trace_with_conv_leaves

__all__ = ["fuse_activations"]

_FN_RELU = {F.relu, torch.relu, torch.relu_}
_FN_RELU6 = {F.relu6}
_FN_HARDTANH = {F.hardtanh, F.hardtanh_}
_FN_CLAMP = {torch.clamp, torch.clip, torch.clamp_}


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def activation_of(model: nn.Module, node: fx.Node) -> str | None:
    """'relu' / 'relu6' when ``node`` applies exactly that elementwise to its first input, else None."""
    if node.op == "call_module":
        m = model.get_submodule(node.target)
        if type(m) is nn.ReLU:
            return "relu"
        if type(m) in (nn.ReLU6, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0:
            return "relu6"
        return None
    if node.op == "call_function":
        fn = node.target
        if fn in _FN_RELU:
            return "relu"
        if fn in _FN_RELU6:
            return "relu6"
        if fn in _FN_HARDTANH and _arg(node, 1, "min_val", -1.0) == 0.0 and _arg(node, 2, "max_val", 1.0) == 6.0:
            return "relu6"
        if fn in _FN_CLAMP:
            lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
            if lo == 0 and hi == 6:
                return "relu6"
            if lo == 0 and hi is None:
                return "relu"
    if node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1:
        return "relu"
    return None


def _is_identity(model: nn.Module, node: fx.Node) -> bool:
    return node.op == "call_module" and type(model.get_submodule(node.target)) is nn.Identity


def fuse_activations(model: nn.Module, fusable) -> tuple[nn.Module, dict[str, str]]:
    """Removes, from the traced graph of ``model``, each ReLU / ReLU6 whose only input is the output of a
    module ``fusable(module)`` accepts (through ``nn.Identity`` left by BatchNorm folding), when that module
    is called once and its output feeds nothing else.

    Returns ``(graph_module, {module path: activation})``: the caller must apply each activation inside
    the named module (SparseConv2d(activation=...)); ``model`` itself is not changed. With nothing to fuse
    the model is returned unchanged.

    Raises:
        RuntimeError: ``model`` cannot be traced by ``torch.fx``.
    """
    graph = trace_with_conv_leaves(model, "fuse_activations")
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused: dict[str, str] = {}
    for node in list(graph.nodes):
        if node.op != "call_module" or calls[node.target] != 1 or not fusable(model.get_submodule(node.target)):
            continue
        chain, cur = [], node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if not (nxt.args and nxt.args[0] is cur) or nxt.op == "output":
                break
            if _is_identity(model, nxt):
                chain.append(nxt)
                cur = nxt
                continue
            act = activation_of(model, nxt)
            if act is not None and all(a is cur for a in nxt.all_input_nodes):
                nxt.replace_all_uses_with(node)
                for dead in [nxt] + chain[::-1]:
                    graph.erase_node(dead)
                fused[node.target] = act
            break
    if not fused:
        return model, {}
    graph.lint()
    return fx.GraphModule(model, graph, class_name=type(model).__name__ + "Fused"), fused

