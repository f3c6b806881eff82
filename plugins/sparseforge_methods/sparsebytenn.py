"""SparseByteNN (Xu et al., 2023): fine-grained group ("kernel") sparsity plus whole-network channel
rearrangement, with a blocked SpMM kernel on mobile.

The pruning unit is a group of G consecutive output channels x one input channel x the full k x k
kernel. Groups are scored by their L2 norm and the lowest are removed per layer to the target (the paper:
30-50%). Before pruning, the output channels of every targeted conv are permuted so that channels whose
important weights sit on the same input channels are adjacent, which keeps the kept groups dense; the
matching permutation is applied to what consumes those channels (BatchNorm, depthwise conv, the next
conv's or Linear's input channels), so the network's function is unchanged. Then fine-tune (the masks are
static parametrizations, so an ordinary training loop keeps them). The paper's code was never released:
the rearrangement here is a greedy similarity clustering and is only applied where the consumers of a
conv's channels can be followed through a chain of modules (a check on a random input reverts any
permutation that would change the output, e.g. across a residual connection).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from sparseforge.config import Config, param
from sparseforge.masking import apply_mask, bake_masks, is_masked
from sparseforge.registry import Method, Paper

__all__ = ["SparseByteNN", "SparseByteNNConfig", "group_mask", "rearrangement", "retained_importance"]


def _importance(w: torch.Tensor) -> torch.Tensor:
    """[c_out, c_in] squared-L2 importance of every (output, input) kernel."""
    return w.detach().float().pow(2).reshape(w.shape[0], w.shape[1], -1).sum(-1)


@torch.no_grad()
def group_mask(w: torch.Tensor, sparsity: float, g: int) -> torch.Tensor:
    """Bool mask of w's shape pruning the lowest-norm groups of g output channels x 1 input channel x k x k."""
    imp = _importance(w)
    c_out, c_in = imp.shape
    nb = -(-c_out // g)
    pad = torch.zeros(nb * g, c_in)
    pad[:c_out] = imp
    score = pad.reshape(nb, g, c_in).sum(1)
    keep = score.numel() - round(sparsity * score.numel())
    m = torch.zeros(score.numel(), dtype=torch.bool)
    if keep > 0:
        m[torch.topk(score.reshape(-1), keep, sorted=False).indices] = True
    m = m.reshape(nb, 1, c_in).expand(nb, g, c_in).reshape(nb * g, c_in)[:c_out]
    return m.reshape(c_out, c_in, *([1] * (w.dim() - 2))).expand_as(w).clone()


def retained_importance(w: torch.Tensor, sparsity: float, g: int) -> float:
    """Fraction of sum(W^2) that group pruning keeps."""
    m = group_mask(w, sparsity, g)
    return float((w.detach().float().pow(2) * m).sum() / w.detach().float().pow(2).sum().clamp_min(1e-30))


@torch.no_grad()
def rearrangement(w: torch.Tensor, g: int) -> torch.Tensor:
    """A permutation of w's output channels that puts channels with similar input-channel importance
    profiles into the same group of g (greedy: seed = the most important free channel, members = the
    free channels of highest cosine similarity to it)."""
    imp = _importance(w)
    c_out = imp.shape[0]
    prof = imp / imp.norm(dim=1, keepdim=True).clamp_min(1e-30)
    sim = prof @ prof.t()
    free = torch.ones(c_out, dtype=torch.bool)
    order = []
    total = imp.sum(1)
    while free.any():
        seed = int(torch.where(free, total, torch.full_like(total, -1.0)).argmax())
        free[seed] = False
        s = torch.where(free, sim[seed], torch.full_like(total, -2.0))
        k = min(g - 1, int(free.sum()))
        members = torch.topk(s, k).indices.tolist() if k > 0 else []
        for j in members:
            free[j] = False
        order += [seed] + members
    return torch.tensor(order, dtype=torch.long)


def _leaf_chain(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if len(list(m.children())) == 0]


_PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.Sigmoid, nn.Identity, nn.Dropout, nn.AdaptiveAvgPool2d,
                 nn.AvgPool2d, nn.MaxPool2d, nn.Flatten, nn.GELU, nn.Hardsigmoid)


def _param(m: nn.Module, name: str) -> torch.Tensor:
    return m.parametrizations[name].original if is_masked(m, name) else getattr(m, name)


@torch.no_grad()
def _permute_out(conv: nn.Conv2d, perm: torch.Tensor) -> None:
    w = _param(conv, "weight")
    w.copy_(w[perm])
    if is_masked(conv):
        p = conv.parametrizations.weight[0]
        p.mask.copy_(p.mask[perm])
    if conv.bias is not None:
        conv.bias.copy_(conv.bias[perm])


