#!/usr/bin/env bash
# Installs PyTorch 2.11.0 (the libtorch that tch 0.24 is made for) from PyPI into a cache folder
# outside the repository, so every clone and every CI run on this host shares one ~5 GB install.
# Idempotent: a finished install is detected by a stamp file and the script returns at once.
# Afterwards `.libtorch` in the repository root links to the install's `torch` package folder;
# `.cargo/config.toml` points LIBTORCH at that link, so no environment variable is needed.
set -euo pipefail

TORCH_VERSION=2.11.0
CACHE_ROOT="${KNEENODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kneenode}"
VENV="$CACHE_ROOT/torch-$TORCH_VERSION"
STAMP="$VENV/.kneenode-complete"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PYTHON="${PYTHON:-$(command -v python3)}"

if [ ! -f "$STAMP" ]; then
    echo "setup-libtorch: installing torch==$TORCH_VERSION into $VENV (first run only, ~5 GB)" >&2
    mkdir -p "$CACHE_ROOT"
    # Serialise concurrent first runs (two clones building at once).
    exec 9>"$CACHE_ROOT/.torch-$TORCH_VERSION.lock"
    flock 9
    if [ ! -f "$STAMP" ]; then
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy
        "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
        touch "$STAMP"
    fi
    flock -u 9
fi

TORCH_DIR="$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
ln -sfn "$TORCH_DIR" "$REPO/.libtorch"
echo "setup-libtorch: torch $TORCH_VERSION ready at $TORCH_DIR (linked as .libtorch)" >&2
