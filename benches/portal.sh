#!/usr/bin/env bash
# Portal HTTP benchmark: how many logged-in requests a second the portal answers, and how fast,
# with a long job history in the table.
#
#   benches/portal.sh [--runs N] [--jobs N] [--duration S] [--threads T] [--connections C]
#                     [--keep] [--no-build]
#
#   --runs N         wrk runs per endpoint (default 3); the table shows the median of each column
#   --jobs N         jobs put into the table first (default 10000)
#   --duration S     seconds per wrk run (default 15), after one 3-s warm-up run per endpoint
#   --threads T      wrk threads (default 2)
#   --connections C  wrk connections (default 16)
#   --keep           keep the work folder (log, storage, wrk output) and print where it is
#   --no-build       skip `cargo build --release` (which is otherwise run first); KNEENODE_BIN
#                    names another binary (e.g. target/debug/kneenode, for trying the script)
#
# Set-up: a temp storage folder with the default SQLite database, migrated by `kneenode migrate`;
# an admin made by `kneenode user add --password-stdin`; N jobs written straight into the jobs table
# by python3's sqlite3 module in one transaction (ids are UUIDs, created over the past year, 90 %
# complete, 5 % error, 4 % queued, 1 % cancelled, demo model, no NSM, owned by the admin where the
# table has an owner column). Then the portal alone: `kneenode portal` where it exists, else
# `kneenode serve --no-workers` (so no worker takes the queued jobs), on 127.0.0.1 and a free port.
# POST /api/login gives the session cookie; every wrk request sends it. Endpoints:
#   GET /api/jobs?page=1&per_page=50   (the JSON job list)
#   GET /                              (the dashboard HTML)
# Each is checked to answer 200 with the cookie before it is measured. The table shows requests/s,
# the 50th and 99th latency percentiles (wrk --latency) and how many answers were not 2xx/3xx or
# failed at the socket (they should be 0). wrk runs on the same machine as the portal and takes
# CPU from it: compare figures from one machine and one invocation only. Every process the script
# starts is stopped on exit. scripts/browser-deps.sh installs wrk.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=3; JOBS=10000; DURATION=15; THREADS=2; CONNS=16; KEEP=0; BUILD=1
USER_NAME=bench-admin
PASSWORD=bench-password-portal-1

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;              --runs=*) RUNS=${1#*=}; shift ;;
        --jobs) JOBS=$2; shift 2 ;;              --jobs=*) JOBS=${1#*=}; shift ;;
        --duration) DURATION=$2; shift 2 ;;      --duration=*) DURATION=${1#*=}; shift ;;
        --threads) THREADS=$2; shift 2 ;;        --threads=*) THREADS=${1#*=}; shift ;;
        --connections) CONNS=$2; shift 2 ;;      --connections=*) CONNS=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "portal.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in RUNS JOBS DURATION THREADS CONNS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "portal.sh: --${v,,} needs a non-negative integer" >&2; exit 2; }
done
[ "$RUNS" -gt 0 ] && [ "$DURATION" -gt 0 ] && [ "$THREADS" -gt 0 ] && [ "$CONNS" -ge "$THREADS" ] \
    || { echo "portal.sh: --runs, --duration and --threads must be > 0, --connections >= --threads" >&2; exit 2; }

