#!/usr/bin/env bash
# Create .venv from requirements.lock and install ServeNest into it. Idempotent: does
# nothing when .venv already matches the lock. Needs only python3.11 and the registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
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
