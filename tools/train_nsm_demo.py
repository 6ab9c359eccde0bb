#!/usr/bin/env python3
"""Trains kneenode's demo neural shape model (NSM) on its own phantom femurs and exports it.

    ~/.cache/kneenode/torch-2.11.0/bin/python tools/train_nsm_demo.py [--kneenode target/release/kneenode]

writes `models/demo/nsm/nsm.pt` (TorchScript), `models/demo/nsm/manifest.toml` (with the model's
own BScore vectors and constants) and `models/demo/nsm/check.json` (decoder outputs at fixed
points, for the Rust side's tests). It follows `/tmp/nsm/CONTRACT.md` (the contract shared with
the Rust fitter in `src/pipeline/nsm/`, summarised in the manifest) and DOMAIN.md ("Neural shape
model"). About 13 minutes from cold on 2 (shared) CPU cores, less with the cache; requirements in
`nsm_common.py` (numpy, torch, scipy, scikit-image, vtk -- only this tool needs them, kneenode
does not).

What it does, and why:

* **Shapes.** `kneenode phantom` (full size, 0.75 × 0.75 × 1.5 mm, random pose as they come)
  for seeds 1–16, the even ones left knees. Two families from the same phantoms:
  *healthy* = the phantom's labels as they are; *OA-like* = the labels altered here
  (`make_oa`): femoral cartilage thinned in the weight-bearing regions (voxels within ~9 mm of
  the tibial cartilage/menisci, eroded from the articular side: 2–3 voxel layers medially, 1
  laterally, turned into background) and 3 osteophyte-like bone bumps (femur label grown into
  background/cartilage in 2.5–4 mm balls) at the medial and lateral condyle margins and the
  posterior medial condyle. Each label volume is meshed by `kneenode run --labels`
  (`femur_mesh.vtk`, `femur_cart_0_mesh.vtk`, LPS mm), i.e. by exactly the code that makes
  the meshes the fitter sees. Held out (never trained on): seed 901 (right, healthy) and seed
  902 (left, OA-like). Phantoms are cached in `--cache` (shared with train_demo.py), meshes
  and SDF samples in `--work`.
* **Preparation** (CONTRACT.md 1–3): mirror left knees in x, clip the femur at zmin + 1.0 × W,
  centre on the clipped bone's vertex mean and divide by its max radius. The training shapes
  are then brought into one frame with the contract's similarity ICP (step 4) of their bone
  vertices onto the first healthy shape, which stands in for the mean shape the fitter aligns
  to (so the latent codes shape, not pose: the phantoms are rotated by up to ~6° and scaled by
  0.9–1.1 with the cartilage thickness unscaled).
* **SDF samples** (per shape, in that frame): 45 000 bone and 45 000 cartilage surface points
  (area-uniform) plus Gaussian noise of σ = 0.01 (two thirds) or 0.05 (one third), and 15 000
  uniform points in [−1, 1]³; each with its signed distance to both surfaces, exact
  (`vtkImplicitPolyDataDistance`: closest point on the triangles, sign of the angle-weighted
  pseudo-normal, exact for closed manifolds; kneenode's meshes are checked to be closed).
* **Model.** An auto-decoder (DeepSDF): latent 16 ⊕ xyz ⊕ Fourier features sin/cos(π 2^k x),
  k < 4 → 4 ReLU layers of 64 with a skip connection → 2 columns → tanh (18 000 parameters,
  0.1 MB; wider layers reconstruct barely better and make every fit step slower). Latents and
  weights are optimised jointly: Adam, 1200 steps of 384 samples per shape, L1 on SDFs clamped
  to ±0.1, plus 0.1 · relu(|prediction| − |distance|), which keeps the SDF from overstating the
  distance to the surface beyond the clamp (kneenode's sparse grid evaluation relies on that),
  latent L2 penalty 1e-4 · |z|², latents from N(0, 0.01²). The latent origin is then moved to
  the mean training latent (folded into the biases; outputs unchanged), so latent 0 is the
  mean shape. Fixed seeds and thread count: a rerun on the cached meshes gives the same model.
  (A rerun from cold does not quite: `kneenode run` does not write bit-identical meshes twice --
  its decimation walks a HashSet -- so the samples, and the model, differ slightly.)
* **BScore.** For each mode (bone_and_cart: both columns, bone_only: bone points and column 0
  only) every training shape is refitted from its raw meshes the way kneenode fits a new knee
  (`fit_job`: prepare, ICP onto the mean shape = marching cubes of the bone column at latent 0,
  the contract's fit, but with 10 000 points per step instead of 20 000 to halve the run time),
  so the constants describe the latents kneenode will actually get rather than the training
  latents. v = unit(mean OA latent − mean healthy latent); mean_healthy / std_healthy (n − 1) =
  of the healthy latents projected on v.
* **Checks** (printed, and summarised in the manifest): reconstruction ASSD (mm) of
  every training shape at its training latent, the BScore of every training shape, and the
  held-out pair fitted exactly like any new knee (20 000 points per step).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_common import cache_dir, default_kneenode, make_phantom, phantom_dir  # noqa: E402
from nsm_common import (  # noqa: E402
    CLAMP,
    SURFACES,
    Decoder,
    assd,
    check_closed,
    decoder_mesh,
    fit_latent,
    prepare,
    read_nifti_labels,
    read_vtk_mesh,
    sample_surface,
    signed_distance,
    similarity_icp,
    transform,
    write_nifti_like,
)

REPO = Path(__file__).resolve().parent.parent
# The manifest's `version`: bump it whenever the recipe below changes the weights.
MODEL_VERSION = "1"
# Bump when the shapes or their samples change (invalidates the sample cache).
DATA_VERSION = "1"
TRAIN_SEEDS = list(range(1, 17))
HELD_OUT = [(901, False, "healthy"), (902, True, "oa")]
FAMILIES = ("healthy", "oa")

# Model and training recipe.
LATENT = 16
HIDDEN = 64
LAYERS = 4
FREQS = 4
LATENT_L2 = 1e-4
OVER_WEIGHT = 0.1
# The training shapes' refits (for the BScore constants) take this many points per step instead
# of the contract's 20 000, which halves the script's run time; the held-out pair gets 20 000.
REFIT_POINTS = 10_000

FEMUR, FEM_CART = 7, 2
TIBIAL = (3, 4, 5, 6)  # tibial cartilages and menisci: what the femoral weight-bearing cartilage faces
MEDIAL = (3, 5)
LATERAL = (4, 6)


def is_left(seed: int) -> bool:
    return seed % 2 == 0


# --------------------------------------------------------------------------------------
# Shapes: phantoms, the OA-like alteration, meshes
# --------------------------------------------------------------------------------------


def voxel_lps(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def make_oa(labels: np.ndarray, spacing: np.ndarray, affine: np.ndarray, left: bool, seed: int) -> np.ndarray:
    """The OA-like version of a phantom's label volume: weight-bearing femoral cartilage thinned
    and osteophyte-like femur bumps at the condyle margins (module docstring). Deterministic."""
    rng = np.random.default_rng(10_000 + seed)
    lab = labels.copy()
    six = ndimage.generate_binary_structure(3, 1)

    # Cartilage loss: erode label 2 from its articular side (voxels touching anything that is
    # neither cartilage nor femur), only within reach of the tibial side.
    for side, layers in ((MEDIAL, int(rng.integers(2, 4))), (LATERAL, 1)):
        reach = float(rng.uniform(8.0, 10.0))
        near = ndimage.distance_transform_edt(~np.isin(lab, side), sampling=spacing) < reach
        for _ in range(layers):
            cart = lab == FEM_CART
            outside = ~(cart | (lab == FEMUR))
            surface = cart & near & ndimage.binary_dilation(outside, structure=six)
            lab[surface] = 0

    # Osteophytes: balls centred just outside the femur's surface voxels at the margins.
    femur = lab == FEMUR
    border = femur & ndimage.binary_dilation(~femur, structure=six)
    ijk = np.argwhere(border).astype(np.float64)
    p = voxel_lps(affine, ijk)
    medial = -1.0 if left else 1.0  # LPS x towards the medial side
    ax = p[:, 0] * medial  # anatomical x: + medial
    zmin = p[:, 2].min()
    band = (p[:, 2] > zmin + 8.0) & (p[:, 2] < zmin + 20.0)
    sites = []
    k = np.argmax(np.where(band, ax, -np.inf))
    sites.append((p[k], np.array([medial, 0.0, 0.0])))
    k = np.argmin(np.where(band, ax, np.inf))
    sites.append((p[k], np.array([-medial, 0.0, 0.0])))
    post = (ax > 10.0) & (p[:, 2] < zmin + 35.0)
    k = np.argmax(np.where(post, p[:, 1], -np.inf))
    sites.append((p[k] + np.array([0.0, 0.0, 6.0]), np.array([0.0, 1.0, 0.0])))

    grid = np.stack(np.meshgrid(*[np.arange(n) for n in lab.shape], indexing="ij"), -1)
    for centre, outward in sites:
        r = float(rng.uniform(2.5, 4.0))
        c = centre + 0.5 * r * outward
        # Only a box around the ball.
        cijk = np.linalg.solve(affine[:3, :3], c - affine[:3, 3])
        half = np.ceil((r + 1.0) / spacing).astype(int)
        lo = np.maximum(np.round(cijk).astype(int) - half, 0)
        hi = np.minimum(np.round(cijk).astype(int) + half + 1, lab.shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        pts = voxel_lps(affine, grid[sl].reshape(-1, 3).astype(np.float64))
        ball = (np.linalg.norm(pts - c, axis=1) <= r).reshape(grid[sl].shape[:3])
        sub = lab[sl]
        sub[ball & np.isin(sub, (0, FEM_CART))] = FEMUR
    return lab


def shape_name(seed: int, left: bool, family: str) -> str:
    return f"seed{seed}_{'L' if left else 'R'}_{family}"


def build_shape(kneenode: Path, phantoms: Path, meshes: Path, seed: int, left: bool, family: str) -> Path:
    """Phantom → (altered) labels → `kneenode run --labels` meshes; cached. Returns the folder."""
    out = meshes / shape_name(seed, left, family)
    if (out / "femur_mesh.vtk").exists() and (out / "femur_cart_0_mesh.vtk").exists():
        return out
    pdir = phantom_dir(phantoms, seed, left, None)
    make_phantom(kneenode, pdir, seed, left=left)
    labels_path = pdir / "labels.nii.gz"
    out.mkdir(parents=True, exist_ok=True)
    if family == "oa":
        header, labels, spacing, affine = read_nifti_labels(labels_path)
        write_nifti_like(out / "labels_oa.nii.gz", header, make_oa(labels, spacing, affine, left, seed))
        labels_path = out / "labels_oa.nii.gz"
    subprocess.run(
        [str(kneenode), "run", "--labels", str(labels_path), "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


def load_meshes(folder: Path):
    bone = read_vtk_mesh(folder / "femur_mesh.vtk")
    cart = read_vtk_mesh(folder / "femur_cart_0_mesh.vtk")
    check_closed(bone[1], f"{folder}/femur_mesh.vtk")
    check_closed(cart[1], f"{folder}/femur_cart_0_mesh.vtk")
    return bone, cart


# --------------------------------------------------------------------------------------
# Preparation, alignment and SDF samples
# --------------------------------------------------------------------------------------

N_SURFACE = 45_000  # per surface
N_UNIFORM = 15_000
SIGMAS = (0.01, 0.05)  # two thirds of the surface points get the first, one third the second


def sample_shape(job: tuple) -> dict:
    """One training shape: prepared (contract 1–3), aligned onto the reference bone samples by
    the similarity ICP, and SDF-sampled. Runs in a worker process; returns arrays."""
    name, folder, left, ref_pts, seed = job
    bone, cart = load_meshes(Path(folder))
    prep = prepare(bone, cart, left)
    m = np.eye(4) if ref_pts is None else similarity_icp(prep["bone"][0], ref_pts)
    bv, bf = transform(prep["bone"][0], m), prep["bone"][1]
    cv, cf = transform(prep["cart"][0], m), prep["cart"][1]
    rng = np.random.default_rng(seed)
    parts = []
    for verts, faces in ((bv, bf), (cv, cf)):
        surf = sample_surface(verts, faces, N_SURFACE, rng)
        sigma = np.where(np.arange(N_SURFACE) < 2 * N_SURFACE // 3, SIGMAS[0], SIGMAS[1])
        parts.append(surf + rng.normal(size=surf.shape) * sigma[:, None])
    parts.append(rng.uniform(-1.0, 1.0, size=(N_UNIFORM, 3)))
    pts = np.concatenate(parts)
    sdf = np.stack([signed_distance(bv, bf, pts), signed_distance(cv, cf, pts)], axis=1)
    return {
        "name": name,
        "pts": pts.astype(np.float32),
        "sdf": sdf.astype(np.float32),
        "bone_v": bv,
        "bone_f": bf,
        "cart_v": cv,
        "cart_f": cf,
        "icp": m,
        "center": prep["center"],
        "scale": prep["scale"],
    }


def cached_samples(cache: Path, job: tuple) -> dict:
    path = cache / f"{job[0]}.v{DATA_VERSION}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: (str(z[k]) if k == "name" else z[k]) for k in z.files}
    out = sample_shape(job)
    np.savez(path, **out)
    return out


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def train(shapes: list[dict], steps: int, per_shape: int, seed: int, log_every: int = 250):
    """Joint optimisation of the decoder and one latent per shape (auto-decoder)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    decoder = Decoder(LATENT, HIDDEN, LAYERS, FREQS, out=len(SURFACES))
    n = len(shapes)
    pts = torch.from_numpy(np.stack([s["pts"] for s in shapes]))
    sdf = torch.from_numpy(np.stack([s["sdf"] for s in shapes]))
    latents = (torch.randn(n, LATENT, generator=gen) * 0.01).requires_grad_(True)
    opt = torch.optim.Adam(
        [{"params": decoder.parameters(), "lr": 1e-3}, {"params": [latents], "lr": 2e-3}]
    )
    base = [g["lr"] for g in opt.param_groups]
    rows = torch.arange(n).repeat_interleave(per_shape)
    t0 = time.time()
    for step in range(steps):
        # Short warm-up, then cosine decay to 2 % of the base rate.
        f = min(1.0, (step + 1) / 100) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * f
        idx = torch.randint(pts.shape[1], (n * per_shape,), generator=gen)
        x, y = pts[rows, idx], sdf[rows, idx]
        pred = decoder(latents[rows], x)
        l1 = (pred.clamp(-CLAMP, CLAMP) - y.clamp(-CLAMP, CLAMP)).abs().mean()
        # Beyond the clamp the L1 term is silent; this keeps |prediction| <= |distance| there,
        # so the SDF does not overstate how far the surface is (grid evaluation that skips
        # blocks far from the surface relies on it).
        over = torch.relu(pred.abs() - y.abs()).mean()
        loss = l1 + OVER_WEIGHT * over + LATENT_L2 * latents.pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            print(
                f"  step {step:5d}  L1 {l1.item():.5f}  over {over.item():.5f}  |z| {latents.detach().norm(dim=1).mean().item():.3f}"
                f"  {time.time() - t0:5.0f} s",
                flush=True,
            )
    decoder.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    return decoder, latents.detach().numpy().astype(np.float64)


