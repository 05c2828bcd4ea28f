# shellcheck shell=bash
# Logging, failing and small utilities shared by scripts/*.sh.
# Sourced, never executed; expects `set -euo pipefail` in the caller.

# Colour only on a terminal and when NO_COLOR is unset.
if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then
  _C_BOLD=$'\e[1m' _C_RED=$'\e[31m' _C_GREEN=$'\e[32m' _C_YELLOW=$'\e[33m' _C_OFF=$'\e[0m'
else
  _C_BOLD='' _C_RED='' _C_GREEN='' _C_YELLOW='' _C_OFF=''
fi

log() { printf '%s\n' "$*" >&2; }
info() { printf '%s==>%s %s\n' "$_C_BOLD" "$_C_OFF" "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "$_C_YELLOW" "$_C_OFF" "$*" >&2; }
die() {
  printf '%serror:%s %s\n' "$_C_RED" "$_C_OFF" "$*" >&2
  exit 1
}
ok() { printf '%s%s%s\n' "$_C_GREEN" "$*" "$_C_OFF" >&2; }

is_ci() {
  case "${CI:-}" in
    1 | true | TRUE | True | yes) return 0 ;;
    *) return 1 ;;
  esac
}

have() { command -v "$1" >/dev/null 2>&1; }

# Seconds since this shell started (bash's SECONDS).
elapsed() { printf '%ss' "$SECONDS"; }

# free_port_pair: print a port P such that P and P+1 are free on 127.0.0.1
# (OpenBao's dev server also binds its cluster listener on P+1).
free_port_pair() {
  "${PYTHON:-python3}" - <<'PY'
import socket
for _ in range(200):
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0))
        p = a.getsockname()[1]
        if p >= 65535:
            continue
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        print(p)
        break
else:
    raise SystemExit("no free port pair")
PY
}

# wait_unsealed NAME ADDR PID LOG TIMEOUT_SECONDS: wait until
# ADDR/v1/sys/seal-status reports sealed=false; fail early if PID exits.
wait_unsealed() {
  local name=$1 addr=$2 pid=$3 logfile=$4 timeout=$5
  if ! "${PYTHON:-python3}" - "$addr" "$pid" "$timeout" <<'PY'; then
import json, os, sys, time, urllib.request
addr, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("process exited")
    try:
        with urllib.request.urlopen(f"{addr}/v1/sys/seal-status", timeout=2) as r:
            if json.load(r).get("sealed") is False:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(f"not ready after {timeout:.0f}s")
PY
    log "---- last lines of $logfile ----"
    tail -n 40 "$logfile" >&2 || true
    die "$name did not come up on $addr (log: $logfile)"
  fi
}
