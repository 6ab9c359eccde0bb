#!/usr/bin/env bash
# Installs what the portal's browser test (tests/it/browser.rs, tests/browser/) and the portal HTTP
# benchmark (benches/portal.sh) need: Debian's chromium (Playwright drives it; Playwright's own
# browser builds are never downloaded), wrk, sqlite3, curl, and tests/browser/'s npm packages
# (playwright-core, pinned by package-lock.json). Safe to rerun and quiet when all is there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
browser_dir="$here/../tests/browser"

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v curl >/dev/null 2>&1 || need+=(curl)
# Fonts so that the screenshots show text (chromium pulls in a minimal set only).
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    need+=(nodejs npm)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "browser-deps: installing ${need[*]}" >&2
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -d "$browser_dir/node_modules/playwright-core" ]; then
    echo "browser-deps: npm ci in tests/browser" >&2
    # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core downloads nothing, but be explicit.
    (cd "$browser_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
