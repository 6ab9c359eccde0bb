#!/usr/bin/env python3
"""Trains kneenode's demo segmentation model on its own synthetic phantoms and exports it.

    python tools/train_demo.py [--kneenode target/release/kneenode]

writes `models/demo/seg.pt` (TorchScript) and `models/demo/manifest.toml`. It is the model
that makes every feature of kneenode work on a fresh machine without the (gated) real
weights, so it must train on a plain CPU in minutes and be small enough to commit.

What it does, and why:

* **Data.** `kneenode phantom` writes full-size phantoms (192 × 192 × 80 voxels of
  0.75 × 0.75 × 1.5 mm, orientation PIR). The network works on that native grid, so nothing
  is resampled here and the manifest's spacing is the phantom's: at the `--small` 2 mm grid
  cartilage would be a single voxel thick and could not reach the Dice target. Training
  phantoms vary seed, laterality and cartilage thickness (1.5–3 mm); seeds 1001–1005 are
  never used, they are the held-out set of `eval_demo.py`.
* **Side-canonical.** The network only ever sees right knees: every left phantom is mirrored
  along k (the patient's left–right axis of the PIR grid) *without* exchanging the medial and
  lateral labels, because a mirrored left knee is a right knee whose medial side is still
  medial. The manifest says `side = "right"`, and kneenode mirrors a left knee the same way
  before segmenting it and mirrors the labels back afterwards (`pipeline::ensemble`). Why:
  the phantom's left knee is the exact mirror image of a right one, so a network that sees
  both must tell medial from lateral (labels 3/4, 5/6) from subtle shape cues alone; the
  earlier models could not, and called both tibial plateaus "medial". On canonical right
  knees the medial compartment is always on the low-k side of the intercondylar notch.
* **Network.** A 5-stage 3D U-Net in nnU-Net's style: two 3×3×3 conv → instance norm →
  leaky ReLU blocks per stage, strided-conv downsampling, transposed-conv upsampling. The
  first downsampling is (2, 2, 1) because the grid is twice as coarse along k; after it the
  voxels are isotropic (1.5 mm) and the rest halve all three axes, so the deepest stage sees
  ~12 mm voxels and its receptive field spans the patch. Instance norm (not batch norm)
  keeps the output independent of how many patches the Rust side batches together.
* **Training.** Random patches, most of them centred on a voxel of a randomly chosen tissue,
  the small ones (cartilages, menisci: < 0.1 % of the volume each) drawn more often than the
  bones; Dice + cross-entropy loss with deep supervision, Adam with warm-up and polynomial
  decay, a fixed number of steps and fixed seeds so a rerun gives the same model (on the
  same thread count).
* **Export.** Eval mode, parameters frozen (`requires_grad = False`), `torch.jit.trace` on a
  patch; the network is fully convolutional so the traced graph runs on any size divisible
  by 16 × 16 × 8 (checked against the eager model before saving).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_common import (  # noqa: E402
    LABELS,
    NUM_CLASSES,
    cache_dir,
    canonical,
    default_kneenode,
    make_phantom,
    phantom_dir,
    zscore,
)

REPO = Path(__file__).resolve().parent.parent
# The manifest's `version`: bump it whenever the recipe below changes the weights.
MODEL_VERSION = "2"
# Optimiser steps of the committed model: sized to train in about half an hour on 2 CPU threads
# (a shared 2-core machine measured 0.4-0.7 s a step).
STEPS = 2800
# Held out for eval_demo.py; the trainer refuses to touch them.
EVAL_SEEDS = range(1001, 1006)
# The side every training knee is brought to (the manifest's `side`).
CANONICAL_SIDE = "right"
# The small tissues (cartilages, menisci), whose patches the sampler favours.
SMALL_TISSUES = (1, 2, 3, 4, 5, 6)


# --------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------


class ConvBlock(nn.Sequential):
    """conv 3×3×3 → instance norm → leaky ReLU (nnU-Net's basic block)."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__(
            nn.Conv3d(cin, cout, 3, stride=stride, padding=1),
            # affine=True: learned scale/shift; track_running_stats=False: statistics always come
            # from the patch itself, in training and inference alike.
            nn.InstanceNorm3d(cout, affine=True, eps=1e-5),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet3D(nn.Module):
    """A small fully convolutional 3D U-Net; input (N, 1, I, J, K), output logits (N, C, I, J, K).

    `strides[s]` is the downsampling into stage s + 1, so any input whose size along each axis
    is divisible by the product of its strides works (16, 16, 8 for the default).
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (12, 24, 32, 64, 64),
        strides: tuple[tuple[int, int, int], ...] = ((2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        assert len(strides) == len(channels) - 1
        self.encoder = nn.ModuleList()
        cin = 1
        for s, c in enumerate(channels):
            stride = (1, 1, 1) if s == 0 else strides[s - 1]
            self.encoder.append(nn.Sequential(ConvBlock(cin, c, stride), ConvBlock(c, c)))
            cin = c
        # Decoder stages run deepest first; each upsamples, concatenates the skip, convolves.
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for s in range(len(channels) - 1, 0, -1):
            st = strides[s - 1]
            self.upsample.append(nn.ConvTranspose3d(channels[s], channels[s - 1], st, stride=st))
            self.decoder.append(
                nn.Sequential(ConvBlock(2 * channels[s - 1], channels[s - 1]), ConvBlock(channels[s - 1], channels[s - 1]))
            )
        self.head = nn.Conv3d(channels[0], num_classes, 1)
        # Deep supervision (training only): a 1×1×1 head on each decoder stage but the last and
        # the bottom, so the coarse stages get a direct gradient early in training.
        self.aux_heads = nn.ModuleList(nn.Conv3d(channels[s], num_classes, 1) for s in range(len(channels) - 2, 0, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x, aux=False)[-1]

    def forward_all(self, x: torch.Tensor, aux: bool = True) -> list[torch.Tensor]:
        """Logits of every decoder stage, coarsest first (only the full-resolution logits, the
        network's output, unless `aux`)."""
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips[-1]
        outs = []
        n_dec = len(self.decoder)
        for n, (up, dec) in enumerate(zip(self.upsample, self.decoder)):
            x = dec(torch.cat([up(x), skips[-2 - n]], dim=1))
            if aux and n < n_dec - 1:
                outs.append(self.aux_heads[n](x))
        outs.append(self.head(x))
        return outs


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def training_plan(n: int, rng: random.Random) -> list[tuple[int, bool, float]]:
    """(seed, left, cartilage mm) of each training phantom: seeds 1…n, every other one a left
    knee, thickness drawn uniformly from 1.5–3 mm (0.1 mm steps, so folder names stay short).
    The left knees are mirrored to right ones before training (`canonical`); they are kept
    because the mirror of a posed left knee is a right knee in a pose no right phantom has."""
    plan = []
    for seed in range(1, n + 1):
        assert seed not in EVAL_SEEDS
        plan.append((seed, seed % 2 == 0, round(rng.uniform(1.5, 3.0), 1)))
    return plan


class PatchSampler:
    """Draws training patches from in-memory volumes.

    With probability `fg_prob` a patch is centred on a voxel of a tissue chosen among those
    present, each small tissue (cartilages, menisci) `small_weight` times as often as each bone
    (so a 1500-voxel tibial cartilage is seen more often than a 200 000-voxel femur), otherwise
    anywhere; the centre is clipped so the patch stays inside the volume.
    """

    def __init__(self, volumes, patch, fg_prob: float, small_weight: float, rng: np.random.Generator):
        self.volumes = volumes  # list of (zscored float32 [I,J,K], labels uint8 [I,J,K]), right knees
        self.patch = np.array(patch)
        self.fg_prob = fg_prob
        self.small_weight = small_weight
        self.rng = rng
        # Flat indices per class per volume, computed once (np.flatnonzero is the slow part).
        self.where = [
            {c: np.flatnonzero(lab == c) for c in range(1, NUM_CLASSES) if (lab == c).any()}
            for _, lab in volumes
        ]

    def crop(self) -> tuple[np.ndarray, np.ndarray]:
        """A random crop (views into the volume)."""
        v = int(self.rng.integers(len(self.volumes)))
        image, labels = self.volumes[v]
        shape = np.array(image.shape)
        if self.rng.random() < self.fg_prob:
            classes = sorted(self.where[v])
            w = np.array([self.small_weight if c in SMALL_TISSUES else 1.0 for c in classes])
            c = classes[int(self.rng.choice(len(classes), p=w / w.sum()))]
            flat = self.where[v][c][int(self.rng.integers(len(self.where[v][c])))]
            centre = np.array(np.unravel_index(flat, image.shape))
        else:
            centre = self.rng.integers(0, shape)
        start = np.clip(centre - self.patch // 2, 0, shape - self.patch)
        sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        return image[sl], labels[sl]

    def finish(self, x, y):
        """Augments a crop. No mirroring: flipping i or j is not anatomy, and flipping k would
        turn the right knee into a left one, which the network never has to segment."""
        # Mild global intensity jitter so the model does not lean on the exact z-score.
        x = x * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.1, 0.1)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n patches: (images (n, 1, …), labels (n, …))."""
        xs, ys = zip(*(self.finish(*self.crop()) for _ in range(n)))
        return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys)).long()


# --------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy + (1 − soft Dice), Dice over the foreground classes with the batch
    treated as one volume (nnU-Net's "batch dice"): more stable than per-patch Dice when a
    small tissue is absent from a patch.

    `class_weights` weight the cross-entropy. Soft Dice alone cannot rescue a rare class: once
    the network has pushed its softmax probability near 0 everywhere (it does within a few
    steps, to fit the background), the gradient through the softmax vanishes with it, and the
    plain cross-entropy gives a 1500-voxel meniscus ~0.5 % of its weight. Weighting rare
    classes up keeps their gradient alive from the first step."""
    ce = F.cross_entropy(logits, target, weight=class_weights)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, NUM_CLASSES).permute(0, 4, 1, 2, 3).to(probs.dtype)
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + (1 - dice[1:].mean())


def deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Dice + CE on every decoder stage against the labels subsampled to its grid (nearest
    neighbour: every n-th voxel, which for a strided-conv encoder is where the coarse voxel
    sits), weighted 1, ½, ¼, … from the finest stage and normalised, as nnU-Net does."""
    total, weights = 0.0, 0.0
    for depth, logits in enumerate(reversed(outputs)):
        w = 0.5**depth
        step = [t // l for t, l in zip(target.shape[1:], logits.shape[2:])]
        t = target[:, :: step[0], :: step[1], :: step[2]]
        total = total + w * dice_ce_loss(logits, t, class_weights)
        weights += w
    return total / weights


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------


def export(model: nn.Module, out_dir: Path, patch, spacing, plan, args) -> Path:
    """Traces the model to TorchScript and writes it with its manifest."""
    model = model.to(memory_format=torch.contiguous_format).float().eval()
    # The deep-supervision heads only serve training; drop them so the file holds only what runs.
    model.aux_heads = nn.ModuleList()
    for p in model.parameters():
        p.requires_grad_(False)
    example = torch.zeros(1, 1, *patch)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
        # The trace must not have frozen any size: compare on a different, smaller shape.
        probe = torch.randn(2, 1, 32, 48, 32, generator=torch.Generator().manual_seed(0))
        err = (traced(probe) - model(probe)).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"traced model differs from the eager one by {err}")
    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / "seg.pt"
    traced.save(str(pt))

    seeds = [s for s, _, _ in plan]
    n_left = sum(1 for _, left, _ in plan if left)
    thick = [t for _, _, t in plan]
    labels = "\n".join(f'{i} = "{name}"' for i, name in enumerate(LABELS))
    manifest = f"""\
# kneenode demo segmentation model, written by tools/train_demo.py (do not edit by hand:
# rerun the script). Checked by tools/eval_demo.py.
#
# Input:  float32 (N, 1, I, J, K): the volume reoriented to `orientation` and resampled to
#         `spacing`, axes in the volume's i, j, k order (i fastest in NIfTI/DICOM memory order,
#         here the first tensor dimension after the channel), normalised as `normalization` says.
# Output: logits (N, {NUM_CLASSES}, I, J, K), same spatial size; softmax over dim 1.
# Any I, J, K divisible by 16, 16, 8 works (fully convolutional); `patch_size` is what it
# was trained on and what the sliding window should use (instance norm statistics depend on
# the patch extent).
name = "demo"
kind = "patch3d"
version = "{MODEL_VERSION}"
file = "seg.pt"
in_channels = 1
num_classes = {NUM_CLASSES}
spacing = [{", ".join(f"{s:g}" for s in spacing)}]   # mm, along i, j, k of `orientation`
orientation = "PIR"      # i → posterior, j → inferior, k → patient's right (sagittal)
patch_size = [{", ".join(str(p) for p in patch)}]
# z-score over the whole volume: (x − mean) / std, mean and standard deviation (with n − 1)
# of all voxels of the reoriented, resampled volume; no foreground mask, no clipping.
normalization = "zscore"
# Trained on right knees only (left training knees were mirrored along k, the patient's
# left–right axis, with their labels unchanged). kneenode mirrors a left knee the same way
# before segmenting it and mirrors the labels back.
side = "{CANONICAL_SIDE}"
# No mirroring TTA: flipping i or j is not anatomy, and flipping k turns the right knee the
# network knows into a left one.
# Sliding window as DOMAIN.md says: step 0.5 of the patch, Gaussian importance σ = patch / 8.
mirror_axes = []
trained_on = "kneenode phantoms, seeds {seeds[0]}–{seeds[-1]} ({n_left} of them left knees mirrored to right ones), cartilage {min(thick):g}–{max(thick):g} mm, 192×192×80 at 0.75×0.75×1.5 mm, {args.steps} steps of {args.batch} patches {"×".join(str(p) for p in patch)}; held out: seeds 1001–1005"

[labels]
{labels}
"""
    (out_dir / "manifest.toml").write_text(manifest)
    return pt


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def bf16_is_native() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kneenode", type=Path, default=default_kneenode(), help="kneenode binary (default: target/release/kneenode)")
    ap.add_argument("--cache", type=Path, default=cache_dir(), help="where phantoms are generated and kept")
    ap.add_argument("--out", type=Path, default=REPO / "models" / "demo", help="output folder")
    ap.add_argument("--phantoms", type=int, default=40, help="number of training phantoms")
    ap.add_argument("--steps", type=int, default=STEPS, help="optimiser steps")
    ap.add_argument("--batch", type=int, default=2, help="patches per step")
    ap.add_argument("--patch", type=int, nargs=3, default=[64, 64, 48], help="patch size along i j k")
    ap.add_argument("--channels", type=int, nargs="+", default=[12, 24, 32, 64, 64])
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--fg-prob", type=float, default=0.8, help="share of patches centred on a tissue")
    ap.add_argument("--small-weight", type=float, default=2.0,
                    help="how much more often a tissue-centred patch picks each cartilage or meniscus than each bone")
    ap.add_argument("--rare-weight", type=float, default=10.0,
                    help="initial cross-entropy weight of labels 1-6 (annealed linearly to 1 over training)")
    ap.add_argument("--init", type=Path, default=None, help="start from this state_dict (experiments)")
    ap.add_argument("--deep-supervision", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="bf16 autocast in training (auto: where the CPU has native bf16)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (results are reproducible for a given count)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path, default=None, help="also save the state_dict here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    plan = training_plan(args.phantoms, random.Random(args.seed))

    t0 = time.time()
    volumes, spacing = [], None
    for seed, left, mm in plan:
        image, labels, sp = make_phantom(args.kneenode, phantom_dir(args.cache, seed, left, mm), seed, left, mm)
        if spacing is None:
            spacing = sp
        elif not np.allclose(sp, spacing):
            raise RuntimeError(f"phantom {seed} has spacing {sp}, expected {spacing}")
        # Canonical right knees; z-scoring does not care about the mirror.
        volumes.append((zscore(canonical(image, left)), canonical(labels, left)))
    print(f"{len(volumes)} phantoms {volumes[0][0].shape} at {spacing} mm ready in {time.time() - t0:.0f} s", flush=True)

    model = UNet3D(tuple(args.channels))
    if args.init:
        # Experiments only: continue from an earlier run's weights.
        model.load_state_dict(torch.load(args.init), strict=False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"UNet3D channels {args.channels}: {n_params} parameters (with training-only heads)", flush=True)
    # bf16 autocast roughly halves the step time on a CPU with native bf16 (AVX512-BF16, AMX);
    # elsewhere it would be emulated and slower, so "auto" only uses it where it is native.
    # Master weights stay fp32 and the exported model is fp32.
    use_bf16 = args.bf16 == "on" or (args.bf16 == "auto" and bf16_is_native())
    print(f"bf16 autocast: {'on' if use_bf16 else 'off'}", flush=True)
    # channels-last lets oneDNN pick its fast 3D convolution kernels (~20 % per step).
    model = model.to(memory_format=torch.channels_last_3d)
    sampler = PatchSampler(volumes, args.patch, args.fg_prob, args.small_weight, rng)
    if args.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-5)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.99, nesterov=True, weight_decay=3e-5)
    warmup = max(1, args.steps // 25)

    def lr_at(step: int) -> float:
        # Linear warm-up (Adam with a fresh instance norm can blow up on the first steps),
        # then nnU-Net's polynomial decay.
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (1 - (step - warmup) / (args.steps - warmup)) ** 0.9

    model.train()
    t1 = time.time()
    running = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = sampler.batch(args.batch)
        # Rare-class weights matter at the start (see dice_ce_loss); annealing them to 1 leaves
        # the end of training with unbiased cross-entropy, so the learned boundaries are not
        # pushed outwards into the neighbouring tissue.
        w_rare = 1 + (args.rare_weight - 1) * (1 - step / args.steps)
        class_weights = torch.tensor([1.0] + [w_rare] * 6 + [1.0] * 3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            outs = model.forward_all(x.contiguous(memory_format=torch.channels_last_3d))
        outs = [o.float() for o in outs]
        if args.deep_supervision:
            loss = deep_supervision_loss(outs, y, class_weights)
        else:
            loss = dice_ce_loss(outs[-1], y, class_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if args.checkpoint and step % 100 == 99:
            torch.save(model.state_dict(), args.checkpoint)
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  avg {running:.4f}  "
                  f"lr {lr_at(step):.2e}  {time.time() - t1:6.0f} s", flush=True)
    train_s = time.time() - t1
    if args.checkpoint:
        torch.save(model.state_dict(), args.checkpoint)

    pt = export(model, args.out, args.patch, spacing, plan, args)
    size = pt.stat().st_size
    print(f"trained in {train_s:.0f} s ({train_s / args.steps:.2f} s/step); total {time.time() - t0:.0f} s", flush=True)
    print(f"wrote {pt} ({size / 1e6:.2f} MB) and {args.out / 'manifest.toml'}", flush=True)
    if size > 5e6:
        raise SystemExit("seg.pt is over the 5 MB budget")


if __name__ == "__main__":
    main()
