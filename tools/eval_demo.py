#!/usr/bin/env python3
"""Evaluates the demo model on held-out phantoms: the Python reference for kneenode's Rust
inference.

    python tools/eval_demo.py [--kneenode target/release/kneenode] [--seeds 1001 … 1005]
                              [--sides right left]

For each seed and side it generates the default full-size phantom (2 mm cartilage, random
pose; a right and a left knee by default), z-scores the whole volume, runs the TorchScript
model of `models/demo/` by sliding window exactly as DOMAIN.md describes nnU-Net's (step 0.5
of the patch, Gaussian importance map with σ = 1/8 of the patch, softmax accumulated, then
argmax), and prints the Dice of labels 1–9, their mean, and the inference time. The phantom
grid is already the model's spacing and orientation (PIR), so no resampling happens; the
script checks that.

A model whose manifest has `side` (trained on knees of that side only) gets a knee of the
other side as kneenode gives it: mirrored along k, the patient's left–right axis, before the
sliding window, and the labels mirrored back (no medial/lateral swap) before they are compared
with the phantom's own labels.

`--postprocess` also reports Dice after what the pipeline does next (largest connected
component per label, holes filled in the bones); the raw figures are the model's own.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_common import (  # noqa: E402
    BONES,
    LABELS,
    cache_dir,
    canonical,
    default_kneenode,
    dice_per_label,
    make_phantom,
    phantom_dir,
    sliding_window,
    zscore,
)

REPO = Path(__file__).resolve().parent.parent
SHORT = ["bg", "PatC", "FemC", "MTibC", "LTibC", "MMen", "LMen", "Femur", "Tibia", "Patella"]


def components(mask: np.ndarray) -> np.ndarray:
    """6-connected component ids of a boolean (I, J, K) mask (−1 outside), by a vectorised
    union-find: hook each edge's larger root onto the smaller, then pointer-jump until the
    roots settle. Plain numpy, so the evaluation needs no scipy."""
    flat = mask.ravel()
    ids = np.full(mask.shape, -1, dtype=np.int64)
    n = int(flat.sum())
    ids.ravel()[flat] = np.arange(n)
    a_list, b_list = [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        both = mask[tuple(lo)] & mask[tuple(hi)]
        a_list.append(ids[tuple(lo)][both])
        b_list.append(ids[tuple(hi)][both])
    ea, eb = np.concatenate(a_list), np.concatenate(b_list)
    parent = np.arange(n)
    while True:
        ra, rb = parent[ea], parent[eb]
        diff = ra != rb
        if not diff.any():
            break
        ea, eb, ra, rb = ea[diff], eb[diff], ra[diff], rb[diff]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    out = np.full(mask.shape, -1, dtype=np.int64)
    out.ravel()[flat] = parent
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    ids = components(mask)
    roots, counts = np.unique(ids[mask], return_counts=True)
    if len(roots) <= 1:
        return mask
    return ids == roots[counts.argmax()]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background not connected to the volume border becomes foreground."""
    bg = ~mask
    ids = components(bg)
    border = np.zeros_like(mask)
    border[[0, -1]] = border[:, [0, -1]] = border[:, :, [0, -1]] = True
    outside = np.unique(ids[border & bg])
    return mask | (bg & ~np.isin(ids, outside))


