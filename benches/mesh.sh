#!/usr/bin/env bash
# Marching-cubes benchmark (issue 5): kneenode's marching cubes against scikit-image's
# `marching_cubes` and VTK's flying edges / marching cubes, on the same 384x384x160 knee label
# volume, as a ratio (target: skimage's time / kneenode's >= 2).
#
#   benches/mesh.sh [--runs N] [--seed S] [--no-vtk] [--build]
#
#   --runs N    timed runs of every implementation on every case (default 3); the table shows the
#               median and the best, and each one's time divided by kneenode's median
#   --seed S    phantom seed (default 1)
#   --no-vtk    skip VTK (it is pip-installed when missing; skipped if that fails)
#   --build     run `cargo build --release --bin kneenode` first (also done when it is missing)
#
# Volume: the labels of phantom S generated directly on a 384x384x160 grid of 0.375 x 0.375 x
# 0.75 mm (the default phantom's 144 x 144 x 120 mm field of view) by
# `kneenode bench mesh --write-phantom`, cached in ${XDG_CACHE_HOME:-~/.cache}/kneenode/bench-mesh/.
# Cases, each meshed over the whole volume at level 0.5 (mask = 1 inside, 0 outside and on the
# one-voxel border, as the pipeline's label_surface does, so the surfaces are closed):
#   femur mask    float32 mask of the femur (label 7)
#   femur smooth  that mask after the pipeline's bone Gaussian (variance 0.5 mm^2), computed once
#                 by scipy and written as float32 NIfTI; both sides read that same file
#   bones mask    femur + tibia + patella (labels 7, 8, 9)
# Timed: only the extraction. kneenode: `marching_cubes` + scaling the vertices to mm, in
# `kneenode bench mesh` (single-threaded); skimage: the `marching_cubes` call (single-threaded
# Cython, which also computes gradient normals); VTK: `Update()` with normals, gradients and
# scalars off and the SMP backend Sequential. Reading, masking and smoothing are not timed. Each
# process does one untimed warm-up; runs alternate kneenode-first / references-first. On run 1
# kneenode also writes its mesh, and every reference's mesh is compared with it vertex by vertex
# and triangle by triangle.
#
# Python: $KNEENODE_TORCH_PY (default ~/.cache/kneenode/torch-2.11.0/bin/python, made by
# scripts/setup-libtorch.sh) or, if that is missing, a venv in the cache folder; scikit-image,
# nibabel and vtk are pip-installed into it when missing.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3; SEED=1; VTK=1; BUILD=0
DIMS=384,384,160

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;  --runs=*) RUNS=${1#*=}; shift ;;
        --seed) SEED=$2; shift 2 ;;  --seed=*) SEED=${1#*=}; shift ;;
        --no-vtk) VTK=0; shift ;;
        --build) BUILD=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "mesh.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "mesh.sh: --runs needs a positive integer" >&2; exit 2; }
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "mesh.sh: --seed needs a whole number" >&2; exit 2; }

log() { printf '[mesh] %s\n' "$*" >&2; }
NCPU=$(nproc)   # before OMP_NUM_THREADS=1 below, which GNU nproc obeys
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kneenode/bench-mesh"
mkdir -p "$CACHE"
# One thread everywhere (skimage and VTK are told so too; these cover numpy/scipy's pools).
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 VTK_SMP_BACKEND_IN_USE=Sequential

# ---------------------------------------------------------------- tools
BIN="${KNEENODE_BIN:-$REPO/target/release/kneenode}"
if [ "$BUILD" = 1 ] || [ ! -x "$BIN" ]; then
    log "building kneenode (cargo build --release --bin kneenode)"
    (cd "$REPO" && cargo build --release --bin kneenode >&2) || { echo "mesh.sh: cargo build failed" >&2; exit 1; }
fi
"$BIN" bench mesh --help >/dev/null 2>&1 \
    || { echo "mesh.sh: $BIN has no 'bench mesh'; rebuild with --build" >&2; exit 1; }

PY="${KNEENODE_TORCH_PY:-$HOME/.cache/kneenode/torch-2.11.0/bin/python}"
if [ ! -x "$PY" ]; then
    PY="$CACHE/venv/bin/python"
    if [ ! -x "$PY" ]; then
        log "creating a Python venv in $CACHE/venv"
        python3 -m venv "$CACHE/venv" >&2 || { echo "mesh.sh: python3 -m venv failed" >&2; exit 1; }
    fi
