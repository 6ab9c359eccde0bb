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
* **Network.** A 5-stage 3D U-Net in nnU-Net's style: two 3×3×3 conv → instance norm →
  leaky ReLU blocks per stage, strided-conv downsampling, transposed-conv upsampling. The
  first downsampling is (2, 2, 1) because the grid is twice as coarse along k; after it the
  voxels are isotropic (1.5 mm) and the rest halve all three axes. Instance norm (not batch
  norm) keeps the output independent of how many patches the Rust side batches together.
  The deepest stage sees ~12 mm voxels, which gives the receptive field needed to tell the
  medial compartment from the lateral one: the phantom's left knee is the mirror image of a
  right one, so only the shape of the menisci (the medial one is a more open "C") and the
  cruciate ligaments say which side is which.
* **Training.** Random patches, two thirds of them centred on a voxel of a randomly chosen
  tissue (the cartilages and menisci are < 0.1 % of the volume each), Dice + cross-entropy
  loss, Adam with warm-up and polynomial decay, a fixed number of steps and fixed seeds so a
  rerun gives the same model (on the same thread count). Mirroring along k with the
  medial/lateral labels swapped turns a right knee into a left one and doubles the data.
* **Export.** Eval mode, parameters frozen (`requires_grad = False`), `torch.jit.trace` on a
  patch; the network is fully convolutional so the traced graph runs on any size divisible
  by 16 × 16 × 16 (checked against the eager model before saving).
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
    default_kneenode,
    make_phantom,
    phantom_dir,
    zscore,
)

