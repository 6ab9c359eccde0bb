#!/usr/bin/env python3
"""Helper of benches/latency.sh, in two halves.

1. The PyTorch-in-Python reference (run with the torch venv's python):

    latency_ref.py ref IMAGE.nii.gz --out DIR [--model-dir models/demo] [--threads N]
                       [--json FILE] [--compare KNEENODE_LABELS.nii.gz]
                       [--resample interpolate|itk] [--postprocess numpy|scipy]

   The demo model's inference on one image, timed in the stages kneenode's child reports
   (loading, segmentation, post-processing, writing label files). It reuses tools/demo_common.py
   (z-score, Gaussian-weighted sliding window) and tools/eval_demo.py (largest component per
   label + bone hole filling) rather than repeating them. To match kneenode: patch and orientation
   from the manifest, step 0.5, σ = patch / 8, 2 patches per forward pass (kneenode's
   SlidingWindow::new), no TTA, `threads` intra-op threads (libtorch's default in kneenode: one per
   core), labels written as .nii.gz and .nrrd, gzip level 6 (flate2's default). Differences left:
   kneenode's loading stage reads the DICOM series, this one the NIfTI of the same voxels; kneenode
   always resamples (an identity here), this script only when the spacing differs.

   Options added for benches/inference.sh, which runs kneenode on grids the model must resample:
     --resample itk      resample as kneenode does (volume::resample_linear, ITK's conventions):
                         the model grid shares the image's origin, voxel i of the output samples
                         the input at index i x (output spacing / input spacing), trilinear, edge
                         neighbours clamped up to half a voxel beyond the outer centres, 0
                         further out; always to the model grid (an identity included, as
                         kneenode), back only when the grids differ, one class at a time with a
                         running argmax (first maximum wins), as kneenode's resampled_argmax.
                         Float32 in torch (kneenode: float64 per voxel), one axis at a time as
                         a matrix product.
                         The default, `interpolate`, is torch's trilinear with align_corners=True.
     --postprocess scipy largest 6-connected component per label and bone hole filling with
                         scipy.ndimage.label, with kneenode's rule for a hole (a component of
                         non-bone voxels touching neither the border nor another label). The
                         default, `numpy`, is tools/eval_demo.py's union-find.
   The JSON also has `detail_s`, the steps inside the stages (model load, resampling, z-score,
   sliding window, back to the source grid), and with --compare `dice`, per label.

   latency_ref.py dice A.nii.gz B.nii.gz [--truth LABELS.nii.gz] [--json FILE]

   Dice of labels 1-9 between two label volumes on the same grid (and of each against the
   truth), and the fraction of equal voxels.

2. Bookkeeping for the shell scripts (any python3, standard library only): `run`, `summary`,
   `jobs`, `ids`, `partb` read the node's SQLite database, results.json files and the reference's
   JSON under latency.sh's work folder, and print the figures; `inference` prints
   benches/inference.sh's table from its work folder.
"""

from __future__ import annotations

import argparse
import calendar
import glob
import gzip
import json
import os
import sqlite3
import statistics
import sys
import time
import tomllib
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BATCH = 2  # patches per forward pass, as kneenode's SlidingWindow::new
STEP = 0.5


# ---------------------------------------------------------------- 1. the reference
def write_nrrd(path: Path, labels, affine) -> None:
    """Labels as gzip NRRD in LPS, like kneenode's write_nrrd."""
    import numpy as np

    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    cols = " ".join("(%r,%r,%r)" % tuple(float(v) for v in lps[:, c]) for c in range(3))
    header = (
        "NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {' '.join(str(s) for s in labels.shape)}\nspace directions: {cols}\n"
        "kinds: domain domain domain\nendian: little\nencoding: gzip\n"
        "space origin: (%r,%r,%r)\n\n" % tuple(float(v) for v in lps[:, 3])
    )
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(gzip.compress(labels.astype(np.uint8).tobytes(order="F"), compresslevel=6))


