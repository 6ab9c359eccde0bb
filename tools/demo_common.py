"""Shared helpers of the demo-model tools (`train_demo.py`, `eval_demo.py`).

Kept free of anything but numpy and torch so the tools run in the same venv that
`scripts/setup-libtorch.sh` creates for building kneenode.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import torch

# The DOMAIN.md label map; a model's manifest repeats it and is the authority at run time.
LABELS = [
    "background",
    "patellar cartilage",
    "femoral cartilage",
    "medial tibial cartilage",
    "lateral tibial cartilage",
    "medial meniscus",
    "lateral meniscus",
    "femur",
    "tibia",
    "patella",
]
NUM_CLASSES = len(LABELS)
BONES = (7, 8, 9)

# NIfTI-1 datatype codes -> numpy dtypes (little endian); only what kneenode writes and a bit more.
_NIFTI_DTYPES = {
    2: np.uint8,
    4: np.int16,
    8: np.int32,
    16: np.float32,
    64: np.float64,
    256: np.int8,
    512: np.uint16,
    768: np.uint32,
}


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads a NIfTI-1 file (.nii or .nii.gz) and returns (voxels indexed [i, j, k], pixdim[1:4]).

    NIfTI stores i fastest, so the flat data is reshaped in Fortran order to index it as
    [i, j, k] -- the same axis order the network sees and the Rust side feeds it.
    Scaling (scl_slope/inter) is applied only when it is not the identity, so label volumes
    keep their integer type.
    """
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    (sizeof_hdr,) = struct.unpack_from("<i", raw, 0)
    if sizeof_hdr != 348:
        raise ValueError(f"{path}: not a little-endian NIfTI-1 file (sizeof_hdr {sizeof_hdr})")
    dim = struct.unpack_from("<8h", raw, 40)
    datatype, _bitpix = struct.unpack_from("<hh", raw, 70)
    pixdim = struct.unpack_from("<8f", raw, 76)
    vox_offset, scl_slope, scl_inter = struct.unpack_from("<fff", raw, 108)
    ndim = dim[0]
    shape = tuple(int(d) for d in dim[1 : 1 + ndim])
    dtype = np.dtype(_NIFTI_DTYPES[datatype]).newbyteorder("<")
    count = int(np.prod(shape))
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=int(vox_offset))
    data = data.reshape(shape, order="F")
    if scl_slope not in (0.0, 1.0) or scl_inter != 0.0:
        data = data.astype(np.float32) * scl_slope + scl_inter
    return np.ascontiguousarray(data), np.array(pixdim[1:4], dtype=np.float64)


def make_phantom(
    kneenode: Path,
    out: Path,
    seed: int,
    left: bool = False,
    cartilage_mm: float | None = None,
    small: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writes (or reuses) one phantom with the kneenode binary and returns (image, labels, spacing).

    A phantom is a pure function of its options, so a folder that already holds both NIfTI
    files is reused; the options are part of the folder name for that reason.
    """
    out = Path(out)
    image_path, labels_path = out / "image.nii.gz", out / "labels.nii.gz"
    if not (image_path.exists() and labels_path.exists()):
        cmd = [str(kneenode), "phantom", "--out", str(out), "--seed", str(seed)]
        if left:
            cmd.append("--left")
        if cartilage_mm is not None:
            cmd += ["--cartilage-mm", f"{cartilage_mm:g}"]
        if small:
            cmd.append("--small")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    image, spacing = read_nifti(image_path)
    labels, _ = read_nifti(labels_path)
    return image, labels.astype(np.uint8), spacing


def phantom_dir(cache: Path, seed: int, left: bool, cartilage_mm: float | None) -> Path:
    """The cache folder of one phantom; the name encodes every option that changes it."""
    side = "L" if left else "R"
    cart = "default" if cartilage_mm is None else f"{cartilage_mm:g}mm"
    return Path(cache) / f"seed{seed}_{side}_{cart}"


def canonical(array: np.ndarray, left: bool) -> np.ndarray:
    """A PIR volume (image or labels, indexed [i, j, k]) of a `left` or right knee as the right
    knee a side-canonical model (manifest `side = "right"`) is trained on: a left knee mirrored
    along k, the patient's left–right axis, with its labels as they are (a mirrored left knee
    is a right knee whose medial side is still medial, so 3/4 and 5/6 are not exchanged). Its
    own inverse, so it also takes predicted labels back to the left knee. kneenode's
    `pipeline::ensemble` does the same on the voxel axis nearest the patient's x."""
    return np.ascontiguousarray(array[:, :, ::-1]) if left else array