fi
if ! "$PY" -c 'import skimage, nibabel, scipy' 2>/dev/null; then
    log "pip install scikit-image nibabel (into $("$PY" -c 'import sys; print(sys.prefix)'))"
    "$PY" -m pip install -q scikit-image nibabel >&2 || { echo "mesh.sh: pip install scikit-image nibabel failed" >&2; exit 1; }
fi
NOTES=()
if [ "$VTK" = 1 ] && ! "$PY" -c 'import vtk' 2>/dev/null; then
    log "pip install vtk"
    "$PY" -m pip install -q vtk >&2 || true
    "$PY" -c 'import vtk' 2>/dev/null || { VTK=0; NOTES+=("VTK skipped: pip install vtk failed"); }
fi
VTK_FLAG=(); [ "$VTK" = 1 ] || VTK_FLAG=(--no-vtk)

# ---------------------------------------------------------------- data (once)
DATA="$CACHE/seed$SEED-${DIMS//,/x}"
LABELS="$DATA/labels.nii"
FIELD="$DATA/femur-smooth-var0.5.nii"
mkdir -p "$DATA"
if [ ! -f "$LABELS" ]; then
    log "generating phantom seed $SEED on a ${DIMS//,/x} grid into $LABELS (once)"
    "$BIN" bench mesh --write-phantom "$LABELS.tmp.nii" --seed "$SEED" --dims "$DIMS" >&2
    mv "$LABELS.tmp.nii" "$LABELS"
fi
if [ ! -f "$FIELD" ]; then
    log "smoothing the femur mask (variance 0.5 mm², scipy) into $FIELD (once)"
    "$PY" "$REPO/benches/mesh_ref.py" field "$LABELS" "$FIELD.tmp.nii" --label 7 --variance 0.5
    mv "$FIELD.tmp.nii" "$FIELD"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kneenode-bench-mesh.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

# case NAME -> the arguments both sides take for it
case_args() {
    case "$1" in
        femur-mask) echo "--labels $LABELS --label 7" ;;
        femur-smooth) echo "--field $FIELD" ;;
        bones-mask) echo "--labels $LABELS --label 7,8,9" ;;
    esac
}
ours() {   # ours CASE RUN: one timed run of kneenode, tagged with the case; run 1 keeps the mesh
    local line keep=()
    [ "$2" != 1 ] || keep=(--write-mesh "$WORK/$1.ply")
    # shellcheck disable=SC2046 # the paths come from this script and have no spaces
    line=$("$BIN" bench mesh $(case_args "$1") --runs 1 "${keep[@]}" | tail -n 1)
    [[ "$line" == "{"* ]] || { echo "mesh.sh: kneenode bench mesh printed no JSON" >&2; exit 1; }
    printf '%s\n' "$line" | sed "s/^{/{\"case\":\"$1\",/" >> "$RESULTS"
}
refs() {   # refs CASE RUN: one timed run of every reference; run 1 compares meshes with ours
    local cmp=()
    [ "$2" != 1 ] || cmp=(--compare "$WORK/$1.ply")
    # shellcheck disable=SC2046
    "$PY" "$REPO/benches/mesh_ref.py" time $(case_args "$1") --case "$1" --runs 1 \
        "${VTK_FLAG[@]}" "${cmp[@]}" >> "$RESULTS"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
for run in $(seq 1 "$RUNS"); do
    for c in femur-mask femur-smooth bones-mask; do
        log "run $run/$RUNS: $c"
        if [ $((run % 2)) = 1 ]; then ours "$c" "$run"; refs "$c" "$run"; else refs "$c" "$run"; ours "$c" "$run"; fi
    done
done

MACHINE="$NCPU CPUs ($(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || echo '?')); load average $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?') at end"
"$PY" "$REPO/benches/mesh_ref.py" table "$RESULTS" --runs "$RUNS" --machine "$MACHINE" \
    --volume "phantom seed $SEED labels, ${DIMS//,/×} voxels of 0.375×0.375×0.75 mm" \
    "${NOTES[@]/#/--note=}"
