"""``sparseforge.explain(model)``: per layer, what will run (sparse kernel or dense fallback) and why."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from ._table import format_table

__all__ = ["explain", "Explanation"]


@dataclass
class Explanation:
    rows: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        header = ["layer", "type", "shape", "pattern", "batch", "runs", "ratio (dense/sparse)", "how"]
        body = [[r["layer"], r["type"], r["shape"], r["pattern"], r["batch"], r["runs"],
                 "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["reason"]] for r in self.rows]
        return format_table(header, body, "llllrlrl")

    __repr__ = __str__


def explain(model: nn.Module, batch_sizes=(1,)) -> Explanation:
    """Says, for every N:M layer and batch size, whether the sparse kernel or dense ``F.linear`` will run
    and the measured speed ratio (measuring now if the dispatcher has not yet). Plain Linears are listed
    as dense."""
    from .nn.nm_linear import NMLinear

    out = Explanation()
    for name, mod in model.named_modules():
        if isinstance(mod, NMLinear):
            for b in batch_sizes:
                d = mod.decide(int(b))
                out.rows.append(dict(layer=name or "<root>", type="NMLinear", shape=f"{mod.out_features}x{mod.in_features}",
                                     pattern=f"{mod.n}:{mod.m}", batch=int(b),
                                     runs="nm_gemm (sparse)" if d.choice == "sparse" else "F.linear (dense fallback)",
                                     ratio=d.ratio, reason=d.reason))
        elif isinstance(mod, nn.Linear):
            out.rows.append(dict(layer=name or "<root>", type="Linear", shape=f"{mod.out_features}x{mod.in_features}",
                                 pattern="-", batch="-", runs="F.linear (dense)", ratio=None, reason="not N:M exported"))
    return out