def zscore(image: np.ndarray) -> np.ndarray:
    """z-score over the whole volume: mean and standard deviation of all voxels, the std with
    Bessel's correction (n − 1), as the Rust side computes it (`Tensor::std(true)`); no
    foreground mask, no clipping. Must match the manifest's `normalization` comment."""
    x = image.astype(np.float32)
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64, ddof=1))
    return (x - mean) / max(std, 1e-8)


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels=range(1, NUM_CLASSES)) -> dict[int, float]:
    """Dice of each label; NaN where the label is absent from both volumes."""
    out = {}
    for lab in labels:
        p, t = pred == lab, truth == lab
        denom = int(p.sum()) + int(t.sum())
        out[lab] = 2.0 * int(np.logical_and(p, t).sum()) / denom if denom else float("nan")
    return out


def gaussian_importance(patch: tuple[int, int, int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """nnU-Net's importance map: a Gaussian centred on the patch, σ = sigma_scale × patch size
    along each axis, scaled to max 1, with zeros replaced by the smallest non-zero value so
    that border voxels covered by a single patch still get a (tiny) weight.

    The Rust implementation builds the same map; keep the two in step.
    """
    axes = []
    for n in patch:
        sigma = n * sigma_scale
        # Centre at (n - 1) / 2 in voxel-centre coordinates, i.e. exactly symmetric.
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = g / g.max()
    g = g.astype(np.float32)
    g[g == 0] = g[g > 0].min()
    return torch.from_numpy(g)


def window_starts(size: int, patch: int, step: float = 0.5) -> list[int]:
    """Patch start positions along one axis, nnU-Net style: as few as give a stride of at most
    step × patch, spread evenly from 0 to size − patch (both ends included)."""
    if size <= patch:
        return [0]
    n = int(math.ceil((size - patch) / (patch * step))) + 1
    span = size - patch
    return [int(round(span * s / (n - 1))) for s in range(n)]


@torch.no_grad()
def sliding_window(
    model: torch.jit.ScriptModule | torch.nn.Module,
    volume: np.ndarray,
    patch: tuple[int, int, int],
    num_classes: int = NUM_CLASSES,
    step: float = 0.5,
    batch: int = 1,
) -> torch.Tensor:
    """Softmax probabilities (C, I, J, K) of a z-scored volume by Gaussian-weighted sliding window.

    A volume smaller than the patch along an axis is zero-padded at its end (0 is the volume
    mean after z-scoring) and cropped back, as kneenode's `pipeline::segment::predict` does.
    """
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    shape = x.shape
    pads = [max(0, p - s) for p, s in zip(patch, shape)]
    if any(pads):
        x = torch.nn.functional.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
    size = x.shape
    weight = gaussian_importance(patch)
    acc = torch.zeros((num_classes, *size), dtype=torch.float32)
    norm = torch.zeros(size, dtype=torch.float32)
    starts = [
        (a, b, c)
        for a in window_starts(size[0], patch[0], step)
        for b in window_starts(size[1], patch[1], step)
        for c in window_starts(size[2], patch[2], step)
    ]
    for n in range(0, len(starts), batch):
        group = starts[n : n + batch]
        tiles = torch.stack(
            [x[a : a + patch[0], b : b + patch[1], c : c + patch[2]] for a, b, c in group]
        )[:, None]
        probs = torch.softmax(model(tiles), dim=1)
        for (a, b, c), p in zip(group, probs):
            sl = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
            acc[(slice(None), *sl)] += p * weight
            norm[sl] += weight
    acc /= norm
    return acc[:, : shape[0], : shape[1], : shape[2]]


def default_kneenode() -> Path:
    """`target/release/kneenode` of the repository this file lives in."""
    return Path(__file__).resolve().parent.parent / "target" / "release" / "kneenode"


def cache_dir() -> Path:
    """Where generated phantoms are kept between runs (outside the repository)."""
    base = os.environ.get("KNEENODE_DEMO_CACHE")
    if base:
        return Path(base)
    return Path.home() / ".cache" / "kneenode" / "demo-phantoms"
