#!/usr/bin/env bash
# The test suite: set up, then pytest (unit tests, then the real engine and Prefect).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The Alibaba SDKs and httpx honour proxy variables; tests talk to loopback only.
unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy
exec .venv/bin/python -m pytest "$@"
