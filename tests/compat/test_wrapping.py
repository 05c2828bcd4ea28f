"""Response wrapping and cubbyhole with real clients: hvac's `sys.wrap` /
`sys.unwrap`, a KV read with `X-Vault-Wrap-TTL`, a wrapped token creation
whose unwrap gives back the auth block (how AppRole secret-id delivery and
`bao unwrap` use it), `sys/wrapping/lookup` without a token, rewrap, single
use, the bad-input answers, per-token cubbyholes, and the real `bao` CLI
(`bao kv get -wrap-ttl`, `bao unwrap`). Every expectation was observed on
OpenBao 2.7.2."""

from __future__ import annotations

import hvac
import pytest

from compat_lib import ENVELOPE_KEYS, Target, assert_error, assert_keys, shape, shape_diff, uniq

INVALID = "wrapping token is not valid or does not exist"
WRAP_INFO_KEYS = {"token", "accessor", "ttl", "creation_time", "creation_path"}
LOOKUP_KEYS = {"creation_path", "creation_time", "creation_ttl"}
AUTH_KEYS = {
    "client_token",
    "accessor",
    "policies",
    "token_policies",
    "metadata",
    "lease_duration",
    "renewable",
    "entity_id",
    "token_type",
    "orphan",
    "mfa_requirement",
    "num_uses",
}


def _wrapped(body: dict, what: str) -> dict:
    """A wrapped answer: the envelope with only `wrap_info` set."""
    assert_keys(body, ENVELOPE_KEYS, f"{what} envelope")
    assert body["request_id"] == "", f"{what}: request_id {body['request_id']!r}"
    assert (body["data"], body["auth"], body["warnings"]) == (None, None, None), what
    info = body["wrap_info"]
    assert isinstance(info, dict), f"{what}: wrap_info {info!r}"
    return info


def _kv_secret(target: Target) -> str:
    path = uniq("wrap")
    r = target.http("POST", f"secret/data/{path}", json_body={"data": {"api_key": "k-1"}})
    assert r.status_code == 200, r.text
    return path


def _wrapped_read(target: Target, path: str, ttl: str = "5m") -> dict:
    r = target.http("GET", f"secret/data/{path}", headers={"X-Vault-Wrap-TTL": ttl})
    assert r.status_code == 200, r.text
    return r.json()


def test_hvac_wrap_and_unwrap_once(target: Target) -> None:
    payload = {"role_id": "r-1", "n": 5, "nested": {"k": [1, 2]}}
    wrapped = target.client().sys.wrap(payload=payload, ttl=120)
    info = _wrapped(wrapped, "sys.wrap")
    assert_keys(info, WRAP_INFO_KEYS, "wrap_info")
    assert (info["ttl"], info["creation_path"]) == (120, "sys/wrapping/wrap")
    # The wrapping token unwraps itself, once.
    unwrapped = target.client(token=info["token"]).sys.unwrap()
    assert_keys(unwrapped, ENVELOPE_KEYS, "unwrap")
    assert unwrapped["data"] == payload
    with pytest.raises(hvac.exceptions.InvalidRequest) as err:
        target.client(token=info["token"]).sys.unwrap()
    assert INVALID in str(err.value)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        target.client().sys.unwrap(token=info["token"])


def test_wrapped_kv_read_lookup_and_third_party_unwrap(target: Target) -> None:
    path = _kv_secret(target)
    # hvac has no wrap_ttl on kv reads; its adapter sends the header.
    body = target.client().adapter.get(f"/v1/secret/data/{path}", headers={"X-Vault-Wrap-TTL": "300"})
    info = _wrapped(body, "wrapped kv read")
    assert_keys(info, WRAP_INFO_KEYS, "wrap_info")
    assert (info["ttl"], info["creation_path"]) == (300, f"secret/data/{path}")

    # Lookup is unauthenticated and spends nothing.
    r = target.http("POST", "sys/wrapping/lookup", token=None, json_body={"token": info["token"]})
    assert r.status_code == 200, r.text
    assert_keys(r.json()["data"], LOOKUP_KEYS, "lookup data")
    assert r.json()["data"]["creation_ttl"] == 300
    assert r.json()["data"]["creation_time"] == info["creation_time"]

    unwrapped = target.client().sys.unwrap(token=info["token"])
    assert unwrapped["data"]["data"] == {"api_key": "k-1"}
    assert unwrapped["data"]["metadata"]["version"] == 1
    r = target.http("POST", "sys/wrapping/lookup", token=None, json_body={"token": info["token"]})
    assert_error(r, 400, "lookup after unwrap", contains=INVALID)


