"""System backend through hvac: health, seal status, mounts, audit devices,
ACL policies."""

from __future__ import annotations

import hvac.exceptions as hx
import pytest

from compat_lib import ENVELOPE_KEYS, Target, assert_envelope, assert_error, assert_keys, uniq
from expected import (
    AUDIT_ENTRY_KEYS,
    HEALTH_KEYS,
    MOUNT_CONFIG_KEYS_REQUIRED,
    MOUNT_ENTRY_KEYS_OPENBAO_ONLY,
    MOUNT_ENTRY_KEYS_REQUIRED,
    POLICY_READ_KEYS,
    POLICY_READ_KEYS_OPENBAO_ONLY,
    SEAL_STATUS_KEYS,
    STATUS_AUDIT_ENABLE_API,
)


def test_is_authenticated(target: Target) -> None:
    assert target.client().is_authenticated() is True
    assert target.client(token="not-a-real-token").is_authenticated() is False


def test_health_status(target: Target) -> None:
    # hvac's default is HEAD: status only, empty body.
    head = target.client().sys.read_health_status()
    assert head.status_code == 200
    assert head.text == ""
    h = target.client().sys.read_health_status(method="GET")
    assert_keys(h, HEALTH_KEYS, "sys/health")
    assert h["initialized"] is True
    assert h["sealed"] is False
    assert h["standby"] is False
    assert h["replication_performance_mode"] == "disabled"
    assert h["replication_dr_mode"] == "disabled"
    assert isinstance(h["server_time_utc"], int)
    assert isinstance(h["version"], str) and h["version"]
    # No token needed, and the token is ignored.
    r = target.http("GET", "sys/health", token=None)
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("application/json")
    assert target.http("GET", "sys/health", token="bogus").status_code == 200


def test_seal_status(target: Target) -> None:
    s = target.client().sys.read_seal_status()
    assert_keys(s, SEAL_STATUS_KEYS, "sys/seal-status")
    assert s["type"] == "shamir"
    assert s["initialized"] is True
    assert s["sealed"] is False
    assert (s["t"], s["n"], s["progress"]) == (1, 1, 0)
    assert s["nonce"] == ""
    assert s["recovery_seal"] is False
    assert s["migration"] is False
    assert isinstance(s["storage_type"], str) and s["storage_type"]
    assert target.http("GET", "sys/seal-status", token=None).status_code == 200


def _mount_entry_ok(entry: dict, what: str) -> None:
    assert_keys(entry, MOUNT_ENTRY_KEYS_REQUIRED, what, exact=False)
    extra = set(entry) - MOUNT_ENTRY_KEYS_REQUIRED - MOUNT_ENTRY_KEYS_OPENBAO_ONLY
    assert not extra, f"{what}: keys OpenBao does not send: {sorted(extra)}"
    assert_keys(entry["config"], MOUNT_CONFIG_KEYS_REQUIRED, f"{what}.config", exact=False)


def test_list_mounted_secrets_engines(target: Target) -> None:
    m = target.client().sys.list_mounted_secrets_engines()
    # OpenBao returns the mounts both at the top level (legacy) and in `data`.
    assert_envelope({k: m[k] for k in ENVELOPE_KEYS}, "sys/mounts")
    for where in (m, m["data"]):
        assert "secret/" in where and "sys/" in where, f"sys/mounts: {sorted(where)}"
    secret = m["data"]["secret/"]
    _mount_entry_ok(secret, "sys/mounts secret/")
    assert secret["type"] == "kv"
    assert secret["options"] == {"version": "2"}
    assert m["data"]["sys/"]["type"] == "system"
    assert m["secret/"] == m["data"]["secret/"]


def test_enable_and_disable_kv2_engine(target: Target) -> None:
    c = target.client()
    path = uniq("kv2")
    resp = c.sys.enable_secrets_engine("kv", path=path, options={"version": "2"})
    assert resp.status_code == 204, resp.text
    try:
        mounts = c.sys.list_mounted_secrets_engines()["data"]
        assert f"{path}/" in mounts
        entry = mounts[f"{path}/"]
        _mount_entry_ok(entry, f"sys/mounts {path}/")
        assert entry["type"] == "kv"
        assert entry["options"] == {"version": "2"}
        # Reading one mount: sys/mounts/<path>.
        one = target.http("GET", f"sys/mounts/{path}")
        assert one.status_code == 200, one.text
        assert one.json()["data"]["type"] == "kv"
        # The new mount works as KV v2.
        w = c.secrets.kv.v2.create_or_update_secret(path="a", secret={"x": "y"}, mount_point=path)
        assert w["data"]["version"] == 1
        got = c.secrets.kv.v2.read_secret_version(path="a", mount_point=path, raise_on_deleted_version=True)
        assert got["data"]["data"] == {"x": "y"}
        # Mounting the same path again: 400 "path is already in use at <path>/".
        with pytest.raises(hx.InvalidRequest, match="path is already in use"):
            c.sys.enable_secrets_engine("kv", path=path, options={"version": "2"})
    finally:
        resp = c.sys.disable_secrets_engine(path=path)
    assert resp.status_code == 204, resp.text
    assert f"{path}/" not in c.sys.list_mounted_secrets_engines()["data"]
    # Its data is gone with it: the route no longer exists (404).
    r = target.http("GET", f"{path}/data/a")
    assert_error(r, 404, "read under a disabled mount")
    # Disabling a mount that does not exist is a no-op 204.
    assert c.sys.disable_secrets_engine(path=uniq("nomount")).status_code == 204


