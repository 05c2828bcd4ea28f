#!/usr/bin/env bash
# The one test command: lint, unit and integration tests, then real-client
# compatibility tests against OpenBao (the reference) and Custos side by side.
#
#   scripts/test.sh                 everything (what CI runs via .ci/run)
#   scripts/test.sh --compat-only   skip fmt/clippy/cargo test; build + compat
#   scripts/test.sh -- -k kv        extra arguments after -- go to pytest
#
# Works on a fresh Debian machine (root, crates.io/PyPI/Debian reachable): it
# installs what is missing and skips what is present. Environment:
#   CI=true                  CARGO_INCREMENTAL=0; no compat target may be skipped
#   COMPAT_TARGETS=openbao   local only: run the compat suite against OpenBao alone
#   CUSTOS_TEST_CACHE=DIR    where downloaded/built test tools live
#                            (default ~/.cache/custos-test)
# Exports for tests: CUSTOS_TEST_OPENBAO_ADDR / _TOKEN / _BIN (Rust tests),
# CUSTOS_TEST_KAFKA (tansu) / CUSTOS_TEST_TANSU_BIN, CUSTOS_TEST_ES
# (osmem-server, the Elasticsearch API stand-in) / CUSTOS_TEST_OSMEM_BIN,
# CUSTOS_TEST_S3* and CUSTOS_TEST_S3_COPY_* (two Garage instances) /
# CUSTOS_TEST_GARAGE_BIN, CUSTOS_TEST_KMS (moto, the AWS KMS stand-in) /
# CUSTOS_TEST_MOTO_BIN,
# COMPAT_OPENBAO_ADDR, COMPAT_CUSTOS_ADDR, COMPAT_OPENBAO_BIN,
# COMPAT_CUSTOS_BIN, COMPAT_BAO_CLI (pytest tests/compat).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
# shellcheck source=scripts/lib/common.sh
source "$REPO_ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/services.sh
source "$REPO_ROOT/scripts/lib/services.sh"

compat_only=0
pytest_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --compat-only) compat_only=1 ;;
    --) shift; pytest_args=("$@"); break ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

targets=${COMPAT_TARGETS:-openbao custos}
with_custos=1
[[ " $targets " == *" custos "* ]] || with_custos=0
if is_ci; then
  export CARGO_INCREMENTAL=0
  [[ $with_custos -eq 1 ]] || die "COMPAT_TARGETS=$targets: in CI the compat suite must run against Custos too"
  [[ $compat_only -eq 0 ]] || die "--compat-only is for local use; CI runs everything"
fi

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/custos-test.XXXXXX")
CURRENT_STEP="setup"
STEPS_DONE=()