def test_wrapped_token_creation_unwraps_to_the_auth_block(target: Target) -> None:
    r = target.http(
        "POST", "auth/token/create", json_body={"policies": ["default"]}, headers={"X-Vault-Wrap-TTL": "60"}
    )
    assert r.status_code == 200, r.text
    info = _wrapped(r.json(), "wrapped token create")
    assert_keys(info, WRAP_INFO_KEYS | {"wrapped_accessor"}, "wrap_info of a token")
    assert info["creation_path"] == "auth/token/create"

    unwrapped = target.client().sys.unwrap(token=info["token"])
    assert_keys(unwrapped, ENVELOPE_KEYS, "unwrapped token create")
    auth = unwrapped["auth"]
    assert_keys(auth, AUTH_KEYS, "unwrapped auth")
    assert auth["accessor"] == info["wrapped_accessor"]
    assert auth["policies"] == ["default"]
    me = target.client(token=auth["client_token"]).auth.token.lookup_self()
    assert me["data"]["accessor"] == info["wrapped_accessor"]


def test_rewrap_moves_the_response_to_a_new_token(target: Target) -> None:
    first = _wrapped(target.client().sys.wrap(payload={"s": "v"}, ttl=90), "wrap")["token"]
    r = target.http("POST", "sys/wrapping/rewrap", json_body={"token": first})
    assert r.status_code == 200, r.text
    info = _wrapped(r.json(), "rewrap")
    assert info["token"] != first
    assert (info["ttl"], info["creation_path"]) == (90, "sys/wrapping/wrap")
    r = target.http("POST", "sys/wrapping/unwrap", json_body={"token": first})
    assert_error(r, 400, "unwrap of a rewrapped token", contains=INVALID)
    assert target.client().sys.unwrap(token=info["token"])["data"] == {"s": "v"}


@pytest.mark.parametrize(
    ("method", "path", "token", "body", "headers", "status", "error"),
    [
        ("POST", "sys/wrapping/wrap", "root", {"x": "y"}, None, 400, "endpoint requires response wrapping to be used"),
        ("POST", "sys/wrapping/unwrap", "root", None, None, 400, INVALID),
        ("POST", "sys/wrapping/unwrap", "root", {"token": "nope"}, None, 400, INVALID),
        (
            "POST",
            "sys/wrapping/unwrap",
            "root",
            {"token": 5},
            None,
            403,
            "error validating wrapping token: could not decode token in request body",
        ),
        (
            "POST",
            "sys/wrapping/unwrap",
            "root",
            {"token": ""},
            None,
            403,
            "error validating wrapping token: empty token in request body",
        ),
        ("POST", "sys/wrapping/unwrap", None, None, None, 403, "error validating wrapping token: token is empty"),
        ("POST", "sys/wrapping/lookup", None, None, None, 403, "error validating wrapping token: token is empty"),
        ("POST", "sys/wrapping/lookup", None, {"token": "root"}, None, 400, INVALID),
        ("POST", "sys/wrapping/rewrap", "root", None, None, 400, INVALID),
        (
            "GET",
            "sys/mounts",
            "root",
            None,
            {"X-Vault-Wrap-TTL": "abc"},
            400,
            'error parsing X-Vault-Wrap-TTL header: time: invalid duration "abc"',
        ),
        (
            "GET",
            "sys/mounts",
            "root",
            None,
            {"X-Vault-Wrap-TTL": "-5"},
            400,
            "error parsing X-Vault-Wrap-TTL header: requested wrap ttl cannot be negative",
        ),
    ],
)
def test_bad_wrapping_input(
    target: Target,
    method: str,
    path: str,
    token: str | None,
    body: dict | None,
    headers: dict | None,
    status: int,
    error: str,
) -> None:
    r = target.http(method, path, token=token if token is None else target.token, json_body=body, headers=headers)
    errors = assert_error(r, status, f"{method} {path} {body}")
    assert errors == [error]


def test_cubbyhole_is_per_token(target: Target) -> None:
    c = target.client()
    a = c.auth.token.create(policies=["default"])["auth"]["client_token"]
    b = c.auth.token.create(policies=["default"])["auth"]["client_token"]
    assert target.http("POST", "cubbyhole/app/db", token=a, json_body={"password": "p"}).status_code == 204
    r = target.http("GET", "cubbyhole/app/db", token=a)
    assert r.status_code == 200 and r.json()["data"] == {"password": "p"}, r.text
    r = target.http("LIST", "cubbyhole/", token=a)
    assert r.status_code == 200 and r.json()["data"]["keys"] == ["app/"], r.text
    for other in (b, target.token):
        assert target.http("GET", "cubbyhole/app/db", token=other).status_code == 404
    assert target.http("DELETE", "cubbyhole/app/db", token=a).status_code == 204
    assert target.http("GET", "cubbyhole/app/db", token=a).status_code == 404


