#!/usr/bin/env bash
# Inference benchmark (issue 4): `kneenode run --segment-only` against the same segmentation in
# PyTorch-in-Python (benches/latency_ref.py ref) on one phantom, stage by stage, as a ratio
# (target: kneenode's total / python's <= 1.0), with each process's peak RSS and the Dice
# agreement of the two label volumes.
#
#   benches/inference.sh [--runs N] [--matrix IxJxK] [--threads N] [--seed S] [--keep] [--no-build]
#
#   --runs N        runs of each side (default 3); odd runs time kneenode first, even runs python
#                   first; the table shows the medians, then every run
#   --matrix IxJxK  the phantom's grid over the default phantom's 144 x 144 x 120 mm (default
#                   384x384x160: 0.375 x 0.375 x 0.75 mm, twice the demo model's grid along every
#                   axis; 192x192x80 is the model's own grid, no resampling)
#   --threads N     libtorch intra-op threads on both sides (default: nproc): OMP_NUM_THREADS and
#                   MKL_NUM_THREADS for both processes, torch.set_num_threads(N) in python
#   --seed S        phantom seed (default 1001, a held-out phantom of the demo model)
#   --keep          keep the work folder (both sides' labels and logs) and print where it is
#   --no-build      skip `cargo build --release --bin kneenode`
#
# The image: `kneenode phantom --matrix IxJxK --seed S` written once to
# ${XDG_CACHE_HOME:-~/.cache}/kneenode/bench-inference/seedS-IxJxK/ (image.nii.gz, labels.nii.gz;
# the DICOM copy is deleted). Both sides read that image.nii.gz (read once beforehand, so both
# find it in the page cache) and the same TorchScript file (models/demo/seg.pt via
# dicom_config/models.toml), on the CPU.
#
# Both sides do the same work: reorient to the model's orientation (an identity: the phantom is
# PIR like the model); trilinear resampling to the model's spacing, by kneenode's rule (ITK's
# conventions: the grids share their origin, edge neighbours clamped, 0 beyond half a voxel);
# z-score; the Gaussian-weighted sliding window (patch from the manifest, step 0.5, sigma =
# patch / 8, 2 patches per forward pass, no TTA, softmax summed in one buffer); the class
# probabilities resampled back to the image's grid one class at a time with a running argmax
# (skipped when the grids are the same); the largest 6-connected component per label and bone
# hole filling; the labels written as .nii.gz and .nrrd (gzip level 6).
#
# What differs:
#   - the implementations: kneenode resamples per voxel in float64 on one thread
#     (volume::resample_linear); python one axis at a time, as float32 matrix products in torch
#     on N threads (the same weights; the labels came out identical in the runs so far).
#     kneenode's post-processing is its own breadth-first labelling on one thread; python's is
#     scipy.ndimage.label (one thread; tools/eval_demo.py's numpy union-find if scipy cannot be
#     installed, which the table says). The z-score: libtorch float32 vs numpy float64.
#   - stage boundaries: kneenode loads the TorchScript file inside its `segmentation` stage; the
#     reference loads it in `loading`, and the table moves that time into `segmentation`.
#   - timing: kneenode's stages come from `kneenode run`'s stderr: it prints `[n/N] stage` as
#     each stage begins and `done in T s` after the last, unbuffered; the script stamps each line
#     as it arrives (bash's EPOCHREALTIME), and a stage lasts from its line to the next. (The
#     times printed in those lines, to 0.1 s, are the fallback.) Python's come from
#     perf_counter, and its steps inside `segmentation` are listed too (kneenode reports none).
#     The process wall clock (/usr/bin/time) adds each side's start-up (loading libtorch;
#     starting python and importing torch, nibabel, scipy).
#   - peak RSS is /usr/bin/time's "Maximum resident set size" of each whole process (python's
#     includes the interpreter and its libraries).
# The labels are compared afterwards, untimed: Dice per label between the two (expected >= 0.99:
# float rounding in the resampling and the sums moves a few voxels at label edges) and of each
# against the phantom's truth.
#
# Python: $KNEENODE_TORCH_PY (default ~/.cache/kneenode/torch-2.11.0/bin/python, made by
# scripts/setup-libtorch.sh), the PyTorch whose libtorch kneenode links; nibabel and scipy are
# pip-installed into it when missing. /usr/bin/time is apt-installed (package `time`) when
# missing. The load average is printed with the figures.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3; MATRIX=384x384x160; THREADS=""; SEED=1001; KEEP=0; BUILD=1
TORCH_PY="${KNEENODE_TORCH_PY:-$HOME/.cache/kneenode/torch-2.11.0/bin/python}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;  --runs=*) RUNS=${1#*=}; shift ;;
        --matrix) MATRIX=$2; shift 2 ;;  --matrix=*) MATRIX=${1#*=}; shift ;;
        --threads) THREADS=$2; shift 2 ;;  --threads=*) THREADS=${1#*=}; shift ;;
        --seed) SEED=$2; shift 2 ;;  --seed=*) SEED=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "inference.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
