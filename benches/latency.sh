#!/usr/bin/env bash
# Worker-chain benchmark: how long from a pushed knee series to the DICOM SEG at the PACS, and what
# the supervisor's memory does over many jobs.
#
#   benches/latency.sh [--runs N] [--jobs N] [--seed S] [--keep] [--no-build]
#
#   --runs N     Part A runs (default 3; 0 = skip): each pushes a new full-size phantom
#                (192x192x80, seed S, S+1, ...) and times last C-STORE ack -> SEG (and SR) at the
#                PACS, prints kneenode's stages from results.json and, side by side, the same demo
#                model in PyTorch-in-Python (benches/latency_ref.py) on the phantom's image.nii.gz;
#                then the medians
#   --jobs N     Part B (default 0 = skip): N small phantoms pushed into the same node; the serve
#                process's VmRSS before, every ~10 jobs, after; completed/failed; the jobs' child
#                peak RSS (min/median/max) from the jobs table
#   --seed S     first Part A seed (default 1001: held-out phantoms); Part B uses 20001...
#   --keep       keep the work folder (logs, storage, PACS folder) and print where it is
#   --no-build   skip `cargo build --release` (which is otherwise run first)
#
# Set-up: dcmtk storescp (TCP_NODELAY=1, AE PACS) as the PACS; `kneenode serve` on 127.0.0.1 with
# a config written here: SQLite in a temp storage folder, quiet_seconds 2, one CPU worker, the
# portal on a free port, the repository's model registry, one routing rule (MR -> demo, no NSM ->
# pacs). storescu (AE MODALITY, TCP_NODELAY=1) pushes each series. The reference runs with
# torch.set_num_threads(nproc), the libtorch default kneenode's child uses; same patch, step 0.5,
# 2 patches per pass, no TTA; odd runs time kneenode first, even runs the reference first.
# Every process the script starts is stopped on exit. The load average is printed with the figures.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3; JOBS=0; SEED=1001; KEEP=0; BUILD=1
TORCH_PY="${KNEENODE_TORCH_PY:-$HOME/.cache/kneenode/torch-2.11.0/bin/python}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;  --runs=*) RUNS=${1#*=}; shift ;;
        --jobs) JOBS=$2; shift 2 ;;  --jobs=*) JOBS=${1#*=}; shift ;;
        --seed) SEED=$2; shift 2 ;;  --seed=*) SEED=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "latency.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in RUNS JOBS SEED; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "latency.sh: --${v,,} needs a non-negative integer" >&2; exit 2; }
done
[ "$RUNS" -gt 0 ] || [ "$JOBS" -gt 0 ] || { echo "latency.sh: nothing to do (--runs 0 --jobs 0)" >&2; exit 2; }