def test_cli_kv_get_wrapped_and_bao_unwrap(target: Target) -> None:
    path = _kv_secret(target)
    r = target.bao("kv", "get", "-wrap-ttl=5m", "-format=json", f"secret/{path}")
    assert r.rc == 0, r
    info = r.json()["wrap_info"]
    assert (info["ttl"], info["creation_path"]) == (300, f"secret/data/{path}")
    # `bao unwrap TOKEN` with a root token names it in the body.
    r = target.bao("unwrap", "-format=json", info["token"])
    assert r.rc == 0, r
    assert r.json()["data"]["data"] == {"api_key": "k-1"}
    r = target.bao("unwrap", "-format=json", info["token"])
    assert r.rc == 2 and INVALID in r.stderr, r
    # `bao unwrap` with the wrapping token as the client token.
    info = target.bao("kv", "get", "-wrap-ttl=60", "-format=json", f"secret/{path}").json()["wrap_info"]
    r = target.bao("unwrap", "-format=json", token=info["token"])
    assert r.rc == 0, r
    assert r.json()["data"]["data"] == {"api_key": "k-1"}


def test_wrapping_shapes_match_openbao(both: tuple[Target, Target]) -> None:
    bodies = []
    for t in both:
        path = _kv_secret(t)
        wrapped = _wrapped_read(t, path)
        token = wrapped["wrap_info"]["token"]
        lookup = t.http("POST", "sys/wrapping/lookup", token=None, json_body={"token": token}).json()
        unwrapped = t.http("POST", "sys/wrapping/unwrap", token=token).json()
        again = t.http("POST", "sys/wrapping/unwrap", token=token).json()
        bodies.append({"wrapped": wrapped, "lookup": lookup, "unwrapped": unwrapped, "again": again})
    diff = shape_diff(shape(bodies[0]), shape(bodies[1]), names=("openbao", "custos"))
    assert not diff, "\n".join(diff)


def test_wrapped_login_unwraps_to_the_issued_token(target: Target) -> None:
    mount = uniq("up")
    assert target.http("POST", f"sys/auth/{mount}", json_body={"type": "userpass"}).status_code == 204
    r = target.http("POST", f"auth/{mount}/users/ci", json_body={"password": "pw-ci", "token_policies": "default"})
    assert r.status_code == 204, r.text
    r = target.http(
        "POST",
        f"auth/{mount}/login/ci",
        token=None,
        json_body={"password": "pw-ci"},
        headers={"X-Vault-Wrap-TTL": "60"},
    )
    assert r.status_code == 200, r.text
    info = _wrapped(r.json(), "wrapped login")
    assert_keys(info, WRAP_INFO_KEYS | {"wrapped_accessor"}, "wrap_info of a login")
    assert info["creation_path"] == f"auth/{mount}/login/ci"
    unwrapped = target.client(token=info["token"]).sys.unwrap()
    assert unwrapped["auth"]["accessor"] == info["wrapped_accessor"]
    me = target.client(token=unwrapped["auth"]["client_token"]).auth.token.lookup_self()
    assert me["data"]["meta"]["username"] == "ci"


def test_approle_secret_id_delivered_wrapped(target: Target) -> None:
    mount = uniq("ar")
    assert target.http("POST", f"sys/auth/{mount}", json_body={"type": "approle"}).status_code == 204
    assert target.http("POST", f"auth/{mount}/role/web", json_body={"token_policies": "default"}).status_code == 204
    role_id = target.http("GET", f"auth/{mount}/role/web/role-id").json()["data"]["role_id"]
    r = target.bao("write", "-wrap-ttl=2m", "-format=json", "-f", f"auth/{mount}/role/web/secret-id")
    assert r.rc == 0, r
    info = r.json()["wrap_info"]
    assert_keys(info, WRAP_INFO_KEYS | {"wrapped_accessor"}, "wrap_info of a secret-id")
    assert info["creation_path"] == f"auth/{mount}/role/web/secret-id"
    r = target.bao("unwrap", "-format=json", token=info["token"])
    assert r.rc == 0, r
    data = r.json()["data"]
    assert data["secret_id_accessor"] == info["wrapped_accessor"]
    login = target.http(
        "POST", f"auth/{mount}/login", token=None, json_body={"role_id": role_id, "secret_id": data["secret_id"]}
    )
    assert login.status_code == 200, login.text
    assert login.json()["auth"]["client_token"]
