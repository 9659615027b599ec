#!/usr/bin/env bash
# Make headless Chromium and its driver available for the tests marked `browser` (the report opened
# in a real browser): Debian's chromium and chromium-driver. Installed only where ensure-docker.sh
# may change the machine (root AND CI=true|1|yes or PE_START_DOCKER=1); elsewhere a loud banner, and
# those tests skip (loudly; in CI a skip fails the session). PE_CHROMIUM / PE_CHROMEDRIVER name
# other programs (the tests use the same variables). Idempotent: present means nothing to do.
set -euo pipefail
# shellcheck source=SCRIPTDIR/ensure-docker.sh
source "$(dirname "${BASH_SOURCE[0]}")/ensure-docker.sh"  # loud, die, may_change_machine, apt_install, summary
say() { printf '[ensure-browser] %s\n' "$*"; }

CHROMIUM=${PE_CHROMIUM:-chromium}
CHROMEDRIVER=${PE_CHROMEDRIVER:-chromedriver}

browser_present() { command -v "$CHROMIUM" >/dev/null 2>&1 && command -v "$CHROMEDRIVER" >/dev/null 2>&1; }

ensure_browser() {
    if browser_present; then
        say "headless browser: $(command -v "$CHROMIUM") and $(command -v "$CHROMEDRIVER") are installed"
        return 0
    fi
    if ! may_change_machine; then
        loud "CHROMIUM OR CHROMEDRIVER IS MISSING ($CHROMIUM, $CHROMEDRIVER), and this script will not install them." \
            "Tests marked 'browser' WILL BE SKIPPED (and fail the session in CI)." \
            "To opt in, as root:  PE_START_DOCKER=1 bash scripts/ensure-browser.sh" \
            "or: apt-get install chromium chromium-driver"
        return 0
    fi
    apt_install chromium chromium-driver
    browser_present || die "chromium and chromium-driver are installed but $CHROMIUM or $CHROMEDRIVER is not on PATH"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    ensure_browser
    summary
fi
