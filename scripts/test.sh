#!/usr/bin/env bash
# The test suite: set up, then pytest (unit tests, then the real engine and Prefect).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The Alibaba SDKs and httpx honour proxy variables; tests talk to loopback only.
unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy
# Architecture contracts (pyproject.toml [tool.importlinter]): layers, no import circles,
# the rehearsal room reached only through the CLI's --emulate seam.
.venv/bin/lint-imports --no-cache >&2
exec .venv/bin/python -m pytest "$@"
