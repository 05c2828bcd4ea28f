"""Tokens and ACL enforcement through hvac: create, lookup, renew, revoke,
and a token whose policy confines it to one subtree."""

from __future__ import annotations

import hvac.exceptions as hx
import pytest

from compat_lib import Target, assert_envelope, assert_error, assert_keys, uniq
from expected import TOKEN_AUTH_KEYS, TOKEN_LOOKUP_KEYS


def test_token_create_lookup_renew_revoke(target: Target) -> None:
    root = target.client()
    t = root.auth.token.create(policies=["default"], ttl="1h", meta={"team": "a"})
    assert_envelope(t, "token create")
    assert t["data"] is None
    auth = t["auth"]
    assert_keys(auth, TOKEN_AUTH_KEYS, "token create auth")
    assert auth["policies"] == ["default"]
    assert auth["token_policies"] == ["default"]
    assert auth["metadata"] == {"team": "a"}
    assert auth["lease_duration"] == 3600
    assert auth["renewable"] is True
    assert auth["token_type"] == "service"
    assert auth["orphan"] is False
    assert auth["num_uses"] == 0
    assert isinstance(auth["client_token"], str) and auth["client_token"]
    assert isinstance(auth["accessor"], str) and auth["accessor"]
    assert auth["accessor"] != auth["client_token"]
    tok = auth["client_token"]

    own = target.client(token=tok)
    assert own.is_authenticated()
    me = own.auth.token.lookup_self()
    assert_envelope(me, "lookup-self")
    assert_keys(me["data"], TOKEN_LOOKUP_KEYS, "lookup-self data")
    d = me["data"]
    assert d["id"] == tok
    assert d["accessor"] == auth["accessor"]
    assert d["policies"] == ["default"]
    assert d["meta"] == {"team": "a"}
    assert d["path"] == "auth/token/create"
    assert d["type"] == "service"
    assert d["creation_ttl"] == 3600
    assert 3500 <= d["ttl"] <= 3600
    assert d["renewable"] is True
    assert d["orphan"] is False
    assert isinstance(d["expire_time"], str) and d["expire_time"]
    assert isinstance(d["creation_time"], int)

    other = root.auth.token.lookup(tok)
    assert_keys(other["data"], TOKEN_LOOKUP_KEYS, "lookup data")
    assert other["data"]["id"] == tok

    r = own.auth.token.renew_self(increment="2h")
    assert_envelope(r, "renew-self")
    assert_keys(r["auth"], TOKEN_AUTH_KEYS, "renew-self auth")
    assert r["auth"]["client_token"] == tok
    assert r["auth"]["lease_duration"] == 7200
    assert 7100 <= own.auth.token.lookup_self()["data"]["ttl"] <= 7200

    resp = root.auth.token.revoke(tok)
    assert resp.status_code == 204, resp.text
    assert own.is_authenticated() is False
    with pytest.raises(hx.Forbidden, match="permission denied"):
        own.auth.token.lookup_self()
    # Looking up a dead token as root: 403 "bad token".
    assert_error(target.http("POST", "auth/token/lookup", json_body={"token": tok}), 403, "lookup revoked", "bad token")
    # Revoking an unknown token is a no-op 204.
    assert target.http("POST", "auth/token/revoke", json_body={"token": "bogus"}).status_code == 204


def test_root_token_lookup_self(target: Target) -> None:
    d = target.client().auth.token.lookup_self()["data"]
    assert_keys(d, TOKEN_LOOKUP_KEYS, "root lookup-self")
    assert d["id"] == target.token
    assert d["policies"] == ["root"]
    assert d["ttl"] == 0
    assert d["expire_time"] is None
    assert d["orphan"] is True
    assert d["renewable"] is False


def test_child_token_dies_with_parent(target: Target) -> None:
    root = target.client()
    plain = root.auth.token.create(policies=["default"], ttl="1h")["auth"]["client_token"]
    # The default policy does not allow auth/token/create: 403.
    with pytest.raises(hx.Forbidden):
        target.client(token=plain).auth.token.create(policies=["default"], ttl="1h")

    name = uniq("creator")
    root.sys.create_or_update_acl_policy(
        name=name, policy='path "auth/token/create" {\n  capabilities = ["update"]\n}\n'
    )
    parent = root.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"]
    child = target.client(token=parent).auth.token.create(policies=["default"], ttl="30m")["auth"]
    assert child["orphan"] is False
    assert child["policies"] == ["default"]
    assert root.auth.token.lookup(child["client_token"])["data"]["orphan"] is False
    # Revoking the parent revokes its children.
    assert root.auth.token.revoke(parent).status_code == 204
    assert target.client(token=child["client_token"]).is_authenticated() is False
    root.auth.token.revoke(plain)
    root.sys.delete_acl_policy(name)


def test_restricted_policy_token(target: Target) -> None:
    root = target.client()
    prefix = uniq("team")
    policy = (
        f'path "secret/data/{prefix}/*" {{\n  capabilities = ["create", "read", "update"]\n}}\n'
        f'path "secret/metadata/{prefix}/*" {{\n  capabilities = ["list", "read"]\n}}\n'
    )
    assert root.sys.create_or_update_acl_policy(name=prefix, policy=policy).status_code == 204
    root.secrets.kv.v2.create_or_update_secret(path="outside-" + prefix, secret={"x": "root-only"})
    tok = root.auth.token.create(policies=[prefix], ttl="10m")["auth"]["client_token"]
    c = target.client(token=tok)
    kv = c.secrets.kv.v2

    # Inside the policy: write, overwrite, read, list.
    assert kv.create_or_update_secret(path=f"{prefix}/app", secret={"k": "v1"})["data"]["version"] == 1
    assert kv.create_or_update_secret(path=f"{prefix}/app", secret={"k": "v2"})["data"]["version"] == 2
    got = kv.read_secret_version(path=f"{prefix}/app", raise_on_deleted_version=True)
    assert got["data"]["data"] == {"k": "v2"}
    assert kv.read_secret_metadata(path=f"{prefix}/app")["data"]["current_version"] == 2

    # Outside it: Forbidden (403 "permission denied"), and nothing is written.
    with pytest.raises(hx.Forbidden):
        kv.read_secret_version(path="outside-" + prefix, raise_on_deleted_version=True)
    with pytest.raises(hx.Forbidden):
        kv.create_or_update_secret(path="elsewhere-" + prefix, secret={"k": "v"})
    with pytest.raises(hx.Forbidden):
        kv.delete_metadata_and_all_versions(path=f"{prefix}/app")  # no delete capability
    with pytest.raises(hx.Forbidden):
        c.sys.list_mounted_secrets_engines()
    with pytest.raises(hx.Forbidden):
        c.sys.create_or_update_acl_policy(name=prefix, policy='path "*" { capabilities = ["sudo"] }')
    r = target.http("GET", "secret/data/outside-" + prefix, token=tok)
    assert_error(r, 403, "read outside policy", "permission denied")
    with pytest.raises(hx.InvalidPath):
        root.secrets.kv.v2.read_secret_version(path="elsewhere-" + prefix, raise_on_deleted_version=True)
    assert root.secrets.kv.v2.read_secret_metadata(path=f"{prefix}/app")["data"]["current_version"] == 2

    # The default policy still lets it look itself up.
    assert c.auth.token.lookup_self()["data"]["policies"] == sorted(["default", prefix])

    root.auth.token.revoke(tok)
    root.sys.delete_acl_policy(prefix)