def postprocess(seg: np.ndarray) -> np.ndarray:
    """Largest connected component per label (the rest becomes background), then hole filling
    in the bones, in that order, as DOMAIN.md describes the pipeline's post-processing."""
    out = np.zeros_like(seg)
    for lab in range(1, len(LABELS)):
        mask = seg == lab
        if mask.any():
            out[largest_component(mask)] = lab
    for lab in BONES:
        mask = out == lab
        if mask.any():
            # Only fill voxels no other label claims.
            out[fill_holes(mask) & (out == 0)] = lab
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kneenode", type=Path, default=default_kneenode())
    ap.add_argument("--cache", type=Path, default=cache_dir())
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1001, 1002, 1003, 1004, 1005])
    ap.add_argument("--sides", nargs="+", choices=["right", "left"], default=["right", "left"],
                    help="which knees of each seed (default: both)")
    ap.add_argument("--cartilage-mm", type=float, default=None, help="phantom cartilage thickness (default: kneenode's, 2 mm)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="patches per forward pass")
    ap.add_argument("--postprocess", action="store_true", help="also report Dice after LCC + bone hole filling")
    ap.add_argument("--save", type=Path, default=None, help="write each prediction as DIR/seed<N>_pred.npy")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    manifest = tomllib.loads((args.model_dir / "manifest.toml").read_text())
    assert manifest["normalization"] == "zscore" and manifest["orientation"] == "PIR"
    patch = tuple(manifest["patch_size"])
    model_side = manifest.get("side")  # None: the model takes either side as it is
    step = 0.5  # DOMAIN.md: half-patch overlap (the Gaussian σ = patch / 8 is in demo_common)
    model = torch.jit.load(str(args.model_dir / manifest["file"]), map_location="cpu").eval()
    print(f"model {manifest['name']} v{manifest['version']}: patch {patch}, spacing {manifest['spacing']}, "
          f"side {model_side or 'any'}, {sum(p.numel() for p in model.parameters())} parameters, "
          f"{args.threads} threads", flush=True)

    header = f"{'knee':>7} " + " ".join(f"{SHORT[l]:>7}" for l in range(1, 10)) + f" {'mean':>7} {'time s':>7}"
    rows, rows_pp, times = [], [], []
    print(header)
    for seed in args.seeds:
        for side in args.sides:
            left = side == "left"
            folder = phantom_dir(args.cache, seed, left, args.cartilage_mm)
            image, truth, spacing = make_phantom(args.kneenode, folder, seed, left, args.cartilage_mm)
            if not np.allclose(spacing, manifest["spacing"], atol=1e-4):
                raise SystemExit(f"phantom spacing {spacing} is not the model's {manifest['spacing']}; resample first")
            # A one-sided model sees a knee of the other side mirrored (PIR: k is left–right).
            mirrored = model_side is not None and side != model_side
            t = time.perf_counter()
            # Timed from the raw volume to the label map: normalisation, windows, softmax, argmax.
            x = zscore(canonical(image, mirrored))
            probs = sliding_window(model, x, patch, len(LABELS), step=step, batch=args.batch)
            seg = canonical(probs.argmax(0).to(torch.uint8).numpy(), mirrored)
            times.append(time.perf_counter() - t)
            d = dice_per_label(seg, truth)
            rows.append([d[l] for l in range(1, 10)])
            name = f"{seed}{side[0].upper()}"
            print(f"{name:>7} " + " ".join(f"{v:7.4f}" for v in rows[-1]) + f" {np.nanmean(rows[-1]):7.4f} {times[-1]:7.1f}", flush=True)
            if args.postprocess:
                dp = dice_per_label(postprocess(seg), truth)
                rows_pp.append([dp[l] for l in range(1, 10)])
                print(f"{'  +pp':>7} " + " ".join(f"{v:7.4f}" for v in rows_pp[-1]) + f" {np.nanmean(rows_pp[-1]):7.4f}", flush=True)
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                np.save(args.save / f"seed{seed}_{side}_pred.npy", seg)

    def summary(name: str, table: list[list[float]]) -> np.ndarray:
        m = np.nanmean(np.array(table), axis=0)
        print(f"{name:>7} " + " ".join(f"{v:7.4f}" for v in m) + f" {np.nanmean(m):7.4f}")
        return m

    print("-" * len(header))
    summary("mean", rows)
    low = summary("min", [list(np.nanmin(np.array(rows), axis=0))])
    if rows_pp:
        summary("pp", rows_pp)
        low_pp = summary("pp min", [list(np.nanmin(np.array(rows_pp), axis=0))])
    print(f"inference: {np.mean(times):.1f} s per volume (mean of {len(times)}, {args.threads} threads, CPU)")
    # The target: every tissue ≥ 0.90, bones ≥ 0.95, on every phantom (the Rust test
    # asserts it per phantom after post-processing; here on the raw argmax, and with
    # --postprocess also after it).
    def verdict(name: str, worst: np.ndarray) -> None:
        misses = [
            f"{LABELS[l]} {worst[l - 1]:.4f} < {0.95 if l in BONES else 0.90}"
            for l in range(1, 10)
            if worst[l - 1] < (0.95 if l in BONES else 0.90)
        ]
        print(f"{name}: " + ("target met on every phantom" if not misses else "target missed: " + "; ".join(misses)))

    verdict("raw", low)
    if rows_pp:
        verdict("post-processed", low_pp)


if __name__ == "__main__":
    main()
