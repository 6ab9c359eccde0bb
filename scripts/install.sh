#!/usr/bin/env bash
# Installs kneenode as a systemd service (README, "Install as a service"):
#
#   $PREFIX/bin/kneenode                    the release binary
#   $PREFIX/lib/kneenode/torch/lib          libtorch, copied from the build's torch install, with
#   $PREFIX/lib/kneenode/nvidia/*/lib       the CUDA libraries its libtorch_cuda.so loads
#   $PREFIX/share/kneenode/dicom_config     model registry, segment codes, reference configuration
#   $PREFIX/share/kneenode/models           the demo model (the registry refers to ../models)
#   /etc/kneenode/kneenode.toml             the configuration, only if there is none yet
#   /etc/systemd/system/kneenode.service, kneenode-worker@.service
#   /usr/lib/sysusers.d/kneenode.conf, /usr/lib/tmpfiles.d/kneenode.conf
#
# and then, unless DESTDIR is set, creates the kneenode user and folders (systemd-sysusers,
# systemd-tmpfiles) and reloads systemd. It enables and starts nothing.
#
# Why libtorch is copied: the binary's rpath points at the torch install it was built against,
# in the build user's ~/.cache, which the service user cannot read and ProtectHome= hides. The
# units set LD_LIBRARY_PATH to the copy (and patchelf, when present, also points the installed
# binary's rpath there, so `kneenode doctor` run by hand finds it too). libtorch_cuda.so finds
# its CUDA libraries through its own rpath, $ORIGIN/../../nvidia/*/lib, hence the layout.
#
# Environment:
#   PREFIX=/usr/local     where the binary, libraries and shared files go
#   DESTDIR=              stage everything under this folder (packaging, tests): no root needed,
#                         and no user, folder or systemd changes are made
#   UNITDIR=/etc/systemd/system
#   NO_BUILD=1            do not run `cargo build --release`; install KNEENODE_BIN as it is
#   KNEENODE_BIN=         the binary to install (default: target/release/kneenode)
#   LIBTORCH_LIB=         the torch/lib folder to copy (default: the one .libtorch links to)
#   NO_LIBTORCH=1         do not copy libtorch (the host has its own: set LD_LIBRARY_PATH in a
#                         drop-in for both units)
# Safe to rerun: files are replaced (running services keep the old ones until restarted), the
# configuration is kept, and an unchanged libtorch is not copied again.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
UNITDIR="${UNITDIR:-/etc/systemd/system}"
SYSUSERSDIR=/usr/lib/sysusers.d
TMPFILESDIR=/usr/lib/tmpfiles.d
CONFDIR=/etc/kneenode
STATEDIR=/var/lib/kneenode
BINDIR="$PREFIX/bin"
LIBDIR="$PREFIX/lib/kneenode"
SHAREDIR="$PREFIX/share/kneenode"

say() { echo "install: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

case "$PREFIX" in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo make install), or set DESTDIR to stage the files elsewhere"
fi

# --- the binary ---
build='cd "$1" && scripts/build-deps.sh && scripts/setup-libtorch.sh && cargo build --release --bin kneenode'
if [ "${NO_BUILD:-0}" = 1 ]; then
    :