@torch.no_grad()
def recentre(decoder: Decoder, latents: np.ndarray) -> np.ndarray:
    """Moves the latent origin to the mean training latent μ without changing any output: the
    latent enters only linearly (the first layer and the skip layer's copy of the input), so
    W·z + b = W·(z − μ) + (b + W·μ). Afterwards latent 0 is the mean shape, which the fitter
    aligns to and starts from. Returns the shifted latents."""
    mu = latents.mean(axis=0)
    m = torch.from_numpy(mu.astype(np.float32))
    first = decoder.hidden[0]
    first.bias += first.weight[:, :LATENT] @ m
    skip = decoder.hidden[decoder.skip]
    skip.bias += skip.weight[:, HIDDEN : HIDDEN + LATENT] @ m
    return latents - mu


# --------------------------------------------------------------------------------------
# Fits and checks (worker processes: one torch thread each, the exported TorchScript)
# --------------------------------------------------------------------------------------

MODES = ("bone_and_cart", "bone_only")


def fit_job(job: tuple) -> dict:
    """Fits one shape like kneenode does (CONTRACT.md): prepare its raw meshes, similarity ICP
    of the bone vertices onto the mean shape, latent fit. With `recon`, also the ASSD (mm) of
    the decoder's surfaces at the fitted latent."""
    model_path, mean_pts, folder, left, mode, seed, recon, points = job
    torch.set_num_threads(1)
    decoder = torch.jit.load(str(model_path))
    bone, cart = load_meshes(Path(folder))
    prep = prepare(bone, cart, left)
    m = similarity_icp(prep["bone"][0], mean_pts)
    bv, cv = transform(prep["bone"][0], m), transform(prep["cart"][0], m)
    latent, steps, loss = fit_latent(
        decoder, bv, cv if mode == "bone_and_cart" else None, LATENT, seed, points=points
    )
    out = {"latent": latent, "steps": steps, "loss": loss}
    if recon:
        mm = prep["scale"] / float(np.cbrt(np.linalg.det(m[:3, :3])))
        out["assd"] = surface_assd(decoder, latent, [(bv, prep["bone"][1]), (cv, prep["cart"][1])], mm, seed, 0.01)
    return out