def test_bad_mount_requests(target: Target) -> None:
    assert_error(
        target.http("POST", f"sys/mounts/{uniq('m')}", json_body={"type": "nosuchengine"}), 400, "unknown engine type"
    )
    assert_error(target.http("POST", f"sys/mounts/{uniq('m')}", json_body={}), 400, "no engine type")
    assert_error(target.http("POST", "sys/mounts/sys", json_body={"type": "kv"}), 400, "mount over sys/")
    assert_error(
        target.http("POST", "sys/mounts/secret/sub", json_body={"type": "kv"}),
        400,
        "mount inside secret/",
        "path is already in use",
    )
    assert_error(target.http("DELETE", "sys/mounts/sys"), 400, "unmount sys/")


def test_list_enabled_audit_devices(target: Target) -> None:
    a = target.client().sys.list_enabled_audit_devices()
    # Dev OpenBao has no audit device ({}); Custos may declare one in config.
    assert isinstance(a["data"], dict)
    for name, entry in a["data"].items():
        assert name.endswith("/"), name
        assert_keys(entry, AUDIT_ENTRY_KEYS, f"sys/audit {name}")
        assert entry["path"] == name


def test_audit_devices_cannot_be_enabled_through_the_api(target: Target) -> None:
    # OpenBao 2.x: audit devices are declared in server config only.
    name = uniq("aud")
    r = target.http(
        "PUT", f"sys/audit/{name}", json_body={"type": "file", "options": {"file_path": "/tmp/compat-audit.log"}}
    )
    assert_error(r, STATUS_AUDIT_ENABLE_API, "PUT sys/audit/x", "cannot enable audit device via API")
    assert f"{name}/" not in target.client().sys.list_enabled_audit_devices()["data"]
    # Disabling an unknown device is a no-op 204.
    assert target.http("DELETE", f"sys/audit/{name}").status_code == 204


POLICY_HCL = 'path "secret/data/{p}/*" {{\n  capabilities = ["create", "read", "update"]\n}}\n'


def test_acl_policy_crud(target: Target) -> None:
    c = target.client()
    name = uniq("pol")
    text = POLICY_HCL.format(p=name)
    resp = c.sys.create_or_update_acl_policy(name=name, policy=text)
    assert resp.status_code == 204, resp.text
    r = c.sys.read_acl_policy(name)
    assert_envelope(r, "sys/policies/acl read")
    assert_keys(r["data"], POLICY_READ_KEYS, "sys/policies/acl data", optional=POLICY_READ_KEYS_OPENBAO_ONLY)
    assert r["data"]["name"] == name
    assert r["data"]["policy"] == text
    lst = c.sys.list_acl_policies()
    assert_envelope(lst, "sys/policies/acl list")
    assert set(lst["data"]) == {"keys"}
    assert {name, "default", "root"} <= set(lst["data"]["keys"])
    assert lst["data"]["keys"] == sorted(lst["data"]["keys"])
    # Names are case-insensitive and stored lower-case.
    assert c.sys.read_acl_policy(name.upper())["data"]["name"] == name

    assert c.sys.delete_acl_policy(name).status_code == 204
    with pytest.raises(hx.InvalidPath):
        c.sys.read_acl_policy(name)
    assert name not in c.sys.list_acl_policies()["data"]["keys"]
    # Deleting again is a no-op 204.
    assert c.sys.delete_acl_policy(name).status_code == 204


def test_acl_policy_bad_input(target: Target) -> None:
    name = uniq("badpol")
    assert_error(
        target.http("PUT", f"sys/policies/acl/{name}", json_body={"policy": "path { nope"}),
        400,
        "unparsable policy",
        "failed to parse policy",
    )
    assert_error(target.http("PUT", f"sys/policies/acl/{name}", json_body={}), 400, "missing policy")
    assert target.http("GET", f"sys/policies/acl/{name}").status_code == 404
    assert_error(target.http("DELETE", "sys/policies/acl/root"), 400, "delete root", "cannot delete")
    assert_error(
        target.http("DELETE", "sys/policies/acl/default"), 400, "delete default", "cannot delete default policy"
    )
    assert_error(
        target.http("PUT", "sys/policies/acl/root", json_body={"policy": 'path "x" { capabilities = ["read"] }'}),
        400,
        "update root",
        "cannot update",
    )