log() { printf '[latency %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
for t in storescu storescp python3 setsid; do
    command -v "$t" >/dev/null || { echo "latency.sh: $t is needed (dcmtk, python3, util-linux)" >&2; exit 1; }
done

# ---------------------------------------------------------------- processes and clean-up
WORK=""; PGIDS=()
cleanup() {
    local pg
    for pg in "${PGIDS[@]+"${PGIDS[@]}"}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
    sleep 0.5
    for pg in "${PGIDS[@]+"${PGIDS[@]}"}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_bg() {  # start_bg LOG CMD...: own session, so the whole group can be stopped; sets BG_PID
    local logf=$1; shift
    setsid "$@" >"$logf" 2>&1 </dev/null &
    BG_PID=$!; PGIDS+=("$BG_PID")
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- build and tools
if [ "$BUILD" = 1 ]; then
    log "cargo build --release (may wait for the shared target dir's lock)"
    (cd "$REPO" && cargo build --release >&2) || { echo "latency.sh: cargo build --release failed" >&2; exit 1; }
fi
BIN="$REPO/target/release/kneenode"
[ -x "$BIN" ] || { echo "latency.sh: $BIN is missing (drop --no-build)" >&2; exit 1; }
if [ "$RUNS" -gt 0 ]; then
    [ -x "$TORCH_PY" ] || { echo "latency.sh: $TORCH_PY missing (run scripts/setup-libtorch.sh)" >&2; exit 1; }
    "$TORCH_PY" -c 'import nibabel' 2>/dev/null || { log "pip install nibabel (into the torch venv)"
        "$TORCH_PY" -m pip install -q nibabel >&2; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kneenode-bench-latency.XXXXXX")
STORAGE="$WORK/storage"; PACSDIR="$WORK/pacs"; DB="$STORAGE/kneenode.sqlite"
mkdir -p "$STORAGE" "$PACSDIR"
export TCP_NODELAY=1   # Debian's dcmtk leaves Nagle on without it

# ---------------------------------------------------------------- PACS and node
PACS_PORT=$(free_port)
start_bg "$WORK/storescp.log" storescp -aet PACS -od "$PACSDIR" "$PACS_PORT"
NODE_PORT=$(free_port)
cat > "$WORK/kneenode.toml" <<EOF
[node]
bind = "127.0.0.1"
port = $NODE_PORT
[series]
quiet_seconds = 2
[storage]
dir = "$STORAGE"
[worker]
devices = ["cpu"]
[portal]
port = 0
[models]
registry = "$REPO/dicom_config/models.toml"
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = $PACS_PORT
[[routing]]
name = "bench"
match = { modality = "MR" }
options = { segmentation_model = "demo", perform_nsm = false }
destinations = ["pacs"]
EOF
SERVE_LOG="$WORK/serve.log"
start_bg "$SERVE_LOG" env -C "$REPO" KNEENODE_LOG=info "$BIN" --config "$WORK/kneenode.toml" serve
SERVE_PID=$BG_PID
ADDR=""
for _ in $(seq 1 600); do
    kill -0 "$SERVE_PID" 2>/dev/null || { log "kneenode serve exited; its log:"; tail -n 30 "$SERVE_LOG" >&2; exit 1; }
    ADDR=$(sed -n 's/\x1b\[[0-9;]*m//g; /DICOM SCP listening/ s/.*addr=\([^ ]*\).*/\1/p' "$SERVE_LOG" | head -n 1)
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || { log "no 'DICOM SCP listening' within 60 s; log:"; tail -n 30 "$SERVE_LOG" >&2; exit 1; }
NODE_PORT=${ADDR##*:}
[ "$(cat "/proc/$SERVE_PID/comm")" = kneenode ] || { echo "latency.sh: pid $SERVE_PID is not kneenode" >&2; exit 1; }
log "kneenode serve (pid $SERVE_PID) on $ADDR, PACS on $PACS_PORT, work in $WORK; $(nproc) CPUs, load $(loadavg)"

shopt -s nullglob
count() { local f=("$PACSDIR"/$1*); echo ${#f[@]}; }
push() { storescu -aet MODALITY -aec KNEENODE -to 60 +sd 127.0.0.1 "$NODE_PORT" "$1" >>"$WORK/storescu.log" 2>&1; }
report() { python3 "$REPO/benches/latency_ref.py" "$@"; }   # the bookkeeping half of latency_ref.py

# ---------------------------------------------------------------- Part A
# reference RUN PHANTOM [KNEENODE_LABELS]: the Python reference on the phantom's image.nii.gz.
reference() {
    "$TORCH_PY" "$REPO/benches/latency_ref.py" ref "$2/image.nii.gz" --out "$WORK/ref-$1" \
        --threads "$(nproc)" --json "$WORK/ref-$1.json" ${3:+--compare "$3"} >&2
}
if [ "$RUNS" -gt 0 ]; then
    for run in $(seq 1 "$RUNS"); do
        seed=$((SEED + run - 1)); ph="$WORK/phantom-$seed"
        "$BIN" phantom --out "$ph" --seed "$seed" >/dev/null
        cat "$ph"/dicom/* "$ph/image.nii.gz" > /dev/null
        # The machine's load drifts: odd runs time kneenode first, even runs the reference first.
        order="kneenode, then python"
        if [ $((run % 2)) = 0 ]; then order="python, then kneenode"; log "run $run: python reference"; reference "$run" "$ph"; fi
        report ids "$WORK" > "$WORK/ids-before"
        seg0=$(count SG); sr0=$(count SR)
        t_send=$(now)
        push "$ph/dicom" || { log "storescu failed; see $WORK/storescu.log"; tail -n 5 "$WORK/storescu.log" >&2; exit 1; }
        t_ack=$(now); t_seg=""; t_sr=""; deadline=$(( $(date +%s) + 1200 )); n=0
        while [ -z "$t_seg" ] || [ -z "$t_sr" ]; do
            n=$((n + 1))
            if [ $((n % 40)) = 0 ] && [ -z "$t_seg" ]; then   # every ~2 s: did the job fail?
                read -r _ err _ _ _ < <(report jobs "$WORK" "$WORK/ids-before")
                [ "$err" = 0 ] || { log "run $run: the job failed:"; report partb "$WORK" "$WORK/ids-before"; exit 1; }
            fi
            [ -n "$t_seg" ] || [ "$(count SG)" -le "$seg0" ] || t_seg=$(now)
            [ -n "$t_sr" ] || [ "$(count SR)" -le "$sr0" ] || t_sr=$(now)
            if [ "$(date +%s)" -gt "$deadline" ]; then
                log "run $run: no SEG/SR at the PACS 1200 s after the last ack; node log tail:"; tail -n 20 "$SERVE_LOG" >&2; exit 1
            fi
            sleep 0.05
        done
        job=$(report ids "$WORK" | grep -vxF -f "$WORK/ids-before" | head -n 1)
        load=$(loadavg | tr ' ' '/')
        log "run $run: SEG $(python3 -c "print('%.2f' % ($t_seg - $t_ack))") s after the last ack"
        if [ $((run % 2)) = 1 ]; then
            log "run $run: python reference"
            reference "$run" "$ph" "$(echo "$STORAGE/jobs/$job/results/"*_all-labels.nii.gz)"
        fi
        report run "$WORK" "$run" "$seed" "$job" "$t_send" "$t_ack" "$t_seg" "$t_sr" "$WORK/ref-$run.json" "$load" "$order"
    done
    report summary "$WORK"
fi

# ---------------------------------------------------------------- Part B
if [ "$JOBS" -gt 0 ]; then
    log "Part B: generating $JOBS small phantoms"
    for i in $(seq 1 "$JOBS"); do "$BIN" phantom --small --seed $((20000 + i)) --out "$WORK/small/$i" >/dev/null; done
    rss() { awk '/^VmRSS/ {print $2}' "/proc/$SERVE_PID/status"; }
    report ids "$WORK" > "$WORK/ids-b"
    seg0=$(count SG); load0=$(loadavg); t0=$(now); deadline=$(( $(date +%s) + 120 + 60 * JOBS ))
    anon0=$(awk '/^RssAnon|^RssFile/ {printf "%s %d MiB ", $1, $2 / 1024}' "/proc/$SERVE_PID/status")
    rss0=$(rss); rssmax=$rss0; samples="0:$((rss0 / 1024))"; next=10
    log "Part B: serve VmRSS $((rss0 / 1024)) MiB before; pushing $JOBS series"
    for i in $(seq 1 "$JOBS"); do push "$WORK/small/$i/dicom" || log "storescu of phantom $i failed"; done
    while :; do
        read -r ok err canc other total < <(report jobs "$WORK" "$WORK/ids-b")
        r=$(rss); [ "$r" -le "$rssmax" ] || rssmax=$r
        done_n=$((ok + err + canc))
        while [ "$done_n" -ge "$next" ]; do samples+=" $next:$((r / 1024))"; next=$((next + 10)); done
        if [ "$total" -ge "$JOBS" ] && [ "$other" -eq 0 ] && [ $(( $(count SG) - seg0 )) -ge "$ok" ]; then break; fi
        if [ "$(date +%s)" -gt "$deadline" ]; then
            log "Part B: gave up waiting ($done_n of $JOBS jobs finished, $total created)"; break
        fi
        sleep 2
    done
    rss1=$(rss); hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$SERVE_PID/status")
    anon1=$(awk '/^RssAnon|^RssFile/ {printf "%s %d MiB ", $1, $2 / 1024}' "/proc/$SERVE_PID/status")
    echo
    echo "Part B: $JOBS small phantoms (64x64x48) pushed one after another into one kneenode serve, 1 CPU worker"
    echo "  wall time $(python3 -c "print('%.0f' % ($(now) - $t0))") s; load average $load0 at start, $(loadavg) at end; $(nproc) CPUs"
    echo "  serve VmRSS: start $((rss0 / 1024)) MiB, end $((rss1 / 1024)) MiB, max sampled $((rssmax / 1024)) MiB, VmHWM $((hwm / 1024)) MiB"
    echo "  serve at start: ${anon0}; at end: ${anon1}"
    echo "  samples (jobs finished:MiB): $samples"
    echo "  SEG files received by the PACS: $(( $(count SG) - seg0 ))"
    report partb "$WORK" "$WORK/ids-b"
fi

# ---------------------------------------------------------------- node log
echo
echo "kneenode serve log: $(grep -c . "$SERVE_LOG") lines, $(grep -ac 'WARN' "$SERVE_LOG" || true) WARN, $(grep -ac 'ERROR' "$SERVE_LOG" || true) ERROR"
grep -aE 'WARN|ERROR' "$SERVE_LOG" | sed 's/\x1b\[[0-9;]*m//g' | head -n 10 | sed 's/^/  /' || true
JOBLOGS=("$STORAGE"/jobs/*/stderr.log)
if [ ${#JOBLOGS[@]} -gt 0 ]; then
    echo "job stderr.log files: ${#JOBLOGS[@]}, $(cat "${JOBLOGS[@]}" | grep -ac 'WARN' || true) WARN, $(cat "${JOBLOGS[@]}" | grep -ac 'ERROR' || true) ERROR lines"
    cat "${JOBLOGS[@]}" | grep -aE 'WARN|ERROR' | sed 's/\x1b\[[0-9;]*m//g' | head -n 10 | sed 's/^/  /' || true
fi
