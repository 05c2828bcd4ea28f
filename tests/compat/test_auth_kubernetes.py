"""Kubernetes auth (`auth/kubernetes`), the same calls against OpenBao and
Custos, both pointed at one TokenReview **stand-in** this test starts on
127.0.0.1 (not Kubernetes: a small HTTP server answering
`POST /apis/authentication.k8s.io/v1/tokenreviews` as kube-apiserver does —
401 for an unknown reviewer bearer, `authenticated: true` with
`system:serviceaccount:<ns>:<name>` for tokens it was told about, filtered by
the requested audiences, `authenticated: false` for the rest — and able to
answer garbage or a 500). Service account tokens are built by hand in both
Kubernetes shapes (legacy secret tokens, projected tokens); without
`pem_keys` neither server checks their signature, the TokenReview decides.

Every expectation was observed on OpenBao 2.7.2 (its Kubernetes plugin is
built in). Where OpenBao answers a 500 (login before the mount is
configured, claims of the wrong type) or accepts what Custos refuses
(`bound_service_account_namespace_selector`, not implemented), the
difference is spelled out per target. Not exercised here: a TokenReview
endpoint that never answers — OpenBao's client has no timeout and waits
(Custos gives up after 5 s; tests/it/auth_kubernetes.rs covers it)."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compat_lib import Target, assert_error, assert_keys, uniq
from expected import TOKEN_AUTH_KEYS

REVIEWER = "reviewer-jwt-compat"
CONFIG_KEYS = {
    "kubernetes_host", "kubernetes_ca_cert", "pem_keys", "issuer", "disable_iss_validation",
    "disable_local_ca_jwt", "token_reviewer_jwt_set",
}  # fmt: skip
ROLE_KEYS = {
    "alias_name_source", "bound_service_account_names", "bound_service_account_namespace_selector",
    "bound_service_account_namespaces", "token_bound_cidrs", "token_explicit_max_ttl", "token_max_ttl",
    "token_no_default_policy", "token_num_uses", "token_period", "token_policies",
    "token_strictly_bind_ip", "token_ttl", "token_type",
}  # fmt: skip
ALIAS_META = {
    "service_account_name", "service_account_namespace", "service_account_secret_name", "service_account_uid",
}  # fmt: skip


def _ca_pem() -> str:
    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(k, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CA = _ca_pem()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sa_jwt(claims: dict[str, Any], alg: str = "RS256", sig: bytes = b"not-a-real-signature") -> str:
    header = _b64(json.dumps({"alg": alg, "kid": "sa"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(sig)}"


def legacy(ns: str, name: str, uid: str) -> dict[str, Any]:
    return {
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": ns,
        "kubernetes.io/serviceaccount/secret.name": f"{name}-token-x7",
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
        "sub": f"system:serviceaccount:{ns}:{name}",
    }


def projected(ns: str, name: str, uid: str, aud: list[str], **changes: Any) -> dict[str, Any]:
    t = int(time.time())
    c: dict[str, Any] = {
        "aud": aud, "exp": t + 3600, "iat": t, "nbf": t, "iss": "https://kubernetes.default.svc",
        "kubernetes.io": {"namespace": ns, "pod": {"name": f"{name}-0", "uid": "pod-1"},
                          "serviceaccount": {"name": name, "uid": uid}},
        "sub": f"system:serviceaccount:{ns}:{name}",
    }  # fmt: skip
    c.update(changes)
    return c


class TokenReviewStandIn:
    """The TokenReview stand-in (see the module doc)."""

    def __init__(self) -> None:
        self.accounts: dict[str, tuple[str, str, str, list[str]]] = {}
        self.mode = "ok"
        self.seen: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.mode == "garbage":
                    return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
                if outer.mode == "error":
                    return self._send(500, b"etcdserver: request timed out", "text/plain")
                bearer = self.headers.get("Authorization", "").removeprefix("Bearer ")
                spec = json.loads(raw).get("spec", {})
                outer.seen.append((bearer, spec))
                if bearer != REVIEWER:
                    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": "Unauthorized", "reason": "Unauthorized", "code": 401}  # fmt: skip
                    return self._send(401, json.dumps(status).encode())
                want = spec.get("audiences") or []
                acct = outer.accounts.get(spec.get("token", ""))
                if acct is None:
                    st: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token", "user": {}}
                else:
                    ns, name, uid, aud = acct
                    granted = [a for a in want if a in aud] if want else aud
                    if want and not granted:
                        st = {"authenticated": False, "error": "token audiences are invalid for the target audiences"}
                    else:
                        st = {"authenticated": True, "audiences": granted,
                              "user": {"username": f"system:serviceaccount:{ns}:{name}", "uid": uid}}  # fmt: skip
                review = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
                          "spec": spec, "status": st}  # fmt: skip
                self._send(201, json.dumps(review).encode())

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def issue(self, token: str, ns: str, name: str, uid: str, aud: list[str] | None = None) -> str:
        self.accounts[token] = (ns, name, uid, aud or [])
        return token


@pytest.fixture(scope="module")
def k8s() -> Iterator[TokenReviewStandIn]:
    s = TokenReviewStandIn()
    yield s
    s.server.shutdown()


@pytest.fixture
def k8s_mount(target: Target, k8s: TokenReviewStandIn) -> Iterator[str]:
    path = uniq("kubernetes")
    r = target.http("POST", f"sys/auth/{path}", json_body={"type": "kubernetes"})
    assert r.status_code == 204, f"{target.name}: {r.status_code} {r.text}"
    yield path
    target.http("DELETE", f"sys/auth/{path}")


def _configure(target: Target, mount: str, host: str, reviewer: str = REVIEWER) -> None:
    r = target.http("POST", f"auth/{mount}/config", json_body={
        "kubernetes_host": host, "kubernetes_ca_cert": CA, "token_reviewer_jwt": reviewer})  # fmt: skip
    assert r.status_code == 204, f"{target.name}: {r.status_code} {r.text}"


def _role(target: Target, mount: str, name: str = "web", **body: Any) -> None:
    body = {"bound_service_account_names": ["web", "api-*"], "bound_service_account_namespaces": "team-*",
            "token_policies": "team", "token_ttl": "1h", **body}  # fmt: skip
    r = target.http("POST", f"auth/{mount}/role/{name}", json_body=body)
    assert r.status_code == 204, f"{target.name}: {r.status_code} {r.text}"


def _login(target: Target, mount: str, jwt: Any, role: str = "web") -> Any:
    return target.http("POST", f"auth/{mount}/login", token=None, json_body={"role": role, "jwt": jwt})


def test_service_account_login(target: Target, k8s: TokenReviewStandIn, k8s_mount: str) -> None:
    _configure(target, k8s_mount, k8s.url)
    cfg = target.http("GET", f"auth/{k8s_mount}/config").json()["data"]
    assert_keys(cfg, CONFIG_KEYS, f"{target.name} config")
    assert cfg["token_reviewer_jwt_set"] is True and cfg["pem_keys"] == [] and cfg["disable_iss_validation"] is True
    assert cfg["kubernetes_ca_cert"] == CA and cfg["issuer"] == ""
    _role(target, k8s_mount)
    role = target.http("GET", f"auth/{k8s_mount}/role/web").json()["data"]
    assert_keys(role, ROLE_KEYS, f"{target.name} role")
    assert role["alias_name_source"] == "serviceaccount_uid" and role["bound_service_account_namespace_selector"] == ""
    assert role["bound_service_account_names"] == ["web", "api-*"] and role["token_ttl"] == 3600
    assert target.http("LIST", f"auth/{k8s_mount}/role").json()["data"]["keys"] == ["web"]

    uid = uniq("uid")
    tok = k8s.issue(sa_jwt(legacy("team-a", "web", uid)), "team-a", "web", uid)
    r = _login(target, k8s_mount, tok)
    assert r.status_code == 200, f"{target.name}: {r.text}"
    auth = r.json()["auth"]
    assert_keys(auth, TOKEN_AUTH_KEYS, f"{target.name} login auth")
    assert auth["policies"] == ["default", "team"] and auth["lease_duration"] == 3600
    assert auth["metadata"] == {
        "role": "web", "service_account_name": "web", "service_account_namespace": "team-a",
        "service_account_secret_name": "web-token-x7", "service_account_uid": uid}  # fmt: skip
    assert k8s.seen[-1][0] == REVIEWER and k8s.seen[-1][1]["token"] == tok
    me = target.http("GET", "auth/token/lookup-self", token=auth["client_token"]).json()["data"]
    assert me["display_name"] == f"{k8s_mount}-team-a-web" and me["path"] == f"auth/{k8s_mount}/login"
    alias = target.http("GET", f"identity/entity/id/{auth['entity_id']}").json()["data"]["aliases"][0]
    assert alias["name"] == uid and alias["mount_type"] == "kubernetes"
    assert set(alias["metadata"]) == ALIAS_META and alias["metadata"]["service_account_namespace"] == "team-a"

    # A projected token, a role audience and alias_name_source=serviceaccount_name,
    # logged in with the real bao CLI.
    _role(target, k8s_mount, audience="custos", alias_name_source="serviceaccount_name")
    uid2 = uniq("uid")
    tok2 = k8s.issue(sa_jwt(projected("team-b", "api-gw", uid2, ["custos", "x"])), "team-b", "api-gw", uid2,
                     ["custos", "x"])  # fmt: skip
    out = target.bao("write", "-format=json", f"auth/{k8s_mount}/login", "role=web", f"jwt={tok2}", token=None)
    assert out.rc == 0, str(out)
    auth2 = out.json()["auth"]
    meta2 = auth2["metadata"]
    assert meta2["service_account_secret_name"] == "" and meta2["service_account_name"] == "api-gw"
    assert k8s.seen[-1][1].get("audiences") == ["custos"]
    alias2 = target.http("GET", f"identity/entity/id/{auth2['entity_id']}").json()["data"]["aliases"][0]
    assert alias2["name"] == "team-b/api-gw"


def test_bad_logins_with_openbaos_words(target: Target, k8s: TokenReviewStandIn, k8s_mount: str) -> None:
    _role(target, k8s_mount)
    good = k8s.issue(sa_jwt(legacy("team-a", "web", "uid-good")), "team-a", "web", "uid-good")
    # Before any config: OpenBao 500s, Custos 400s, same words.
    r = _login(target, k8s_mount, good)
    assert_error(r, 500 if target.name == "openbao" else 400, f"{target.name} no config",
                 "could not load backend configuration")  # fmt: skip

    _configure(target, k8s_mount, k8s.url)
    _role(target, k8s_mount, "aud", bound_service_account_names="*", bound_service_account_namespaces="*",
          audience="custos")  # fmt: skip
    _role(target, k8s_mount, "office", bound_service_account_names="*", bound_service_account_namespaces="*",
          token_bound_cidrs="10.0.0.0/8")  # fmt: skip
    t = int(time.time())
    h, p, _ = good.split(".")
    no_uid = {**legacy("team-a", "web", ""), "kubernetes.io/serviceaccount/service-account.uid": None}
    none_header = _b64(b'{"alg":"none"}')
    cases = [
        ("wrong sa", "web", sa_jwt(legacy("team-a", "db", "u")), 403, "service account name not authorized"),
        ("wrong ns", "web", sa_jwt(legacy("prod", "web", "u")), 403, "namespace not authorized"),
        ("audience", "aud", sa_jwt(projected("team-a", "web", "u", ["other"])), 403,
         "invalid audience (aud) claim: audience claim does not match any expected audience"),
        ("expired", "aud", sa_jwt(projected("team-a", "web", "u", ["custos"], exp=t - 900, iat=t - 1000, nbf=t - 1000)),
         403, "invalid expiration time (exp) claim: token is expired"),
        ("unauthenticated", "web", sa_jwt(legacy("team-a", "web", "uid-unknown")), 403, "permission denied"),
        ("no uid", "web", sa_jwt(no_uid), 403, "permission denied"),
        ("garbage", "web", "not-a-jwt", 403, "permission denied"),
        ("truncated", "web", good[: len(good) // 2], 403, "permission denied"),
        ("alg none", "web", f"{none_header}.{p}.", 403, "permission denied"),
        ("hs256", "web", sa_jwt(legacy("team-a", "web", "u"), alg="HS256"), 403, "permission denied"),
        ("ps256", "web", sa_jwt(legacy("team-a", "web", "u"), alg="PS256"), 403,
         "invalid algorithm (alg) header parameter: token signed with unexpected algorithm"),
        ("unsigned", "web", f"{h}.{p}.", 403, "invalid algorithm (alg) header parameter: token must be signed"),
        ("claims not an object", "web", f"{h}.{_b64(b'[1]')}.c2ln", 403, "permission denied"),
        ("bound cidr", "office", good, 403, "permission denied"),
        ("unknown role", "nope", good, 400, 'invalid role name "nope"'),
        ("no role", "", good, 400, "missing role"),
        ("no jwt", "web", "", 400, "missing jwt"),
    ]  # fmt: skip
    for what, role, jwt, status, want in cases:
        assert_error(_login(target, k8s_mount, jwt, role=role), status, f"{target.name} {what}", want)
    assert_error(_login(target, k8s_mount, {"a": 1}), 400, f"{target.name} jwt object", "jwt")
    # Claims of the wrong type: OpenBao fails decoding them with a 500.
    typed = sa_jwt({**legacy("team-a", "web", "u"), "kubernetes.io/serviceaccount/namespace": 5})
    _role(target, k8s_mount, "any", bound_service_account_names="*", bound_service_account_namespaces="*")
    want = "'kubernetes.io/serviceaccount/namespace' expected type 'string'"
    status = 500 if target.name == "openbao" else 400
    assert_error(_login(target, k8s_mount, typed, role="any"), status, f"{target.name} typed claims", want)
    assert _login(target, k8s_mount, good).status_code == 200


def test_token_review_broken_refuses_the_login(target: Target, k8s: TokenReviewStandIn, k8s_mount: str) -> None:
    _configure(target, k8s_mount, k8s.url)
    _role(target, k8s_mount)
    tok = k8s.issue(sa_jwt(legacy("team-a", "web", "uid-b")), "team-a", "web", "uid-b")
    try:
        for mode in ("garbage", "error"):
            k8s.mode = mode
            assert_error(_login(target, k8s_mount, tok), 403, f"{target.name} {mode}", "permission denied")
    finally:
        k8s.mode = "ok"
    _configure(target, k8s_mount, k8s.url, reviewer="revoked-reviewer")
    assert_error(_login(target, k8s_mount, tok), 403, f"{target.name} reviewer refused", "permission denied")
    _configure(target, k8s_mount, "http://127.0.0.1:1")
    assert_error(_login(target, k8s_mount, tok), 403, f"{target.name} down", "permission denied")
    _configure(target, k8s_mount, k8s.url)
    assert _login(target, k8s_mount, tok).status_code == 200


def test_bad_config_and_roles_change_nothing(target: Target, k8s: TokenReviewStandIn, k8s_mount: str) -> None:
    cases = [
        ({}, "no host provided"),
        ({"kubernetes_host": k8s.url, "disable_local_ca_jwt": True},
         "kubernetes_ca_cert must be given when disable_local_ca_jwt is true"),
        ({"kubernetes_host": k8s.url, "kubernetes_ca_cert": CA, "pem_keys": "garbage"},
         "data does not contain any valid public keys"),
        ({"kubernetes_host": k8s.url},
         "open /var/run/secrets/kubernetes.io/serviceaccount/ca.crt: no such file or directory"),
    ]  # fmt: skip
    for body, want in cases:
        r = target.http("POST", f"auth/{k8s_mount}/config", json_body=body)
        assert_error(r, 400, f"{target.name} {body}", want)
    assert target.http("GET", f"auth/{k8s_mount}/config").status_code == 404
    roles = [
        ({"bound_service_account_namespaces": "*"}, '"bound_service_account_names" can not be empty'),
        ({"bound_service_account_names": "a"}, '"bound_service_account_namespaces" can not be empty if '
         '"bound_service_account_namespace_selector" is not set'),
        ({"bound_service_account_names": ["*", "a"], "bound_service_account_namespaces": "*"},
         'can not mix "*" with values'),
        ({"bound_service_account_names": "a", "bound_service_account_namespaces": "*", "alias_name_source": "pod"},
         "invalid alias_name_source, must be one of: serviceaccount_uid, serviceaccount_name"),
        ({"bound_service_account_names": "a", "bound_service_account_namespaces": "*", "ttl": "2h", "max_ttl": "1h"},
         "token ttl should not be greater than token max ttl"),
        ({"bound_service_account_names": "a", "bound_service_account_namespaces": "*", "token_ttl": "2h",
          "token_max_ttl": "1h"}, "'token_ttl' cannot be greater than 'token_max_ttl'"),
    ]  # fmt: skip
    for body, want in roles:
        assert_error(target.http("POST", f"auth/{k8s_mount}/role/r", json_body=body), 400, f"role {body}", want)
    assert target.http("GET", f"auth/{k8s_mount}/role/r").status_code == 404
    # Deprecated spellings read back as OpenBao shows them.
    old_body = {"bound_service_account_names": "a", "bound_service_account_namespaces": "*", "policies": "x,y",
                "ttl": "1h", "num_uses": 3, "period": 60, "bound_cidrs": "10.0.0.0/8"}  # fmt: skip
    assert target.http("POST", f"auth/{k8s_mount}/role/old", json_body=old_body).status_code == 204
    old = target.http("GET", f"auth/{k8s_mount}/role/old").json()["data"]
    assert_keys(old, ROLE_KEYS | {"policies", "ttl", "num_uses", "period", "bound_cidrs"}, f"{target.name} old role")
    assert (old["policies"], old["token_policies"]) == (["x", "y"], ["x", "y"])
    assert (old["ttl"], old["token_ttl"]) == (3600, 3600)
    assert (old["num_uses"], old["token_num_uses"], old["period"], old["token_period"]) == (3, 3, 60, 60)
    assert old["bound_cidrs"] == old["token_bound_cidrs"] == ["10.0.0.0/8"]
    # A namespace selector: OpenBao stores it (and asks the API for the
    # namespace's labels at login); Custos does not match selectors and says so.
    sel = {"bound_service_account_names": "a", "bound_service_account_namespace_selector": '{"matchLabels":{"a":"b"}}'}
    r = target.http("POST", f"auth/{k8s_mount}/role/sel", json_body=sel)
    if target.name == "openbao":
        assert r.status_code == 204, r.text
    else:
        assert_error(r, 400, "selector", "not supported")
