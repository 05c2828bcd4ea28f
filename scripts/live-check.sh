#!/usr/bin/env bash
# Live check of dashboards/ and alerts/ (issue 7): builds Custos, installs
# Prometheus and the Python packages when missing, then runs
# tests/observability/live_check.py (a Custos dev server + a real Prometheus;
# every dashboard/alert/recording expression must run and return data, and
# sealing the node must make CustosSealed true). Extra arguments go to the
# Python script, e.g. `scripts/live-check.sh --render-to docs/dashboards`.
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
# shellcheck source=scripts/lib/common.sh
source "$REPO_ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/services.sh
source "$REPO_ROOT/scripts/lib/services.sh"
ensure_prometheus
ensure_obs_python
cargo build -p custos --bin custos
target_dir=$(cargo metadata --format-version 1 --no-deps |
  "$OBS_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$OBS_PYTHON" tests/observability/live_check.py --custos-bin "$target_dir/debug/custos" "$@"
