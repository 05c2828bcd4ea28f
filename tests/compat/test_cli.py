"""The real `bao` CLI (VAULT_ADDR / VAULT_TOKEN) against each target: exit
codes and JSON output shapes. Exit codes: 0 success, 2 for "no value found",
API errors and a sealed server; 1 for usage / local errors."""

from __future__ import annotations

import tempfile
from pathlib import Path

from compat_lib import Target, assert_keys, uniq
from expected import (
    KV_METADATA_KEYS,
    KV_METADATA_KEYS_OPENBAO_ONLY,
    KV_READ_KEYS,
    KV_VERSION_KEYS,
    MOUNT_ENTRY_KEYS_REQUIRED,
    SEAL_STATUS_KEYS,
    STATUS_HA_KEYS,
    TOKEN_LOOKUP_KEYS,
)

# `-format=json` output of a secret: the CLI drops wrap_info/auth when null.
CLI_SECRET_KEYS = {"request_id", "lease_id", "lease_duration", "renewable", "data", "warnings"}
# `bao token create -format=json` .auth (the CLI's own struct: adds
# identity_policies, drops token_type and num_uses).
CLI_TOKEN_AUTH_KEYS = {
    "client_token",
    "accessor",
    "policies",
    "token_policies",
    "identity_policies",
    "metadata",
    "orphan",
    "entity_id",
    "lease_duration",
    "renewable",
    "mfa_requirement",
}
# `bao status -format=json` adds build_date and ha_enabled to sys/seal-status.
CLI_STATUS_EXTRA = {"build_date", "ha_enabled"}


def test_status(target: Target) -> None:
    r = target.bao("status")
    assert r.rc == 0, r
    assert "Sealed" in r.stdout and "false" in r.stdout
    r = target.bao("status", "-format=json")
    assert r.rc == 0, r
    s = r.json()
    assert_keys(s, SEAL_STATUS_KEYS | CLI_STATUS_EXTRA, "bao status -format=json", optional=STATUS_HA_KEYS)
    assert s["sealed"] is False and s["initialized"] is True
    assert s["type"] == "shamir"
    # status needs no token at all.
    assert target.bao("status", token=None).rc == 0


def test_kv_put_get_list_metadata_patch_delete(target: Target) -> None:
    base = uniq("cli")
    path = f"secret/{base}/x"
    r = target.bao("kv", "put", path, "a=1")
    assert r.rc == 0, r
    assert "version" in r.stdout
    r = target.bao("kv", "put", "-format=json", path, "a=1", "b=two")
    assert r.rc == 0, r
    out = r.json()
    assert_keys(out, CLI_SECRET_KEYS, "kv put -format=json")
    assert_keys(out["data"], KV_VERSION_KEYS, "kv put data")
    assert out["data"]["version"] == 2

    r = target.bao("kv", "get", "-format=json", path)
    assert r.rc == 0, r
    got = r.json()
    assert_keys(got, CLI_SECRET_KEYS, "kv get -format=json")
    assert_keys(got["data"], KV_READ_KEYS, "kv get data")
    assert_keys(got["data"]["metadata"], KV_VERSION_KEYS, "kv get metadata")
    assert got["data"]["data"] == {"a": "1", "b": "two"}
    assert target.bao("kv", "get", "-format=json", "-version=1", path).json()["data"]["data"] == {"a": "1"}
    r = target.bao("kv", "get", "-field=b", path)
    assert (r.rc, r.stdout) == (0, "two"), r

    target.bao("kv", "put", f"secret/{base}/y", "c=3")
    target.bao("kv", "put", f"secret/{base}/dir/z", "c=3")
    r = target.bao("kv", "list", f"secret/{base}/")
    assert r.rc == 0, r
    assert r.stdout.split() == ["Keys", "----", "dir/", "x", "y"]
    r = target.bao("kv", "list", "-format=json", f"secret/{base}")
    assert r.rc == 0, r
    assert r.json() == ["dir/", "x", "y"]

    r = target.bao("kv", "metadata", "get", "-format=json", path)
    assert r.rc == 0, r
    md = r.json()
    assert_keys(md["data"], KV_METADATA_KEYS, "kv metadata get data", optional=KV_METADATA_KEYS_OPENBAO_ONLY)
    assert md["data"]["current_version"] == 2
    assert sorted(md["data"]["versions"]) == ["1", "2"]

    r = target.bao("kv", "metadata", "put", "-max-versions=4", "-custom-metadata=owner=me", path)
    assert r.rc == 0, r
    md = target.bao("kv", "metadata", "get", "-format=json", path).json()["data"]
    assert (md["max_versions"], md["custom_metadata"]) == (4, {"owner": "me"})

    r = target.bao("kv", "patch", "-format=json", path, "b=patched", "c=new")
    assert r.rc == 0, r
    assert r.json()["data"]["version"] == 3
    assert target.bao("kv", "get", "-format=json", path).json()["data"]["data"] == {
        "a": "1",
        "b": "patched",
        "c": "new",
    }

    r = target.bao("kv", "delete", path)
    assert r.rc == 0, r
    assert "Success" in r.stdout
    # OpenBao's CLI prints the deleted version's metadata and exits 0.
    r = target.bao("kv", "get", "-format=json", path)
    assert r.rc == 0, r
    d = r.json()["data"]
    assert d["data"] is None
    assert d["metadata"]["deletion_time"] != ""
    assert d["metadata"]["version"] == 3

    r = target.bao("kv", "undelete", "-versions=3", path)
    assert r.rc == 0, r
    assert target.bao("kv", "get", "-format=json", path).json()["data"]["data"]["c"] == "new"
    r = target.bao("kv", "destroy", "-versions=1", path)
    assert r.rc == 0, r
    assert (
        target.bao("kv", "metadata", "get", "-format=json", path).json()["data"]["versions"]["1"]["destroyed"] is True
    )
    r = target.bao("kv", "metadata", "delete", path)
    assert r.rc == 0, r
    assert target.bao("kv", "get", path).rc == 2