def surface_assd(decoder, latent, meshes, mm: float, seed: int, step: float) -> list[float]:
    """ASSD (mm) of each SDF column's zero level (marching cubes, grid spacing `step` in
    normalised units, i.e. ~0.5 mm for 0.01) to its mesh."""
    rng = np.random.default_rng(seed)
    out = []
    for col, (verts, faces) in enumerate(meshes):
        mv, mf = decoder_mesh(decoder, latent, col, step)
        out.append(assd(mv, mf, verts, faces, rng) * mm)
    return out


def recon_job(job: tuple) -> list[float]:
    """ASSD (mm) of a training shape's surfaces at its training latent (a 0.0125 grid, cheaper
    than the held-out pair's 0.01)."""
    model_path, latent, meshes, mm, seed = job
    torch.set_num_threads(1)
    return surface_assd(torch.jit.load(str(model_path)), latent, meshes, mm, seed, 0.0125)


def bscore_constants(latents: np.ndarray, healthy: np.ndarray) -> dict:
    """v = unit(mean OA − mean healthy); mean/std (n − 1) of the healthy projections."""
    d = latents[~healthy].mean(0) - latents[healthy].mean(0)
    v = d / np.linalg.norm(d)
    p = latents[healthy] @ v
    return {"vector": v, "mean_healthy": float(p.mean()), "std_healthy": float(p.std(ddof=1))}