def itk_weights(n: int, ratio: float, size: int):
    """kneenode's resample_linear along one axis as a (size, n) matrix: output voxel i samples the
    input at index i × ratio (the grids share their origin; positions within 1e-6 of a voxel
    centre snap to it), linearly, with the neighbours clamped to the edge within half a voxel
    beyond the outer centres, and 0 further out. Trilinear resampling is this along each axis in
    turn (it is separable), and as a matrix product it runs in BLAS on every thread."""
    import torch

    c = torch.arange(size, dtype=torch.float64) * ratio
    r = c.round()
    c = torch.where((c - r).abs() < 1e-6, r, c)
    inside = ((c >= -0.5) & (c <= n - 0.5)).to(torch.float64)
    fl = c.floor()
    lo = fl.clamp(0, n - 1).long()
    hi = (fl + 1).clamp(0, n - 1).long()
    t = c - fl
    rows = torch.arange(size)
    w = torch.zeros(size, n, dtype=torch.float64)
    w.index_put_((rows, lo), (1 - t) * inside, accumulate=True)
    w.index_put_((rows, hi), t * inside, accumulate=True)
    return w.to(torch.float32)


def itk_resample(x, ratios, size):
    """A (I, J, K) float32 tensor resampled to `size` voxels as kneenode's resample_linear does
    (see itk_weights), ratio[a] = output spacing / input spacing along axis a. Every axis goes
    through its matrix, an identity included, as kneenode resamples even onto the same grid."""
    import torch

    w = [itk_weights(x.shape[a], ratios[a], size[a]) for a in range(3)]
    x = torch.einsum("ia,ajk->ijk", w[0], x)
    x = torch.einsum("jb,ibk->ijk", w[1], x)
    return torch.einsum("kc,ijc->ijk", w[2], x)


def postprocess_scipy(seg):
    """kneenode's pipeline::postprocess with scipy.ndimage: the largest 6-connected component of
    each label (on an exact tie the last in scipy's scan order; kneenode scans i fastest, so
    such a tie could break differently), then, for each bone 7, 8, 9, every
    6-connected component of non-bone voxels that touches neither the volume's border nor a
    voxel of another label becomes bone."""
    import numpy as np
    from scipy import ndimage

    out = seg.copy()
    for lab in range(1, 10):
        mask = out == lab
        if not mask.any():
            continue
        ids, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(ids.ravel())[1:]
            keep = n - int(np.argmax(sizes[::-1]))
            out[mask & (ids != keep)] = 0
    border = np.zeros(out.shape, dtype=bool)
    border[[0, -1]] = border[:, [0, -1]] = border[:, :, [0, -1]] = True
    for bone in (7, 8, 9):
        other = out != bone
        ids, n = ndimage.label(other)
        if n == 0:
            continue
        not_hole = np.zeros(n + 1, dtype=bool)
        not_hole[0] = True
        not_hole[ids[border]] = True
        not_hole[ids[other & (out != 0)]] = True
        out[~not_hole[ids]] = bone
    return out


def dice_table(a, b) -> dict[int, float | None]:
    """Dice of labels 1–9 between two uint8 volumes; None where both lack the label."""
    import numpy as np

    joint = np.bincount(a.astype(np.int64).ravel() * 16 + b.astype(np.int64).ravel(),
                        minlength=256).reshape(16, 16)
    rows, cols = joint.sum(1), joint.sum(0)
    return {lab: (2.0 * joint[lab, lab] / (rows[lab] + cols[lab]) if rows[lab] + cols[lab] else None)
            for lab in range(1, 10)}


def dice_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="latency_ref.py dice")
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--truth", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import nibabel as nib
    import numpy as np

    imgs = [nib.load(str(p)) for p in (args.a, args.b)]
    if imgs[0].shape != imgs[1].shape or not np.allclose(imgs[0].affine, imgs[1].affine, atol=1e-3):
        sys.exit("latency_ref.py dice: %s and %s are on different grids" % (args.a, args.b))
    a, b = (np.asarray(i.dataobj, dtype=np.uint8) for i in imgs)
    out = {"equal": float((a == b).mean()), "dice": dice_table(a, b)}
    if args.truth:
        t = np.asarray(nib.load(str(args.truth)).dataobj, dtype=np.uint8)
        out["truth_a"], out["truth_b"] = dice_table(a, t), dice_table(b, t)
    text = json.dumps(out)
    if args.json:
        args.json.write_text(text)
    print(text)


