#!/usr/bin/env bash
# Create .venv from requirements.lock and install ServeNest into it. Idempotent: does
# nothing when .venv already matches the lock. Needs only python3.11 and the registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
# System packages some tests drive, installed from Debian when missing and running as root
# (else a note says which tests will fail): apt_need GLOB PACKAGE WHAT-NEEDS-IT
apt_need() {
  compgen -G "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $2 (apt-get install $2) ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -qq --no-install-recommends "$2" >/dev/null; }
    apt_install "$@" 2>/dev/null || { apt-get update -qq >/dev/null && apt_install "$@"; }
  else
    echo "note: no $1: $3 will fail; install it with: apt-get install $2" >&2
  fi
}
# The scale-out tests run a Prefect server on PostgreSQL: Debian's server package (its
# binaries; the tests start their own throw-away cluster, never the packaged service).
apt_need "/usr/lib/postgresql/*/bin/postgres" postgresql "the PostgreSQL tests"
# The UI test drives a real headless Chromium (Debian's build; Playwright downloads none).
apt_need "/usr/lib/chromium/chromium" chromium "the Prefect UI test"
# and a font with the Chinese of the connection card's example prompt (else boxes).
apt_need "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc" fonts-wqy-microhei "the Chinese in UI screenshots"
stamp=.venv/.servenest-lock
want=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv from requirements.lock ..." >&2
rm -rf .venv
"$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --progress-bar off \
  --no-deps -r requirements.lock 2> >(grep -v "is ignored: it is neither" >&2)
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . \
  2> >(grep -v "is ignored: it is neither" >&2)
.venv/bin/python -m pip check >&2
echo "$want" > "$stamp"
