#!/usr/bin/env bash
# Ingest benchmark (issue 3): kneenode's SCP against dcmtk storescp, dicom-rs dicom-storescp and
# Orthanc, side by side, all fed the same files by the same dcmtk storescu (TCP_NODELAY=1).
#
#   benches/ingest.sh [--runs N] [--only LIST] [--count N] [--build] [--work DIR]
#
#   --runs N     repeat the whole set N times (default 3); the table shows the median
#   --only LIST  comma-separated receivers: kneenode,dcmtk,dicom-rs,orthanc (default: all)
#   --count N    instances (default 1000, a multiple of 8); a smaller count is for trying the script
#   --build      run `cargo build --release` first (it is also run when the binary is missing)
#   --work DIR   where the receivers' storage goes (default: a temp dir under $TMPDIR or /tmp);
#                put it on the disk you want to measure
#
# Workload: N MR instances, 256x256 16-bit (~132 kB each), in 8 series of N/8 slices, generated once
# by benches/gen_mr.py into ${XDG_CACHE_HOME:-~/.cache}/kneenode/bench-ingest/ and reused.
#   (a) 1 association: one storescu sends all N files;
#   (b) 8 associations: 8 storescu processes in parallel, one series (N/8 files) each.
# Each trial starts its receiver on a fresh, empty storage folder on 127.0.0.1, times from the
# start of the first storescu to the exit of the last (wall clock), then checks that every
# storescu exited 0 and that the receiver holds exactly N instances; then the receiver is stopped
# and its storage deleted. Receivers alternate within each run, and the order rotates between
# runs (runs vary +-30 % on this kind of machine, so only compare figures from one invocation).
#
# References are installed when missing: dcmtk and orthanc from apt, dicom-storescp with
# `cargo install` into the cache folder. One that cannot be installed is skipped with a message.
# Every process the script starts is stopped on exit.
#
# Receivers: kneenode = `target/release/kneenode scp` (or $KNEENODE_BIN) on the default SQLite,
# bound to 127.0.0.1; dcmtk `storescp --fork`; dicom-rs `dicom-storescp --non-blocking`; Orthanc
# (Debian package, run directly with a JSON config from a temp dir; DicomThreadsCount 8 so that
# all 8 associations are served at once, SyncStorageArea on). storescp, dicom-storescp and
# Orthanc 1.10 have no bind-address option and listen on all interfaces; every transfer goes over
# 127.0.0.1. Only kneenode and Orthanc fsync before answering.
# CPU ms/i: the receiver's CPU time per instance (user + system of its process group, forked and
# reaped children included), from just before the first storescu starts to just after the last
# one exits: start-up is not in it. storescu's own CPU is not in it either; on a 2-core machine
# the senders and the receiver share the cores.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3
ONLY="kneenode,dcmtk,dicom-rs,orthanc"
COUNT=1000
SERIES=8
BUILD=0
WORK_PARENT="${TMPDIR:-/tmp}"
DICOM_STORESCP_VERSION=0.10.1

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --runs=*) RUNS=${1#*=}; shift ;;
        --only) ONLY=$2; shift 2 ;;
        --only=*) ONLY=${1#*=}; shift ;;
        --count) COUNT=$2; shift 2 ;;
        --count=*) COUNT=${1#*=}; shift ;;
        --build) BUILD=1; shift ;;
        --work) WORK_PARENT=$2; shift 2 ;;
        --work=*) WORK_PARENT=${1#*=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "ingest.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "ingest.sh: --runs needs a positive integer" >&2; exit 2; }
[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] && [ $((COUNT % SERIES)) -eq 0 ] \
    || { echo "ingest.sh: --count needs a positive multiple of $SERIES" >&2; exit 2; }

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/kneenode/bench-ingest"
DATA="$CACHE/data-${COUNT}x${SERIES}"
TOOLS="$CACHE/tools"
export TCP_NODELAY=1   # dcmtk leaves Nagle on without it (DESIGN.md, stack notes)

log() { printf '[ingest] %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif have sudo; then sudo -n "$@"; else return 1; fi; }
apt_install() {
    have apt-get || return 1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2 \
        || { as_root apt-get update >&2 && as_root env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y --no-install-recommends "$@" >&2; }
}
want() { [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------- processes and clean-up
WORK=""
PGIDS=()      # process groups started by this script (each receiver runs under setsid)
SCU_PIDS=()   # storescu processes of the trial in progress
cleanup() {
    local pg
    for pg in "${SCU_PIDS[@]}"; do kill -TERM "$pg" 2>/dev/null || true; done
    for pg in "${PGIDS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
    sleep 0.5
    for pg in "${PGIDS[@]}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_bg LOG CMD...: runs CMD in its own session (so its children can be stopped together) and
# sets BG_PID, which is also its process-group id.
start_bg() {
    local logf=$1; shift
    setsid "$@" >"$logf" 2>&1 < /dev/null &
    BG_PID=$!
    PGIDS+=("$BG_PID")
}

stop_bg() {
    local pg=$1 i
    kill -TERM -- "-$pg" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pg" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pg" 2>/dev/null || true
    wait "$pg" 2>/dev/null || true
    local keep=() p
    for p in "${PGIDS[@]}"; do [ "$p" = "$pg" ] || keep+=("$p"); done
    PGIDS=("${keep[@]+"${keep[@]}"}")
}

# group_cpu PGID: CPU seconds (user + system, with reaped children) of every process in the group,
# e.g. a receiver and its forked association handlers.
group_cpu() {
    local pg=$1 hz total=0 p
    hz=$(getconf CLK_TCK)
    for p in $(pgrep -g "$pg" 2>/dev/null); do
        # Fields after the ")" of the command name: utime is the 12th, then stime, cutime, cstime.
        total=$(( total + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}' || echo 0) ))
    done
    python3 -c "print('%.2f' % ($total / $hz))"
}

# wait_echo AE PORT PID LOG: waits until the receiver answers C-ECHO (30 s at most).
wait_echo() {
    local ae=$1 port=$2 pid=$3 logf=$4 i
    for i in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "receiver exited before answering; its log:"; tail -n 20 "$logf" >&2; return 1
        fi
        if echoscu -aet BENCHSCU -aec "$ae" -to 2 127.0.0.1 "$port" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "receiver did not answer C-ECHO on port $port within 30 s; its log:"; tail -n 20 "$logf" >&2
    return 1
}

# ---------------------------------------------------------------- tools
have python3 || { echo "ingest.sh: python3 is needed" >&2; exit 1; }
have setsid || { echo "ingest.sh: setsid (util-linux) is needed" >&2; exit 1; }
if ! have storescu || ! have storescp || ! have echoscu; then
    log "installing dcmtk (apt)"
    apt_install dcmtk || { echo "ingest.sh: dcmtk (storescu) is needed and could not be installed" >&2; exit 1; }
fi
if ! have sqlite3; then apt_install sqlite3 || log "sqlite3 not available: kneenode is checked by files only"; fi

RECEIVERS=()
SKIPPED=()
if want kneenode; then
    BIN="${KNEENODE_BIN:-$REPO/target/release/kneenode}"
    if [ "$BUILD" = 1 ] || [ ! -x "$BIN" ]; then
        log "building kneenode (cargo build --release)"
        (cd "$REPO" && cargo build --release >&2) || { echo "ingest.sh: cargo build --release failed" >&2; exit 1; }
    fi
    RECEIVERS+=(kneenode)
fi
if want dcmtk; then RECEIVERS+=(dcmtk); fi
if want dicom-rs; then
    DICOMRS="$TOOLS/bin/dicom-storescp"
    if [ ! -x "$DICOMRS" ]; then
        if have cargo; then
            log "installing dicom-storescp $DICOM_STORESCP_VERSION (cargo install, into $TOOLS)"
            cargo install dicom-storescp --version "$DICOM_STORESCP_VERSION" --root "$TOOLS" >&2 || true
        fi
    fi
    if [ -x "$DICOMRS" ]; then RECEIVERS+=(dicom-rs)
    else SKIPPED+=("dicom-rs: cargo install dicom-storescp --version $DICOM_STORESCP_VERSION failed or cargo is missing"); fi
fi
if want orthanc; then
    ORTHANC=$(command -v Orthanc || true)
    [ -n "$ORTHANC" ] || [ ! -x /usr/sbin/Orthanc ] || ORTHANC=/usr/sbin/Orthanc
    if [ -z "$ORTHANC" ]; then
        log "installing orthanc (apt; the script starts its own instance, not the system service)"
        apt_install orthanc || true
        ORTHANC=$(command -v Orthanc || true)
        [ -n "$ORTHANC" ] || [ ! -x /usr/sbin/Orthanc ] || ORTHANC=/usr/sbin/Orthanc
    fi
    if [ -n "$ORTHANC" ]; then RECEIVERS+=(orthanc)
    else SKIPPED+=("orthanc: apt-get install orthanc failed (not packaged here, or no root)"); fi
fi
[ ${#RECEIVERS[@]} -gt 0 ] || { echo "ingest.sh: no receiver to measure" >&2; exit 1; }

# ---------------------------------------------------------------- data
if [ ! -f "$DATA/COMPLETE" ]; then
    log "generating $COUNT MR instances into $DATA (once)"
    rm -rf "$DATA"
    python3 "$REPO/benches/gen_mr.py" "$DATA" --count "$COUNT" --series "$SERIES" >&2
    if have dciodvfy; then
        if dciodvfy "$DATA/s01/0001.dcm" 2>&1 | grep -q '^Error'; then
            log "dciodvfy reports errors on a generated file:"; dciodvfy "$DATA/s01/0001.dcm" >&2 || true
        fi
    fi
fi
SERIES_DIRS=()
for i in $(seq 1 "$SERIES"); do SERIES_DIRS+=("$DATA/$(printf 's%02d' "$i")"); done
BYTES=$(find "${SERIES_DIRS[@]}" -name '*.dcm' -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
NFILES=$(find "${SERIES_DIRS[@]}" -name '*.dcm' -type f | wc -l)
[ "$NFILES" -eq "$COUNT" ] || { echo "ingest.sh: $DATA holds $NFILES files, not $COUNT; delete it to regenerate" >&2; exit 1; }
# Into the page cache: measure the receivers, not the reads.
find "${SERIES_DIRS[@]}" -name '*.dcm' -type f -exec cat {} + > /dev/null

mkdir -p "$WORK_PARENT"
WORK=$(mktemp -d "$WORK_PARENT/kneenode-bench-ingest.XXXXXX")
RESULTS="$WORK/results.tsv"
: > "$RESULTS"

# ---------------------------------------------------------------- receivers
# start_receiver NAME DIR: starts NAME with its storage under DIR; sets RPID, RPORT, RAE, RHTTP.
start_receiver() {
    local name=$1 dir=$2
    RPORT=$(free_port)
    RHTTP=""
    mkdir -p "$dir/storage"
    case "$name" in
        kneenode)
            RAE=KNEENODE
            cat > "$dir/kneenode.toml" <<EOF
[node]
ae_title = "KNEENODE"
bind = "127.0.0.1"
port = $RPORT
max_associations = 16

[storage]
dir = "$dir/storage"
EOF
            # From the repository root, so relative paths of the default configuration resolve.
            start_bg "$dir/receiver.log" env -C "$REPO" "$BIN" --config "$dir/kneenode.toml" scp
            ;;
        dcmtk)
            RAE=STORESCP
            # --fork: one process per association, so the 8 associations are served in parallel.
            start_bg "$dir/receiver.log" storescp --fork -aet "$RAE" -od "$dir/storage" "$RPORT"
            ;;
        dicom-rs)
            RAE=STORE-SCP
            start_bg "$dir/receiver.log" "$DICOMRS" --non-blocking --calling-ae-title "$RAE" \
                -o "$dir/storage" -p "$RPORT"
            ;;
        orthanc)
            RAE=ORTHANC
            RHTTP=$(free_port)
            mkdir -p "$dir/index"
            cat > "$dir/orthanc.json" <<EOF
{
  "Name" : "kneenode-bench",
  "StorageDirectory" : "$dir/storage",
  "IndexDirectory" : "$dir/index",
  "StorageCompression" : false,
  "SyncStorageArea" : true,
  "Plugins" : [ ],
  "HttpServerEnabled" : true,
  "HttpPort" : $RHTTP,
  "RemoteAccessAllowed" : false,
  "AuthenticationEnabled" : false,
  "DicomServerEnabled" : true,
  "DicomAet" : "$RAE",
  "DicomPort" : $RPORT,
  "DicomCheckCalledAet" : false,
  "DicomThreadsCount" : 8,
  "DicomModalities" : { },
  "SaveJobs" : false
}
EOF
            start_bg "$dir/receiver.log" "$ORTHANC" "$dir/orthanc.json"
            ;;
    esac
    RPID=$BG_PID
    wait_echo "$RAE" "$RPORT" "$RPID" "$dir/receiver.log"
}

# stored NAME DIR: how many instances the receiver holds (for kneenode: files and table rows must agree).
stored() {
    local name=$1 dir=$2 files rows
    case "$name" in
        kneenode)
            files=$( (find "$dir/storage/incoming" -path '*/.tmp' -prune -o -name '*.dcm' -type f -print 2>/dev/null || true) | wc -l)
            if have sqlite3 && [ -f "$dir/storage/kneenode.sqlite" ]; then
                rows=$(sqlite3 "$dir/storage/kneenode.sqlite" 'SELECT COUNT(*) FROM instances;' 2>/dev/null || echo -1)
                if [ "$rows" != "$files" ]; then
                    log "kneenode: $files files on disk but $rows rows in instances"
                    echo "$(( files < rows ? files : rows ))"; return
                fi
            fi
            echo "$files" ;;
        dcmtk|dicom-rs)
            (find "$dir/storage" -type f 2>/dev/null || true) | wc -l ;;
        orthanc)
            python3 - "$RHTTP" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen("http://127.0.0.1:%s/statistics" % sys.argv[1], timeout=30) as r:
    print(json.load(r)["CountInstances"])
EOF
            ;;
    esac
}

# trial NAME ASSOCS RUN: one timed transfer; appends "name assocs run seconds ok" to RESULTS.
trial() {
    local name=$1 assocs=$2 run=$3 dir="$WORK/$1-$2-$3"
    mkdir -p "$dir"
    sync   # earlier trials' dirty pages must not land on this one
    if ! start_receiver "$name" "$dir"; then
        printf '%s\t%s\t%s\tNA\tstart-failed\tNA\n' "$name" "$assocs" "$run" >> "$RESULTS"
        stop_bg "$RPID"; return
    fi
    local i rc=0 t0 t1 n cpu0
    SCU_PIDS=()
    cpu0=$(group_cpu "$RPID")
    t0=$(date +%s.%N)
    if [ "$assocs" = 1 ]; then
        timeout 600 storescu -aet BENCHSCU -aec "$RAE" +sd 127.0.0.1 "$RPORT" "${SERIES_DIRS[@]}" \
            > "$dir/scu-1.log" 2>&1 &
        SCU_PIDS+=($!)
    else
        for i in $(seq 0 $((SERIES - 1))); do
            timeout 600 storescu -aet BENCHSCU -aec "$RAE" +sd 127.0.0.1 "$RPORT" "${SERIES_DIRS[$i]}" \
                > "$dir/scu-$((i + 1)).log" 2>&1 &
            SCU_PIDS+=($!)
        done
    fi
    for i in "${SCU_PIDS[@]}"; do wait "$i" || rc=$?; done
    t1=$(date +%s.%N)
    SCU_PIDS=()
    # The receiver's CPU for the transfer alone: start-up (kneenode loads libtorch, ~0.4 s of
    # CPU; Orthanc opens its index) would otherwise count as ingest cost.
    local cpu
    cpu=$(python3 -c "print('%.2f' % ($(group_cpu "$RPID") - $cpu0))")
    n=$(stored "$name" "$dir" 2>>"$dir/receiver.log" | tail -n 1) || true
    [[ "$n" =~ ^[0-9]+$ ]] || n=0
    local secs status=ok
    secs=$(python3 -c "print('%.3f' % ($t1 - $t0))")
    if [ "$rc" -ne 0 ]; then
        status="storescu-exit-$rc"
        log "$name, $assocs assoc, run $run: a storescu exited $rc; its log:"
        grep -h -m 5 -E 'E:|F:' "$dir"/scu-*.log >&2 || tail -n 5 "$dir"/scu-*.log >&2
    fi
    if [ "$n" != "$COUNT" ]; then
        [ "$status" = ok ] && status="stored-$n"
        log "$name, $assocs assoc, run $run: receiver holds $n instances, not $COUNT"
        tail -n 5 "$dir/receiver.log" >&2
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$assocs" "$run" "$secs" "$status" "$cpu" >> "$RESULTS"
    log "$(printf '%-9s %d assoc  run %d: %7.2f s  %6.0f inst/s  receiver CPU %5.2f s  %s' "$name" "$assocs" "$run" "$secs" \
        "$(python3 -c "print($COUNT / max($secs, 1e-9))")" "$cpu" "$status")"
    stop_bg "$RPID"
    rm -rf "$dir"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
log "receivers: ${RECEIVERS[*]}; $COUNT instances, $((BYTES / COUNT)) bytes each; $RUNS run(s); storage under $WORK"
for s in "${SKIPPED[@]+"${SKIPPED[@]}"}"; do log "SKIPPED $s"; done
for run in $(seq 1 "$RUNS"); do
    # Rotate the order each run so no receiver always follows the same one.
    k=$(( (run - 1) % ${#RECEIVERS[@]} ))
    order=("${RECEIVERS[@]:$k}" "${RECEIVERS[@]:0:$k}")
    for assocs in 1 8; do
        for name in "${order[@]}"; do trial "$name" "$assocs" "$run"; done
    done
done

# ---------------------------------------------------------------- table
SKIPPED_TEXT=$(printf '%s\n' "${SKIPPED[@]+"${SKIPPED[@]}"}")
MACHINE="$(nproc) CPUs; load average $LOAD_START at start, $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?') at end; storage on $(df -P "$WORK" | awk 'NR==2 {print $1}')"
python3 - "$RESULTS" "$COUNT" "$BYTES" "$RUNS" "$SKIPPED_TEXT" "$MACHINE" <<'EOF'
import statistics, sys
path, count, nbytes, runs, skipped, machine = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
order = ["kneenode", "dcmtk", "dicom-rs", "orthanc"]
label = {"kneenode": "kneenode scp", "dcmtk": "dcmtk storescp", "dicom-rs": "dicom-rs storescp", "orthanc": "Orthanc"}
how = {"kneenode": "", "dcmtk": "--fork", "dicom-rs": "--non-blocking", "orthanc": "DicomThreadsCount 8"}
fsync = {"kneenode": "yes (file+dir, then DB commit)", "dcmtk": "no", "dicom-rs": "no", "orthanc": "yes (SyncStorageArea)"}
med, bad, why = {}, {}, {}
for name in order:
    for a in ("1", "8"):
        ok = [float(r[3]) for r in rows if r[0] == name and r[1] == a and r[4] == "ok"]
        n = len([r for r in rows if r[0] == name and r[1] == a])
        if n:
            bad[(name, a)] = n - len(ok)
            why[(name, a)] = sorted({r[4] for r in rows if r[0] == name and r[1] == a and r[4] != "ok"})
            if ok:
                med[(name, a)] = statistics.median(ok)
names = [n for n in order if any((n, a) in bad for a in ("1", "8"))]
print()
print("Ingest: %d MR instances (%.1f kB each, %.1f MB), loopback, storescu with TCP_NODELAY=1; median of %d run(s)"
      % (count, nbytes / count / 1000, nbytes / 1e6, runs))
print("Machine: " + machine)
hdr = "%-18s %-20s %6s %10s %8s %9s %12s %9s  %s" % ("receiver", "options", "assocs", "inst/s", "MB/s", "median s", "kneenode ÷", "CPU ms/i", "fsync")
print(hdr)
print("-" * len(hdr))
for a in ("1", "8"):
    for name in names:
        if (name, a) not in bad:
            continue
        if (name, a) in med:
            t = med[(name, a)]
            ips, mbs = count / t, nbytes / 1e6 / t
            if name != "kneenode" and ("kneenode", a) in med:
                ratio = "%.2f×" % (t / med[("kneenode", a)])
            else:
                ratio = "—" if name != "kneenode" else "1.00×"
            cpus = [float(r[5]) for r in rows if r[0] == name and r[1] == a and r[4] == "ok" and len(r) > 5 and r[5] != "NA"]
            cpu = "%.2f" % (statistics.median(cpus) * 1000 / count) if cpus else "—"
            cells = ("%.0f" % ips, "%.1f" % mbs, "%.2f" % t, ratio, cpu)
        else:
            cells = ("FAILED", "—", "—", "—", "—")
        note = "" if not bad[(name, a)] else "  (%d of %d runs failed, left out: %s)" % (bad[(name, a)], runs, ", ".join(why[(name, a)]))
        print("%-18s %-20s %6s %10s %8s %9s %12s %9s  %s%s" % ((label[name], how[name], a) + cells + (fsync[name], note)))
    print()
print("Targets:")
refs8 = [(med[(n, "8")], n) for n in names if n != "kneenode" and (n, "8") in med]
k8 = med.get(("kneenode", "8"))
if k8 and refs8:
    t, n = min(refs8)
    r = t / k8
    print("  kneenode >= 1.0x the fastest reference, 8 assocs (%s, %.0f inst/s): %.2fx  %s"
          % (label[n], count / t, r, "MET" if r >= 1.0 else "MISSED"))
else:
    print("  kneenode >= 1.0x the fastest reference, 8 assocs: not measured")
for a in ("1", "8"):
    k, o = med.get(("kneenode", a)), med.get(("orthanc", a))
    if k and o:
        r = o / k
        print("  kneenode >= 3x Orthanc, %s assoc%s: %.2fx  %s" % (a, "s" if a == "8" else "", r, "MET" if r >= 3.0 else "MISSED"))
    else:
        print("  kneenode >= 3x Orthanc, %s assoc%s: not measured" % (a, "s" if a == "8" else ""))
for s in skipped.splitlines():
    if s.strip():
        print("  skipped: " + s)
sys.exit(1 if any(bad.values()) or not med else 0)
EOF