@torch.no_grad()
def _permute_consumers(chain: list[nn.Module], start: int, perm: torch.Tensor) -> bool:
    """Applies `perm` to the channel dimension of everything after chain[start] up to the next full conv or
    Linear (whose input channels get it). False if the chain holds something it cannot follow."""
    for m in chain[start + 1:]:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, name)
                if t is not None:
                    t.copy_(t[perm])
        elif isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels:  # depthwise
            _permute_out(m, perm)
        elif (isinstance(m, nn.Conv2d) and m.groups == 1) or (isinstance(m, nn.Linear) and m.in_features == perm.numel()):
            # the consumer: permute its input dimension so the output is unchanged
            w = _param(m, "weight")
            w.copy_(w[:, perm])
            if is_masked(m):
                p = m.parametrizations.weight[0]
                p.mask.copy_(p.mask[:, perm])
            return True
        elif not isinstance(m, _PASS_THROUGH):
            return False
    return False  # the channels reach the output: permuting them would change it


@torch.no_grad()
def rearrange_network(model: nn.Module, convs: list[nn.Module], g: int, probe: torch.Tensor | None = None) -> list[nn.Module]:
    """Permutes the output channels of each conv in `convs` (and their consumers) in place; returns the
    convs actually rearranged. A conv whose consumers cannot be followed, or whose permutation changes the
    model's output on `probe`, is left as it was."""
    chain = _leaf_chain(model)
    done = []
    was_training = model.training
    model.eval()
    for conv in convs:
        if conv not in chain:
            continue
        perm = rearrangement(_param(conv, "weight"), g)
        if torch.equal(perm, torch.arange(perm.numel())):
            continue
        state = copy.deepcopy(model.state_dict())
        ref = model(probe) if probe is not None else None
        _permute_out(conv, perm)
        ok = _permute_consumers(chain, chain.index(conv), perm)
        if ok and probe is not None:
            out = model(probe)
            ok = torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
        if ok:
            done.append(conv)
        else:
            model.load_state_dict(state)
    model.train(was_training)
    return done


@dataclass
class SparseByteNNConfig(Config):
    sparsity: float = param(0.3, "fraction of groups pruned per layer (the paper: 30-50%)", range=(0.0, 1.0, "[)"))
    group_size: int = param(4, "G: consecutive output channels per group (1xG); 1, 2 or 4 reach the blocked kernel",
                            range=(1, 64))
    rearrange: bool = param(True, "permute output channels (and their consumers) so groups stay dense")

    def check(self) -> None:
        pass


class SparseByteNN(Method):
    name = "sparsebytenn"
    paper = Paper("SparseByteNN: A Novel Mobile Inference Acceleration Framework Based on Fine-Grained Group Sparsity",
                  2023)  # arXiv id and code URL not verified here (the code was never released)
    kind = "pruning"
    kernel = "spmm_conv"
    Config = SparseByteNNConfig
    summary = "Group sparsity (G output channels x 1 input channel x kxk) after a channel rearrangement; fine-tune."
    stage = "post_training"

    def apply(self, model, targets, probe: torch.Tensor | None = None):
        cfg = self.config
        # Depthwise convs have one input channel per output channel: group sparsity does not apply.
        # (Linear layers take the same 1xG groups of output rows; only convs are rearranged.)
        self.targets = [t for t in targets if (isinstance(t.module, nn.Conv2d) and t.module.groups == 1)
                        or isinstance(t.module, nn.Linear)]
        convs = [t.module for t in self.targets if isinstance(t.module, nn.Conv2d)]
        self.rearranged = []
        if cfg.rearrange and cfg.group_size > 1 and convs:
            if probe is None:
                first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
                probe = torch.randn(2, first.in_channels, 16, 16) if first is not None else None
            try:
                self.rearranged = rearrange_network(model, convs, cfg.group_size, probe)
            except Exception as exc:  # a model the probe cannot run through: prune without rearranging
                warnings.warn(f"sparsebytenn: channel rearrangement skipped ({exc})")
        for t in self.targets:
            apply_mask(t.module, group_mask(getattr(t.module, t.param), cfg.sparsity, cfg.group_size), t.param)
        return model

    def export(self, model):
        """Bakes the masks and folds BatchNorm; 1x1 convs go to SparseConv2d with the blocked kernel when G is 2 or 4."""
        from sparseforge.nn import export_sparse_conv

        model = bake_masks(model).eval()
        return export_sparse_conv(model, min_sparsity=min(0.3, self.config.sparsity), block="auto", fold_bn="auto")