log() { printf '[portal %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
for t in wrk curl python3 setsid; do
    command -v "$t" >/dev/null || { echo "portal.sh: $t is needed (scripts/browser-deps.sh installs wrk)" >&2; exit 1; }
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

# ---------------------------------------------------------------- build
if [ "$BUILD" = 1 ] && [ -z "${KNEENODE_BIN:-}" ]; then
    log "cargo build --release (may wait for the shared target dir's lock)"
    (cd "$REPO" && cargo build --release --bin kneenode >&2) || { echo "portal.sh: cargo build --release failed" >&2; exit 1; }
fi
BIN="${KNEENODE_BIN:-$REPO/target/release/kneenode}"
[ -x "$BIN" ] || { echo "portal.sh: $BIN is missing (drop --no-build, or set KNEENODE_BIN)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kneenode-bench-portal.XXXXXX")
STORAGE="$WORK/storage"; DB="$STORAGE/kneenode.sqlite"; CONFIG="$WORK/kneenode.toml"
mkdir -p "$STORAGE"
cat > "$CONFIG" <<EOF
[node]
bind = "127.0.0.1"
port = 0
[portal]
bind = "127.0.0.1"
port = 0
[storage]
dir = "$STORAGE"
[models]
registry = "$REPO/dicom_config/models.toml"
EOF
kn() { env -u KNEENODE_CONFIG KNEENODE_LOG=warn "$BIN" --config "$CONFIG" "$@"; }

# ---------------------------------------------------------------- database, user, jobs
kn migrate >"$WORK/migrate.log" 2>&1 || { log "kneenode migrate failed:"; cat "$WORK/migrate.log" >&2; exit 1; }
printf '%s\n' "$PASSWORD" | kn user add "$USER_NAME" --role admin --password-stdin >"$WORK/user.log" 2>&1 \
    || { log "kneenode user add failed:"; cat "$WORK/user.log" >&2; exit 1; }
log "inserting $JOBS jobs into $DB"
t0=$(date +%s.%N)
python3 - "$DB" "$JOBS" "$USER_NAME" "$STORAGE" <<'PY'
import datetime, json, random, sqlite3, sys, uuid

db, n, user, storage = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
con = sqlite3.connect(db)
cols = {r[1]: r for r in con.execute("PRAGMA table_info(jobs)")}  # cid, name, type, notnull, default, pk
uid = con.execute("SELECT id FROM users WHERE username = ?", (user,)).fetchone()
if uid is None:
    sys.exit(f"portal.sh: user {user} is not in the users table")
owner_cols = [c for c in ("owner_id", "user_id", "created_by", "owner", "submitted_by") if c in cols]
rng = random.Random(42)
now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
fmt = lambda t: t.strftime("%Y-%m-%d %H:%M:%S.%f") if t else None
opts = json.dumps({"cartilage_smoothing": 0.3125, "nsm_type": "bone_and_cart", "perform_nsm": False,
                   "segmentation_model": "demo"}, separators=(",", ":"), sort_keys=True)
rows = []
for i in range(n):
    jid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    created = now - datetime.timedelta(seconds=rng.uniform(60, 365 * 86400))
    r = rng.random()
    status = "complete" if r < 0.90 else "error" if r < 0.95 else "queued" if r < 0.99 else "cancelled"
    done = status in ("complete", "error", "cancelled")
    started = created + datetime.timedelta(seconds=rng.uniform(1, 30)) if status != "queued" else None
    completed = started + datetime.timedelta(seconds=rng.uniform(60, 400)) if done and started else None
    name = f"knee_{i:05d}"
    row = {
        "id": jid, "revision": 1, "source": "upload" if i % 3 else "dicom",
        "input_path": f"{storage}/uploads/{jid}/{name}.nii.gz", "options": opts, "status": status,
        "priority": 0, "attempts": 1 if started else 0, "max_attempts": 3, "run_after": fmt(created),
        "cancel_requested": 0, "current_step": 8 if status == "complete" else 0, "total_steps": 8,
        "step_name": "packaging" if status == "complete" else None,
        "progress_percent": 100.0 if status == "complete" else 0.0,
        "created_at": fmt(created), "started_at": fmt(started), "completed_at": fmt(completed),
        "result_path": f"{storage}/jobs/{jid}/results/{name}_results.zip" if status == "complete" else None,
        "result_size_bytes": rng.randint(2_000_000, 9_000_000) if status == "complete" else None,
        "error_code": "PIPELINE_ERROR" if status == "error" else None,
        "error_message": "the job's process was killed" if status == "error" else None,
    }
    if i % 3 == 0:
        row["study_instance_uid"] = f"1.2.826.0.1.3680043.10.1{i}"
        row["series_instance_uid"] = f"1.2.826.0.1.3680043.10.2{i}"
    for c in owner_cols:
        row[c] = uid[0] if "id" in c or cols[c][2].upper().startswith("INT") or cols[c][2].upper() == "BIGINT" else user
    rows.append(row)
names = [c for c in rows[0] if c in cols] + [c for c in ("study_instance_uid", "series_instance_uid") if c in cols and c not in rows[0]]
missing = [c for c, r in cols.items() if r[3] and r[4] is None and not r[5] and c not in names]
if missing:
    sys.exit(f"portal.sh: the jobs table has NOT NULL columns this script does not fill: {missing}")
sql = f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
with con:
    con.executemany(sql, [[row.get(c) for c in names] for row in rows])
count = con.execute("SELECT count(*) FROM jobs").fetchone()[0]
print(f"jobs in the table: {count}" + (f"; owner column(s) {owner_cols} set to {user}" if owner_cols else ""),
      file=sys.stderr)
PY
log "inserted in $(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))") s"