def bscore(spec: dict, latent: np.ndarray) -> float:
    return float((latent @ spec["vector"] - spec["mean_healthy"]) / spec["std_healthy"])


# --------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------

CHECK_POINTS = [
    [0.0, 0.0, 0.0],
    [0.5, 0.0, 0.0],
    [-0.5, 0.1, -0.3],
    [0.0, 0.0, -0.6],
    [0.3, 0.2, -0.5],
    [-0.3, -0.4, 0.2],
    [0.0, 0.6, 0.5],
    [0.9, 0.9, 0.9],
]

FRESH_CHECK = r"""
import json, sys, torch
torch.set_num_threads(1)
m = torch.jit.load(sys.argv[1])
assert all(not p.requires_grad for p in m.parameters())
check = json.load(open(sys.argv[2]))
worst = 0.0
for case in check["cases"]:
    z = torch.tensor([case["latent"]], dtype=torch.float32)
    x = torch.tensor(case["points"], dtype=torch.float32)
    y = m(z, x)
    assert tuple(y.shape) == (len(case["points"]), len(check["surfaces"])) and y.dtype == torch.float32
    worst = max(worst, float((y - torch.tensor(case["expected"])).abs().max()))
# Autograd reaches the latent only.
z = torch.zeros(1, check["latent_size"], requires_grad=True)
m(z, torch.rand(100, 3) * 2 - 1).sum().backward()
assert z.grad is not None and float(z.grad.abs().sum()) > 0
print(worst)
"""


