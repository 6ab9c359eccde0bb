#!/usr/bin/env bash
# Makes sure kneenode's PyTorch venv (~/.cache/kneenode/torch-2.11.0, made by
# scripts/setup-libtorch.sh) can run tools/export_nnunet.py and its tests: they build nnU-Net's
# networks with nnU-Net's own architecture package (PyPI `dynamic-network-architectures`).
# Installed without its dependencies: torch and numpy are there already, and the rest (timm,
# einops) only serve the transformer architectures (Primus), which the exporter does not need.
# Prints that python's path. Safe to rerun: does nothing once the package imports.
set -euo pipefail
venv="${KNEENODE_TORCH_VENV:-$HOME/.cache/kneenode/torch-2.11.0}"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
    echo "nnunet-deps: $py is missing (run scripts/setup-libtorch.sh first)" >&2
    exit 1
fi
# Tests call this in parallel: one installs, the others wait for it.
exec 9>"$venv/.nnunet-deps.lock"
flock 9
if ! "$py" -c "import dynamic_network_architectures.architectures.unet" >/dev/null 2>&1; then
    echo "nnunet-deps: installing dynamic-network-architectures into $venv" >&2
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps \
        "dynamic-network-architectures==0.4.4" >&2
fi
echo "$py"