NCPU=$(nproc)   # before OMP_NUM_THREADS is set below, which GNU nproc obeys
THREADS=${THREADS:-$NCPU}
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "inference.sh: --runs needs a positive integer" >&2; exit 2; }
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "inference.sh: --threads needs a positive integer" >&2; exit 2; }
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "inference.sh: --seed needs a whole number" >&2; exit 2; }
[[ "$MATRIX" =~ ^[1-9][0-9]*x[1-9][0-9]*x[1-9][0-9]*$ ]] \
    || { echo "inference.sh: --matrix needs IxJxK, e.g. 384x384x160" >&2; exit 2; }

log() { printf '[inference %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# ---------------------------------------------------------------- tools
TIME=/usr/bin/time
if [ ! -x "$TIME" ]; then
    log "apt-get install time (for /usr/bin/time)"
    sudo_ apt-get update -qq && sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null \
        || { echo "inference.sh: could not install GNU time" >&2; exit 1; }
fi
BIN="${KNEENODE_BIN:-$REPO/target/release/kneenode}"
if [ "$BUILD" = 1 ]; then
    log "cargo build --release --bin kneenode (may wait for the shared target dir's lock)"
    (cd "$REPO" && cargo build --release --bin kneenode >&2) || { echo "inference.sh: cargo build failed" >&2; exit 1; }
fi
[ -x "$BIN" ] || { echo "inference.sh: $BIN is missing (drop --no-build)" >&2; exit 1; }
"$BIN" phantom --help 2>/dev/null | grep -q -- '--matrix' \
    || { echo "inference.sh: $BIN has no 'phantom --matrix'; rebuild (drop --no-build)" >&2; exit 1; }
REGISTRY="$REPO/dicom_config/models.toml"
MODEL_DIR="$REPO/models/demo"
[ -f "$MODEL_DIR/manifest.toml" ] && [ -f "$MODEL_DIR/seg.pt" ] \
    || { echo "inference.sh: no demo model in $MODEL_DIR (tools/train_demo.py makes it)" >&2; exit 1; }
[ -x "$TORCH_PY" ] || { echo "inference.sh: no python at $TORCH_PY (scripts/setup-libtorch.sh makes it)" >&2; exit 1; }
"$TORCH_PY" -c 'import nibabel' 2>/dev/null || { log "pip install nibabel (into the torch venv)"
    "$TORCH_PY" -m pip install -q nibabel >&2 || { echo "inference.sh: pip install nibabel failed" >&2; exit 1; }; }
POST=scipy
if ! "$TORCH_PY" -c 'import scipy.ndimage' 2>/dev/null; then
    log "pip install scipy (into the torch venv)"
    "$TORCH_PY" -m pip install -q scipy >&2 || true
    "$TORCH_PY" -c 'import scipy.ndimage' 2>/dev/null \
        || { POST=numpy; log "scipy unavailable: python post-processes with tools/eval_demo.py's numpy union-find"; }
fi

# ---------------------------------------------------------------- the phantom (once)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kneenode/bench-inference"
PH="$CACHE/seed$SEED-$MATRIX"
if [ ! -f "$PH/image.nii.gz" ] || [ ! -f "$PH/labels.nii.gz" ]; then
    log "writing phantom seed $SEED on a $MATRIX grid into $PH (once)"
    mkdir -p "$CACHE"
    rm -rf "$PH.tmp.$$"
    "$BIN" phantom --out "$PH.tmp.$$" --seed "$SEED" --matrix "$MATRIX" >&2
    rm -rf "$PH.tmp.$$/dicom" "$PH"
    mv "$PH.tmp.$$" "$PH"
fi
IMAGE="$PH/image.nii.gz"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kneenode-bench-inference.XXXXXX")
cleanup() { if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
export KNEENODE__MODELS__REGISTRY="$REGISTRY"
LOAD_START=$(loadavg)
MODEL_NAME="demo v$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$MODEL_DIR/manifest.toml")"
MACHINE="$NCPU CPUs ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || echo '?'))"
python3 -c 'import json, sys; print(json.dumps(dict(zip(("seed", "threads", "image", "model", "machine", "load_start"), sys.argv[1:]))))' \
    "$SEED" "$THREADS" "$IMAGE" "$MODEL_NAME" "$MACHINE" "$LOAD_START" > "$WORK/meta.json"
log "$MATRIX phantom seed $SEED, $THREADS threads, $RUNS run(s); $NCPU CPUs, load $LOAD_START; work in $WORK"

# ---------------------------------------------------------------- runs
stamp() { while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }
ours() {   # ours DIR: kneenode, timed; its stderr, each line stamped on arrival, has the stages
    "$TIME" -o "$1/kn.time" -f 'wall_s=%e maxrss_kb=%M' \
        env -C "$REPO" "$BIN" run "$IMAGE" --out "$1/kn" --segment-only --device cpu --model demo \
        2>&1 > "$1/kn.out" | stamp > "$1/kn.err" \
        || { log "kneenode run failed:"; tail -n 20 "$1/kn.err" >&2; exit 1; }
}
theirs() {   # theirs DIR: the python reference, timed
    "$TIME" -o "$1/py.time" -f 'wall_s=%e maxrss_kb=%M' \
        "$TORCH_PY" "$REPO/benches/latency_ref.py" ref "$IMAGE" --out "$1/py" --model-dir "$MODEL_DIR" \
        --threads "$THREADS" --json "$1/py.json" --resample itk --postprocess "$POST" \
        > "$1/py.out" 2> "$1/py.err" \
        || { log "the python reference failed:"; tail -n 20 "$1/py.err" >&2; exit 1; }
}
for run in $(seq 1 "$RUNS"); do
    d="$WORK/run-$run"; mkdir -p "$d"
    cat "$IMAGE" > /dev/null
    load0=$(loadavg)
    if [ $((run % 2)) = 1 ]; then
        order="kneenode first"
        log "run $run/$RUNS: kneenode"; ours "$d"; log "run $run/$RUNS: python"; theirs "$d"
    else
        order="python first"
        log "run $run/$RUNS: python"; theirs "$d"; log "run $run/$RUNS: kneenode"; ours "$d"
    fi
    load1=$(loadavg)
    log "run $run/$RUNS: comparing the labels (untimed)"
    "$TORCH_PY" "$REPO/benches/latency_ref.py" dice "$d/kn/image_all-labels.nii.gz" "$d/py/image_all-labels.nii.gz" \
        --truth "$PH/labels.nii.gz" --json "$d/dice.json" > /dev/null
    python3 -c 'import json, sys; print(json.dumps(dict(zip(("order", "load_start", "load_end"), sys.argv[1:]))))' \
        "$order" "$load0" "$load1" > "$d/run.json"
done

python3 "$REPO/benches/latency_ref.py" inference "$WORK"
