#!/usr/bin/env bash
# Static checks for Dockerfile, deploy/kubernetes, deploy/nginx and the
# Grafana dashboard. Uses (and creates if needed) a venv at .venv in the
# repo root. Extra arguments go to pytest.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r tests/deploy/requirements.txt

exec .venv/bin/python -m pytest -q tests/deploy "$@"
