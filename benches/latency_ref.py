#!/usr/bin/env python3
"""Helper of benches/latency.sh, in two halves.

1. The PyTorch-in-Python reference (run with the torch venv's python):

    latency_ref.py ref IMAGE.nii.gz --out DIR [--model-dir models/demo] [--threads N]
                       [--json FILE] [--compare KNEENODE_LABELS.nii.gz]

   The demo model's inference on one image, timed in the stages kneenode's child reports
   (loading, segmentation, post-processing, writing label files). It reuses tools/demo_common.py
   (z-score, Gaussian-weighted sliding window) and tools/eval_demo.py (largest component per
   label + bone hole filling) rather than repeating them. To match kneenode: patch and orientation
   from the manifest, step 0.5, σ = patch / 8, 2 patches per forward pass (kneenode's
   SlidingWindow::new), no TTA, `threads` intra-op threads (libtorch's default in kneenode: one per
   core), labels written as .nii.gz and .nrrd, gzip level 6 (flate2's default). Differences left:
   kneenode's loading stage reads the DICOM series, this one the NIfTI of the same voxels; kneenode
   always resamples (an identity here), this script only when the spacing differs.

2. Bookkeeping for the shell script (any python3, standard library only): `run`, `summary`,
   `jobs`, `ids`, `partb` read the node's SQLite database, results.json files and the reference's
   JSON under the script's work folder, and print the figures.
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


def reference(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="latency_ref.py ref")
    ap.add_argument("image", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, default=REPO / "models" / "demo")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", type=Path, default=None, help="also write the timings here")
    ap.add_argument("--compare", type=Path, default=None, help="kneenode's all-labels.nii.gz of the same image")
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
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings.append((name, now - clock))
        clock = now

    # loading: image and model
    manifest = tomllib.loads((args.model_dir / "manifest.toml").read_text())
    assert manifest["normalization"] == "zscore" and not manifest.get("mirror_axes")
    img = nib.load(str(args.image))
    data = np.asarray(img.dataobj, dtype=np.float32)
    model = torch.jit.load(str(args.model_dir / manifest["file"]), map_location="cpu").eval()
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
    x = resize(torch.from_numpy(np.ascontiguousarray(canon)), target).numpy()
    probs = sliding_window(model, zscore(x), tuple(manifest["patch_size"]), manifest["num_classes"],
                           step=STEP, batch=BATCH)
    seg = resize(probs, canon.shape).argmax(0).to(torch.uint8).numpy()
    seg = nib.orientations.apply_orientation(seg, nib.orientations.ornt_transform(dst, src))
    lap("segmentation")

    seg = postprocess(seg)
    lap("post-processing")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.image.name.removesuffix(".gz").removesuffix(".nii")
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), img.affine), str(args.out / f"{stem}_all-labels.nii.gz"))
    write_nrrd(args.out / f"{stem}_all-labels.nrrd", seg, img.affine)
    lap("writing label files")

    print(f"python reference: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"grid {tuple(data.shape)} -> model grid {target}, patch {tuple(manifest['patch_size'])}, "
          f"step {STEP}, batch {BATCH}, no TTA")
    for name, s in timings:
        print(f"  {name:<22} {s:8.3f} s")
    print(f"  {'total':<22} {sum(s for _, s in timings):8.3f} s")
    agree = None
    if args.compare:
        other = nib.load(str(args.compare))
        if other.shape == seg.shape and np.allclose(other.affine, img.affine, atol=1e-3):
            agree = float((np.asarray(other.dataobj) == seg).mean())
            print(f"  labels equal to kneenode's in {100 * agree:.3f} % of voxels")
        else:
            print(f"  kneenode's labels are on another grid ({other.shape}); not compared")
    if args.json:
        args.json.write_text(json.dumps({"timings_s": timings, "threads": torch.get_num_threads(),
                                         "agreement": agree}))


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


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "ref":
        reference(rest)
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
        sys.exit("latency_ref.py: unknown mode %r (ref, run, summary, jobs, ids, partb)" % mode)


if __name__ == "__main__":
    main()
