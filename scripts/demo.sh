#!/usr/bin/env bash
# The end-to-end demo from a fresh clone: set up .venv (idempotent), then `beit-data demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec .venv/bin/beit-data demo "$@"
