"""Calibration-based refit of pruned pointwise layers: the mask stays, the surviving weights move.

One-shot magnitude pruning leaves each kept weight at its dense value, although the dense value was only
right together with the weights now removed. For a 1x1 conv (or a Linear) the output is linear in the
weights and every pixel is a sample, so the best kept weights for a set of calibration inputs are a
small ridge-regularised least-squares problem per output channel. Layers are refitted in network order,
each on the inputs the already-refitted earlier layers produce (the sequential calibration of
SparseGPT / OBC), so that later layers absorb part of the error that reaches them.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from sparseforge.masking import Mask, get_mask, is_masked
from sparseforge.nn.fold import trace_with_conv_leaves
from sparseforge.nn.sparse_conv import is_eligible_conv

__all__ = ["reconstruct_pointwise"]

TARGETS = ("dense_output", "dense_weights")
MASKS = ("keep", "activation")
RIDGE_TO = ("dense", "zero")
# Padded Gram submatrices of one solve batch, in float64 elements (128 MiB).
_SOLVE_BUDGET = 1 << 24


def _is_pointwise(m: nn.Module) -> bool:
    return is_eligible_conv(m) or isinstance(m, nn.Linear)


def _mask_of(m: nn.Module) -> torch.Tensor:
    """Kept entries as a [out, in] bool matrix."""
    if is_masked(m):
        mask = get_mask(m)
    else:
        mask = m.weight.detach() != 0
    return mask.reshape(mask.shape[0], -1)


def _stored_weight(m: nn.Module) -> torch.Tensor:
    # A static Mask multiplies the stored tensor: writing zeros at pruned entries there keeps both equal.
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return m.weight


def _samples(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A layer's input or output as [samples, channels] float64: every pixel (or row) is a sample."""
    if isinstance(m, nn.Conv2d):
        t = t.movedim(1, -1)
    return t.reshape(-1, t.shape[-1]).to(torch.float64)


def _augment(x: torch.Tensor, bias: bool) -> torch.Tensor:
    return torch.cat([x, x.new_ones(x.shape[0], 1)], 1) if bias else x


