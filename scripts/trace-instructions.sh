#!/usr/bin/env bash
# What request tracing costs in server instructions per kv-read (issue 21):
# a count that stays put on a loaded machine, where throughput does not.
#
#   scripts/trace-instructions.sh [BIN] [MODES] [N]
#     BIN    the server binary (default target/release/custos; build it first)
#     MODES  comma-separated: off (no OTEL_* variables) or a sampling ratio,
#            exported with OTEL_TRACES_SAMPLER=parentbased_traceidratio
#            (default off,0,0.01,1.0; 0 = exporter installed, nothing sampled)
#     N      kv-reads counted per mode (default 4000), from CLIENTS=4 curl
#            processes on keep-alive connections
#
# Per mode: a fresh server (Raft storage, file audit device) under
# `valgrind --tool=callgrind` with instrumentation off until it is
# initialised, unsealed and has one KV v2 secret; 400 warm-up reads per
# client; counters zeroed; the N reads; 6 s for the batch exporter's
# scheduled export; a dump. Every thread of the server is counted. OTLP goes
# to a sink started here that reads each body and answers 200. Prints
# instructions per read and the cost against `off`; the callgrind dumps stay
# in the printed directory (`callgrind_annotate DIR/cg.out.1`).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
source "$REPO_ROOT/scripts/lib/common.sh"

BIN=${1:-$REPO_ROOT/target/release/custos}
MODES=${2:-off,0,0.01,1.0}
N=${3:-4000}
CLIENTS=${CLIENTS:-4}
for t in valgrind callgrind_control curl python3; do
  have "$t" || die "$t is needed"
done
[[ -x $BIN ]] || die "$BIN: not built (cargo build --release -p custos)"

WORK=$(mktemp -d /tmp/custos-trace-instructions.XXXX)
SINK_PORT=$((20000 + RANDOM % 20000))
python3 - "$SINK_PORT" <<'PY' &
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
SINK_PID=$!
trap 'kill $SINK_PID 2>/dev/null || true' EXIT

# measure MODE -> instructions per read on stdout
measure() {
  local mode=$1 dir port vpid a init key tok per pids
  dir=$(mktemp -d "$WORK/$mode.XXXX")
  port=$((20000 + RANDOM % 20000))
  mkdir -p "$dir/raft" "$dir/audit"
  cat >"$dir/server.hcl" <<HCL
disable_mlock = true
api_addr      = "http://127.0.0.1:$port"
cluster_addr  = "http://127.0.0.1:$((port + 1))"
storage "raft" {
  path    = "$dir/raft"
  node_id = "t1"
}
listener "tcp" {
  address     = "127.0.0.1:$port"
  tls_disable = true
}
audit "file" "file" {
  options {
    file_path = "$dir/audit/"
  }
}
HCL
  local envs=()
  if [[ $mode != off ]]; then
    envs=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT"
      OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="$mode")
  fi
  env ${envs[@]+"${envs[@]}"} valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$dir/cg.out" "$BIN" server --config "$dir/server.hcl" \
    >"$dir/server.log" 2>&1 &
  vpid=$!
  a="http://127.0.0.1:$port/v1"
  for _ in $(seq 600); do
    curl -sf -o /dev/null "$a/sys/health?uninitcode=200&sealedcode=200" && break
    sleep 0.2
  done
  init=$(curl -sf -X PUT "$a/sys/init" -d '{"secret_shares":1,"secret_threshold":1}')
  key=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["keys_base64"][0])' <<<"$init")
  tok=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["root_token"])' <<<"$init")
  curl -sf -o /dev/null -X PUT "$a/sys/unseal" -d "{\"key\":\"$key\"}"
  for _ in $(seq 300); do
    curl -sf -o /dev/null -H "X-Vault-Token: $tok" "$a/sys/mounts" && break
    sleep 0.3
  done
  curl -s -o /dev/null -H "X-Vault-Token: $tok" -X POST "$a/sys/mounts/secret" \
    -d '{"type":"kv","options":{"version":"2"}}'
  for _ in $(seq 100); do
    curl -sf -o /dev/null -H "X-Vault-Token: $tok" -X POST "$a/secret/data/app" \
      -d '{"data":{"password":"not-a-real-secret"}}' && break
    sleep 0.3
  done
  per=$((N / CLIENTS))
  for _ in $(seq "$per"); do printf 'url = "%s/secret/data/app"\noutput = /dev/null\n' "$a"; done >"$dir/urls"
  head -n 800 "$dir/urls" >"$dir/warm"
  callgrind_control -i on "$vpid" >/dev/null 2>&1
  pids=()
  for _ in $(seq "$CLIENTS"); do
    curl -s -H "X-Vault-Token: $tok" -K "$dir/warm" &
    pids+=($!)
  done
  wait "${pids[@]}"
  sleep 1
  callgrind_control -z "$vpid" >/dev/null 2>&1
  pids=()
  for c in $(seq "$CLIENTS"); do
    curl -s -w '%{http_code}\n' -H "X-Vault-Token: $tok" -K "$dir/urls" >"$dir/codes.$c" &
    pids+=($!)
  done
  wait "${pids[@]}"
  sleep 6
  callgrind_control -d "$vpid" >/dev/null 2>&1
  sleep 1
  kill "$vpid"
  wait "$vpid" 2>/dev/null || true
  local ok ir
  ok=$(cat "$dir"/codes.* | grep -c '^200$' || true)
  [[ $ok -eq $((per * CLIENTS)) ]] || warn "$mode: $ok of $((per * CLIENTS)) reads answered 200"
  ir=$(sed -n 's/^summary: //p' "$dir/cg.out.1")
  echo $((ir / (per * CLIENTS)))
}

info "$BIN, $N kv-reads per mode, callgrind dumps in $WORK"
declare -A per_read
IFS=, read -ra modes <<<"$MODES"
for m in "${modes[@]}"; do
  per_read[$m]=$(measure "$m")
  log "  $m: ${per_read[$m]} instructions per read"
done
printf '%-6s %12s %8s\n' mode instr/read "vs off"
for m in "${modes[@]}"; do
  cost=""
  if [[ -n ${per_read[off]:-} ]]; then
    cost=$(python3 -c "print(f'{${per_read[$m]} / ${per_read[off]} - 1:+.1%}')")
  fi
  printf '%-6s %12s %8s\n' "$m" "${per_read[$m]}" "$cost"
done
