"""Shared helpers of the demo neural shape model tool (`train_nsm_demo.py`).

Everything here follows `/tmp/nsm/CONTRACT.md` -- the NSM contract shared with the Rust fitter in
`src/pipeline/nsm/` -- and DOMAIN.md ("Neural shape model"): mesh preparation (mirror left knees,
clip the femur top, normalise by the bone's centroid and max radius), the similarity ICP onto the
mean shape, and the latent fit (Adam, lr 0.005 × (1/1.1)^(step // 20), L1 on SDFs clamped to
±0.1, patience 50). The Python copies exist so the trainer can compute the BScore constants from
latents fitted exactly the way kneenode fits them at run time, and check a held-out pair.

Requirements (trainer only; kneenode itself needs none of them at run time): numpy, torch,
scipy (KD-trees, distance transforms), scikit-image (marching cubes) and vtk (reading kneenode's
legacy VTK meshes, exact signed distances). All are in PyPI; `pip install scipy scikit-image vtk`
into the libtorch venv (`~/.cache/kneenode/torch-2.11.0`).
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from scipy.spatial import cKDTree

# Columns of the decoder's output, in order (the manifest's `surfaces`).
SURFACES = ["femur", "femoral_cartilage"]
# The contract's fit: clamp, learning rate schedule, patience, points per step.
CLAMP = 0.1
FIT_LR = 0.005
FIT_DECAY = 1.0 / 1.1
FIT_DECAY_EVERY = 20
FIT_PATIENCE = 50
FIT_POINTS = 20_000
# The contract's clip: keep z <= zmin + CLIP_WIDTHS * W.
CLIP_WIDTHS = 1.0

# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------

_NIFTI_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 512: np.uint16}


def read_nifti_labels(path: Path) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """A NIfTI-1 label volume as (header bytes up to vox_offset, voxels [i, j, k], spacing,
    4×4 voxel → LPS mm affine from the sform)."""
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        raw = gzip.decompress(raw)
    if struct.unpack_from("<i", raw, 0)[0] != 348:
        raise ValueError(f"{path}: not a little-endian NIfTI-1 file")
    dim = struct.unpack_from("<8h", raw, 40)
    datatype = struct.unpack_from("<h", raw, 70)[0]
    pixdim = struct.unpack_from("<8f", raw, 76)
    vox_offset = int(struct.unpack_from("<f", raw, 108)[0])
    sform_code = struct.unpack_from("<h", raw, 254)[0]
    if sform_code <= 0:
        raise ValueError(f"{path}: no sform")
    srow = np.array(struct.unpack_from("<12f", raw, 280), dtype=np.float64).reshape(3, 4)
    shape = tuple(int(d) for d in dim[1 : 1 + dim[0]])
    dtype = np.dtype(_NIFTI_DTYPES[datatype]).newbyteorder("<")
    data = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=vox_offset)
    data = np.ascontiguousarray(data.reshape(shape, order="F"))
    affine = np.eye(4)
    affine[:3] = srow
    affine[:2] *= -1.0  # RAS → LPS
    return raw[:vox_offset], data, np.array(pixdim[1:4], dtype=np.float64), affine


def write_nifti_like(path: Path, header: bytes, data: np.ndarray) -> None:
    """Writes `data` ([i, j, k], the header's own dtype and shape) after `header`, gzipped."""
    body = np.asarray(data).ravel(order="F").tobytes()
    Path(path).write_bytes(gzip.compress(header + body, compresslevel=6))


def read_vtk_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A legacy VTK polydata triangle mesh as (vertices (N, 3) float64, triangles (M, 3) int64)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    if poly.GetNumberOfPoints() == 0:
        raise ValueError(f"{path}: empty mesh")
    verts = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    offsets = vtk_to_numpy(poly.GetPolys().GetOffsetsArray())
    if not np.all(np.diff(offsets) == 3):
        raise ValueError(f"{path}: not a triangle mesh")
    faces = vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 3).astype(np.int64)
    return verts, faces


