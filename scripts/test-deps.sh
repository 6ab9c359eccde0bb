#!/usr/bin/env bash
# Installs and starts what kneenode's tests talk to: dcmtk and dicom3tools (real DICOM peers and
# the validator), PostgreSQL (one of the two job-table backends), systemd's tools (the units'
# checks), and libtorch. Safe to rerun: each step does nothing when its part is already there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
# systemd-analyze, systemd-sysusers and systemd-tmpfiles check the units (no running systemd needed).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# gdcmconv makes the JPEG 2000 test series (dcmtk has no JPEG 2000 encoder).
command -v gdcmconv >/dev/null 2>&1 || need+=(libgdcm-tools)
if [ ${#need[@]} -gt 0 ]; then
    echo "test-deps: installing ${need[*]}" >&2
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "test-deps: starting PostgreSQL" >&2
    sudo_ pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
    for _ in $(seq 1 30); do
        pg_isready -h 127.0.0.1 -p 5432 -q && break
        sleep 1
    done
fi
pg_isready -h 127.0.0.1 -p 5432 >&2

"$here/build-deps.sh"
"$here/setup-libtorch.sh"
"$here/../tests/helpers/mesh-readers.sh" >/dev/null
"$here/../tools/tests/nnunet-deps.sh" >/dev/null
"$here/browser-deps.sh"