# ---------------------------------------------------------------- portal
if "$BIN" portal --help 2>&1 | grep -qi 'not available'; then VERB=(serve --no-workers); else VERB=(portal); fi
PORTAL_LOG="$WORK/portal.log"
start_bg "$PORTAL_LOG" env -u KNEENODE_CONFIG -C "$REPO" KNEENODE_LOG=info "$BIN" --config "$CONFIG" "${VERB[@]}"
PORTAL_PID=$BG_PID
ADDR=""
for _ in $(seq 1 600); do
    kill -0 "$PORTAL_PID" 2>/dev/null || { log "kneenode ${VERB[*]} exited; its log:"; tail -n 30 "$PORTAL_LOG" >&2; exit 1; }
    ADDR=$(sed -n 's/\x1b\[[0-9;]*m//g; /portal listening/ s/.*addr=\([^ ]*\).*/\1/p' "$PORTAL_LOG" | head -n 1)
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || { log "no 'portal listening' within 60 s; log:"; tail -n 30 "$PORTAL_LOG" >&2; exit 1; }
BASE="http://$ADDR"
log "kneenode ${VERB[*]} (pid $PORTAL_PID) on $BASE, work in $WORK; $(nproc) CPUs, load $(loadavg)"

# ---------------------------------------------------------------- log in
JAR="$WORK/cookies.txt"
code=$(curl -sS -o "$WORK/login.json" -w '%{http_code}' -c "$JAR" -H 'Content-Type: application/json' \
    --data "{\"username\":\"$USER_NAME\",\"password\":\"$PASSWORD\"}" "$BASE/api/login") || code=000
[ "$code" = 200 ] || { log "POST /api/login answered $code: $(head -c 300 "$WORK/login.json" 2>/dev/null)"; exit 1; }
# Netscape cookie jar: HttpOnly cookies are written with a "#HttpOnly_" prefix on the domain.
COOKIE=$(sed -n 's/^#HttpOnly_//; /^#/d; /^$/d; p' "$JAR" | awk -F'\t' 'NF >= 7 { printf "%s%s=%s", sep, $6, $7; sep = "; " }')
[ -n "$COOKIE" ] || { log "POST /api/login set no cookie"; exit 1; }
log "logged in as $USER_NAME; cookie $(printf '%s' "$COOKIE" | sed 's/=[^;]*/=…/g')"

ENDPOINTS=("/api/jobs?page=1&per_page=50" "/")
for ep in "${ENDPOINTS[@]}"; do
    code=$(curl -sS -o "$WORK/check.out" -w '%{http_code}' -H "Cookie: $COOKIE" "$BASE$ep") || code=000
    [ "$code" = 200 ] || { log "GET $ep with the cookie answered $code: $(head -c 300 "$WORK/check.out")"; exit 1; }
    log "GET $ep: 200, $(wc -c < "$WORK/check.out") bytes"
