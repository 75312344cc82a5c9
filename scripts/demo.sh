#!/usr/bin/env bash
# The main job: set up, then run the local pipeline end to end on the real vLLM engine
# (provision -> health gate -> load check -> teardown). `--keep` keeps it serving.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/servenest demo "$@"
