#!/usr/bin/env bash
# Makes sure the python that tests/helpers/read_vtk.py runs under has VTK's and meshio's
# readers (PyPI `vtk`, `meshio`), installing them into kneenode's PyTorch venv
# (~/.cache/kneenode/torch-2.11.0, made by scripts/setup-libtorch.sh) when missing. Prints
# that python's path. Safe to rerun: does nothing once both import.
set -euo pipefail
venv="${KNEENODE_TORCH_VENV:-$HOME/.cache/kneenode/torch-2.11.0}"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
    echo "mesh-readers: $py is missing (run scripts/setup-libtorch.sh first)" >&2
    exit 1
fi
if ! "$py" -c "import vtk, meshio" >/dev/null 2>&1; then
    echo "mesh-readers: installing vtk and meshio into $venv" >&2
    "$py" -m pip install --quiet --disable-pip-version-check "vtk>=9.3,<10" "meshio>=5.3,<6" >&2
fi
echo "$py"
