#!/usr/bin/env bash
# NSM fit benchmark (issue 5): kneenode's latent fit against the same loop in PyTorch, on the same
# decoder, the same points and the same number of steps, as a ratio (target: kneenode's time /
# PyTorch's <= 1.0).
#
#   benches/nsm.sh [--manifest M] [--steps N] [--runs R] [--threads T] [--device D] [--build]
#
#   --manifest M  the NSM decoder's manifest (default models/demo/nsm/manifest.toml, else the
#                 analytic test decoder tests/data/models/nsm-analytic/manifest.toml)
#   --steps N     timed Adam steps per run (default 200; patience off), after 5 untimed warm-up
#                 steps on each side
#   --runs R      runs of each side (default 3), alternating which goes first; the table shows
#                 every run, the medians and the ratio of the medians
#   --threads T   libtorch intra-op threads on both sides (exported as OMP_NUM_THREADS; default:
#                 libtorch's default, one per core). On a busy machine 1 gives steadier figures:
#                 OpenMP's spinning threads suffer most from other load
#   --device D    cpu (default), cuda, cuda:N
#   --build       run `cargo build --release --bin kneenode` first (also done when it is missing)
#
# The case: `kneenode bench nsm` decodes the surfaces at a known latent (BScore 1.5 along the
# bone-and-cartilage vector), marching cubes at 128^3, and draws 10 000 vertices per surface
# (20 000 points per step, as the contract's fit takes), plus the initial latent drawn from
# N(0, 0.01^2); it writes them to a JSON case file in the cache folder that benches/nsm_ref.py
# reads, so both sides fit exactly the same points from exactly the same start. Both run with
# libtorch's default intra-op threads (printed). Timed: the steps only (forward, gather, clamped
# L1, backward to the latent, Adam with the contract's schedule, the loss read back each step);
# not the model load or the warm-up. As a check, the two final losses and latents are compared
# (they differ only by float rounding: torch's Adam orders its arithmetic slightly differently).
#
# Python: $KNEENODE_TORCH_PY (default ~/.cache/kneenode/torch-2.11.0/bin/python, made by
# scripts/setup-libtorch.sh): the same PyTorch 2.11 whose libtorch kneenode links.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MANIFEST=""; STEPS=200; RUNS=3; DEVICE=cpu; BUILD=0; THREADS=""

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --manifest) MANIFEST=$2; shift 2 ;;  --manifest=*) MANIFEST=${1#*=}; shift ;;
        --steps) STEPS=$2; shift 2 ;;  --steps=*) STEPS=${1#*=}; shift ;;
        --runs) RUNS=$2; shift 2 ;;  --runs=*) RUNS=${1#*=}; shift ;;
        --device) DEVICE=$2; shift 2 ;;  --device=*) DEVICE=${1#*=}; shift ;;
        --threads) THREADS=$2; shift 2 ;;  --threads=*) THREADS=${1#*=}; shift ;;
        --build) BUILD=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "nsm.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || { echo "nsm.sh: --steps needs a positive integer" >&2; exit 2; }
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "nsm.sh: --runs needs a positive integer" >&2; exit 2; }
if [ -n "$THREADS" ]; then
    [[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "nsm.sh: --threads needs a positive integer" >&2; exit 2; }
    export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
fi
if [ -z "$MANIFEST" ]; then
    MANIFEST="$REPO/models/demo/nsm/manifest.toml"
    [ -f "$MANIFEST" ] && [ -f "$REPO/models/demo/nsm/nsm.pt" ] \
        || MANIFEST="$REPO/tests/data/models/nsm-analytic/manifest.toml"
fi
[ -f "$MANIFEST" ] || { echo "nsm.sh: no manifest at $MANIFEST" >&2; exit 1; }
MANIFEST=$(cd "$(dirname "$MANIFEST")" && pwd)/$(basename "$MANIFEST")

log() { printf '[nsm] %s\n' "$*" >&2; }
BIN="${KNEENODE_BIN:-$REPO/target/release/kneenode}"
if [ "$BUILD" = 1 ] || [ ! -x "$BIN" ]; then
    log "building kneenode (cargo build --release --bin kneenode)"
    (cd "$REPO" && cargo build --release --bin kneenode >&2) || { echo "nsm.sh: cargo build failed" >&2; exit 1; }
fi
"$BIN" bench nsm --help >/dev/null 2>&1 \
    || { echo "nsm.sh: $BIN has no 'bench nsm'; rebuild with --build" >&2; exit 1; }
PY="${KNEENODE_TORCH_PY:-$HOME/.cache/kneenode/torch-2.11.0/bin/python}"
[ -x "$PY" ] || { echo "nsm.sh: no python at $PY (scripts/setup-libtorch.sh makes it)" >&2; exit 1; }

# One case per decoder file (its checksum names it), made by the first kneenode run.
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kneenode/bench-nsm"
mkdir -p "$CACHE"
WEIGHTS="$(dirname "$MANIFEST")/$(sed -n 's/^file *= *"\(.*\)"/\1/p' "$MANIFEST")"
CASE="$CACHE/case-$(sha256sum "$WEIGHTS" | cut -c1-16).json"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT

ours() { "$BIN" bench nsm --manifest "$MANIFEST" --case "$CASE" --steps "$STEPS" --device "$DEVICE"; }
theirs() { "$PY" "$REPO/benches/nsm_ref.py" --manifest "$MANIFEST" --case "$CASE" --steps "$STEPS" --device "$DEVICE"; }

log "decoder $MANIFEST, $STEPS steps, $RUNS run(s) each, device $DEVICE, load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$RUNS"); do
    if [ $((r % 2)) = 1 ]; then
        ours >>"$WORK/ours.jsonl"; theirs >>"$WORK/theirs.jsonl"
    else
        theirs >>"$WORK/theirs.jsonl"; ours >>"$WORK/ours.jsonl"
    fi
    log "run $r/$RUNS done"
done

"$PY" - "$WORK/ours.jsonl" "$WORK/theirs.jsonl" "$MANIFEST" <<'PY'
import json, statistics, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
theirs = [json.loads(l) for l in open(sys.argv[2])]
o, t = ours[0], theirs[0]
print(f"NSM fit: {sys.argv[3]}")
print(f"  {o['points']} points/step, {o['steps']} steps, device {o['device']}, "
      f"threads kneenode {o['threads']} / pytorch {t['threads']}")
print(f"  {'run':>4} {'kneenode s':>11} {'pytorch s':>10} {'ms/step':>16}")
for i, (a, b) in enumerate(zip(ours, theirs), 1):
    print(f"  {i:>4} {a['seconds']:>11.3f} {b['seconds']:>10.3f} {a['ms_per_step']:>7.2f} / {b['ms_per_step']:<7.2f}")
mo = statistics.median(a["seconds"] for a in ours)
mt = statistics.median(b["seconds"] for b in theirs)
print(f"  median: kneenode {mo:.3f} s, pytorch {mt:.3f} s")
print(f"  ratio kneenode / pytorch = {mo / mt:.3f} (target <= 1.0)")
dl = max(abs(x - y) for x, y in zip(o["latent"], t["latent"]))
print(f"  check: final loss {o['final_loss']:.6f} vs {t['final_loss']:.6f}, lowest {o['best_loss']:.6f} vs "
      f"{t['best_loss']:.6f}, max |latent difference| {dl:.2e}")
PY