on_exit() {
  local rc=$?
  stop_services
  if [[ $rc -eq 0 ]]; then
    rm -rf "$RUN_DIR"
    return
  fi
  local f
  case "$CURRENT_STEP" in
    start* | "cargo test" | compat)
      for f in "$RUN_DIR"/*/server.log; do
        [[ -f $f ]] || continue
        log "---- last lines of $f ----"
        tail -n 30 "$f" >&2 || true
      done
      ;;
  esac
  local kept="logs kept in $RUN_DIR"
  rmdir "$RUN_DIR" 2>/dev/null && kept="no server logs"
  printf '%stest.sh: FAIL%s at step "%s" after %s (done: %s; %s)\n' \
    "$_C_RED" "$_C_OFF" "$CURRENT_STEP" "$(elapsed)" "${STEPS_DONE[*]:-none}" "$kept" >&2
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# step NAME CMD...: run one named step; the EXIT trap reports which one failed.
step() {
  CURRENT_STEP=$1
  shift
  info "[$CURRENT_STEP] $*"
  local t0=$SECONDS
  "$@"
  STEPS_DONE+=("$CURRENT_STEP")
  log "    [$CURRENT_STEP] ok ($((SECONDS - t0))s)"
}

# ------------------------------------------------------------------ preflight
CURRENT_STEP="preflight"
have cargo || die "cargo not found: install the Rust toolchain (rust-version in Cargo.toml) first"
if [[ $compat_only -eq 0 ]]; then
  cargo fmt --version >/dev/null 2>&1 || die "rustfmt missing: rustup component add rustfmt"
  cargo clippy --version >/dev/null 2>&1 || die "clippy missing: rustup component add clippy"
fi
step "python deps" ensure_python_env
step "rdkafka build deps" ensure_rdkafka_build_deps
step "tansu" ensure_tansu
step "osmem-server" ensure_osmem
step "garage" ensure_garage
step "moto" ensure_moto
export COMPAT_BAO_CLI="$BAO_BIN" COMPAT_OPENBAO_BIN="$BAO_BIN"
log "    python: $PYTHON; bao: $("$BAO_BIN" version | head -n 1)"

# ------------------------------------------------------------------ lint
lint_shell() {
  if have shellcheck; then
    shellcheck -x scripts/test.sh scripts/lib/*.sh .ci/run
  else
    log "    shellcheck not installed; skipping shell lint"
  fi
}
if [[ $compat_only -eq 0 ]]; then
  step "fmt" cargo fmt --all -- --check
  step "clippy" cargo clippy --workspace --all-targets -- -D warnings
  step "shellcheck" lint_shell
fi

# ------------------------------------------------------------------ OpenBao
# Started before `cargo test` so Rust tests can use it too.
step "start openbao" start_openbao_dev "$RUN_DIR"
export CUSTOS_TEST_OPENBAO_ADDR="$OPENBAO_ADDR" CUSTOS_TEST_OPENBAO_TOKEN=root CUSTOS_TEST_OPENBAO_BIN="$BAO_BIN"
export COMPAT_OPENBAO_ADDR="$OPENBAO_ADDR"
# Kafka and the Elasticsearch API stand-in for the audit sink tests; in CI
# they are always installed and started, so those tests never skip.
step "start kafka" start_tansu "$RUN_DIR"
step "start elasticsearch stand-in" start_osmem "$RUN_DIR"
# Two Garage instances (two "regions") for the snapshot destination tests
# in dr-drills.
step "start garage" start_garage "$RUN_DIR"
# moto, the AWS KMS stand-in, for the awskms auto-unseal tests.
step "start kms stand-in" start_moto "$RUN_DIR"

# ------------------------------------------------------------------ Rust tests
if [[ $compat_only -eq 0 ]]; then
  step "cargo test" cargo test --workspace
fi

# ------------------------------------------------------------------ Custos
if [[ $with_custos -eq 1 ]]; then
  step "build custos" cargo build -p custos --bin custos
  target_dir=$(cargo metadata --format-version 1 --no-deps |
    "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  CUSTOS_BIN="$target_dir/debug/custos"
  [[ -x $CUSTOS_BIN ]] || die "cargo build did not produce $CUSTOS_BIN"
  step "start custos" start_custos_dev "$RUN_DIR" "$CUSTOS_BIN"
  export COMPAT_CUSTOS_ADDR="$CUSTOS_ADDR" COMPAT_CUSTOS_BIN="$CUSTOS_BIN"
else
  warn "COMPAT_TARGETS=$targets: Custos is not tested"
  unset COMPAT_CUSTOS_ADDR COMPAT_CUSTOS_BIN
fi

# ------------------------------------------------------------------ observability
# alerts/ and dashboards/ (issue 7): promtool check + unit tests, the Grafana
# schema check, and the live check (own Custos + Prometheus; seals a node).
check_observability() {
  promtool check rules alerts/*.rules.yml
  promtool test rules alerts/*.test.yml
  scripts/check-dashboards.sh
  "$OBS_PYTHON" tests/observability/live_check.py --custos-bin "$CUSTOS_BIN"
}
if [[ $with_custos -eq 1 ]]; then
  step "prometheus" ensure_prometheus
  step "observability python" ensure_obs_python
  step "observability" check_observability
fi

# ------------------------------------------------------------------ compat
step "compat" "$PYTHON" -m pytest tests/compat -p no:cacheprovider -q ${pytest_args[@]+"${pytest_args[@]}"}

CURRENT_STEP="done"
ok "test.sh: PASS in $(elapsed) — ${STEPS_DONE[*]} (compat targets: $targets)"