class _Stepper:
    """Runs a traced graph node by node over a list of input batches, freeing each value after its last use."""

    def __init__(self, model: nn.Module, graph: fx.Graph, batches: Sequence[torch.Tensor], argname: str):
        self.model = model
        self.nodes = list(graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"reconstruct_pointwise(): argument '{argname}' must take exactly one input tensor, its "
                             f"forward has {len(placeholders)} arguments")
        last_use: dict[fx.Node, int] = {}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                last_use[a] = i
        self.dead: dict[int, list[fx.Node]] = {}
        for n, i in last_use.items():
            self.dead.setdefault(i, []).append(n)
        self.envs = [{placeholders[0]: b} for b in batches]

    def _value(self, n: fx.Node, env: dict):
        args = fx.node.map_arg(n.args, lambda a: env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
        if n.op == "call_module":
            return self.model.get_submodule(n.target)(*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "get_attr":
            obj = self.model
            for part in n.target.split("."):
                obj = getattr(obj, part)
            return obj
        raise AssertionError(n.op)

    def inputs(self, i: int) -> list[torch.Tensor]:
        """The value each batch feeds node ``i`` (a pointwise layer: one positional input)."""
        return [env[self.nodes[i].args[0]] for env in self.envs]

    def run(self, i: int) -> list:
        n = self.nodes[i]
        if n.op in ("placeholder", "output"):
            return []
        out = []
        for env in self.envs:
            env[n] = self._value(n, env)
            out.append(env[n])
            for d in self.dead.get(i, ()):
                env.pop(d, None)
        return out


def _solve_rows(gram: torch.Tensor, cross: torch.Tensor, keep: torch.Tensor, lam: torch.Tensor,
                prior: torch.Tensor | None = None) -> torch.Tensor:
    """Per output row r with kept set S: (G[S,S] + diag(lam[S])) w_S = cross[S, r]; zero elsewhere.

    gram [d, d], cross [d, out], keep [out, d] bool, lam [d] -> W [out, d], all float64. Rows are sorted by
    |S| and solved in batches of padded systems, the padding being an identity block with a zero
    right-hand side (so it solves to zero and does not couple to the kept entries).
    """
    n_out, d = keep.shape
    w = torch.zeros(n_out, d, dtype=torch.float64, device=gram.device)
    counts = keep.sum(1)
    order = torch.argsort(counts)
    start = int((counts[order] == 0).sum())  # rows with nothing kept stay zero
    while start < n_out:
        k_max = int(counts[order[start]])
        # Grow the batch while its widest system still fits the budget (rows are sorted, so the last is widest).
        stop = start + 1
        while stop < n_out and (stop + 1 - start) * int(counts[order[stop]]) ** 2 <= _SOLVE_BUDGET:
            k_max = int(counts[order[stop]])
            stop += 1
        rows = order[start:stop]
        sub = keep[rows]
        # Kept column indices first (stable sort on ~keep), then padding slots pointing at column 0.
        idx = torch.argsort((~sub).to(torch.int8), dim=1, stable=True)[:, :k_max]
        valid = torch.gather(sub, 1, idx)
        idx = torch.where(valid, idx, torch.zeros_like(idx))
        a = gram[idx[:, :, None], idx[:, None, :]]
        both = valid[:, :, None] & valid[:, None, :]
        a = torch.where(both, a, torch.zeros((), dtype=a.dtype, device=a.device))
        a = a + torch.diag_embed(torch.where(valid, lam[idx], torch.ones((), dtype=a.dtype, device=a.device)))
        b = cross.T[rows[:, None], idx]
        if prior is not None:
            b = b + lam[idx] * prior[rows[:, None], idx]
        b = torch.where(valid, b, torch.zeros((), dtype=a.dtype, device=a.device))
        chol, info = torch.linalg.cholesky_ex(a)
        if bool((info == 0).all()):
            sol = torch.cholesky_solve(b[..., None], chol)[..., 0]
        else:  # numerically indefinite (tiny damping on degenerate inputs): LU still gives the minimiser
            sol = torch.linalg.solve(a, b)
        # Only the kept slots: padding slots alias column 0 and must not overwrite it.
        w[rows[:, None].expand_as(idx)[valid], idx[valid]] = sol[valid]
        start = stop
    return w


def _rel_error(w: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, yy: float) -> float:
    """||W X - Y||^2 / ||Y||^2 from the sufficient statistics G = X X^T, C = X Y^T, yy = ||Y||^2."""
    err = float(((w @ gram) * w).sum() - 2.0 * (w * cross.T).sum()) + yy
    return max(err, 0.0) / max(yy, 1e-300)


def _split(calib, batch_size: int) -> list[torch.Tensor]:
    if isinstance(calib, torch.Tensor):
        if calib.dim() < 1 or calib.shape[0] == 0:
            raise ValueError(f"reconstruct_pointwise(): argument 'calib' must be a non-empty batch [N, ...], got shape "
                             f"{tuple(calib.shape)}")
        return list(calib.split(batch_size))
    if isinstance(calib, (list, tuple)) and calib and all(isinstance(b, torch.Tensor) for b in calib):
        return list(calib)
    raise TypeError(f"reconstruct_pointwise(): argument 'calib' must be a tensor [N, ...] or a non-empty list of "
                    f"tensors, got {type(calib).__name__}")


@torch.no_grad()
def reconstruct_pointwise(model: nn.Module, calib, dense: nn.Module, *, target: str = "dense_output",
                          damp: float = 0.01, ridge_to: str = "dense", mask: str = "keep",
                          layers: Iterable[str] | None = None, batch_size: int = 32,
                          progress: bool = True) -> dict[str, dict]:
    """Refits, in place, the kept weights (and bias) of the pruned 1x1 convs and Linears of ``model`` by
    ridge least squares on calibration activations, keeping every sparsity mask exactly (``mask="keep"``) or
    re-choosing each row's kept inputs from the calibration activations with the same count per row.

    Layers are refitted in the order the forward pass reaches them, each on the inputs ``model`` produces
    with the earlier layers already refitted. For a layer with input samples X [d, n] (d = in channels,
    plus a row of ones when the layer has a bias; n = pixels of all calibration images, all of them) and
    target Y [out, n], row r with kept set S solves ``(X_S X_S^T + lam I) w_S = X_S y_r^T + lam w0_S``, where
    ``lam = damp * mean(diag(X X^T))`` on the weights and 0 on the bias, and w0 is the dense layer's weights
    (``ridge_to="dense"``) or zero (``"zero"``, plain ridge regression).

    Args:
        model: the pruned network, eval mode. Its layers' masks are the zeros of their weights, or their
            ``sparseforge.masking.Mask`` where one is registered (the stored weight is written).
        calib: float tensor [N, ...] of model inputs (split into ``batch_size`` chunks), or a list of such
            batches. All activations of the calibration set are held in memory at once, layer by layer.
        dense: the unpruned network with the same architecture and module names, eval mode, BatchNorm
            folded exactly as in ``model`` (a layer with a bias in one and none in the other is refused).
        target: ``"dense_output"``: Y is the dense model's output at that layer on the dense model's own
            inputs, so a layer also corrects the error accumulated before it. ``"dense_weights"``: Y is
            the dense layer's weights applied to the pruned model's inputs (only the layer's own error).
        damp: ridge strength relative to the mean input energy (> 0 keeps rows with few samples solvable).
        ridge_to: what the ridge pulls the kept weights towards. ``"dense"`` (default): their dense values, so
            input directions the calibration set does not excite (dead or rare channels) keep the trained
            weights instead of collapsing to zero, and a full mask refits to the dense layer for any damp.
        mask: ``"keep"`` (default): refit on the existing masks. ``"activation"``: first re-choose, per output
            row and keeping its number of kept weights (so every layer's sparsity is unchanged), the inputs
            with the largest ``|w_dense| * ||x||`` (the dense weight times the input channel's RMS over the
            calibration samples, the saliency of Wanda, Sun et al. 2023), then refit. A registered Mask is
            updated to the new pattern.
        layers: module names to refit (default: every 1x1 conv of ``is_eligible_conv`` and every Linear
            whose weight has at least one pruned entry). A named layer with a full mask is refitted too.
        progress: a tqdm bar over the layers.

    Returns:
        ``{name: {"before": e0, "after": e1, "density": kept fraction, "samples": n}}`` in refit order,
        where e0 / e1 are ``||W X - Y||^2 / ||Y||^2`` on the calibration set for the layer's weights
        before / after its refit (both on the inputs produced by the already-refitted earlier layers).

    Raises:
        TypeError / ValueError: a bad argument (the message names it).
        RuntimeError: ``model`` or ``dense`` cannot be traced by ``torch.fx``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"reconstruct_pointwise(): argument 'model' must be an nn.Module, got {type(model).__name__}")
    if not isinstance(dense, nn.Module):
        raise TypeError(f"reconstruct_pointwise(): argument 'dense' must be an nn.Module (the unpruned reference), "
                        f"got {type(dense).__name__}")
    if dense is model:
        raise ValueError("reconstruct_pointwise(): argument 'dense' must be a separate unpruned copy, not 'model' itself")
    for argname, m in (("model", model), ("dense", dense)):
        if m.training:
            raise ValueError(f"reconstruct_pointwise(): argument '{argname}' must be in eval mode (call .eval()); "
                             "training-mode BatchNorm or dropout would change the calibration targets")
    if target not in TARGETS:
        raise ValueError(f"reconstruct_pointwise(): argument 'target' must be one of {TARGETS}, got {target!r}")
    if ridge_to not in RIDGE_TO:
        raise ValueError(f"reconstruct_pointwise(): argument 'ridge_to' must be one of {RIDGE_TO}, got {ridge_to!r}")
    if mask not in MASKS:
        raise ValueError(f"reconstruct_pointwise(): argument 'mask' must be one of {MASKS}, got {mask!r}")
    if not (isinstance(damp, (int, float)) and damp >= 0 and damp == damp):
        raise ValueError(f"reconstruct_pointwise(): argument 'damp' must be a number >= 0, got {damp!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"reconstruct_pointwise(): argument 'batch_size' must be a positive int, got {batch_size!r}")
    batches = _split(calib, batch_size)
    if not all(b.is_floating_point() for b in batches):
        raise ValueError("reconstruct_pointwise(): argument 'calib' must hold floating-point inputs")

    modules = dict(model.named_modules())
    dense_modules = dict(dense.named_modules())
    if layers is None:
        names = [n for n, m in modules.items() if _is_pointwise(m) and not bool(_mask_of(m).all())]
    else:
        if isinstance(layers, str):
            raise TypeError("reconstruct_pointwise(): argument 'layers' must be an iterable of module names, got a str")
        names = list(layers)
        for n in names:
            if n not in modules or not _is_pointwise(modules[n]):
                raise ValueError(f"reconstruct_pointwise(): argument 'layers' names {n!r}, which is not a 1x1 conv "
                                 "(is_eligible_conv) or Linear of 'model'")
    for n in names:
        m, dm = modules[n], dense_modules.get(n)
        if dm is None or type(dm) is not type(m) or dm.weight.shape != m.weight.shape:
            raise ValueError(f"reconstruct_pointwise(): argument 'dense' has no layer {n!r} matching the model's "
                             f"{type(m).__name__} {tuple(m.weight.shape)}")
        if (dm.bias is None) != (m.bias is None):
            raise ValueError(f"reconstruct_pointwise(): layer {n!r} has a bias in only one of 'model' and 'dense': fold "
                             "BatchNorm in both or in neither")
        if parametrize.is_parametrized(m, "weight"):
            plist = m.parametrizations.weight
            if len(plist) != 1 or not isinstance(plist[0], Mask):
                raise ValueError(f"reconstruct_pointwise(): layer {n!r} of 'model' carries parametrizations other than "
                                 "one static Mask; call sparseforge.masking.freeze_mask first")
    if not names:
        return {}

    graph = trace_with_conv_leaves(model, "reconstruct_pointwise", "model")
    steps = _Stepper(model, graph, batches, "model")
    where = {n.target: i for i, n in enumerate(steps.nodes) if n.op == "call_module"}
    calls = [n.target for n in steps.nodes if n.op == "call_module"]
    for n in names:
        if n not in where:
            raise ValueError(f"reconstruct_pointwise(): layer {n!r} is never called in the traced forward of 'model'")
        if calls.count(n) > 1:
            raise ValueError(f"reconstruct_pointwise(): layer {n!r} is called more than once in the forward of 'model'; "
                             "a shared layer has no single input to refit on")
    todo = sorted(names, key=where.__getitem__)
    dense_steps = None
    if target == "dense_output":
        dgraph = trace_with_conv_leaves(dense, "reconstruct_pointwise", "dense")
        dense_steps = _Stepper(dense, dgraph, batches, "dense")
        if [(n.op, n.target) for n in dense_steps.nodes] != [(n.op, n.target) for n in steps.nodes]:
            raise ValueError("reconstruct_pointwise(): argument 'dense' does not trace to the same graph as 'model' "
                             "(different architecture, or BatchNorm folded in only one of them)")

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="reconstruct", leave=False)
    report: dict[str, dict] = {}
    pending = iter(todo)
    nxt = next(pending)
    last = where[todo[-1]]
    for i in range(last + 1):
        node = steps.nodes[i]
        dense_out = dense_steps.run(i) if dense_steps is not None else None
        if node.op == "call_module" and node.target == nxt:
            report[nxt] = _refit(modules[nxt], dense_modules[nxt], steps.inputs(i), dense_out, damp, ridge_to, mask)
            if bar is not None:
                bar.update(1)
            nxt = next(pending, None)
        steps.run(i)
    if bar is not None:
        bar.close()
    return report


def _activation_mask(keep: torch.Tensor, wd: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """Per row, the same number of kept entries as ``keep``, at the largest |wd| * sqrt(energy)."""
    score = wd.abs() * energy.clamp_min(0).sqrt()[None, :]
    order = torch.argsort(score, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return rank < keep.sum(1, keepdim=True)


def _refit(m: nn.Module, dm: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor] | None, damp: float,
           ridge_to: str, mask: str = "keep") -> dict:
    has_bias = m.bias is not None
    out_ch = m.weight.shape[0]
    keep = _mask_of(m)
    wd = dm.weight.detach().reshape(out_ch, -1).to(torch.float64)
    if has_bias:
        wd = torch.cat([wd, dm.bias.detach().to(torch.float64)[:, None]], 1)
    d = wd.shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64, device=wd.device)
    cross = torch.zeros(d, out_ch, dtype=torch.float64, device=wd.device) if ys is not None else None
    yy, n = 0.0, 0
    for j, x in enumerate(xs):
        xa = _augment(_samples(m, x), has_bias)
        gram += xa.T @ xa
        n += xa.shape[0]
        if ys is not None:
            y = _samples(m, ys[j])
            cross += xa.T @ y
            yy += float((y * y).sum())
    gram /= n
    if ys is None:  # Y = W_dense X on this model's own inputs
        cross = gram @ wd.T
        yy = float(((wd @ gram) * wd).sum())
    else:
        cross /= n
        yy /= n
    lam = torch.full((d,), damp * float(gram.diagonal()[:d - has_bias].mean()) + 1e-12, dtype=torch.float64,
                     device=gram.device)
    if has_bias:
        lam[-1] = 0.0  # the bias is a free offset; shrinking it towards zero has no reason
    w_old = m.weight.detach().reshape(out_ch, -1).to(torch.float64) * keep
    if has_bias:
        w_old = torch.cat([w_old, m.bias.detach().to(torch.float64)[:, None]], 1)
    if mask == "activation":
        c = keep.shape[1]
        keep = _activation_mask(keep, wd[:, :c], gram.diagonal()[:c])
        if parametrize.is_parametrized(m, "weight"):
            m.parametrizations.weight[0].mask.copy_(keep.reshape(m.parametrizations.weight[0].mask.shape))
    keep_aug = torch.cat([keep, keep.new_ones(out_ch, 1)], 1) if has_bias else keep
    w_new = _solve_rows(gram, cross, keep_aug, lam, wd if ridge_to == "dense" else None)
    before, after = _rel_error(w_old, gram, cross, yy), _rel_error(w_new, gram, cross, yy)
    stored = _stored_weight(m)
    stored.copy_(w_new[:, :keep.shape[1]].reshape(stored.shape).to(stored.dtype))
    if has_bias:
        m.bias.copy_(w_new[:, -1].to(m.bias.dtype))
    return {"before": before, "after": after, "density": float(keep.float().mean()), "samples": n}
