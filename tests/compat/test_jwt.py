"""JWT auth (`auth/jwt`), the same calls against OpenBao and Custos: config
with PEM keys or a JWKS URL (served by this test on 127.0.0.1), roles with
GitLab-CI-shaped bound claims (exact and glob), logins with PyJWT-signed
RS256/ES256 tokens, key rotation, and bad tokens/config refused with
OpenBao's status codes and wording. Every expectation was observed on
OpenBao 2.7.2 (its JWT plugin is built in)."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from compat_lib import Target, assert_error, assert_keys, uniq
from expected import TOKEN_AUTH_KEYS

CONFIG_KEYS = {
    "bound_issuer", "default_role", "jwks_ca_pem", "jwks_url", "jwt_supported_algs",
    "jwt_validation_pubkeys", "namespace_in_state", "oidc_client_id", "oidc_discovery_ca_pem",
    "oidc_discovery_url", "oidc_response_mode", "oidc_response_types",
    "override_allowed_server_names", "provider_config", "status",
}  # fmt: skip
ROLE_KEYS = {
    "allowed_redirect_uris", "bound_audiences", "bound_claims", "bound_claims_type", "bound_subject",
    "callback_mode", "claim_mappings", "clock_skew_leeway", "expiration_leeway", "groups_claim",
    "max_age", "not_before_leeway", "oauth2_metadata", "oidc_disable_confirmation", "oidc_scopes",
    "role_type", "token_bound_cidrs", "token_explicit_max_ttl", "token_max_ttl",
    "token_no_default_policy", "token_num_uses", "token_period", "token_policies",
    "token_policies_template_claims", "token_strictly_bind_ip", "token_ttl", "token_type",
    "user_claim", "user_claim_json_pointer", "verbose_oidc_logging",
}  # fmt: skip
ISSUER = "https://gitlab.example.com"
AUDIENCE = "https://custos.example.com"


def _b64(n: int, length: int | None = None) -> str:
    raw = n.to_bytes(length or (n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Key:
    """A signing key, its PEM and its JWK."""

    def __init__(self, kind: str, kid: str) -> None:
        self.kind, self.kid = kind, kid
        if kind == "RS256":
            self.priv: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            self.priv = ec.generate_private_key(ec.SECP256R1())
        self.pem = (
            self.priv.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def jwk(self) -> dict[str, str]:
        n = self.priv.public_key().public_numbers()
        if self.kind == "RS256":
            return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": _b64(n.n), "e": _b64(n.e)}
        return {"kty": "EC", "kid": self.kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                "x": _b64(n.x, 32), "y": _b64(n.y, 32)}  # fmt: skip

    def sign(self, claims: dict[str, Any]) -> str:
        return pyjwt.encode(claims, self.priv, algorithm=self.kind, headers={"kid": self.kid})


KEYS: dict[str, Key] = {}


def key(name: str) -> Key:
    if name not in KEYS:
        KEYS[name] = Key("ES256" if name.startswith("ec") else "RS256", name)
    return KEYS[name]


def gitlab(**changes: Any) -> dict[str, Any]:
    t = int(time.time())
    c: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "project_path:group/app:ref_type:branch:ref:main",
        "iat": t, "nbf": t, "exp": t + 300, "project_path": "group/app", "namespace_path": "group",
        "ref": "main", "ref_protected": "true", "environment": "production", "user_login": "alice",
    }  # fmt: skip
    for k, v in changes.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


class Jwks:
    """A JWKS endpoint on loopback that both servers fetch from."""

    def __init__(self) -> None:
        self.keys: list[dict[str, str]] = []
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.hits += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/keys"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwt_mount(target: Target) -> Iterator[str]:
    path = uniq("jwt")
    r = target.http("POST", f"sys/auth/{path}", json_body={"type": "jwt"})
    assert r.status_code == 204, f"{target.name}: {r.status_code} {r.text}"
    yield path
    target.http("DELETE", f"sys/auth/{path}")


def _ci_role(target: Target, mount: str, **extra: Any) -> None:
    body = {
        "role_type": "jwt", "user_claim": "user_login", "bound_audiences": AUDIENCE,
        "bound_claims": {"project_path": "group/app", "ref": "main", "ref_protected": "true"},
        "claim_mappings": {"project_path": "project_path", "ref": "ref"},
        "token_policies": "ci", "token_ttl": "10m",
    }  # fmt: skip
    body.update(extra)
    r = target.http("POST", f"auth/{mount}/role/ci", json_body=body)
    assert r.status_code == 204, f"{target.name}: {r.status_code} {r.text}"


def _login(target: Target, mount: str, token: str, role: str = "ci") -> Any:
    return target.http("POST", f"auth/{mount}/login", token=None, json_body={"role": role, "jwt": token})


def test_gitlab_id_token_login_with_pem_keys(target: Target, jwt_mount: str) -> None:
    r = target.http("POST", f"auth/{jwt_mount}/config", json_body={
        "jwt_validation_pubkeys": [key("rsa1").pem, key("ec1").pem], "bound_issuer": ISSUER,
        "jwt_supported_algs": "RS256,ES256"})  # fmt: skip
    assert r.status_code == 204, r.text
    cfg = target.http("GET", f"auth/{jwt_mount}/config").json()["data"]
    assert_keys(cfg, CONFIG_KEYS, f"{target.name} config")
    assert cfg["status"] == "valid" and cfg["jwt_supported_algs"] == ["RS256", "ES256"]
    assert cfg["jwks_url"] == "" and cfg["oidc_response_types"] == [] and cfg["provider_config"] == {}
    _ci_role(target, jwt_mount)
    role = target.http("GET", f"auth/{jwt_mount}/role/CI").json()["data"]
    assert_keys(role, ROLE_KEYS, f"{target.name} role")
    assert role["bound_audiences"] == [AUDIENCE] and role["oidc_scopes"] is None
    assert role["token_ttl"] == 600 and role["clock_skew_leeway"] == 0 and role["callback_mode"] == "client"

    for k in ("rsa1", "ec1"):
        r = _login(target, jwt_mount, key(k).sign(gitlab()))
        assert r.status_code == 200, f"{target.name} {k}: {r.text}"
        auth = r.json()["auth"]
        assert_keys(auth, TOKEN_AUTH_KEYS, f"{target.name} login auth")
        assert auth["policies"] == ["ci", "default"]
        assert auth["metadata"] == {"project_path": "group/app", "ref": "main", "role": "ci"}
        assert auth["lease_duration"] == 600 and auth["orphan"] is True
    me = target.http("GET", "auth/token/lookup-self", token=auth["client_token"]).json()["data"]
    assert me["display_name"] == f"{jwt_mount}-alice"

    # The real bao CLI, as the README's GitLab example runs it.
    out = target.bao("write", "-format=json", f"auth/{jwt_mount}/login", "role=ci",
                     f"jwt={key('rsa1').sign(gitlab())}", token=None)  # fmt: skip
    assert out.rc == 0, str(out)
    assert out.json()["auth"]["metadata"]["role"] == "ci"


def test_glob_bound_claims(target: Target, jwt_mount: str) -> None:
    target.http("POST", f"auth/{jwt_mount}/config", json_body={"jwt_validation_pubkeys": [key("rsa1").pem]})
    _ci_role(target, jwt_mount, bound_claims_type="glob",
             bound_claims={"project_path": "group/*", "ref": ["v*", "main"]})  # fmt: skip
    assert _login(target, jwt_mount, key("rsa1").sign(gitlab(project_path="group/lib", ref="v1.2"))).status_code == 200
    assert_error(_login(target, jwt_mount, key("rsa1").sign(gitlab(ref="dev"))), 400, f"{target.name} glob",
                 'error validating claims: claim "ref" does not match any associated bound claim values')  # fmt: skip


def test_bad_tokens_are_refused_with_openbaos_words(target: Target, jwt_mount: str) -> None:
    target.http("POST", f"auth/{jwt_mount}/config", json_body={
        "jwt_validation_pubkeys": [key("rsa1").pem], "bound_issuer": ISSUER})  # fmt: skip
    _ci_role(target, jwt_mount)
    t = int(time.time())
    good = key("rsa1").sign(gitlab())
    hs256 = pyjwt.encode(gitlab(), "a-shared-secret-of-32-bytes-or-more", algorithm="HS256")
    none = pyjwt.encode(gitlab(), None, algorithm="none")
    cases = [
        ("garbage", "garbage", "error validating token: error verifying token signature: "),
        ("truncated", good[:-20], "error validating token: error verifying token signature: "),
        ("alg none", none, "error validating token: error verifying token signature: "),
        ("hs256", hs256, "error validating token: error verifying token signature: "),
        ("other key", key("rsa9").sign(gitlab()), "no known key successfully validated the token signature"),
        ("expired", key("rsa1").sign(gitlab(exp=t - 900, iat=t - 1000, nbf=t - 1000)),
         "error validating token: invalid expiration time (exp) claim: token is expired"),
        ("not yet valid", key("rsa1").sign(gitlab(nbf=t + 900, iat=None)),
         "error validating token: invalid not before (nbf) claim: token not yet valid"),
        ("no times", key("rsa1").sign(gitlab(nbf=None, iat=None, exp=None)),
         "error validating token: no issued at (iat), not before (nbf), or expiration time (exp) claims in token"),
        ("issuer", key("rsa1").sign(gitlab(iss="https://evil")), "error validating token: invalid issuer (iss) claim"),
        ("audience", key("rsa1").sign(gitlab(aud="other")),
         "error validating token: invalid audience (aud) claim: audience claim does not match any expected audience"),
        ("user claim", key("rsa1").sign(gitlab(user_login=None)), 'claim "user_login" not found in token'),
        ("bound claim", key("rsa1").sign(gitlab(project_path="x/y")),
         'error validating claims: claim "project_path" does not match any associated bound claim values'),
    ]  # fmt: skip
    for what, tok, want in cases:
        assert_error(_login(target, jwt_mount, tok), 400, f"{target.name} {what}", want)
    assert_error(_login(target, jwt_mount, good, role="nope"), 400, "unknown role", 'role "nope" could not be found')
    r = target.http("POST", f"auth/{jwt_mount}/login", token=None, json_body={"role": "ci"})
    assert_error(r, 400, "no jwt", "missing token")
    r = target.http("POST", f"auth/{jwt_mount}/login", token=None, json_body={"jwt": good})
    assert_error(r, 400, "no role", "missing role")


def test_bad_config_and_roles_change_nothing(target: Target, jwt_mount: str) -> None:
    cases = [
        ({}, "exactly one of 'jwt_validation_pubkeys', 'jwks_url', 'jwks_pairs', 'oidc_discovery_url', "
             "or 'provider_config' must be set"),
        ({"jwt_validation_pubkeys": ["garbage"]}, "error parsing public key: "),
        ({"jwt_validation_pubkeys": [key("rsa1").pem], "jwt_supported_algs": "HS256"},
         'invalid jwt_supported_algs: unsupported signing algorithm "HS256"'),
        ({"jwks_url": "http://127.0.0.1:1/keys"}, "error checking jwks URL"),
        ({"jwks_url": "http://127.0.0.1:1/keys", "jwks_ca_pem": "junk"}, "error checking jwks_ca_pem"),
        ({"oidc_discovery_url": "http://127.0.0.1:1"}, "error checking oidc discovery URL: "),
    ]  # fmt: skip
    for body, want in cases:
        r = target.http("POST", f"auth/{jwt_mount}/config", json_body=body)
        assert_error(r, 400, f"{target.name} config {body}", want)
    assert target.http("GET", f"auth/{jwt_mount}/config").status_code == 404
    roles = [
        ({"role_type": "jwt", "bound_subject": "x"}, "a user claim must be defined on the role"),
        ({"role_type": "jwt", "user_claim": "sub"},
         "must have at least one bound constraint when creating/updating a role"),
        ({"user_claim": "sub"}, "'allowed_redirect_uris' must be set if 'role_type' is 'oidc' or unspecified."),
        ({"role_type": "jwt", "user_claim": "sub", "bound_claims_type": "glob", "bound_claims": {"a": 1}},
         "claim is not a string: 1"),
    ]  # fmt: skip
    for body, want in roles:
        assert_error(target.http("POST", f"auth/{jwt_mount}/role/r", json_body=body), 400, f"role {body}", want)
    assert target.http("GET", f"auth/{jwt_mount}/role/r").status_code == 404


def test_jwks_url_with_key_rotation(target: Target, jwt_mount: str) -> None:
    idp = Jwks()
    idp.keys = [key("rsa1").jwk(), key("ec1").jwk()]
    r = target.http("POST", f"auth/{jwt_mount}/config", json_body={"jwks_url": idp.url})
    assert r.status_code == 204, r.text
    _ci_role(target, jwt_mount)
    for k in ("rsa1", "ec1", "rsa1"):
        assert _login(target, jwt_mount, key(k).sign(gitlab())).status_code == 200
    # The provider rotates: a token under a new kid is accepted after the
    # server refetches the set.
    idp.keys.append(key("rsa2").jwk())
    r = _login(target, jwt_mount, key("rsa2").sign(gitlab()))
    assert r.status_code == 200, f"{target.name}: {r.text}"
    # A key the provider never published is refused.
    assert_error(_login(target, jwt_mount, key("rsa8").sign(gitlab())), 400, "unpublished key",
                 "error validating token: error verifying token signature: ")  # fmt: skip
    idp.server.shutdown()
