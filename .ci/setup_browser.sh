#!/usr/bin/env bash
# Install what the e2e browser tests need: Debian's chromium (skipped when /usr/bin/chromium exists) and
# playwright-core in tests/e2e/browser/node_modules (npm ci; skipped when already in step with the lock file).
# No browser is ever downloaded by npm: playwright-core drives /usr/bin/chromium.
# usage: bash .ci/setup_browser.sh
set -euo pipefail
t0=$SECONDS
step() { echo "[setup_browser +$((SECONDS - t0))s] $*"; }
DIR=$(cd "$(dirname "$0")/../tests/e2e/browser" && pwd)
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo

if [ -x /usr/bin/chromium ]; then
    step "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
else
    step "apt-get install chromium"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core > /dev/null
    step "installed: $(/usr/bin/chromium --version)"
fi

cd "$DIR"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
STAMP=node_modules/.aitk-package-lock.json
if [ -f package-lock.json ] && cmp -s package-lock.json "$STAMP"; then
    step "node_modules up to date"
elif [ -f package-lock.json ]; then
    step "npm ci"; npm ci --no-audit --no-fund --loglevel=error
else
    step "npm install (no lock file yet)"; npm install --no-audit --no-fund --loglevel=error
fi
cp package-lock.json "$STAMP"
step "done"