def test_kv_errors_exit_2(target: Target) -> None:
    missing = f"secret/{uniq('missing')}"
    r = target.bao("kv", "get", "-format=json", missing)
    assert r.rc == 2, r
    assert "No value found at" in r.stderr
    r = target.bao("kv", "list", "-format=json", f"{missing}/")
    assert r.rc == 2, r
    r = target.bao("kv", "patch", missing, "a=1")
    assert r.rc == 2, r
    r = target.bao("kv", "metadata", "get", missing)
    assert r.rc == 2, r
    # CAS mismatch: API error, exit 2.
    path = f"secret/{uniq('cas')}"
    assert target.bao("kv", "put", "-cas=0", path, "a=1").rc == 0
    r = target.bao("kv", "put", "-cas=0", path, "a=2")
    assert r.rc == 2, r
    assert "check-and-set parameter did not match the current version" in r.stderr
    # A token without access: 403, exit 2.
    r = target.bao("kv", "get", path, token="s.bogusbogusbogus")
    assert r.rc == 2, r
    assert "permission denied" in r.stderr


def test_token_create_and_lookup(target: Target) -> None:
    r = target.bao("token", "create", "-policy=default", "-format=json")
    assert r.rc == 0, r
    out = r.json()
    assert out["data"] is None
    auth = out["auth"]
    assert_keys(auth, CLI_TOKEN_AUTH_KEYS, "token create -format=json auth")
    assert auth["policies"] == ["default"]
    assert auth["renewable"] is True
    # Default TTL in dev: the system max, 32 days.
    assert auth["lease_duration"] == 2764800
    tok = auth["client_token"]

    r = target.bao("token", "lookup", "-format=json")
    assert r.rc == 0, r
    me = r.json()["data"]
    assert_keys(me, TOKEN_LOOKUP_KEYS, "token lookup (self)")
    assert me["policies"] == ["root"]

    r = target.bao("token", "lookup", "-format=json", tok)
    assert r.rc == 0, r
    assert r.json()["data"]["id"] == tok
    r = target.bao("token", "lookup", "-format=json", token=tok)
    assert r.rc == 0, r
    assert r.json()["data"]["policies"] == ["default"]

    r = target.bao("token", "lookup", "s.notarealtoken")
    assert r.rc == 2, r
    assert "bad token" in r.stderr
    assert target.bao("token", "revoke", tok).rc == 0
    assert target.bao("token", "lookup", token=tok).rc == 2


def test_policy_write_read_list_delete(target: Target) -> None:
    name = uniq("clipol")
    text = f'path "secret/data/{name}/*" {{\n  capabilities = ["read"]\n}}\n'
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "p.hcl"
        f.write_text(text)
        r = target.bao("policy", "write", name, str(f))
        assert r.rc == 0, r
        assert f"Uploaded policy: {name}" in r.stdout
        bad = Path(d) / "bad.hcl"
        bad.write_text("path { nope")
        r = target.bao("policy", "write", uniq("bad"), str(bad))
        assert r.rc == 2, r
    r = target.bao("policy", "read", name)
    assert r.rc == 0, r
    assert r.stdout.strip() == text.strip()
    r = target.bao("policy", "read", "-format=json", name)
    assert r.rc == 0, r
    assert r.json() == {"policy": text}
    r = target.bao("policy", "list", "-format=json")
    assert r.rc == 0, r
    assert {name, "default", "root"} <= set(r.json())
    assert target.bao("policy", "read", uniq("nopol")).rc == 2
    assert target.bao("policy", "delete", name).rc == 0
    assert target.bao("policy", "read", name).rc == 2


def test_secrets_list_and_enable_disable(target: Target) -> None:
    r = target.bao("secrets", "list", "-format=json")
    assert r.rc == 0, r
    mounts = r.json()
    assert "secret/" in mounts and "sys/" in mounts
    assert_keys(mounts["secret/"], MOUNT_ENTRY_KEYS_REQUIRED, "secrets list secret/", exact=False)
    assert mounts["secret/"]["type"] == "kv"
    assert mounts["secret/"]["options"] == {"version": "2"}
    r = target.bao("secrets", "list")
    assert r.rc == 0, r
    assert "secret/" in r.stdout

    path = uniq("clikv")
    r = target.bao("secrets", "enable", f"-path={path}", "-version=2", "kv")
    assert r.rc == 0, r
    assert target.bao("secrets", "enable", f"-path={path}", "-version=2", "kv").rc == 2
    assert target.bao("kv", "put", f"{path}/a", "x=1").rc == 0
    assert target.bao("kv", "get", "-format=json", f"{path}/a").json()["data"]["data"] == {"x": "1"}
    r = target.bao("secrets", "disable", path)
    assert r.rc == 0, r
    assert f"{path}/" not in target.bao("secrets", "list", "-format=json").json()


def test_audit_list(target: Target) -> None:
    r = target.bao("audit", "list", "-format=json")
    assert r.rc == 0, r
    devices = r.json()
    assert isinstance(devices, dict)
    r = target.bao("audit", "list")
    if devices:
        assert r.rc == 0, r
    else:
        # OpenBao: no devices -> message and exit 2 (table format only).
        assert r.rc == 2, r
        assert "No audit devices are enabled." in r.stdout + r.stderr
