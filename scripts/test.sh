#!/usr/bin/env bash
# The whole test suite from a fresh clone: set up .venv (idempotent), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled
exec .venv/bin/python -m pytest -q "$@"
