#!/usr/bin/env bash
# Installs what building kneenode needs besides Rust and libtorch: cmake, which builds CharLS
# (the JPEG-LS decoder). Safe to rerun: does nothing when cmake is there.
set -euo pipefail
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v cmake >/dev/null 2>&1; then
    echo "build-deps: installing cmake" >&2
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
fi
