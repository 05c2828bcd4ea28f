"""Userpass logins through hvac, the `bao` CLI and raw HTTP, against OpenBao
and Custos side by side: the token a login issues, wrong credentials, the
user records, and login lockout with `sys/locked-users`."""

from __future__ import annotations

import json

import pytest

from compat_lib import Target, assert_error, assert_keys, shape, shape_diff, uniq

LOGIN_AUTH_KEYS = {
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


def enable_userpass(t: Target, **tune: object) -> str:
    mount = uniq("up")
    r = t.http("POST", f"sys/auth/{mount}", json_body={"type": "userpass"})
    assert r.status_code == 204, f"{t.name}: enable userpass: {r.status_code} {r.text}"
    if tune:
        r = t.http("POST", f"sys/auth/{mount}/tune", json_body=tune)
        assert r.status_code == 204, f"{t.name}: tune: {r.status_code} {r.text}"
    policy = f"path \"secret/data/{mount}/*\" {{ capabilities = [\"read\"] }}"
    r = t.http("PUT", f"sys/policies/acl/kvr-{mount}", json_body={"policy": policy})
    assert r.status_code == 204, r.text
    r = t.http(
        "POST",
        f"auth/{mount}/users/alice",
        json_body={"password": "correct horse", "token_policies": f"kvr-{mount}", "token_ttl": "1h"},
    )
    assert r.status_code == 204, f"{t.name}: create user: {r.status_code} {r.text}"
    return mount


def test_hvac_login_issues_a_token_shaped_like_openbaos(target: Target) -> None:
    mount = enable_userpass(target)
    r = target.http("POST", f"secret/data/{mount}/db", json_body={"data": {"pw": "s3cr3t"}})
    assert r.status_code == 200, r.text

    c = target.client(token="")
    resp = c.auth.userpass.login("alice", "correct horse", mount_point=mount)
    auth = resp["auth"]
    assert_keys(auth, LOGIN_AUTH_KEYS, f"{target.name} login auth")
    assert auth["policies"] == ["default", f"kvr-{mount}"]
    assert auth["token_policies"] == ["default", f"kvr-{mount}"]
    assert auth["metadata"] == {"username": "alice"}
    assert auth["lease_duration"] == 3600
    assert auth["renewable"] is True
    assert auth["orphan"] is True
    assert auth["token_type"] == "service"
    assert auth["entity_id"]
    assert c.token == auth["client_token"]
    assert c.secrets.kv.v2.read_secret_version(path=f"{mount}/db", raise_on_deleted_version=True)["data"]["data"] == {
        "pw": "s3cr3t"
    }
    me = c.auth.token.lookup_self()["data"]
    assert me["display_name"] == f"{mount}-alice"
    assert me["entity_id"] == auth["entity_id"]
    assert me["path"] == f"auth/{mount}/login/alice"
    assert me["meta"] == {"username": "alice"}

    # The same user logs in to the same entity.
    again = target.client(token="").auth.userpass.login("alice", "correct horse", mount_point=mount)
    assert again["auth"]["entity_id"] == auth["entity_id"]


def test_bao_cli_login(target: Target) -> None:
    mount = enable_userpass(target)
    res = target.bao(
        "login", "-method=userpass", f"-path={mount}", "-format=json", "-no-store",
        "username=alice", "password=correct horse",
        token=None,
    )
    assert res.rc == 0, f"{target.name}: {res}"
    body = res.json()
    assert body["auth"]["metadata"] == {"username": "alice"}
    assert body["auth"]["client_token"]
    bad = target.bao("login", "-method=userpass", f"-path={mount}", "-no-store",
                     "username=alice", "password=nope", token=None)
    assert bad.rc == 2, f"{target.name}: {bad}"
    assert "invalid username or password" in bad.stderr


@pytest.mark.parametrize(
    ("user", "body", "status", "contains"),
    [
        ("alice", {"password": "wrong"}, 400, "invalid username or password"),
        ("nobody", {"password": "wrong"}, 400, "invalid username or password"),
    ],
)
def test_wrong_credentials_are_refused(target: Target, user: str, body: dict, status: int, contains: str) -> None:
    mount = enable_userpass(target)
    r = target.http("POST", f"auth/{mount}/login/{user}", token=None, json_body=body)
    assert_error(r, status, f"{target.name} login {user}", contains)


def test_user_records_match(both: tuple[Target, Target]) -> None:
    shapes = []
    for t in both:
        mount = enable_userpass(t)
        r = t.http("GET", f"auth/{mount}/users/alice")
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["token_ttl"] == 3600
        assert "password" not in data and "password_hash" not in data
        lst = t.http("LIST", f"auth/{mount}/users").json()["data"]["keys"]
        assert lst == ["alice"]
        shapes.append(shape(data))
    diff = shape_diff(shapes[0], shapes[1], names=("openbao", "custos"))
    assert not diff, "\n".join(diff)


def test_lockout_and_locked_users(target: Target) -> None:
    mount = enable_userpass(target, user_lockout_config={"lockout_threshold": "2", "lockout_duration": "10m"})
    for _ in range(2):
        r = target.http("POST", f"auth/{mount}/login/alice", token=None, json_body={"password": "wrong"})
        assert r.status_code == 400, r.text
    r = target.http("POST", f"auth/{mount}/login/alice", token=None, json_body={"password": "correct horse"})
    assert_error(r, 403, f"{target.name} locked login", "permission denied")

    accessor = target.http("GET", "sys/auth").json()["data"][f"{mount}/"]["accessor"]
    r = target.http("GET", "sys/locked-users", params={"mount_accessor": accessor})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["total"] == 1, json.dumps(data)
    entry = data["by_namespace"][0]
    assert_keys(entry, {"namespace_id", "namespace_path", "counts", "mount_accessors"}, "by_namespace")
    assert entry["mount_accessors"] == [{"mount_accessor": accessor, "counts": 1, "alias_identifiers": ["alice"]}]

    r = target.http("POST", f"sys/locked-users/{accessor}/unlock/alice")
    assert r.status_code == 204, r.text
    r = target.http("POST", f"auth/{mount}/login/alice", token=None, json_body={"password": "correct horse"})
    assert r.status_code == 200, r.text
