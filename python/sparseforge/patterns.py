"""Sparsity patterns as boolean masks: exact top-k (unstructured) and N:M along the reduction dimension.

N:M groups run along the input (reduction) dimension K, as in SR-STE and NVIDIA's 2:4 hardware: for a
Linear weight ``[out, in]`` a group is ``m`` consecutive input features of one output row; for a
convolution ``[out, in, *k]`` the weight is viewed channels-last (``[out, *k, in]``) so that a group is
``m`` consecutive input channels at one kernel position.
"""

from __future__ import annotations

import torch

__all__ = ["as_rows", "from_rows", "topk_mask", "nm_mask", "nm_mask_along", "parse_nm", "reduction_size"]


def reduction_size(w: torch.Tensor) -> int:
    """Length of the dimension N:M groups run along (in_features / in_channels)."""
    return w.shape[1] if w.dim() >= 2 else w.shape[0]


def as_rows(w: torch.Tensor) -> torch.Tensor:
    """View ``w`` as a 2-D ``[rows, K]`` tensor with N:M groups along the last dimension (may copy)."""
    if w.dim() == 2:
        return w
    if w.dim() < 2:
        raise ValueError(f"N:M patterns need a weight with at least 2 dimensions, got shape {tuple(w.shape)}")
    perm = (0, *range(2, w.dim()), 1)  # [out, in, *k] -> [out, *k, in]
    return w.permute(perm).reshape(-1, w.shape[1])


def from_rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`as_rows` for a tensor of the original ``shape``."""
    if len(shape) == 2:
        return rows.reshape(shape)
    out, cin, *k = shape
    inv = (0, len(shape) - 1, *range(1, len(shape) - 1))  # [out, *k, in] -> [out, in, *k]
    return rows.reshape(out, *k, cin).permute(inv).contiguous()


def parse_nm(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``; raises ValueError naming the expected form."""
    try:
        n_txt, m_txt = pattern.split(":")
        n, m = int(n_txt), int(m_txt)
    except (ValueError, AttributeError):
        raise ValueError(f"N:M pattern must look like '2:4', got {pattern!r}") from None
    if not (1 <= n <= m <= 64):
        raise ValueError(f"N:M pattern {pattern!r} needs 1 <= N <= M <= 64")
    return n, m


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of ``scores``' shape keeping exactly ``keep`` largest entries (ties by index)."""
    flat = scores.reshape(-1)
    if not 0 <= keep <= flat.numel():
        raise ValueError(f"keep={keep} is outside [0, {flat.numel()}]")
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        idx = torch.topk(flat, keep, largest=True, sorted=False).indices
        mask[idx] = True
    return mask.reshape(scores.shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest scores of every group of ``m`` along the reduction dim."""
    return nm_mask_along(scores, n, m, dim=1 if scores.dim() >= 2 else 0)


def nm_mask_along(scores: torch.Tensor, n: int, m: int, dim: int) -> torch.Tensor:
    """N:M mask with groups of ``m`` consecutive entries along dimension ``dim`` (any other dims are
    independent groups). ``dim=1`` equals :func:`nm_mask`; ``dim=0`` groups output channels, the
    reduction dimension of the transposed weight used for activation gradients."""
    moved = scores.movedim(dim, -1)
    size = moved.shape[-1]
    if size % m:
        raise ValueError(f"dimension {dim} of a weight of shape {tuple(scores.shape)} has size {size}, "
                         f"which is not a multiple of M={m}")
    groups = moved.reshape(-1, m)
    idx = torch.topk(groups, n, dim=1, largest=True, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, idx, True)
    return mask.reshape(moved.shape).movedim(-1, dim).contiguous()