def export(decoder: Decoder, out_dir: Path, extra_latents: dict[str, np.ndarray]) -> Path:
    """TorchScript (scripted, parameters frozen) + check.json, then reloads both in a fresh
    Python process and compares (max difference must stay below 1e-5)."""
    path = out_dir / "nsm.pt"
    scripted = torch.jit.script(decoder.eval())
    for p in scripted.parameters():
        p.requires_grad_(False)
    scripted.save(str(path))
    cases = []
    pts = torch.tensor(CHECK_POINTS, dtype=torch.float32)
    for name, latent in [("zeros", np.zeros(LATENT))] + list(extra_latents.items()):
        z = torch.tensor(np.asarray(latent, dtype=np.float32)).reshape(1, LATENT)
        with torch.no_grad():
            y = scripted(z, pts)
        cases.append(
            {
                "name": name,
                "latent": [float(v) for v in z[0]],
                "points": CHECK_POINTS,
                "expected": [[float(v) for v in row] for row in y],
            }
        )
    check = {
        "about": "Outputs of nsm.pt (forward(latent[1, L], xyz[N, 3]) -> sdf[N, C]) at fixed points, "
        "written by tools/train_nsm_demo.py; a correct load reproduces them within `tolerance` "
        "(CPU, float32).",
        "model": "nsm.pt",
        "latent_size": LATENT,
        "surfaces": SURFACES,
        "tolerance": 1e-5,
        "cases": cases,
    }
    text = json.dumps(check, indent=1)
    # One line per latent and per point.
    text = re.sub(r"\[\s+([-0-9.e, \n]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    (out_dir / "check.json").write_text(text + "\n")
    res = subprocess.run(
        [sys.executable, "-c", FRESH_CHECK, str(path), str(out_dir / "check.json")],
        check=True,
        capture_output=True,
        text=True,
    )
    worst = float(res.stdout.strip().splitlines()[-1])
    if not worst < 1e-5:
        raise SystemExit(f"the reloaded TorchScript differs from check.json by {worst}")
    size = path.stat().st_size
    print(f"wrote {path} ({size / 1e6:.2f} MB); fresh-process reload matches check.json (max diff {worst:.1e})")
    if size > 5e6:
        raise SystemExit("nsm.pt is over 5 MB")
    return path


def toml_floats(values) -> str:
    return "[" + ", ".join(f"{float(v):.9f}" for v in values) + "]"


def write_manifest(out_dir: Path, constants: dict, summary: dict, trained_on: str) -> None:
    b, o = constants["bone_and_cart"], constants["bone_only"]
    text = f'''# kneenode demo neural shape model (NSM), written by tools/train_nsm_demo.py (do not edit by hand:
# rerun the script). A femur + femoral cartilage auto-decoder (DeepSDF style) trained on kneenode's
# own phantoms: "healthy" ones as they come and "OA-like" ones (the same phantoms with weight-bearing
# femoral cartilage thinned and osteophyte-like bumps at the condyle margins). It exists so NSM
# analysis runs on a fresh machine; its latents and BScores mean something only for phantoms.
#
# Conventions (/tmp/nsm/CONTRACT.md):
# - Input meshes: patient LPS mm, as `kneenode run` writes femur_mesh.vtk / femur_cart_0_mesh.vtk.
#   A left knee is mirrored x -> -x (triangle winding flipped); the femur is clipped at
#   z <= zmin + 1.0 * W (W its x extent; whole triangles dropped); then normalised:
#   x_norm = (x_mm - c) / s, c = mean of the clipped bone vertices, s = their max distance to c.
# - Alignment: similarity ICP (rotation, translation, uniform scale) of the normalised bone
#   vertices onto the mean shape = the bone column's zero level at latent 0 (marching cubes on a
#   grid in [-1, 1]^3). Latent 0 is the mean of the training latents.
# - Decoder (TorchScript, parameters frozen): forward(latent[1, {LATENT}] f32, xyz[N, 3] f32) ->
#   [N, 2] f32, column 0 = femur bone SDF, column 1 = femoral cartilage SDF (`surfaces`), in
#   normalised units, negative inside, final tanh (trained on SDFs clamped to +-0.1, so only the
#   sign is meaningful beyond +-0.1). Works on CPU and CUDA. check.json holds outputs at fixed
#   points for tests.
# - Fitting: 20 000 vertices per step (10 000 per surface; bone_only: 20 000 bone vertices and
#   column 0 only), target SDF 0, L1 with both sides clamped to +-0.1, Adam lr 0.005 * (1/1.1)^(step // 20),
#   at most 2000 steps, patience 50, latent from N(0, 0.01^2); the latent of the lowest loss.
#
# BScore = (latent . vector - mean_healthy) / std_healthy. Per NSM type, every training shape was
# refitted from its raw meshes as above (prepare, ICP, fit; 10 000 points per step): the latents
# kneenode itself gets, not the training latents; vector = unit(mean OA-like latent - mean healthy latent),
# mean_healthy / std_healthy (n - 1) = of the {summary["n_healthy"]} healthy latents projected on it.
# On those shapes:{summary["text"]}
name = "demo-nsm"
kind = "nsm"
version = "{MODEL_VERSION}"
file = "nsm.pt"
latent_size = {LATENT}
surfaces = ["{SURFACES[0]}", "{SURFACES[1]}"]
trained_on = "{trained_on}"

# Fit to bone and cartilage (nsm_type bone_and_cart).
[bscore.bone_and_cart]
vector = {toml_floats(b["vector"])}
mean_healthy = {b["mean_healthy"]:.9f}
std_healthy = {b["std_healthy"]:.9f}

# Fit to the bone alone (nsm_type bone_only): its own refits, vector and constants.
[bscore.bone_only]
vector = {toml_floats(o["vector"])}
mean_healthy = {o["mean_healthy"]:.9f}
std_healthy = {o["std_healthy"]:.9f}
'''
    (out_dir / "manifest.toml").write_text(text)
    print(f"wrote {out_dir / 'manifest.toml'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kneenode", type=Path, default=default_kneenode(), help="kneenode binary (default: target/release/kneenode)")
    ap.add_argument("--cache", type=Path, default=cache_dir(), help="where phantoms are generated and kept (shared with train_demo.py)")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "kneenode" / "nsm-demo", help="where meshes and SDF samples are kept")
    ap.add_argument("--out", type=Path, default=REPO / "models" / "demo" / "nsm", help="output folder")
    ap.add_argument("--steps", type=int, default=1200, help="training steps")
    ap.add_argument("--per-shape", type=int, default=384, help="SDF samples per shape per step")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training")
    ap.add_argument("--workers", type=int, default=2, help="parallel processes (meshing, sampling, fits)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t_start = time.time()
    torch.set_num_threads(args.threads)
    if not args.kneenode.exists():
        raise SystemExit(f"{args.kneenode} not found: cargo build --release --bin kneenode")
    meshes, samples = args.work / "meshes", args.work / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    spawn = __import__("multiprocessing").get_context("spawn")

    # 1. Shapes.
    train_jobs = [(s, is_left(s), f) for f in FAMILIES for s in TRAIN_SEEDS]
    jobs = train_jobs + HELD_OUT
    print(f"[1/5] {len(jobs)} shapes (phantoms in {args.cache}, meshes in {meshes})", flush=True)
    with ThreadPoolExecutor(args.workers) as ex:
        folders = list(ex.map(lambda j: build_shape(args.kneenode, args.cache, meshes, *j), jobs))
    names = [shape_name(*j) for j in jobs]
    healthy = np.array([j[2] == "healthy" for j in train_jobs])
    n_train = len(train_jobs)

    # 2. Preparation, alignment onto the first healthy shape, SDF samples.
    print(f"[2/5] SDF samples ({time.time() - t_start:.0f} s)", flush=True)
    (rb, rc) = load_meshes(folders[0])
    ref = prepare(rb, rc, train_jobs[0][1])
    ref_pts = sample_surface(*ref["bone"], 100_000, np.random.default_rng(0))
    sjobs = [(names[k], str(folders[k]), jobs[k][1], ref_pts, 100 + k) for k in range(n_train)]
    with ProcessPoolExecutor(args.workers, mp_context=spawn) as ex:
        shapes = list(ex.map(cached_samples, [samples] * n_train, sjobs))

    # 3. Training.
    print(f"[3/5] training: {n_train} shapes, {args.steps} steps of {args.per_shape} points per shape ({time.time() - t_start:.0f} s)", flush=True)
    decoder, latents = train(shapes, args.steps, args.per_shape, args.seed)
    probe = torch.rand(64, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z0 = torch.tensor(latents[:1], dtype=torch.float32)
    before = decoder(z0, probe)
    latents = recentre(decoder, latents)
    after = decoder(torch.tensor(latents[:1], dtype=torch.float32), probe)
    assert float((before - after).abs().max()) < 1e-5, "recentring changed the decoder"

    # 4. Export and check.
    print(f"[4/5] export ({time.time() - t_start:.0f} s)", flush=True)
    model_path = export(decoder, args.out, {"first_oa_training_latent": latents[int(np.argmin(healthy))]})
    scripted = torch.jit.load(str(model_path))
    mv, mf = decoder_mesh(scripted, np.zeros(LATENT), 0)
    mean_pts = sample_surface(mv, mf, 100_000, np.random.default_rng(1))

    # 5. Fits (every training shape in both modes, the held-out pair) and reconstructions.
    print(f"[5/5] fits and checks ({time.time() - t_start:.0f} s)", flush=True)
    fit_jobs = [
        (
            model_path,
            mean_pts,
            str(folders[k]),
            jobs[k][1],
            mode,
            42,
            k >= n_train and mode == "bone_and_cart",
            REFIT_POINTS if k < n_train else 20_000,
        )
        for mode in MODES
        for k in range(len(jobs))
    ]
    recon_jobs = [
        (
            model_path,
            latents[k],
            [(s["bone_v"], s["bone_f"]), (s["cart_v"], s["cart_f"])],
            float(s["scale"]) / float(np.cbrt(np.linalg.det(s["icp"][:3, :3]))),
            k,
        )
        for k, s in enumerate(shapes)
    ]
    with ProcessPoolExecutor(args.workers, mp_context=spawn) as ex:
        fit_futs = [ex.submit(fit_job, j) for j in fit_jobs]
        recon_futs = [ex.submit(recon_job, j) for j in recon_jobs]
        fits = [f.result() for f in fit_futs]
        recons = [f.result() for f in recon_futs]
    fitted = {
        mode: np.stack([fits[m * len(jobs) + k]["latent"] for k in range(len(jobs))])
        for m, mode in enumerate(MODES)
    }
    steps = {mode: [fits[m * len(jobs) + k]["steps"] for k in range(len(jobs))] for m, mode in enumerate(MODES)}
    constants = {mode: bscore_constants(fitted[mode][:n_train], healthy) for mode in MODES}
    train_const = bscore_constants(latents, healthy)

    print("\nshape                 ASSD bone  cart (mm, training latent)  BScore bone_and_cart  bone_only  (fit steps)")
    for k in range(len(jobs)):
        r = recons[k] if k < n_train else fits[k]["assd"]
        b = [bscore(constants[mode], fitted[mode][k]) for mode in MODES]
        tag = "" if k < n_train else "  held out, fitted"
        print(f"{names[k]:20s}  {r[0]:6.2f} {r[1]:6.2f}  {b[0]:27.2f}  {b[1]:9.2f}  ({steps['bone_and_cart'][k]}, {steps['bone_only'][k]}){tag}")
    rec = np.array(recons)
    print(f"training ASSD mean (max): bone {rec[:, 0].mean():.2f} ({rec[:, 0].max():.2f}) mm, cartilage {rec[:, 1].mean():.2f} ({rec[:, 1].max():.2f}) mm")
    tb = np.array([bscore(train_const, z) for z in latents])
    print(f"for comparison, BScore of the training latents with their own constants: healthy {tb[healthy].min():.2f}..{tb[healthy].max():.2f}, OA-like {tb[~healthy].min():.2f}..{tb[~healthy].max():.2f}")
    parts = []
    for mode in MODES:
        s = np.array([bscore(constants[mode], z) for z in fitted[mode][:n_train]])
        c = constants[mode]
        held = ", ".join(f"{names[k]} {bscore(c, fitted[mode][k]):.1f}" for k in range(n_train, len(jobs)))
        print(
            f"{mode}: |mean OA - mean healthy| = {np.linalg.norm(fitted[mode][:n_train][~healthy].mean(0) - fitted[mode][:n_train][healthy].mean(0)):.3f}, "
            f"mean_healthy {c['mean_healthy']:.4f}, std_healthy {c['std_healthy']:.4f}; BScore healthy {s[healthy].min():.2f}..{s[healthy].max():.2f}, "
            f"OA-like {s[~healthy].min():.2f}..{s[~healthy].max():.2f}; held out: {held}"
        )
        parts.append(f"{mode} BScore healthy {s[healthy].min():.1f}..{s[healthy].max():.1f}, OA-like {s[~healthy].min():.1f}..{s[~healthy].max():.1f}, held out {held}")
    ho = [fits[k]["assd"] for k in range(n_train, len(jobs))]
    summary = {
        "n_healthy": int(healthy.sum()),
        "text": "\n#   ".join(
            [""]
            + [p + ";" for p in parts]
            + [
                f"reconstruction ASSD at the training latents {rec[:, 0].mean():.2f} mm (bone), {rec[:, 1].mean():.2f} mm (cartilage);",
                "held-out fits: " + ", ".join(f"{names[n_train + i]} {a[0]:.2f} / {a[1]:.2f} mm" for i, a in enumerate(ho)) + ".",
            ]
        ),
    }
    trained_on = (
        f"kneenode phantoms, full size with random pose, seeds {TRAIN_SEEDS[0]}-{TRAIN_SEEDS[-1]} (even seeds left knees), "
        f"each healthy and OA-like: {n_train} shapes; latent {LATENT}, MLP 4x{HIDDEN} with Fourier features, "
        f"{args.steps} steps of {args.per_shape} SDF samples per shape; held out: seeds 901 (right, healthy), 902 (left, OA-like)"
    )
    write_manifest(args.out, constants, summary, trained_on)
    print(f"done in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