done
curl -sS -H "Cookie: $COOKIE" "$BASE/api/jobs?page=1&per_page=50" > "$WORK/list.json"
python3 - "$WORK/list.json" >&2 <<'PY' || log "GET /api/jobs did not answer JSON"
import json, sys
v = json.load(open(sys.argv[1]))
items = v if isinstance(v, list) else next((x for x in v.values() if isinstance(x, list)), []) if isinstance(v, dict) else []
total = v.get("total") if isinstance(v, dict) else None
print(f"[portal] /api/jobs page 1: {len(items)} jobs" + (f" of {total}" if total is not None else ""))
PY

# ---------------------------------------------------------------- wrk
# wrk_run FILE SECONDS PATH: one wrk run with the cookie, its output into FILE.
wrk_run() {
    wrk -t"$THREADS" -c"$CONNS" -d"$2s" --latency -H "Cookie: $COOKIE" "$BASE$3" >"$1" 2>&1 \
        || { log "wrk failed:"; cat "$1" >&2; exit 1; }
}
# parse FILE: "req/s p50_ms p99_ms bad" from wrk's output.
parse() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    return float(m[1]) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m[2]]
rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text)[1])
pct = {m[1]: ms(m[2]) for m in re.finditer(r"^\s*(50|99)(?:\.000)?%\s+(\S+)", text, re.M)}
bad = int((re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text) or [0, 0])[1])
errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
bad += sum(int(x) for x in errs.groups()) if errs else 0
print(f"{rps:.1f} {pct['50']:.3f} {pct['99']:.3f} {bad}")
PY
}
RESULTS="$WORK/results.txt"; : > "$RESULTS"
for ep in "${ENDPOINTS[@]}"; do
    log "GET $ep: warm-up 3 s"
    wrk_run "$WORK/warmup.txt" 3 "$ep"
    for run in $(seq 1 "$RUNS"); do
        out="$WORK/wrk-$(printf '%s' "$ep" | tr -c 'a-zA-Z0-9' '_')-$run.txt"
        wrk_run "$out" "$DURATION" "$ep"
        read -r rps p50 p99 bad < <(parse "$out")
        log "GET $ep run $run: $rps req/s, p50 $p50 ms, p99 $p99 ms, $bad bad; load $(loadavg)"
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$ep" "$run" "$rps" "$p50" "$p99" "$bad" >> "$RESULTS"
    done
done

# ---------------------------------------------------------------- table
echo
echo "Portal HTTP: kneenode ${VERB[*]} ($(basename "$(dirname "$BIN")") build), SQLite, $JOBS jobs in the table, logged in as an admin"
echo "  wrk -t$THREADS -c$CONNS -d${DURATION}s --latency, $RUNS run(s) per endpoint (median), same machine: $(nproc) CPUs, load $(loadavg)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    ep, run, rps, p50, p99, bad = line.rstrip("\n").split("\t")
    rows.setdefault(ep, []).append((float(rps), float(p50), float(p99), int(bad)))
w = max(len("endpoint"), *(len(f"GET {e}") for e in rows))
print(f"  {'endpoint':<{w}}  {'requests/s':>10}  {'p50 (ms)':>9}  {'p99 (ms)':>9}  {'errors':>6}  runs (req/s)")
for ep, rs in rows.items():
    med = lambda i: statistics.median(r[i] for r in rs)
    runs = ", ".join(f"{r[0]:.0f}" for r in rs)
    print(f"  {'GET ' + ep:<{w}}  {med(0):>10.1f}  {med(1):>9.2f}  {med(2):>9.2f}  {sum(r[3] for r in rs):>6}  {runs}")
PY

# ---------------------------------------------------------------- node log
echo
echo "kneenode log: $(grep -c . "$PORTAL_LOG") lines, $(grep -ac 'WARN' "$PORTAL_LOG" || true) WARN, $(grep -ac 'ERROR' "$PORTAL_LOG" || true) ERROR"
grep -aE 'WARN|ERROR' "$PORTAL_LOG" | sed 's/\x1b\[[0-9;]*m//g' | head -n 10 | sed 's/^/  /' || true
