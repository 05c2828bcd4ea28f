#!/usr/bin/env python3
"""Live check of dashboards/ and alerts/ against a real server and a real
Prometheus (issue 7).

Starts a Custos dev server, `custos rotator serve` with a held run, `custos
drill serve` restoring the dev server's own automated snapshots, and a Prometheus (1s scrape and rule evaluation)
scraping `/v1/sys/metrics?format=prometheus` with alerts/*.rules.yml loaded,
generates traffic (KV writes and reads, token create, policy write, a denied
request), then runs every PromQL expression of every dashboard panel, every
template variable and every alerting/recording rule through
`/api/v1/query`:

* each must run without error;
* dashboard and recording-rule expressions must return data, except the few
  in ALLOW_EMPTY (each with its reason);
* alert expressions must be silent on this healthy node, except the ones in
  EXPECT_FIRING; for a silent alert every metric it reads must exist (so a
  misspelt metric cannot hide behind "no alert");
* every custos metric name used is declared in the Rust catalogues.

Then it seals the server (`PUT /v1/sys/seal`): the CustosSealed expression
must be true within a few seconds (one 1s scrape plus slack) and the alert
must reach `firing` (for: 30s); after `PUT /v1/sys/unseal` the expression
must clear. Nothing is skipped: a missing binary is an error.

Usage: live_check.py --custos-bin target/debug/custos [--render-to DIR]
  --render-to DIR   also run scripts/render-dashboards.py into DIR after the
                    seal/unseal cycle (the PNGs in docs/dashboards/).
Needs PyYAML; `prometheus` on PATH (or --prometheus-bin).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RATE_INTERVAL = "15s"

# Metric prefix -> why an expression reading only such metrics may return
# nothing on a healthy dev node.
ALLOW_EMPTY = {
    "custos_audit_sink_": "no Kafka/Elasticsearch audit sink is configured in dev mode, so no sink series exist",
    "custos_audit_log_request_failure_total": "failure counters are created on the first failure; none on a healthy node",
    "custos_audit_log_response_failure_total": "failure counters are created on the first failure; none on a healthy node",
    "custos_audit_device_failure_total": "failure counters are created on the first failure; none on a healthy node",
    "custos_audit_reconciled_events_total": "created when a request event is put back from the Raft log, after a crash or a failed audit pair; none on a healthy node (tests/it/crash.rs checks it)",
    "custos_audit_carried_damaged_total": "created when a carried request event cannot be decoded to be put back; none on a healthy node "
    "(the unit test a_damaged_carried_event_is_passed_over_and_releases_its_entry checks it)",
    "custos_raft_snapshot_build_duration_seconds": "a Raft snapshot is built after 10,000 entries and 30 s at the earliest; the check's short-lived node builds none",
    "custos_raft_follower_": "a one-node dev server has no followers",
    "custos_raft_autopilot_": "autopilot runs on the leader of a node with a cluster_addr; the dev server is not "
    "clustered (the unit tests of core/src/autopilot.rs check health and failure tolerance)",
    "custos_raft_snapshots_installed_total": "a node installs a snapshot only when it fell behind a leader's purged "
    "log; a one-node dev server has no leader to send one (tests/it/cluster_faults.rs checks it)",
    "custos_ha_forwarded_requests_total": "a one-node dev server has no standby to forward from",
    "custos_cluster_tls_handshake_failures_total": "failure counters are created on the first refused connection; "
    "nobody dials the dev server's cluster port (tests/it/cluster_tls.rs checks the refusals)",
    "custos_standby_reads_total": "a one-node dev server has no standby to serve X-Vault-Index reads "
    "(tests/it/standby_reads.rs checks them)",
    "custos_audit_query_peer_failures_total": "a one-node dev server has no peer to ask for its audit log "
    "(tests/it/cluster_audit.rs checks a missing node is counted)",
    "custos_snapshot_copy_behind_seconds": "the dev server's automated snapshots have no copy_to destination",
    "custos_snapshot_failures_total": "failure counters are created on the first failure; none on a healthy node",
    "custos_seal_autounseal_": "the dev node uses the Shamir seal; auto-unseal series exist only on a node with a seal stanza "
    "(tests/it/autounseal.rs checks them)",
    "custos_auth_jwks_fetches_total": "no JWT/OIDC mount with a JWKS or discovery URL on the dev node; the first key fetch "
    "creates the counter (tests/it/auth_jwt.rs)",
    "custos_auth_kubernetes_token_reviews_total": "no Kubernetes auth mount on the dev node; the first TokenReview call "
    "creates the counter (tests/it/auth_kubernetes.rs)",
}
# Alerts whose expression is expected to be true on the healthy node after
# the generated traffic (the traffic uses the root token and writes a policy).
EXPECT_FIRING = {
    "CustosSensitiveOperation": "the traffic uses the root token and writes a policy",
    "RotationHeld": "the check's rotation job declares a consumer that never reads, so its run is held",
    "WrappingUnwrapFailed": "the traffic unwraps a bogus wrapping token (twice)",
}

DECLARED_RE = re.compile(r'=\s*"(custos_[a-z0-9_]+)"\s*,\s*(Counter|Gauge|Histogram)')
METRIC_RE = re.compile(r"\b(custos[a-z0-9_:]*|up)\b(?=\s*[{\[)]|\s*$|\s+(?:==|!=|<|>|and|or|unless|\*|/|\+|-))")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, token: str | None = None, timeout: float = 5,
         headers: dict[str, str] | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("X-Vault-Token", token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, None


def health_agrees(addr: str, sealed: bool) -> str | None:
    """sys/health and the custos_core_unsealed gauge tell the same story.
    Returns a failure message, or None."""
    st, body = http("GET", f"{addr}/v1/sys/health")
    want_status = 503 if sealed else 200
    if st != want_status or (body or {}).get("sealed") is not sealed:
        return f"sys/health: HTTP {st} {body}, expected {want_status} with sealed={sealed}"
    with urllib.request.urlopen(f"{addr}/v1/sys/metrics?format=prometheus", timeout=5) as r:
        text = r.read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("custos_core_unsealed{")]
    want = 0.0 if sealed else 1.0
    if not values or any(v != want for v in values):
        return f"custos_core_unsealed is {values}, sys/health says sealed={sealed}"
    return None


def declared_metrics() -> set[str]:
    names: set[str] = set()
    for f in ("core/src/metrics.rs", "audit-stream/src/metrics.rs", "rotator/src/metrics.rs",
              "dr-drills/src/agent/metrics.rs", "dr-drills/src/drill/metrics.rs"):
        for name, kind in DECLARED_RE.findall((REPO / f).read_text()):
            names.add(name)
            if kind == "Histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", "1m")
            .replace("$__interval", "5s").replace("$cluster", ".*").replace("$instance", ".*"))


def metrics_in(expr: str) -> set[str]:
    return {m for m in METRIC_RE.findall(expr)}


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard, panel title / variable, expr) for every target and variable."""
    out = []
    for f in sorted((REPO / "dashboards").glob("*.json")):
        d = json.loads(f.read_text())
        for v in d.get("templating", {}).get("list", []):
            if v.get("type") == "query":
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"])
                if not m:
                    raise SystemExit(f"{f.name}: variable {v['name']}: unsupported query {v['query']!r}")
                out.append((f.name, f"variable ${v['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
        stack = list(d.get("panels", []))
        while stack:
            p = stack.pop(0)
            stack.extend(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((f.name, p["title"], t["expr"]))
    return out


def rule_exprs() -> list[tuple[str, str, str]]:
    """(kind, name, expr): kind is 'alert' or 'record'."""
    out = []
    for f in sorted((REPO / "alerts").glob("*.yml")):
        if f.name.endswith(".test.yml"):
            continue
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                if "alert" in r:
                    out.append(("alert", r["alert"], r["expr"]))
                else:
                    out.append(("record", r["record"], r["expr"]))
    return out


def static_rule_checks() -> list[str]:
    """Every alert has severity, summary, description and an existing runbook."""
    bad = []
    for f in sorted((REPO / "alerts").glob("*.yml")):
        if f.name.endswith(".test.yml"):
            continue
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                if "alert" not in r:
                    continue
                a, ann = r["alert"], r.get("annotations", {})
                if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    bad.append(f"alert {a}: severity label missing or not critical/warning/info")
                for k in ("summary", "description", "runbook_url"):
                    if not ann.get(k):
                        bad.append(f"alert {a}: annotation {k} missing")
                if ann.get("runbook_url") != f"docs/runbooks/{a}.md" or not (REPO / ann["runbook_url"]).is_file():
                    bad.append(f"alert {a}: runbook_url must be docs/runbooks/{a}.md and exist")
    return bad


def allow_reason(expr: str) -> str | None:
    used = [m for m in metrics_in(expr) if m.startswith("custos_")]
    if not used:
        return None
    reasons = set()
    for m in used:
        r = next((why for pfx, why in ALLOW_EMPTY.items() if m.startswith(pfx)), None)
        if r is None:
            return None  # reads at least one metric that must exist
        reasons.add(r)
    return "; ".join(sorted(reasons))


class Prom:
    def __init__(self, base: str):
        self.base = base

    def query(self, expr: str):
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]


class Traffic(threading.Thread):
    """Background API traffic: root KV writes/reads, an app token's reads,
    token creation, policy writes and a denied request; userpass logins (one
    user logging in, another failing until locked out); wrapped reads
    unwrapped once, and one unwrap of a bogus wrapping token."""

    def __init__(self, addr: str):
        super().__init__(daemon=True)
        self.addr, self.stop = addr, threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        a = self.addr
        http("PUT", f"{a}/v1/sys/policy/reader", {"policy": 'path "secret/*" { capabilities = ["read"] }'}, "root")
        _, tok = http("POST", f"{a}/v1/auth/token/create", {"policies": ["reader"], "display_name": "app"}, "root")
        app = (tok or {}).get("auth", {}).get("client_token")
        http("POST", f"{a}/v1/sys/auth/userpass", {"type": "userpass"}, "root")
        http("POST", f"{a}/v1/sys/auth/userpass/tune", {"user_lockout_config": {"lockout_threshold": "2"}}, "root")
        http("POST", f"{a}/v1/auth/userpass/users/svc",
             {"password": "live-check-pw", "token_policies": "reader", "token_ttl": "1h"}, "root")
        http("POST", f"{a}/v1/auth/userpass/users/victim", {"password": "right"}, "root")
        i = 0
        while not self.stop.is_set():
            try:
                st, _ = http("POST", f"{a}/v1/secret/data/app/db{i % 5}", {"data": {"v": str(i)}}, "root")
                if st == 503:  # sealed during the seal step
                    time.sleep(0.3)
                    continue
                http("GET", f"{a}/v1/secret/data/app/db{i % 5}", token="root")
                if app:
                    for _ in range(1 + (i // 20) % 4):
                        http("GET", f"{a}/v1/secret/data/app/db{i % 5}", token=app)
                    http("POST", f"{a}/v1/secret/data/app/forbidden", {"data": {"x": "1"}}, app)  # denied
                if i % 5 == 0:
                    http("POST", f"{a}/v1/auth/token/create", {"ttl": "1h"}, "root")
                if i % 10 == 0:
                    http("PUT", f"{a}/v1/sys/policy/p{i % 3}", {"policy": 'path "kv/*" { capabilities = ["read"] }'}, "root")
                    http("POST", f"{a}/v1/auth/userpass/login/svc", {"password": "live-check-pw"})
                    http("POST", f"{a}/v1/auth/userpass/login/victim", {"password": "wrong"})
                if i in (0, 60):  # twice, so the counter has a rise Prometheus sees
                    http("POST", f"{a}/v1/sys/wrapping/unwrap", {"token": "not-a-wrapping-token"}, "root")
                if i % 10 == 5:
                    _, w = http("GET", f"{a}/v1/secret/data/app/db0", token="root", headers={"X-Vault-Wrap-TTL": "60"})
                    wrapped = ((w or {}).get("wrap_info") or {}).get("token")
                    if wrapped:
                        http("POST", f"{a}/v1/sys/wrapping/unwrap", {}, wrapped)
                http("GET", f"{a}/v1/secret/data/x", token="not-a-token")  # denied
            except Exception as e:  # noqa: BLE001 - traffic is best effort, reported below
                self.errors.append(repr(e))
            i += 1
            time.sleep(0.1)


ROTATOR_HCL = """
server {{
  address = "{addr}"
}}
claim_ttl      = "2s"
check_interval = "1s"
telemetry {{
  prometheus_listen = "127.0.0.1:{port}"
}}
job "live-check-key" {{
  kind          = "api_key"
  schedule      = "@hourly"
  secret        = "secret/live-check/api-key"
  provider "random" {{
    bytes = 32
  }}
  consumers     = ["never-reads"]
  grace         = "1s"
  deadline      = "2s"
  poll_interval = "500ms"
}}
"""


def start_held_rotation(custos_bin: str, addr: str, port: int, tmp: Path, procs: list) -> Path:
    """`custos rotator serve` with one job whose run is held: a first run
    writes the key (exit 0), a second promotes a new one and, as the declared
    consumer never reads it, is held at its deadline (exit 3). The daemon
    re-checks the held run and exports custos_rotator_* for Prometheus."""
    cfg = tmp / "rotator.hcl"
    cfg.write_text(ROTATOR_HCL.format(addr=addr, port=port))
    env = {**os.environ, "VAULT_ADDR": addr, "VAULT_TOKEN": "root", "CUSTOS_LOG": "warn"}
    run = [custos_bin, "rotator", "run", "live-check-key", "--config", str(cfg)]
    for want in (0, 3):
        r = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode != want:
            raise SystemExit(f"custos rotator run: exit {r.returncode}, expected {want}\n{r.stdout}{r.stderr}")
    rlog = tmp / "rotator.log"
    procs.append(subprocess.Popen([custos_bin, "rotator", "serve", "--config", str(cfg)], env=env,
                                  stdout=rlog.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp))
    log("rotator: job live-check-key held (exit 3); serving metrics on 127.0.0.1:%d" % port)
    return rlog


DRILL_HCL = """
source {{
  storage_type = "local"
  path_prefix  = "{snapshots}"
}}
unseal {{ key_shares_file = "{keys}" }}
rto_target     = "15m"
schedule       = "*/5 * * * * *"
report_dir     = "{reports}"
work_dir       = "{work}"
listen_address = "127.0.0.1:{port}"
"""


def start_drills(custos_bin: str, data_dir: Path, unseal_key: str, port: int, tmp: Path, procs: list) -> Path:
    """`custos drill serve` restoring the dev server's own automated snapshots
    (`dev-local`, in `<data dir>/snapshots`) every 5 seconds into fresh
    nodes, exporting custos_drill_* for Prometheus."""
    keys = tmp / "unseal-keys"
    keys.write_text(unseal_key + "\n")
    for d in ("drill-reports", "drill-work"):
        (tmp / d).mkdir(exist_ok=True)
    cfg = tmp / "drill.hcl"
    cfg.write_text(DRILL_HCL.format(snapshots=data_dir / "snapshots", keys=keys, reports=tmp / "drill-reports",
                                    work=tmp / "drill-work", port=port))
    dlog = tmp / "drill.log"
    procs.append(subprocess.Popen([custos_bin, "drill", "serve", "--config", str(cfg)],
                                  env={**os.environ, "CUSTOS_LOG": "warn"}, stdout=dlog.open("w"),
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp))
    log("drills: restoring the dev server's snapshots every 5s; metrics on 127.0.0.1:%d" % port)
    return dlog


def start(cmd: list[str], logf: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=logf.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None, logf: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = logf.read_text()[-3000:] if logf else ""
            raise SystemExit(f"{what}: process exited ({proc.returncode})\n{tail}")
        try:
            v = pred()
            if v:
                return v
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--custos-bin", default=os.environ.get("CUSTOS_BIN", str(REPO / "target/debug/custos")))
    ap.add_argument("--prometheus-bin", default=shutil.which("prometheus") or "prometheus")
    ap.add_argument("--render-to", type=Path)
    ap.add_argument("--warmup", type=float, default=25.0, help="seconds of traffic before querying")
    args = ap.parse_args()
    # The servers run in their own directories: make the paths absolute.
    if os.sep in args.custos_bin:
        args.custos_bin = str(Path(args.custos_bin).resolve())
    else:
        args.custos_bin = shutil.which(args.custos_bin) or args.custos_bin
    for b in (args.custos_bin, args.prometheus_bin):
        if not (os.access(b, os.X_OK) or shutil.which(b)):
            raise SystemExit(f"not found or not executable: {b}")

    tmp = Path(tempfile.mkdtemp(prefix="custos-live-check."))
    procs: list[subprocess.Popen] = []
    ok = False
    try:
        cport, pport = free_port(), free_port()
        addr, prom_url = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
        clog = tmp / "custos.log"
        data_dir = tmp / "dev-data"
        procs.append(start([args.custos_bin, "server", "--dev", "--dev-root-token-id", "root",
                            "--dev-listen-address", f"127.0.0.1:{cport}", "--dev-data-dir", str(data_dir)],
                           clog, tmp))
        wait_for(lambda: http("GET", f"{addr}/v1/sys/seal-status")[1].get("sealed") is False, 60,
                 "custos to be unsealed", procs[0], clog)
        unseal_key = wait_for(lambda: re.search(r"Unseal Key: (\S+)", clog.read_text()).group(1), 10,
                              "the unseal key in the dev server's output")

        rport = free_port()
        rlog = start_held_rotation(args.custos_bin, addr, rport, tmp, procs)
        # The dev server's first automated snapshot (with its manifest) is
        # written at start; drills restore it.
        wait_for(lambda: list((data_dir / "snapshots").glob("*.manifest.json")), 60,
                 "the dev server's first automated snapshot", procs[0], clog)
        dport = free_port()
        dlog = start_drills(args.custos_bin, data_dir, unseal_key, dport, tmp, procs)

        rules = sorted(str(p) for p in (REPO / "alerts").glob("*.yml") if not p.name.endswith(".test.yml"))
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": rules,
            "scrape_configs": [{
                "job_name": "custos", "metrics_path": "/v1/sys/metrics", "params": {"format": ["prometheus"]},
                "static_configs": [{"targets": [f"127.0.0.1:{cport}"], "labels": {"cluster": "live-check"}}],
            }, {
                "job_name": "custos-rotator",
                "static_configs": [{"targets": [f"127.0.0.1:{rport}"], "labels": {"cluster": "live-check"}}],
            }, {
                "job_name": "custos-drill",
                "static_configs": [{"targets": [f"127.0.0.1:{dport}"], "labels": {"cluster": "live-check"}}],
            }],
        }))
        plog = tmp / "prometheus.log"
        procs.append(start([args.prometheus_bin, f"--config.file={tmp / 'prometheus.yml'}",
                            f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
                           plog, tmp))
        prom = Prom(prom_url)
        wait_for(lambda: prom.query('up{job="custos"} == 1'), 60, "prometheus to scrape custos", procs[-1], plog)
        wait_for(lambda: prom.query('up{job="custos-rotator"} == 1'), 60, "prometheus to scrape the rotator",
                 procs[-1], plog)
        wait_for(lambda: prom.query('custos_drill_last_result{job="custos-drill"} == 1'), 90,
                 "a passing drill scraped from `custos drill serve`", procs[-1], plog)
        log(f"custos {addr}, prometheus {prom_url} (scratch dir {tmp})")

        traffic = Traffic(addr)
        traffic.start()
        log(f"generating traffic for {args.warmup:.0f}s ...")
        time.sleep(args.warmup)

        failures: list[str] = static_rule_checks()
        declared = declared_metrics()
        records = {name for kind, name, _ in rule_exprs() if kind == "record"}
        n_run = n_data = 0
        allowed: list[str] = []

        def check_names(where: str, expr: str) -> None:
            for m in metrics_in(expr):
                if m.startswith("custos_") and m not in declared:
                    failures.append(f"{where}: metric {m} is not declared in core/ or audit-stream/ metrics.rs")
                if m.startswith("custos:") and m not in records:
                    failures.append(f"{where}: recording rule {m} does not exist in alerts/")

        def must_have_data(where: str, expr: str) -> None:
            nonlocal n_run, n_data
            q = substitute(expr)
            check_names(where, q)
            try:
                res = prom.query(q)
            except RuntimeError as e:
                failures.append(f"{where}: query error {e}: {q}")
                return
            n_run += 1
            if res:
                n_data += 1
                return
            why = allow_reason(q)
            if why:
                allowed.append(f"{where}: {why}")
            else:
                failures.append(f"{where}: no data: {q}")

        for dash, title, expr in dashboard_exprs():
            must_have_data(f"{dash} / {title}", expr)
        for kind, name, expr in rule_exprs():
            if kind == "record":
                must_have_data(f"record {name}", expr)
                continue
            where = f"alert {name}"
            check_names(where, expr)
            try:
                res = prom.query(expr)
            except RuntimeError as e:
                failures.append(f"{where}: query error {e}: {expr}")
                continue
            n_run += 1
            firing = bool(res)
            if name in EXPECT_FIRING:
                # several rules may share the name: at least one must fire
                if firing:
                    EXPECT_FIRING_SEEN.add(name)
            elif firing:
                failures.append(f"{where}: fires on a healthy node: {expr} -> {res[:3]}")
            for m in metrics_in(expr):
                if m == "up" or m.startswith("custos:"):
                    continue
                why = allow_reason(m)
                if not prom.query(m) and not why:
                    failures.append(f"{where}: reads {m}, which has no series")
                elif why and not prom.query(m):
                    allowed.append(f"{where} ({m}): {why}")
        for name, why in EXPECT_FIRING.items():
            if name not in EXPECT_FIRING_SEEN:
                failures.append(f"alert {name}: expected to fire ({why}) but its expression is empty")

        # ---------------------------------------------------------- seal / unseal
        sealed_expr = next(e for k, n, e in rule_exprs() if k == "alert" and n == "CustosSealed" and "unsealed" in e)
        st, body = http("PUT", f"{addr}/v1/sys/seal", token="root")
        t0 = time.monotonic()
        if st not in (200, 204):
            failures.append(f"seal: HTTP {st} {body}")
        else:
            if msg := health_agrees(addr, sealed=True):
                failures.append(msg)
            else:
                log("sealed: sys/health (503, sealed=true) agrees with custos_core_unsealed=0")
            try:
                wait_for(lambda: prom.query(sealed_expr), 5, "the CustosSealed expression after sealing")
                log(f"sealed: CustosSealed expression true after {time.monotonic() - t0:.1f}s")
                wait_for(lambda: prom.query('ALERTS{alertname="CustosSealed",alertstate="firing",cause="sealed"}'),
                         60, "CustosSealed to fire")
                log(f"sealed: CustosSealed firing after {time.monotonic() - t0:.1f}s")
            except SystemExit as e:
                failures.append(str(e))
            st, body = http("PUT", f"{addr}/v1/sys/unseal", {"key": unseal_key})
            if st != 200 or (body or {}).get("sealed") is not False:
                failures.append(f"unseal: HTTP {st} {body}")
            else:
                if msg := health_agrees(addr, sealed=False):
                    failures.append(msg)
                else:
                    log("unsealed: sys/health (200, sealed=false) agrees with custos_core_unsealed=1")
                t1 = time.monotonic()
                try:
                    wait_for(lambda: not prom.query(sealed_expr), 5, "the CustosSealed expression to clear")
                    log(f"unsealed: CustosSealed expression cleared after {time.monotonic() - t1:.1f}s")
                except SystemExit as e:
                    failures.append(str(e))

        if args.render_to:
            time.sleep(5)
            subprocess.run([sys.executable, str(REPO / "scripts/render-dashboards.py"), "--prometheus", prom_url,
                            "--out", str(args.render_to), "--range", "120"], check=True)
        traffic.stop.set()
        traffic.join(5)

        for a in sorted(set(allowed)):
            log(f"  allowed empty: {a}")
        if traffic.errors:
            log(f"  traffic errors (first 3 of {len(traffic.errors)}): {traffic.errors[:3]}")
        for f in failures:
            log(f"FAIL {f}")
        log(f"live check: {n_run} expressions run, {n_data} returned data, {len(set(allowed))} allowed empty, "
            f"{len(failures)} failures")
        ok = not failures
        return 0 if ok else 1
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"logs kept in {tmp}")


EXPECT_FIRING_SEEN: set[str] = set()

if __name__ == "__main__":
    sys.exit(main())