def reference(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="latency_ref.py ref")
    ap.add_argument("image", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "demo")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path, default=None, help="also write the timings here")
    ap.add_argument("--compare", type=Path, default=None, help="kneenode's all-labels.nii.gz of the same image")
    ap.add_argument("--resample", choices=("interpolate", "itk"), default="interpolate",
                    help="itk: as kneenode's resample_linear (see the module's documentation)")
    ap.add_argument("--postprocess", choices=("numpy", "scipy"), default="numpy",
                    help="scipy: scipy.ndimage with kneenode's hole rule; numpy: tools/eval_demo.py")
    args = ap.parse_args(argv)

    import nibabel as nib
    import nibabel.openers
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "tools"))
    from demo_common import sliding_window, zscore
    from eval_demo import postprocess

    def resize(x: torch.Tensor, size) -> torch.Tensor:
        """Trilinear resampling of (C, I, J, K) or (I, J, K) to `size`, only when the grids differ."""
        if tuple(x.shape[-3:]) == tuple(size):
            return x
        y = x if x.dim() == 4 else x[None]
        y = torch.nn.functional.interpolate(y[None], size=tuple(size), mode="trilinear", align_corners=True)[0]
        return y if x.dim() == 4 else y[0]

    torch.set_num_threads(args.threads)
    nibabel.openers.Opener.default_compresslevel = 6
    timings: list[tuple[str, float]] = []
    detail: list[tuple[str, float]] = []
    clock = time.perf_counter()
    step_clock = clock

    def lap(name: str) -> None:
        nonlocal clock, step_clock
        now = time.perf_counter()
        timings.append((name, now - clock))
        clock = step_clock = now

    def step(name: str) -> None:
        """A step inside the current stage (detail_s in the JSON)."""
        nonlocal step_clock
        now = time.perf_counter()
        detail.append((name, now - step_clock))
        step_clock = now

    # loading: image and model
    manifest = tomllib.loads((args.model_dir / "manifest.toml").read_text())
    assert manifest["normalization"] == "zscore" and not manifest.get("mirror_axes")
    img = nib.load(str(args.image))
    data = np.asarray(img.dataobj, dtype=np.float32)
    step("read image")
    model = torch.jit.load(str(args.model_dir / manifest["file"]), map_location="cpu").eval()
    step("load model")
    lap("loading")

    # segmentation: reorient to the manifest's orientation, resample to its spacing, z-score,
    # sliding window, probabilities back to the source grid, argmax, orientation back.
    src = nib.orientations.io_orientation(img.affine)
    dst = nib.orientations.axcodes2ornt(tuple(manifest["orientation"]))
    to_model = nib.orientations.ornt_transform(src, dst)
    canon = nib.orientations.apply_orientation(data, to_model)
    canon_affine = img.affine @ nib.orientations.inv_ornt_aff(to_model, data.shape)
    spacing = np.linalg.norm(canon_affine[:3, :3], axis=0)
    target = tuple(max(1, round(n * s / t)) for n, s, t in zip(canon.shape, spacing, manifest["spacing"]))
    if args.resample == "itk":
        to = [t / s for s, t in zip(spacing, manifest["spacing"])]
        x = itk_resample(torch.from_numpy(np.ascontiguousarray(canon)), to, target).numpy()
    else:
        x = resize(torch.from_numpy(np.ascontiguousarray(canon)), target).numpy()
    step("reorient, resample to the model grid")
    x = zscore(x)
    step("z-score")
    probs = sliding_window(model, x, tuple(manifest["patch_size"]), manifest["num_classes"],
                           step=STEP, batch=BATCH)
    del x
    step("sliding window")
    same_grid = tuple(target) == tuple(canon.shape) and np.allclose(spacing, manifest["spacing"], rtol=1e-6)
    if args.resample == "itk" and not same_grid:
        back = [s / t for s, t in zip(spacing, manifest["spacing"])]
        best = torch.full(canon.shape, torch.finfo(torch.float32).min)
        seg = torch.zeros(canon.shape, dtype=torch.uint8)
        for c in range(probs.shape[0]):
            p = itk_resample(probs[c], back, canon.shape)
            better = p > best
            seg.masked_fill_(better, c)
            torch.maximum(best, p, out=best)
            del p, better
        seg = seg.numpy()
    else:
        seg = resize(probs, canon.shape).argmax(0).to(torch.uint8).numpy()
    del probs
    seg = nib.orientations.apply_orientation(seg, nib.orientations.ornt_transform(dst, src))
    step("back to the source grid, argmax")
    lap("segmentation")

    seg = postprocess_scipy(seg) if args.postprocess == "scipy" else postprocess(seg)
    lap("post-processing")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.image.name.removesuffix(".gz").removesuffix(".nii")
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), img.affine), str(args.out / f"{stem}_all-labels.nii.gz"))
    write_nrrd(args.out / f"{stem}_all-labels.nrrd", seg, img.affine)
    lap("writing label files")

    print(f"python reference: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"grid {tuple(data.shape)} -> model grid {target}, patch {tuple(manifest['patch_size'])}, "
          f"step {STEP}, batch {BATCH}, no TTA, resample {args.resample}, post-processing {args.postprocess}")
    for name, s in timings:
        print(f"  {name:<22} {s:8.3f} s")
    print(f"  {'total':<22} {sum(s for _, s in timings):8.3f} s")
    agree = dice = None
    if args.compare:
        other = nib.load(str(args.compare))
        if other.shape == seg.shape and np.allclose(other.affine, img.affine, atol=1e-3):
            theirs = np.asarray(other.dataobj, dtype=np.uint8)
            agree = float((theirs == seg).mean())
            dice = dice_table(theirs, seg)
            print(f"  labels equal to kneenode's in {100 * agree:.3f} % of voxels; Dice per label: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in dice.items() if v is not None))
        else:
            print(f"  kneenode's labels are on another grid ({other.shape}); not compared")
    if args.json:
        args.json.write_text(json.dumps({
            "timings_s": timings, "detail_s": detail, "threads": torch.get_num_threads(),
            "agreement": agree, "dice": dice, "grid": list(data.shape), "model_grid": list(target),
            "spacing": [float(v) for v in spacing], "model_spacing": list(manifest["spacing"]),
            "patch": list(manifest["patch_size"]),
            "resample": args.resample, "postprocess": args.postprocess, "torch": torch.__version__}))


# ---------------------------------------------------------------- 2. bookkeeping
def db(work: str) -> sqlite3.Connection:
    return sqlite3.connect("file:%s/storage/kneenode.sqlite?mode=ro" % work, uri=True, timeout=10)


def epoch(ts: str | None) -> float | None:
    """A naive UTC timestamp of the jobs table as seconds since the epoch."""
    if not ts:
        return None
    d = datetime.fromisoformat(ts)
    return calendar.timegm(d.timetuple()) + d.microsecond / 1e6


def results_json(work: str, job: str) -> dict:
    return json.load(open(glob.glob("%s/storage/jobs/%s/results/*_results.json" % (work, job))[0]))


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report_run(work: str, run, seed, job, t_send, t_ack, t_seg, t_sr, ref, load, order) -> None:
    t_send, t_ack, t_seg, t_sr = map(float, (t_send, t_ack, t_seg, t_sr))
    res = results_json(work, job)
    kn = dict(res["timings_s"])
    row = db(work).execute("select created_at, started_at, completed_at, peak_rss_bytes, status, attempts "
                           "from jobs where id = ?", (job,)).fetchone()
    c, s, e = (epoch(x) for x in row[:3])
    refd = json.load(open(ref)) if os.path.exists(ref) else {}
    py = dict(refd.get("timings_s", []))
    out = dict(run=int(run), seed=int(seed), job=job, send=t_ack - t_send, seg=t_seg - t_ack, sr=t_sr - t_ack,
               kn=kn, py=py, peak_rss=row[3], status=row[4], attempts=row[5], load=load,
               agree=refd.get("agreement"), queue=[c - t_ack, s - c, e - s, t_seg - e])
    json.dump(out, open("%s/run-%s.json" % (work, run), "w"))
    print("run %s  seed %s  job %s  (%s, attempt %s)  load %s  order: %s"
          % (run, seed, job, row[4], row[5], load, order))
    print("  storescu 80 instances: %.2f s;  last ack -> SEG received %.2f s, -> SR received %.2f s"
          % (out["send"], out["seg"], out["sr"]))
    print("  from the job row: ack->job created %.2f, created->started %.2f, started->completed %.2f, "
          "completed->SEG at PACS %.2f s; child peak RSS %.0f MiB" % tuple(out["queue"] + [(row[3] or 0) / 2**20]))
    print("  %-26s %9s %9s" % ("stage (s)", "kneenode", "python"))
    for name, v in res["timings_s"]:
        p = py.get("writing label files" if name == "writing results" else name)
        print("  %-26s %9.3f %9s" % (name, v, "%.3f" % p if p is not None else ""))
    if py:
        agree = "; labels agree in %.3f %% of voxels" % (100 * out["agree"]) if out["agree"] is not None else ""
        print("  segmentation: kneenode %.2f s, python %.2f s, python/kneenode %.2fx (>1: kneenode faster)%s"
              % (kn["segmentation"], py["segmentation"], py["segmentation"] / kn["segmentation"], agree))


def report_summary(work: str) -> None:
    runs = [json.load(open(f)) for f in sorted(glob.glob(work + "/run-*.json"))]
    print("\nPart A: median of %d run(s) (full-size phantom 192x192x80, demo model, 1 CPU worker)" % len(runs))
    print("  last ack -> SEG received   %8.2f s   (runs: %s)"
          % (med([r["seg"] for r in runs]), ", ".join("%.2f" % r["seg"] for r in runs)))
    print("  last ack -> SR received    %8.2f s" % med([r["sr"] for r in runs]))
    for name, _ in results_json(work, runs[0]["job"])["timings_s"]:
        print("  kneenode %-22s %7.3f s" % (name, med([r["kn"].get(name, 0) for r in runs])))
    withpy = [r for r in runs if r["py"]]
    if not withpy:
        return
    k, p = med([r["kn"]["segmentation"] for r in withpy]), med([r["py"]["segmentation"] for r in withpy])
    ratios = [r["py"]["segmentation"] / r["kn"]["segmentation"] for r in withpy]
    print("  segmentation stage: kneenode %.2f s, python %.2f s, ratio python/kneenode %.2fx "
          "(>1: kneenode faster; per run %s)" % (k, p, p / k, ", ".join("%.2f" % x for x in ratios)))
    stages = ("loading", "segmentation", "post-processing", "writing results", "writing label files")
    kt = med([sum(r["kn"].get(n, 0) for n in stages) for r in withpy])
    pt = med([sum(r["py"].values()) for r in withpy])
    print("  loading+segmentation+post-processing+writing: kneenode %.2f s, python %.2f s, ratio %.2fx" % (kt, pt, pt / kt))


def report_jobs(work: str, before_file: str) -> None:
    """One line: complete error cancelled other total, over the jobs not listed in before_file."""
    before = set(open(before_file).read().split())
    st = [r[1] for r in db(work).execute("select id, status from jobs") if r[0] not in before]
    done = ("complete", "error", "cancelled")
    print(st.count("complete"), st.count("error"), st.count("cancelled"), len([x for x in st if x not in done]), len(st))


def report_partb(work: str, before_file: str) -> None:
    before = set(open(before_file).read().split())
    rows = [r for r in db(work).execute("select id, status, attempts, error_code, error_message, peak_rss_bytes, "
                                         "started_at, completed_at from jobs") if r[0] not in before]
    ok = [r for r in rows if r[1] == "complete"]
    print("  jobs: %d complete, %d error, %d other; %d with more than one attempt"
          % (len(ok), len([r for r in rows if r[1] == "error"]),
             len([r for r in rows if r[1] not in ("complete", "error")]), len([r for r in rows if r[2] > 1])))
    for r in [r for r in rows if r[1] != "complete"][:10]:
        print("    %s %s attempts=%s %s: %s" % (r[0], r[1], r[2], r[3], (r[4] or "")[:200]))
    peaks = sorted(r[5] for r in rows if r[5])
    if peaks:
        print("  child peak RSS (jobs table): min %.0f, median %.0f, max %.0f MiB over %d jobs"
              % (peaks[0] / 2**20, med(peaks) / 2**20, peaks[-1] / 2**20, len(peaks)))
    d = [epoch(r[7]) - epoch(r[6]) for r in ok if r[6] and r[7]]
    if d:
        print("  job started->completed: median %.2f s, max %.2f s" % (med(d), max(d)))


SHORT = {1: "PatC", 2: "FemC", 3: "MTibC", 4: "LTibC", 5: "MMen", 6: "LMen", 7: "Femur", 8: "Tibia", 9: "Patella"}
STAGES = ("loading", "segmentation", "post-processing", "writing label files")


def kneenode_stages(stderr: str) -> tuple[dict[str, float], str]:
    """Stage seconds from `kneenode run`'s stderr: `[n/N] stage (t s)` as each stage begins and
    `done in T s` after the last. When inference.sh stamped each line with the time it arrived
    (`EPOCH LINE`), a stage lasts from its stamp to the next; otherwise from the printed times
    (t since the run started, to 0.1 s; the last stage lasts T − its start). Also says which."""
    import re

    stage = re.compile(r"^\[(\d+)/(\d+)\] (.+) \(([0-9.]+) s\)$")
    done = re.compile(r"^done in ([0-9.]+) s")
    starts, total, end, stamped = [], None, None, True
    for raw in stderr.splitlines():
        head, _, rest = raw.partition(" ")
        try:
            at = float(head)
            line = rest.strip()
        except ValueError:
            at, line, stamped = None, raw.strip(), False
        if m := stage.match(line):
            starts.append((m.group(3), float(m.group(4)), at))
        elif m := done.match(line):
            total, end = float(m.group(1)), at
    if not starts or total is None:
        raise SystemExit("latency_ref.py inference: no stage lines or no 'done in' in kneenode's stderr")
    out = {}
    if stamped and end is not None and all(s[2] is not None for s in starts):
        for (name, _, t), nxt in zip(starts, [s[2] for s in starts[1:]] + [end]):
            out[name] = nxt - t
        return out, "stamped as printed"
    for (name, t, _), nxt in zip(starts, [s[1] for s in starts[1:]] + [total + starts[0][1]]):
        out[name] = max(0.0, nxt - t)
    return out, "printed, 0.1 s resolution"


def time_file(path: str) -> dict[str, float]:
    """`wall_s=… maxrss_kb=…` as /usr/bin/time -f writes it (other lines ignored)."""
    out = {}
    for line in open(path).read().split():
        if "=" in line:
            k, v = line.split("=", 1)
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def report_inference(argv: list[str]) -> None:
    """benches/inference.sh's table: WORK/meta.json and WORK/run-N/{kn.err,kn.time,py.json,
    py.time,dice.json,run.json}."""
    work = Path(argv[0])
    meta = json.loads((work / "meta.json").read_text())
    runs = []
    for d in sorted(work.glob("run-*"), key=lambda p: int(p.name.split("-")[1])):
        kn, kn_how = kneenode_stages((d / "kn.err").read_text())
        py = json.loads((d / "py.json").read_text())
        pyt = dict(py["timings_s"])
        detail = dict(py.get("detail_s", []))
        # Same stage boundaries as kneenode, which loads the model inside `segmentation`.
        moved = detail.get("load model", 0.0)
        pyt["loading"] -= moved
        pyt["segmentation"] += moved
        runs.append(dict(n=int(d.name.split("-")[1]), kn=kn, kn_how=kn_how, py=pyt, detail=detail,
                         py_json=py, kn_time=time_file(str(d / "kn.time")), py_time=time_file(str(d / "py.time")),
                         dice=json.loads((d / "dice.json").read_text()) if (d / "dice.json").exists() else None,
                         **json.loads((d / "run.json").read_text())))
    if not runs:
        raise SystemExit("latency_ref.py inference: no runs in %s" % work)
    py0 = runs[-1]["py_json"]
    fmt = lambda xs: "x".join("%g" % x for x in xs)  # noqa: E731
    print()
    print("Inference benchmark (issue 4): model %s, CPU, %s intra-op threads on each side, median of %d run(s)"
          % (meta["model"], meta["threads"], len(runs)))
    print("  image: phantom seed %s, %s voxels of %s mm (%s)" % (meta["seed"], fmt(py0["grid"]), fmt(py0["spacing"]), meta["image"]))
    print("  model grid %s voxels of %s mm, patch %s, step 0.5, sigma = patch/8, batch 2, no TTA"
          % (fmt(py0["model_grid"]), fmt(py0["model_spacing"]), fmt(py0["patch"])))
    print("  kneenode: `kneenode run IMAGE --segment-only --device cpu` (stages from its stderr lines, %s)"
          % runs[-1]["kn_how"])
    print("  python:   benches/latency_ref.py ref --resample %s --postprocess %s (torch %s, %s threads)"
          % (py0["resample"], py0["postprocess"], py0["torch"], py0["threads"]))
    print("  machine: %s" % meta["machine"])
    print("  load average (1/5/15 min) at start %s, at end %s" % (meta["load_start"], runs[-1]["load_end"]))
    print()
    head = "  %-40s %12s %12s %10s" % ("stage", "kneenode s", "python s", "kn/py")
    print(head)
    print("  " + "-" * (len(head) - 2))

    def row(name, k, p, unit="%12.3f"):
        kk = unit % k if k is not None else "%12s" % "—"
        pp = unit % p if p is not None else "%12s" % "—"
        ratio = "%10.2f" % (k / p) if k is not None and p else "%10s" % ""
        print("  %-40s %s %s %s" % (name, kk, pp, ratio))

    for stage in STAGES:
        row(stage, med([r["kn"].get(stage, 0.0) for r in runs]), med([r["py"].get(stage, 0.0) for r in runs]))
        if stage == "segmentation":
            for step in ("load model", "reorient, resample to the model grid", "z-score", "sliding window",
                         "back to the source grid, argmax"):
                if step in runs[-1]["detail"]:
                    row("  " + step, None, med([r["detail"].get(step, 0.0) for r in runs]))
    kt = med([sum(r["kn"].get(s, 0.0) for s in STAGES) for r in runs])
    pt = med([sum(r["py"].get(s, 0.0) for s in STAGES) for r in runs])
    print("  " + "-" * (len(head) - 2))
    row("total of the stages", kt, pt)
    row("process wall clock (start to exit)", med([r["kn_time"].get("wall_s") for r in runs]),
        med([r["py_time"].get("wall_s") for r in runs]))
    kr = med([r["kn_time"].get("maxrss_kb", 0) / 1024 for r in runs])
    pr = med([r["py_time"].get("maxrss_kb", 0) / 1024 for r in runs])
    row("peak RSS, MiB (/usr/bin/time)", kr, pr, unit="%12.0f")
    print()
    verdict = "meets" if kt / pt <= 1.0 else "misses"
    print("  total ratio kneenode / python: %.2f (target <= 1.0: %s); segmentation stage alone %.2f"
          % (kt / pt, verdict, med([r["kn"]["segmentation"] for r in runs]) / med([r["py"]["segmentation"] for r in runs])))
    for r in runs:
        k = sum(r["kn"].get(s, 0.0) for s in STAGES)
        p = sum(r["py"].get(s, 0.0) for s in STAGES)
        print("  run %d (%s; load %s -> %s): stages kneenode %.2f s, python %.2f s, ratio %.2f; wall %.1f / %.1f s;"
              " peak RSS %.0f / %.0f MiB" % (r["n"], r["order"], r["load_start"], r["load_end"], k, p, k / p,
                                            r["kn_time"].get("wall_s", float("nan")), r["py_time"].get("wall_s", float("nan")),
                                            r["kn_time"].get("maxrss_kb", 0) / 1024, r["py_time"].get("maxrss_kb", 0) / 1024))
    with_dice = [r for r in runs if r["dice"]]
    if not with_dice:
        return
    print()
    print("  Dice per label (lowest over the runs)    kneenode vs python   kneenode vs truth   python vs truth")
    low = []
    for lab in range(1, 10):
        def worst(key):
            xs = [r["dice"][key][str(lab)] for r in with_dice if key in r["dice"] and r["dice"][key][str(lab)] is not None]
            return min(xs) if xs else None
        d, ka, pb = worst("dice"), worst("truth_a"), worst("truth_b")
        cell = lambda v: "%20s" % ("%.4f" % v if v is not None else "—")  # noqa: E731
        print("  %-40s%s%s%s" % ("%d %s" % (lab, SHORT[lab]), cell(d), cell(ka), cell(pb)))
        if d is not None and d < 0.99:
            low.append("%d %s (%.4f)" % (lab, SHORT[lab], d))
    eq = min(r["dice"]["equal"] for r in with_dice)
    print("  equal labels: %.4f %% of voxels (lowest over the runs)" % (100 * eq))
    if low:
        print("  below 0.99 between the two: " + ", ".join(low))
    else:
        print("  every label agrees >= 0.99 between the two")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "ref":
        reference(rest)
    elif mode == "dice":
        dice_main(rest)
    elif mode == "inference":
        report_inference(rest)
    elif mode == "run":
        report_run(*rest)
    elif mode == "summary":
        report_summary(*rest)
    elif mode == "jobs":
        report_jobs(*rest)
    elif mode == "ids":
        print("\n".join(r[0] for r in db(rest[0]).execute("select id from jobs")))
    elif mode == "partb":
        report_partb(*rest)
    else:
        sys.exit("latency_ref.py: unknown mode %r (ref, dice, run, summary, jobs, ids, partb, inference)" % mode)


if __name__ == "__main__":
    main()
