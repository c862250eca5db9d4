#!/usr/bin/env bash
# The main job on the embedded default: set up (idempotent), then `circuitsim demo`.
# Extra arguments go to `circuitsim demo` (e.g. --json, --preset tiny).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
exec "$ROOT/.venv/bin/circuitsim" demo "$@"