def _polydata(verts: np.ndarray, faces: np.ndarray):
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray

    pts = vtk.vtkPoints()
    pts.SetData(numpy_to_vtk(np.ascontiguousarray(verts, dtype=np.float64), deep=True))
    cells = vtk.vtkCellArray()
    offsets = np.arange(0, 3 * len(faces) + 1, 3, dtype=np.int64)
    cells.SetData(
        numpy_to_vtkIdTypeArray(offsets, deep=True),
        numpy_to_vtkIdTypeArray(np.ascontiguousarray(faces, dtype=np.int64).ravel(), deep=True),
    )
    poly = vtk.vtkPolyData()
    poly.SetPoints(pts)
    poly.SetPolys(cells)
    return poly


def signed_distance(verts: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Exact signed distance of `points` to a closed, outward-oriented triangle mesh (negative
    inside): vtkImplicitPolyDataDistance, i.e. the distance to the closest point on a triangle
    and the sign of the angle-weighted pseudo-normal there (Bærentzen & Aanæs 2005), which is
    exact for a closed manifold mesh. kneenode's meshes are closed manifolds (checked by
    `check_closed`), the cartilage one included (several components, a few handles)."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    dist = vtk.vtkImplicitPolyDataDistance()
    dist.SetInput(_polydata(verts, faces))
    out = vtk.vtkDoubleArray()
    dist.FunctionValue(numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float64), deep=True), out)
    return vtk_to_numpy(out).astype(np.float64)


def check_closed(faces: np.ndarray, what: str) -> None:
    """Raises unless every edge has exactly two triangles (a closed 2-manifold edge set)."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    if not np.all(counts == 2):
        raise ValueError(f"{what}: mesh is not closed ({int(np.sum(counts != 2))} bad edges)")


# --------------------------------------------------------------------------------------
# The contract's mesh preparation
# --------------------------------------------------------------------------------------


def mirror(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x → −x with the triangle winding flipped, so outward normals stay outward."""
    return verts * np.array([-1.0, 1.0, 1.0]), faces[:, ::-1].copy()