REPO = Path(__file__).resolve().parent.parent
# The manifest's `version`: bump it whenever the recipe below changes the weights.
MODEL_VERSION = "1"
# Held out for eval_demo.py; the trainer refuses to touch them.
EVAL_SEEDS = range(1001, 1006)
# Swapping these along with a k-mirror turns a right knee into a left one.
MIRROR_SWAP = {3: 4, 4: 3, 5: 6, 6: 5}


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
        channels: tuple[int, ...] = (8, 16, 32, 64, 64),
        strides: tuple[tuple[int, int, int], ...] = ((2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
        num_classes: int = NUM_CLASSES,
        context: int = 32,
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
        # Global context: a small side encoder (input pooled to isotropic voxels, then conv
        # blocks and max pooling down to ~12 mm) whose patch-wide mean goes through a 1×1×1
        # bottleneck and is added to the U-Net's deepest features at every position.
        # Why: the phantom's left knee is the exact mirror of a right one, so medial vs lateral
        # (labels 3/4, 5/6) hinges on one bit per knee that only subtle asymmetries reveal
        # (the medial meniscus is a more open "C", the ACL leaves the lateral condyle). Pooling
        # lets evidence from anywhere in the patch decide it for every voxel. The side encoder
        # always runs in fp32 (see forward_all). Like instance norm, this depends on the whole
        # patch but never on the batch.
        self.side_encoder = nn.Sequential(
            nn.AvgPool3d(strides[0], strides[0]),
            ConvBlock(1, 16),
            nn.MaxPool3d(2),
            ConvBlock(16, 32),
            nn.MaxPool3d(2),
            ConvBlock(32, 48),
            nn.MaxPool3d(2),
            ConvBlock(48, 48),
        )
        self.context = nn.Sequential(nn.Conv3d(48, context, 1), nn.LeakyReLU(0.01, inplace=True))
        self.context_out = nn.Conv3d(context, channels[-1], 1)
        # Laterality probe (training only): left/right from the pooled context, supervised
        # directly. Through the segmentation loss alone the encoder never found the asymmetry
        # within the CPU budget; with the probe it does in a few hundred steps.
        self.laterality_head = nn.Conv3d(context, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x, aux=False)[-1]

    def forward_all(self, x: torch.Tensor, aux: bool = True) -> list[torch.Tensor]:
        """Logits of every decoder stage, coarsest first, then the laterality logit (N, 1)
        (only the full-resolution logits, the network's output, unless `aux`)."""
        inputs = x
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        # bf16 autocast (training) slowed the discovery of the left/right cue a lot in tests, and
        # this branch is cheap: keep it in fp32.
        with torch.autocast("cpu", enabled=False):
            pooled = self.side_encoder(inputs.float()).mean(dim=(2, 3, 4), keepdim=True)
            hidden = self.context(pooled)
            context = self.context_out(hidden)
        x = skips[-1] + context.to(skips[-1].dtype)
        side = self.laterality_head(hidden).flatten(1) if aux else None
        outs = []
        n_dec = len(self.decoder)
        for n, (up, dec) in enumerate(zip(self.upsample, self.decoder)):
            x = dec(torch.cat([up(x), skips[-2 - n]], dim=1))
            if aux and n < n_dec - 1:
                outs.append(self.aux_heads[n](x))
        outs.append(self.head(x))
        if side is not None:
            outs.append(side)
        return outs


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def training_plan(n: int, rng: random.Random) -> list[tuple[int, bool, float]]:
    """(seed, left, cartilage mm) of each training phantom: seeds 1…n, every other one a left
    knee, thickness drawn uniformly from 1.5–3 mm (0.1 mm steps, so folder names stay short)."""
    plan = []
    for seed in range(1, n + 1):
        assert seed not in EVAL_SEEDS
        plan.append((seed, seed % 2 == 0, round(rng.uniform(1.5, 3.0), 1)))
    return plan


class PatchSampler:
    """Draws training patches from in-memory volumes.

    With probability `fg_prob` a patch is centred on a voxel of a tissue chosen uniformly among
    those present (so a 1500-voxel tibial cartilage is seen as often as a 200 000-voxel femur),
    otherwise anywhere; the centre is clipped so the patch stays inside the volume.
    """

    def __init__(self, volumes, lefts, patch, fg_prob: float, rng: np.random.Generator):
        self.volumes = volumes  # list of (zscored float32 [I,J,K], labels uint8 [I,J,K])
        self.lefts = lefts  # whether each volume is a left knee
        self.patch = np.array(patch)
        self.fg_prob = fg_prob
        self.rng = rng
        # Flat indices per class per volume, computed once (np.flatnonzero is the slow part).
        self.where = [
            {c: np.flatnonzero(lab == c) for c in range(1, NUM_CLASSES) if (lab == c).any()}
            for _, lab in volumes
        ]
        swap = np.arange(NUM_CLASSES, dtype=np.uint8)
        for a, b in MIRROR_SWAP.items():
            swap[a] = b
        self.swap = swap

    def crop(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """A random crop (views into the volume) and whether its knee is a left one."""
        v = int(self.rng.integers(len(self.volumes)))
        image, labels = self.volumes[v]
        shape = np.array(image.shape)
        if self.rng.random() < self.fg_prob:
            classes = sorted(self.where[v])
            c = classes[int(self.rng.integers(len(classes)))]
            flat = self.where[v][c][int(self.rng.integers(len(self.where[v][c])))]
            centre = np.array(np.unravel_index(flat, image.shape))
        else:
            centre = self.rng.integers(0, shape)
        start = np.clip(centre - self.patch // 2, 0, shape - self.patch)
        sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch))
        return image[sl], labels[sl], self.lefts[v]

    def finish(self, x, y, left: bool, mirror: bool):
        """Augments a crop; returns (image, labels, left) of the result."""
        if mirror:
            # A right knee mirrored across the sagittal plane is a left knee, with medial and
            # lateral structures exchanging sides.
            x, y, left = x[:, :, ::-1], self.swap[y[:, :, ::-1]], not left
        # Mild global intensity jitter so the model does not lean on the exact z-score.
        x = x * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.1, 0.1)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y), left

    def batch(self, n: int, mirror_pairs: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n patches: (images (n,1,…), labels (n,…), left-knee flags (n,)).

        With `mirror_pairs` the batch holds n/2 crops each with its own mirror image: the same
        anatomy twice with medial and lateral labels exchanged, so any feature that does not
        tell left from right earns nothing on the medial/lateral labels, and the gradient of
        each step points straight at what does (the shape of the menisci, the cruciates).
        """
        items = []
        if mirror_pairs:
            for _ in range(n // 2):
                x, y, left = self.crop()
                items += [self.finish(x, y, left, False), self.finish(x, y, left, True)]
        else:
            for _ in range(n):
                x, y, left = self.crop()
                items.append(self.finish(x, y, left, self.rng.random() < 0.5))
        xs, ys, lefts = zip(*items)
        return (
            torch.from_numpy(np.stack(xs))[:, None],
            torch.from_numpy(np.stack(ys)).long(),
            torch.tensor(lefts, dtype=torch.float32),
        )


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
    model.laterality_head = None
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
# No mirroring TTA: flipping i or j is not anatomy, and flipping k turns the knee's medial side
# into its lateral one (labels 3↔4 and 5↔6 would have to be swapped).
# Sliding window as DOMAIN.md says: step 0.5 of the patch, Gaussian importance σ = patch / 8.
mirror_axes = []
trained_on = "kneenode phantoms, seeds {seeds[0]}–{seeds[-1]} ({n_left} left knees), cartilage {min(thick):g}–{max(thick):g} mm, 192×192×80 at 0.75×0.75×1.5 mm, {args.steps} steps of {args.batch} patches; held out: seeds 1001–1005"

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
    ap.add_argument("--phantoms", type=int, default=24, help="number of training phantoms")
    ap.add_argument("--steps", type=int, default=700, help="optimiser steps")
    ap.add_argument("--batch", type=int, default=2, help="patches per step")
    ap.add_argument("--patch", type=int, nargs=3, default=[96, 96, 48], help="patch size along i j k")
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32, 64, 64])
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--fg-prob", type=float, default=0.67, help="share of patches centred on a tissue")
    ap.add_argument("--rare-weight", type=float, default=10.0,
                    help="initial cross-entropy weight of labels 1-6 (annealed linearly to 1 over training)")
    ap.add_argument("--laterality-weight", type=float, default=0.5, help="weight of the training-only left/right probe loss")
    ap.add_argument("--mirror-pairs", action=argparse.BooleanOptionalAction, default=True,
                    help="fill each batch with crops and their k-mirrors")
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
        volumes.append((zscore(image), labels))
    print(f"{len(volumes)} phantoms {volumes[0][0].shape} at {spacing} mm ready in {time.time() - t0:.0f} s", flush=True)

    model = UNet3D(tuple(args.channels))
    if args.init:
        # Experiments only: continue from an earlier run's weights (the probes may be new).
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
    sampler = PatchSampler(volumes, [left for _, left, _ in plan], args.patch, args.fg_prob, rng)
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
        x, y, left = sampler.batch(args.batch, args.mirror_pairs)
        # Rare-class weights matter at the start (see dice_ce_loss); annealing them to 1 leaves
        # the end of training with unbiased cross-entropy, so the learned boundaries are not
        # pushed outwards into the neighbouring tissue.
        w_rare = 1 + (args.rare_weight - 1) * (1 - step / args.steps)
        class_weights = torch.tensor([1.0] + [w_rare] * 6 + [1.0] * 3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            outs = model.forward_all(x.contiguous(memory_format=torch.channels_last_3d))
        outs = [o.float() for o in outs]
        side = outs.pop()
        if args.deep_supervision:
            seg_loss = deep_supervision_loss(outs, y, class_weights)
        else:
            seg_loss = dice_ce_loss(outs[-1], y, class_weights)
        # Only patches that show the tibial plateau (labels 3–6) can tell left from right, and
        # only there does it matter.
        shows_joint = ((y >= 3) & (y <= 6)).flatten(1).any(1).float().view(-1, 1)
        side_loss = F.binary_cross_entropy_with_logits(side, left.view(-1, 1), weight=shows_joint, reduction="sum")
        side_loss = side_loss / shows_joint.sum().clamp_min(1)
        loss = seg_loss + args.laterality_weight * side_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        side_avg = side_loss.item() if step == 0 else 0.95 * side_avg + 0.05 * side_loss.item()
        if args.checkpoint and step % 100 == 99:
            torch.save(model.state_dict(), args.checkpoint)
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  avg {running:.4f}  laterality bce avg {side_avg:.3f}  "
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
