#!/usr/bin/env bash
# Shape-analysis benchmark of issue 5 in one command: marching cubes (benches/mesh.sh: kneenode
# vs scikit-image and VTK on the 384x384x160 phantom label volume) and then the NSM latent fit
# (benches/nsm.sh: kneenode vs the same loop in PyTorch, same decoder, points and steps). Each
# prints its own table and ratio; this script prints the two ratio lines again at the end.
#
#   benches/shape.sh [--runs N] [--build]
#
#   --runs N   runs of each implementation in both parts (default 3)
#   --build    run `cargo build --release --bin kneenode` first (also done when it is missing)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RUNS=3; BUILD=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --build) BUILD=(--build); shift ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "shape.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== marching cubes (benches/mesh.sh) =="
"$here/mesh.sh" --runs "$RUNS" "${BUILD[@]}" | tee "$log"
echo
echo "== NSM fit (benches/nsm.sh) =="
"$here/nsm.sh" --runs "$RUNS" | tee -a "$log"
echo
echo "== ratios =="
grep -i -E "ratio|÷|x faster|speed-up" "$log" || echo "(see the tables above)"
