#!/usr/bin/env python3
"""Reference half of benches/mesh.sh: scikit-image's and VTK's marching cubes on the volume that
`kneenode bench mesh` meshes, and the table that puts them side by side.

    mesh_ref.py field LABELS OUT --label 7 [--variance 0.5]
        writes the smoothed mask both sides mesh in the "smooth" case: the tissue's mask (1-voxel
        border zeroed, as kneenode's label_surface does) convolved with a Gaussian of the given
        variance in mm^2 (sigma = sqrt(variance)/spacing per axis, zeros outside, cut at 4 sigma:
        the pipeline's bone smoothing), float32 NIfTI with the labels' affine
    mesh_ref.py time (--labels LABELS --label 7[,8,...] | --field FIELD) --case NAME
                     [--level 0.5] [--runs 1] [--no-vtk]
        one JSON line per reference implementation on stdout (same fields as kneenode's line)
    mesh_ref.py table RESULTS.jsonl --runs N --machine TEXT [--note TEXT]...
        the table (median and best over every run of each case and implementation)

Only the extraction call is timed: `skimage.measure.marching_cubes(...)` (which also applies
the spacing, computes gradient normals and values, and flips the faces' winding) and
`filter.Update()` for VTK (normals, gradients and scalars off). Each process runs one untimed
warm-up first. Everything runs on one thread: skimage's Cython is single-threaded, VTK's SMP
backend is set to Sequential, and benches/mesh.sh exports OMP/MKL/OpenBLAS/numba thread counts
of 1.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np


def load_nifti(path):
    import nibabel as nib

    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return img, data, spacing


def mask_of(labels, wanted):
    """1.0 inside `wanted`, 0 elsewhere and on the one-voxel border (as label_surface)."""
    m = np.zeros(labels.shape, np.float32)
    inner = labels[1:-1, 1:-1, 1:-1]
    m[1:-1, 1:-1, 1:-1] = np.isin(inner, wanted)
    return m


def cmd_field(a):
    import nibabel as nib
    from scipy.ndimage import gaussian_filter

    img, labels, spacing = load_nifti(a.labels)
    m = mask_of(labels, [int(x) for x in a.label.split(",")])
    sigma = [np.sqrt(a.variance) / s for s in spacing]
    field = gaussian_filter(m, sigma=sigma, mode="constant", cval=0.0, truncate=4.0).astype(np.float32)
    out = nib.Nifti1Image(field, img.affine)
    out.header.set_zooms(spacing)
    out.header.set_xyzt_units("mm")
    nib.save(out, a.out)


def mesh_stats(verts, faces):
    """Vertices, triangles, duplicate vertices, area (mm^2), closed-and-consistently-wound, V-E+F."""
    verts = np.asarray(verts, np.float64)
    faces = np.asarray(faces, np.int64).reshape(-1, 3)
    nv, nf = len(verts), len(faces)
    dup = nv - len(np.unique(verts, axis=0)) if nv else 0
    p = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1).sum()
    a = faces.reshape(-1)
    b = faces[:, [1, 2, 0]].reshape(-1)
    directed = a * nv + b
    reverse = b * nv + a
    undirected = np.unique(np.minimum(a, b) * nv + np.maximum(a, b))
    # Closed and oriented: every directed edge once, and its reverse present.
    closed = len(np.unique(directed)) == len(directed) and bool(np.isin(reverse, directed).all())
    used = len(np.unique(a))
    return {
        "vertices": nv,
        "triangles": nf,
        "duplicate_vertices": int(dup),
        "area_mm2": float(area),
        "closed": bool(closed),
        "euler": int(used - len(undirected) + nf),
    }


def read_ply(path):
    """Vertices and triangles of a binary little-endian PLY as kneenode writes it."""
    raw = open(path, "rb").read()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    nv = int(next(l for l in header if l.startswith("element vertex")).split()[-1])
    nf = int(next(l for l in header if l.startswith("element face")).split()[-1])
    nprops = sum(1 for l in header if l.startswith("property float"))
    verts = np.frombuffer(raw, "<f4", nv * nprops, end).reshape(nv, nprops)[:, :3]
    faces = np.frombuffer(raw, np.dtype([("n", "u1"), ("v", "<i4", 3)]), nf, end + 4 * nv * nprops)
    return verts.astype(np.float64), faces["v"].astype(np.int64)


def compare(ours_ply, verts, faces):
    """How far kneenode's mesh (PLY) is from a reference's: each of our vertices matched to the
    nearest reference vertex, then triangles compared as sets of matched vertex ids."""
    from scipy.spatial import cKDTree

    ov, of = read_ply(ours_ply)
    verts = np.asarray(verts, np.float64)
    dist, idx = cKDTree(verts).query(ov)
    matched = dist < 1e-3  # mm; float32 coordinates of a 0.375 mm grid
    mapped = np.sort(idx[of], axis=1)
    theirs = np.sort(np.asarray(faces, np.int64).reshape(-1, 3), axis=1)
    key = lambda t: t[:, 0] * len(verts) ** 2 + t[:, 1] * len(verts) + t[:, 2]
    shared = int(np.isin(key(mapped), key(theirs)).sum())
    return {
        "vertices_matched": int(matched.sum()),
        "max_vertex_distance_mm": float(dist.max()),
        "triangles_shared": shared,
        "triangles_ours": int(len(of)),
        "vertex_injective": len(np.unique(idx)) == len(idx),
    }


def time_skimage(volume_zyx, spacing_zyx, level, runs):
    from skimage.measure import marching_cubes

    def once():
        return marching_cubes(volume_zyx, level, spacing=spacing_zyx)

    once()  # warm-up (builds the lookup tables once per process)
    times, out = [], None
    for _ in range(runs):
        out = None
        t0 = time.perf_counter()
        out = once()
        times.append(time.perf_counter() - t0)
    verts, faces = out[0], out[1]
    # skimage's vertices are (k, j, i); kneenode's PLY is (i, j, k).
    return times, mesh_stats(verts, faces), verts[:, ::-1], faces


def time_vtk(kind, volume_zyx, spacing_xyz, level, runs):
    import vtk
    from vtk.util import numpy_support

    smp = vtk.vtkSMPTools()
    smp.SetBackend("Sequential")
    smp.Initialize(1)
    image = vtk.vtkImageData()
    image.SetDimensions(*volume_zyx.shape[::-1])
    image.SetSpacing(*spacing_xyz)
    scalars = numpy_support.numpy_to_vtk(volume_zyx.ravel(), deep=1, array_type=vtk.VTK_FLOAT)
    image.GetPointData().SetScalars(scalars)

    def make():
        f = getattr(vtk, kind)()
        f.SetInputData(image)
        # Discrete flying edges extracts the boundary of the region whose value is exactly 1,
        # with vertices at edge midpoints: on a 0/1 mask, the same surface as level 0.5.
        f.SetValue(0, 1.0 if kind == "vtkDiscreteFlyingEdges3D" else level)
        f.ComputeNormalsOff()
        f.ComputeGradientsOff()
        f.ComputeScalarsOff()
        return f

    make().Update()  # warm-up
    times, out = [], None
    for _ in range(runs):
        f = make()
        t0 = time.perf_counter()
        f.Update()
        times.append(time.perf_counter() - t0)
        out = f.GetOutput()
    pts = numpy_support.vtk_to_numpy(out.GetPoints().GetData()) if out.GetNumberOfPoints() else np.zeros((0, 3))
    conn = numpy_support.vtk_to_numpy(out.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    return times, mesh_stats(pts, conn), pts, conn


def cmd_time(a):
    if a.field:
        _, data, spacing = load_nifti(a.field)
        volume = np.asarray(data, np.float32)
        is_mask = False
    else:
        _, labels, spacing = load_nifti(a.labels)
        volume = mask_of(labels, [int(x) for x in a.label.split(",")])
        is_mask = True
    # Numpy (i, j, k) from nibabel is Fortran-ordered; its transpose is a C-contiguous (k, j, i)
    # array with i fastest, the same memory layout kneenode scans. skimage was timed both ways:
    # the layout makes no measurable difference to it.
    zyx = np.ascontiguousarray(volume.T)
    spacing_zyx = tuple(spacing[::-1])
    common = {
        "case": a.case,
        "threads": 1,
        "dims": list(volume.shape),
        "spacing": list(spacing),
        "level": a.level,
        "voxels_above": int((volume > a.level).sum()),
    }

    import skimage

    impls = [("scikit-image %s marching_cubes (lewiner)" % skimage.__version__,
              lambda: time_skimage(zyx, spacing_zyx, a.level, a.runs))]
    if not a.no_vtk:
        try:
            import vtk

            v = vtk.vtkVersion.GetVTKVersion()
            kinds = ["vtkFlyingEdges3D", "vtkMarchingCubes"]
            if is_mask:
                kinds.append("vtkDiscreteFlyingEdges3D")
            for kind in kinds:
                impls.append(("VTK %s %s" % (v, kind),
                              lambda kind=kind: time_vtk(kind, zyx, spacing, a.level, a.runs)))
        except ImportError as e:
            print("mesh_ref.py: VTK not available (%s): skipped" % e, file=sys.stderr)
    for name, run in impls:
        times, stats, verts, faces = run()
        row = dict(common, implementation=name, runs_s=times, **stats)
        if a.compare:
            row["vs_kneenode"] = compare(a.compare, verts, faces)
        print(json.dumps(row), flush=True)


OURS = "kneenode marching_cubes (pipeline::mesh)"


def cmd_table(a):
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    cases, impls = [], {}
    for r in rows:
        if r["case"] not in cases:
            cases.append(r["case"])
        key = (r["case"], r["implementation"])
        if key not in impls:
            impls[key] = dict(r, runs_s=[])
        impls[key]["runs_s"] += r["runs_s"]
        # Later runs must have produced the same mesh.
        for f in ("vertices", "triangles"):
            if impls[key][f] != r[f]:
                impls[key].setdefault("unstable", set()).add(f)

    print()
    print("Marching cubes: %s; median and best of %d run(s), 1 thread each" % (a.volume, a.runs))
    print("Machine: " + a.machine)
    hdr = "%-14s %-46s %8s %7s %9s %9s %9s %6s %19s" % (
        "case", "implementation", "median s", "best s", "vertices", "triangles", "area mm²", "closed",
        "÷ kneenode med/best")
    print(hdr)
    print("-" * len(hdr))
    headline, compared = [], []
    for case in cases:
        names = [k[1] for k in impls if k[0] == case]
        names.sort(key=lambda n: (n != "kneenode", n.startswith("VTK"), n))
        ours = impls.get((case, "kneenode"))
        ours_med = statistics.median(ours["runs_s"]) if ours else None
        ours_best = min(ours["runs_s"]) if ours else None
        first = True
        for n in names:
            r = impls[(case, n)]
            med, best = statistics.median(r["runs_s"]), min(r["runs_s"])
            ratio = "%.2f× / %.2f×" % (med / ours_med, best / ours_best) if ours_med else "—"
            note = ""
            if ours and r["voxels_above"] != ours["voxels_above"]:
                note += "  !! %d voxels above the level, kneenode saw %d" % (r["voxels_above"], ours["voxels_above"])
            if r.get("duplicate_vertices"):
                note += "  (%d duplicate vertices)" % r["duplicate_vertices"]
            if r.get("unstable"):
                note += "  !! mesh changed between runs"
            print("%-14s %-46s %8.3f %7.3f %9d %9d %9.1f %6s %19s%s" % (
                case if first else "", OURS if n == "kneenode" else n, med, best, r["vertices"], r["triangles"], r["area_mm2"],
                "yes" if r["closed"] else "no", ratio, note))
            first = False
            if n.startswith("scikit-image") and ours_med:
                headline.append((case, med / ours_med, best / ours_best, ours))
            if r.get("vs_kneenode"):
                compared.append((case, n, r))
    print()
    for case, ratio, best_ratio, ours in headline:
        normals = ours.get("normals_s", 0.0)
        med = statistics.median(ours["runs_s"])
        print("%-14s skimage ÷ kneenode = %.2f× median, %.2f× best (target ≥ 2); with kneenode's "
              "vertex normals (+%.1f ms, as skimage returns normals) %.2f× median"
              % (case, ratio, best_ratio, normals * 1e3, ratio * med / (med + normals)))
    if compared:
        print()
        print("Same mesh? kneenode's vertices matched to the nearest reference vertex (< 0.001 mm), "
              "triangles compared as vertex sets:")
        for case, n, r in compared:
            c = r["vs_kneenode"]
            print("%-14s %-46s %d/%d vertices (max %.1e mm), %d/%d triangles identical" % (
                case, n, c["vertices_matched"], r["vertices"], c["max_vertex_distance_mm"],
                c["triangles_shared"], c["triangles_ours"]))
    for n in a.note:
        print(n)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("field")
    f.add_argument("labels")
    f.add_argument("out")
    f.add_argument("--label", default="7")
    f.add_argument("--variance", type=float, default=0.5)
    t = sub.add_parser("time")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels")
    src.add_argument("--field")
    t.add_argument("--label", default="7")
    t.add_argument("--case", required=True)
    t.add_argument("--level", type=float, default=0.5)
    t.add_argument("--runs", type=int, default=1)
    t.add_argument("--no-vtk", action="store_true")
    t.add_argument("--compare", metavar="PLY", help="kneenode's mesh of this case, to compare with")
    b = sub.add_parser("table")
    b.add_argument("results")
    b.add_argument("--runs", type=int, required=True)
    b.add_argument("--volume", required=True)
    b.add_argument("--machine", required=True)
    b.add_argument("--note", action="append", default=[])
    a = p.parse_args()
    {"field": cmd_field, "time": cmd_time, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