elif [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && [ "$(id -u)" -eq 0 ]; then
    # Under sudo, build as the user who owns the checkout: a root build would leave root-owned
    # files in target/ and download its own libtorch into /root/.cache. A login shell finds
    # rustup's cargo.
    say "cargo build --release (as $SUDO_USER)"
    runuser -u "$SUDO_USER" -- bash -lc "$build" _ "$REPO" ||
        die "the build failed; build as yourself (cargo build --release), then: sudo NO_BUILD=1 make install"
else
    command -v cargo >/dev/null 2>&1 ||
        die "cargo is not on PATH; build first (cargo build --release), then install with NO_BUILD=1"
    say "cargo build --release"
    bash -c "$build" _ "$REPO"
fi
BIN="${KNEENODE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/kneenode}"
[ -x "$BIN" ] || die "no binary at $BIN (build it with cargo build --release)"

# Copies with the permissions a root-owned system install needs, whatever the umask.
install -d -m 0755 "$DESTDIR$BINDIR" "$DESTDIR$LIBDIR" "$DESTDIR$SHAREDIR"
# `install` unlinks the old file first, so a running kneenode keeps its (deleted) binary.
install -m 0755 "$BIN" "$DESTDIR$BINDIR/kneenode"
say "binary → $BINDIR/kneenode"

# --- libtorch ---
if [ "${NO_LIBTORCH:-0}" != 1 ]; then
    src="${LIBTORCH_LIB:-$REPO/.libtorch/lib}"
    [ -d "$src" ] || die "no libtorch at $src (run scripts/setup-libtorch.sh, or set LIBTORCH_LIB)"
    src="$(cd "$src" && pwd -P)"
    torch_dir="$(dirname "$src")"
    nvidia_dir="$(dirname "$torch_dir")/nvidia"
    version="$(sed -n "s/^__version__ = ['\"]\(.*\)['\"]$/\1/p" "$torch_dir/version.py" 2>/dev/null || true)"
    stamp="$src ${version:-unknown} $(du -sb "$src" | cut -f1)"
    if [ "$(cat "$DESTDIR$LIBDIR/.libtorch-source" 2>/dev/null || true)" = "$stamp" ]; then
        say "libtorch ${version:-?} → $LIBDIR (unchanged)"
    else
        say "libtorch ${version:-?} → $LIBDIR (copying ~4 GB, once)"
        # Staged beside the old copy and swapped in, so a running worker keeps the files it
        # has mapped instead of seeing them change under it.
        stage="$DESTDIR$LIBDIR/.new"
        rm -rf "$stage"
        install -d -m 0755 "$stage/torch/lib"
        find "$src" -maxdepth 1 -name '*.so*' -exec cp -P --preserve=mode,links -t "$stage/torch/lib" {} +
        [ -f "$torch_dir/version.py" ] && install -m 0644 "$torch_dir/version.py" "$stage/torch/version.py"
        if [ -d "$nvidia_dir" ]; then
            for lib in "$nvidia_dir"/*/lib; do
                [ -d "$lib" ] || continue
                dest="$stage/nvidia/$(basename "$(dirname "$lib")")/lib"
                install -d -m 0755 "$dest"
                find "$lib" -maxdepth 1 -name '*.so*' -exec cp -P --preserve=mode,links -t "$dest" {} +
            done
        fi
        chmod -R u+rwX,go+rX,go-w "$stage"
        for part in torch nvidia; do
            rm -rf "$DESTDIR$LIBDIR/.old-$part"
            if [ -e "$DESTDIR$LIBDIR/$part" ]; then
                mv "$DESTDIR$LIBDIR/$part" "$DESTDIR$LIBDIR/.old-$part"
            fi
            if [ -e "$stage/$part" ]; then mv "$stage/$part" "$DESTDIR$LIBDIR/$part"; fi
            rm -rf "$DESTDIR$LIBDIR/.old-$part"
        done
        rmdir "$stage"
        echo "$stamp" >"$DESTDIR$LIBDIR/.libtorch-source"
    fi
    if command -v patchelf >/dev/null 2>&1; then
        patchelf --set-rpath "$LIBDIR/torch/lib" "$DESTDIR$BINDIR/kneenode"
        say "binary rpath → $LIBDIR/torch/lib"
    fi
fi

# --- models, registry, reference configuration, README ---
for part in dicom_config models; do
    rm -rf "$DESTDIR$SHAREDIR/.new-$part"
    cp -R "$REPO/$part" "$DESTDIR$SHAREDIR/.new-$part"
    find "$DESTDIR$SHAREDIR/.new-$part" -name __pycache__ -prune -exec rm -rf {} +
    chmod -R u+rwX,go+rX,go-w "$DESTDIR$SHAREDIR/.new-$part"
    rm -rf "$DESTDIR$SHAREDIR/$part"
    mv "$DESTDIR$SHAREDIR/.new-$part" "$DESTDIR$SHAREDIR/$part"
done
install -m 0644 "$REPO/README.md" "$DESTDIR$SHAREDIR/README.md"
say "models and registry → $SHAREDIR"

# --- units, sysusers, tmpfiles ---
# The units name /usr/local; a different PREFIX is written into the installed copies.
unit_paths() { sed "s|/usr/local/|$PREFIX/|g" "$1"; }
install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$SYSUSERSDIR" "$DESTDIR$TMPFILESDIR"
for unit in kneenode.service kneenode-worker@.service; do
    unit_paths "$REPO/systemd/$unit" >"$DESTDIR$UNITDIR/$unit.tmp"
    chmod 0644 "$DESTDIR$UNITDIR/$unit.tmp"
    mv "$DESTDIR$UNITDIR/$unit.tmp" "$DESTDIR$UNITDIR/$unit"
done
install -m 0644 "$REPO/systemd/sysusers.d/kneenode.conf" "$DESTDIR$SYSUSERSDIR/kneenode.conf"
install -m 0644 "$REPO/systemd/tmpfiles.d/kneenode.conf" "$DESTDIR$TMPFILESDIR/kneenode.conf"
say "units → $UNITDIR; sysusers, tmpfiles → $SYSUSERSDIR, $TMPFILESDIR"

# --- configuration ---
# Sets KEY = "VALUE" in [SECTION] of a TOML file on stdin: replaces the key's line if the section
# has one, adds it at the end of the section otherwise, and adds the section if there is none.
set_key() {
    awk -v sec="[$1]" -v key="$2" -v line="$2 = \"$3\"" '
        function close_section() { if (in_sec && !done) { print line; done = 1 } }
        /^[[:space:]]*\[/ {
            close_section()
            in_sec = ($0 ~ /^[[:space:]]*\[[^][]*\][[:space:]]*(#.*)?$/) && index($0, sec) > 0
            seen = seen || in_sec
        }
        in_sec && !done && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" { print line; done = 1; next }
        { print }
        END { close_section(); if (!seen) { print ""; print sec; print line } }
    '
}
config="$DESTDIR$CONFDIR/kneenode.toml"
install -d -m 0750 "$DESTDIR$CONFDIR"
if [ -e "$config" ]; then
    say "configuration $CONFDIR/kneenode.toml exists: kept as it is"
else
    set_key storage dir "$STATEDIR" <"$REPO/dicom_config/kneenode.toml" |
        set_key models registry "$SHAREDIR/dicom_config/models.toml" >"$config.tmp"
    chmod 0640 "$config.tmp"
    mv "$config.tmp" "$config"
    say "configuration → $CONFDIR/kneenode.toml (storage.dir = $STATEDIR, models.registry = $SHAREDIR/dicom_config/models.toml)"
fi

if [ -n "$DESTDIR" ]; then
    say "staged under $DESTDIR (no user, folders or systemd changes)"
    exit 0
fi

# --- the user, the folders, systemd ---
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$SYSUSERSDIR/kneenode.conf"
else
    say "warning: no systemd-sysusers; create the system user kneenode (home $STATEDIR) yourself"
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create "$TMPFILESDIR/kneenode.conf"
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
fi
cat >&2 <<EOF
install: done. Next:
  edit $CONFDIR/kneenode.toml (AE title, [[node.allowed]], [[destinations]], [[routing]])
  cd / && sudo -u kneenode env KNEENODE_CONFIG=$CONFDIR/kneenode.toml LD_LIBRARY_PATH=$LIBDIR/torch/lib $BINDIR/kneenode doctor
  systemctl enable --now kneenode kneenode-worker@cuda:0    # or kneenode-worker@cpu without a GPU
  systemctl restart kneenode                                 # after an upgrade (workers follow)
EOF