def clip_below(verts: np.ndarray, faces: np.ndarray, zmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the vertices with z <= zmax and the triangles whose three vertices are all kept."""
    keep = verts[:, 2] <= zmax
    if keep.all():
        return verts, faces
    index = np.full(len(verts), -1, dtype=np.int64)
    index[keep] = np.arange(int(keep.sum()))
    tri = faces[keep[faces].all(axis=1)]
    return verts[keep], index[tri]


def prepare(
    bone: tuple[np.ndarray, np.ndarray],
    cart: tuple[np.ndarray, np.ndarray],
    left: bool,
) -> dict:
    """CONTRACT.md steps 1–3 on LPS-mm meshes: mirror a left knee, clip the femur top at
    zmin + 1.0 × W (W the bone's x extent), centre on the clipped bone's vertex mean c and scale
    by its max radius s. Returns the normalised meshes and (c, s): x_norm = (x_mm − c) / s, with
    x_mm in the mirrored frame for a left knee."""
    (bv, bf), (cv, cf) = bone, cart
    if left:
        bv, bf = mirror(bv, bf)
        cv, cf = mirror(cv, cf)
    zmin = float(bv[:, 2].min())
    width = float(bv[:, 0].max() - bv[:, 0].min())
    zmax = zmin + CLIP_WIDTHS * width
    bv, bf = clip_below(bv, bf, zmax)
    cv, cf = clip_below(cv, cf, zmax)
    center = bv.mean(axis=0)
    scale = float(np.linalg.norm(bv - center, axis=1).max())
    return {
        "bone": ((bv - center) / scale, bf),
        "cart": ((cv - center) / scale, cf),
        "center": center,
        "scale": scale,
    }


def transform(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    return points @ m[:3, :3].T + m[:3, 3]


def sample_surface(verts: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` points uniformly distributed over the mesh's area."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    tri = rng.choice(len(faces), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    return a[tri] + u[:, None] * (b[tri] - a[tri]) + v[:, None] * (c[tri] - a[tri])


def similarity_icp(
    source: np.ndarray, target: np.ndarray, iterations: int = 60, tol: float = 1e-7
) -> np.ndarray:
    """Similarity ICP (rotation, translation, uniform scale) of `source` points onto the point
    set `target` (dense samples of a surface): nearest neighbours by KD-tree, Umeyama's closed
    form each iteration. Returns the 4×4 matrix M with target ≈ M · source."""
    tree = cKDTree(target)
    total = np.eye(4)
    current = source.copy()
    prev = np.inf
    for _ in range(iterations):
        dist, idx = tree.query(current)
        err = float(np.mean(dist**2))
        m = umeyama(current, target[idx])
        current = transform(current, m)
        total = m @ total
        if prev - err < tol:
            break
        prev = err
    return total


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform dst ≈ s·R·src + t (Umeyama 1991), as a 4×4 matrix."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rot = u @ sign @ vt
    var = np.mean(np.sum(xs**2, axis=1))
    s = float(np.trace(np.diag(d) @ sign) / var)
    m = np.eye(4)
    m[:3, :3] = s * rot
    m[:3, 3] = mu_d - s * rot @ mu_s
    return m


# --------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------


class Decoder(nn.Module):
    """f(latent, xyz) → SDF columns (bone, cartilage), DeepSDF style: the latent concatenated
    with a Fourier encoding of xyz, an MLP with ReLU and one skip connection (the input is
    concatenated again halfway), and a final tanh.

    forward(latent (1, L) or (N, L), xyz (N, 3)) → (N, C), float32, normalised units.
    """

    def __init__(self, latent_size: int, hidden: int, layers: int, freqs: int, out: int = 2):
        super().__init__()
        self.latent_size = latent_size
        # Frequencies π · 2^k, k = 0 .. freqs − 1, as a buffer so it follows .to(device).
        self.register_buffer(
            "freqs", torch.tensor([math.pi * 2.0**k for k in range(freqs)], dtype=torch.float32)
        )
        d_in = latent_size + 3 + 6 * freqs
        self.skip = layers // 2
        self.hidden = nn.ModuleList()
        for n in range(layers):
            cin = d_in if n == 0 else hidden + (d_in if n == self.skip else 0)
            self.hidden.append(nn.Linear(cin, hidden))
        self.last = nn.Linear(hidden, out)

    def forward(self, latent: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        n = xyz.size(0)
        if latent.size(0) == 1:
            z = latent.expand(n, latent.size(1))
        else:
            z = latent
        arg = (xyz.unsqueeze(2) * self.freqs).reshape(n, -1)
        x = torch.cat([z, xyz, torch.sin(arg), torch.cos(arg)], dim=1)
        h = x
        for k, layer in enumerate(self.hidden):
            if k == self.skip:
                h = torch.cat([h, x], dim=1)
            h = torch.relu(layer(h))
        return torch.tanh(self.last(h))


# --------------------------------------------------------------------------------------
# The contract's latent fit, and meshes of the decoder
# --------------------------------------------------------------------------------------


def fit_latent(
    decoder,
    bone_pts: np.ndarray,
    cart_pts: np.ndarray | None,
    latent_size: int,
    seed: int,
    max_steps: int = 2000,
    points: int = FIT_POINTS,
) -> tuple[np.ndarray, int, float]:
    """Fits a latent to surface points (target SDF 0) as CONTRACT.md says: latent from
    N(0, 0.01²), each step `points` vertices drawn without replacement (half per surface, or all
    of a surface's when it has fewer; all from the bone when
    `cart_pts` is None, which also fits column 0 only), L1 loss with prediction and target
    clamped to ±0.1, Adam at lr 0.005 × (1/1.1)^(step // 20), at most `max_steps` steps,
    stopping after 50 steps without a new lowest loss. Returns (latent of the lowest loss,
    steps run, that loss)."""
    gen = torch.Generator().manual_seed(seed)
    latent = (torch.randn(1, latent_size, generator=gen) * 0.01).requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=FIT_LR)
    bone = torch.from_numpy(np.asarray(bone_pts, dtype=np.float32))
    cart = None if cart_pts is None else torch.from_numpy(np.asarray(cart_pts, dtype=np.float32))
    best, best_latent, since, step = math.inf, latent.detach().clone(), 0, 0
    for step in range(max_steps):
        for g in opt.param_groups:
            g["lr"] = FIT_LR * FIT_DECAY ** (step // FIT_DECAY_EVERY)
        if cart is None:
            pred = decoder(latent, _subset(bone, points, gen))[:, 0]
        else:
            half = points // 2
            xyz = torch.cat([_subset(bone, half, gen), _subset(cart, points - half, gen)])
            out = decoder(latent, xyz)
            pred = torch.cat([out[: min(half, len(bone)), 0], out[min(half, len(bone)) :, 1]])
        loss = pred.clamp(-CLAMP, CLAMP).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = loss.item()
        if value < best:
            best, best_latent, since = value, latent.detach().clone(), 0
        else:
            since += 1
            if since >= FIT_PATIENCE:
                break
    return best_latent.numpy()[0].astype(np.float64), step + 1, best


def _subset(points: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """`k` of the points drawn without replacement, or all of them when there are no more."""
    if len(points) <= k:
        return points
    return points[torch.randperm(len(points), generator=gen)[:k]]


@torch.no_grad()
def decoder_grid(decoder, latent: np.ndarray, column: int, step: float, lo=-1.0, hi=1.0, band=0.08):
    """The SDF column on a regular grid over [lo, hi]^3 with spacing `step`, evaluated exactly
    only near the surface: a coarse grid (4 × step) first, then the fine points whose trilinear
    coarse value is within `band`; the others keep the coarse value. Returns (grid, origin)."""
    z = torch.as_tensor(np.asarray(latent, dtype=np.float32)).reshape(1, -1)

    def evaluate(pts: np.ndarray) -> np.ndarray:
        out = np.empty(len(pts), dtype=np.float32)
        for a in range(0, len(pts), 200_000):
            chunk = torch.from_numpy(pts[a : a + 200_000].astype(np.float32))
            out[a : a + 200_000] = decoder(z, chunk)[:, column].numpy()
        return out

    n = int(round((hi - lo) / step)) + 1
    axis = lo + step * np.arange(n)
    nc = (n - 1) // 4 + 1
    caxis = lo + 4 * step * np.arange(nc)
    cg = np.stack(np.meshgrid(caxis, caxis, caxis, indexing="ij"), -1).reshape(-1, 3)
    coarse = torch.from_numpy(evaluate(cg).reshape(1, 1, nc, nc, nc))
    fine = torch.nn.functional.interpolate(coarse, size=(n, n, n), mode="trilinear", align_corners=True)[0, 0]
    fine = fine[: n, : n, : n].numpy().copy()
    near = np.argwhere(np.abs(fine) < band)
    fine[tuple(near.T)] = evaluate(lo + step * near.astype(np.float64))
    return fine, np.array([lo, lo, lo]), axis


def decoder_mesh(decoder, latent: np.ndarray, column: int, step: float = 0.01):
    """Marching cubes of an SDF column at level 0 (normalised frame): (vertices, triangles)."""
    from skimage.measure import marching_cubes

    grid, origin, _ = decoder_grid(decoder, latent, column, step)
    if grid.min() >= 0 or grid.max() <= 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    verts, faces, _, _ = marching_cubes(grid, level=0.0, spacing=(step, step, step))
    return verts + origin, faces.astype(np.int64)


def assd(verts_a, faces_a, verts_b, faces_b, rng: np.random.Generator, n: int = 100_000) -> float:
    """Average symmetric surface distance between two meshes (same units as the vertices):
    the mean over both surfaces' area samples of the distance to the other one's dense
    samples (accurate to ~0.1 % of the size at this density)."""
    if len(faces_a) == 0 or len(faces_b) == 0:
        return float("inf")
    pa = sample_surface(verts_a, faces_a, n, rng)
    pb = sample_surface(verts_b, faces_b, n, rng)
    dab = cKDTree(pb).query(pa)[0]
    dba = cKDTree(pa).query(pb)[0]
    return float((dab.sum() + dba.sum()) / (len(dab) + len(dba)))
