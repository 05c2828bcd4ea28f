"""KV version 1 as Vault serves it: `secrets enable kv` without a version
mounts v1; hvac's `kv.v1`, raw HTTP and the `bao kv` CLI (through its
`sys/internal/ui/mounts` version detection) read, write, list and delete on
it; `sys/mounts/<mount>/tune` with `options.version=2` upgrades it in place,
keeping the data. Every expectation was observed on OpenBao 2.7.2."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import hvac.exceptions as hx
import pytest
import requests

from compat_lib import ENVELOPE_KEYS, Target, assert_envelope, assert_error, assert_keys, uniq

# `bao kv get -format=json` on a v1 mount: the secret, without wrap_info/auth.
CLI_V1_SECRET_KEYS = {"request_id", "lease_id", "lease_duration", "renewable", "data", "warnings"}
# OpenBao's default lease TTL (768h): the lease_duration of a v1 read.
DEFAULT_LEASE_TTL = 2764800


@pytest.fixture
def v1_mount(target: Target) -> Iterator[str]:
    """A fresh KV v1 mount enabled as hvac does it (`options` left out)."""
    path = uniq("kv1")
    r = target.client().sys.enable_secrets_engine("kv", path=path)
    assert r.status_code == 204, r.text
    try:
        yield path
    finally:
        target.client().sys.disable_secrets_engine(path=path)


def _options(target: Target, path: str) -> tuple[object, object]:
    """`options` as sys/mounts/<path> and sys/internal/ui/mounts/<path> show them."""
    one = target.http("GET", f"sys/mounts/{path}")
    assert one.status_code == 200, one.text
    ui = target.http("GET", f"sys/internal/ui/mounts/{path}")
    assert ui.status_code == 200, ui.text
    assert ui.json()["data"]["path"] == f"{path}/"
    assert ui.json()["data"]["type"] == "kv"
    return one.json()["data"]["options"], ui.json()["data"]["options"]


def test_enable_kv_without_version_mounts_v1(target: Target, v1_mount: str) -> None:
    # hvac sends `options: null`: OpenBao shows null, no version (v1).
    assert _options(target, v1_mount) == (None, None)
    entry = target.client().sys.list_mounted_secrets_engines()["data"][f"{v1_mount}/"]
    assert entry["type"] == "kv"
    assert entry["options"] is None
    assert entry["deprecation_status"] == "supported"
    # Not a v2 mount: there is no data/ layout, the path is the secret.
    assert target.http("POST", f"{v1_mount}/data/x", json_body={"data": {"a": "b"}}).status_code == 204
    got = target.http("GET", f"{v1_mount}/data/x").json()["data"]
    assert got == {"data": {"a": "b"}}


def test_enable_kv_version_1_and_kv_v2_types(target: Target) -> None:
    c = target.client()
    v1, v2, forced, raw = uniq("kv1o"), uniq("kv2t"), uniq("kv2f"), uniq("kv1r")
    c.sys.enable_secrets_engine("kv", path=v1, options={"version": "1"})
    # Raw API call leaving `options` out: OpenBao shows `{}` (still v1).
    assert target.http("POST", f"sys/mounts/{raw}", json_body={"type": "kv"}).status_code == 204
    c.sys.enable_secrets_engine("kv-v2", path=v2)
    # kv-v2 is version 2 whatever the options say.
    c.sys.enable_secrets_engine("kv-v2", path=forced, options={"version": "1"})
    try:
        assert _options(target, v1) == ({"version": "1"}, {"version": "1"})
        assert _options(target, v2) == ({"version": "2"}, {"version": "2"})
        assert _options(target, forced)[0] == {"version": "2"}
        assert _options(target, raw) == ({}, {})
        assert target.http("POST", f"{raw}/k", json_body={"a": "b"}).status_code == 204
        assert target.http("GET", f"{raw}/k").json()["data"] == {"a": "b"}
        for bad in ("0", "3", "abc"):
            r = target.http(
                "POST", f"sys/mounts/{uniq('kvbad')}", json_body={"type": "kv", "options": {"version": bad}}
            )
            assert_error(r, 400, f"kv version {bad}", 'nil backend of type "kv" returned from factory')
    finally:
        for p in (v1, v2, forced, raw):
            c.sys.disable_secrets_engine(path=p)


def test_cli_enable_kv_mounts_v1(target: Target) -> None:
    plain, versioned = uniq("clikv1"), uniq("clikv1v")
    assert target.bao("secrets", "enable", f"-path={plain}", "kv").rc == 0
    assert target.bao("secrets", "enable", f"-path={versioned}", "-version=1", "kv").rc == 0
    try:
        # The CLI sends `options: null`: OpenBao shows null, no version (v1).
        assert _options(target, plain) == (None, None)
        assert _options(target, versioned) == ({"version": "1"}, {"version": "1"})
        listed = target.bao("secrets", "list", "-format=json").json()
        assert listed[f"{plain}/"]["type"] == "kv"
        assert listed[f"{plain}/"]["options"] is None
    finally:
        target.bao("secrets", "disable", plain)
        target.bao("secrets", "disable", versioned)


def test_hvac_kv_v1_write_read_list_delete(target: Target, v1_mount: str) -> None:
    kv = target.client().secrets.kv.v1
    r = kv.create_or_update_secret(path="app/db", secret={"user": "u", "n": 1}, mount_point=v1_mount)
    assert r.status_code == 204, r.text
    kv.create_or_update_secret(path="app/other", secret={"x": "y"}, mount_point=v1_mount)
    kv.create_or_update_secret(path="top", secret={"x": "y"}, mount_point=v1_mount)

    got = kv.read_secret(path="app/db", mount_point=v1_mount)
    assert_keys(got, ENVELOPE_KEYS, "v1 read")
    assert got["data"] == {"user": "u", "n": 1}
    assert got["lease_duration"] == DEFAULT_LEASE_TTL
    assert (got["lease_id"], got["renewable"], got["warnings"], got["auth"]) == ("", False, None, None)

    assert kv.list_secrets(path="", mount_point=v1_mount)["data"] == {"keys": ["app/", "top"]}
    listed = kv.list_secrets(path="app", mount_point=v1_mount)
    assert_envelope(listed, "v1 list")
    assert listed["data"]["keys"] == ["db", "other"]
    with pytest.raises(hx.InvalidPath):
        kv.list_secrets(path="nope", mount_point=v1_mount)

    # Overwrite replaces the whole object (no versions, no merge).
    kv.create_or_update_secret(path="app/db", secret={"user": "v"}, mount_point=v1_mount)
    assert kv.read_secret(path="app/db", mount_point=v1_mount)["data"] == {"user": "v"}

    assert kv.delete_secret(path="app/db", mount_point=v1_mount).status_code == 204
    with pytest.raises(hx.InvalidPath):
        kv.read_secret(path="app/db", mount_point=v1_mount)
    # Deleting what is not there is a 204 too.
    assert kv.delete_secret(path="app/db", mount_point=v1_mount).status_code == 204
    assert kv.list_secrets(path="app", mount_point=v1_mount)["data"]["keys"] == ["other"]


def test_kv_v1_lease_duration_from_ttl(target: Target, v1_mount: str) -> None:
    cases = [
        ({"a": "b", "ttl": "1h"}, 3600),
        ({"a": "b", "ttl": 90}, 90),
        ({"a": "b", "lease": "30m"}, 1800),
        ({"a": "b", "ttl": "bogus"}, DEFAULT_LEASE_TTL),
    ]
    for i, (body, want) in enumerate(cases):
        assert target.http("POST", f"{v1_mount}/t{i}", json_body=body).status_code == 204
        r = target.http("GET", f"{v1_mount}/t{i}")
        assert r.status_code == 200, r.text
        assert r.json()["lease_duration"] == want, body
        assert r.json()["data"] == body
    # A tuned mount default is what entries without ttl get.
    assert target.http("POST", f"sys/mounts/{v1_mount}/tune", json_body={"default_lease_ttl": "1h"}).status_code == 204
    assert target.http("GET", f"{v1_mount}/t3").json()["lease_duration"] == 3600


def test_kv_v1_bad_requests(target: Target, v1_mount: str) -> None:
    assert_error(target.http("POST", f"{v1_mount}/k", json_body={}), 400, "empty write", "missing data fields")
    assert_error(
        target.http("POST", f"{v1_mount}/dir/", json_body={"a": "b"}),
        400,
        "write to a folder",
        "cannot write to a path ending in '/'",
    )
    assert_error(target.http("POST", v1_mount, json_body={"a": "b"}), 400, "write to the mount", "missing path")
    assert_error(
        target.http(
            "PATCH", f"{v1_mount}/k", json_body={"a": "b"}, headers={"Content-Type": "application/merge-patch+json"}
        ),
        405,
        "PATCH on v1",
    )
    # Nothing was written.
    r = target.http("GET", f"{v1_mount}/k")
    assert r.status_code == 404 and r.json() == {"errors": []}, r.text
    r = target.http("LIST", f"{v1_mount}/")
    assert r.status_code == 404 and r.json() == {"errors": []}, r.text
    # Folders and the root are not secrets.
    target.http("POST", f"{v1_mount}/dir/x", json_body={"a": "b"})
    assert target.http("GET", f"{v1_mount}/dir/").status_code == 404


def test_cli_kv_on_a_v1_mount(target: Target, v1_mount: str) -> None:
    path = f"{v1_mount}/app/db"
    r = target.bao("kv", "put", path, "a=1", "b=two")
    assert r.rc == 0, r
    assert f"Success! Data written to: {path}" in r.stdout
    r = target.bao("kv", "get", "-format=json", path)
    assert r.rc == 0, r
    got = r.json()
    assert_keys(got, CLI_V1_SECRET_KEYS, "kv get -format=json (v1)")
    assert got["data"] == {"a": "1", "b": "two"}
    assert got["lease_duration"] == DEFAULT_LEASE_TTL
    r = target.bao("kv", "get", "-field=b", path)
    assert (r.rc, r.stdout) == (0, "two"), r
    r = target.bao("kv", "get", f"-mount={v1_mount}", "app/db")
    assert r.rc == 0, r
    assert "== Data ==" in r.stdout and "two" in r.stdout

    assert target.bao("kv", "put", f"{v1_mount}/app/dir/z", "c=3").rc == 0
    r = target.bao("kv", "list", f"{v1_mount}/app")
    assert r.rc == 0, r
    assert r.stdout.split() == ["Keys", "----", "db", "dir/"]
    r = target.bao("kv", "list", "-format=json", f"{v1_mount}/app/")
    assert (r.rc, r.json()) == (0, ["db", "dir/"]), r

    # v2-only commands are refused by the CLI itself once it sees v1.
    r = target.bao("kv", "metadata", "get", path)
    assert r.rc == 1 and "Metadata not supported on KV Version 1" in r.stderr, r
    r = target.bao("kv", "patch", path, "a=2")
    assert r.rc == 2 and "must be version 2 for patch support" in r.stderr, r

    r = target.bao("kv", "delete", path)
    assert r.rc == 0, r
    assert f"Success! Data deleted (if it existed) at: {path}" in r.stdout
    r = target.bao("kv", "get", path)
    assert r.rc == 2 and f"No value found at {path}" in r.stderr, r
    r = target.bao("kv", "list", f"{v1_mount}/nope")
    assert r.rc == 2, r


def _eventually(fn: Callable[[], requests.Response], what: str, status: int = 200) -> requests.Response:
    """OpenBao upgrades a mount in the background ("unavailable for a brief
    period"): retry until the answer settles."""
    deadline = time.monotonic() + 15
    while True:
        r = fn()
        if r.status_code == status or time.monotonic() > deadline:
            assert r.status_code == status, f"{what}: {r.status_code} {r.text[:400]}"
            return r
        time.sleep(0.2)


def test_tune_upgrades_v1_to_v2_keeping_data(target: Target, v1_mount: str) -> None:
    kv1 = target.client().secrets.kv.v1
    kv1.create_or_update_secret(path="a", secret={"x": "1"}, mount_point=v1_mount)
    kv1.create_or_update_secret(path="dir/b", secret={"y": "2", "n": {"deep": [1, 2]}}, mount_point=v1_mount)

    r = target.http("POST", f"sys/mounts/{v1_mount}/tune", json_body={"options": {"version": "2"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["data"] is None
    assert len(body["warnings"]) == 1 and body["warnings"][0].startswith("Upgrading mount from version")
    assert _options(target, v1_mount) == ({"version": "2"}, {"version": "2"})
    tune = target.http("GET", f"sys/mounts/{v1_mount}/tune").json()["data"]
    assert tune["options"] == {"version": "2"}

    kv2 = target.client().secrets.kv.v2
    got = _eventually(lambda: target.http("GET", f"{v1_mount}/data/dir/b"), "v2 read after upgrade").json()["data"]
    assert got["data"] == {"y": "2", "n": {"deep": [1, 2]}}
    assert got["metadata"]["version"] == 1
    assert kv2.read_secret_version(path="a", mount_point=v1_mount, raise_on_deleted_version=True)["data"]["data"] == {
        "x": "1"
    }
    assert kv2.list_secrets(path="", mount_point=v1_mount)["data"]["keys"] == ["a", "dir/"]
    md = kv2.read_secret_metadata(path="a", mount_point=v1_mount)["data"]
    assert (md["current_version"], md["oldest_version"]) == (1, 1)
    # Scripts still using the v1 path get Vault's hint, not the data.
    for method, command in (("GET", "get"), ("POST", "put"), ("DELETE", "delete"), ("LIST", "list")):
        r = target.http(method, f"{v1_mount}/a", json_body={"x": "3"} if method == "POST" else None)
        assert r.status_code == 404, f"{method}: {r.text}"
        assert r.json()["data"] is None
        (warning,) = r.json()["warnings"]
        assert warning.startswith("Invalid path for a versioned K/V secrets engine."), warning
        assert f"'bao kv {command}'" in warning, warning
    # New writes are versioned after the upgrade.
    w = kv2.create_or_update_secret(path="a", secret={"x": "2"}, mount_point=v1_mount)
    assert w["data"]["version"] == 2
    r = target.bao("kv", "get", "-format=json", f"{v1_mount}/a")
    assert r.rc == 0, r
    assert r.json()["data"]["data"] == {"x": "2"}

    # The same version again changes nothing; going down or sideways is refused.
    assert (
        target.http("POST", f"sys/mounts/{v1_mount}/tune", json_body={"options": {"version": "2"}}).status_code == 204
    )
    assert_error(
        target.http("POST", f"sys/mounts/{v1_mount}/tune", json_body={"options": {"version": "1"}}),
        400,
        "downgrade",
        "cannot downgrade mount from version 2",
    )
    assert_error(
        target.http("POST", f"sys/mounts/{v1_mount}/tune", json_body={"options": {"version": "3"}}),
        400,
        "version 3",
        "invalid version provided: 3",
    )
    assert_error(
        target.http("POST", f"sys/mounts/{v1_mount}/tune", json_body={"options": {"version": "abc"}}),
        400,
        "version abc",
        "unable to parse options",
    )
    assert _options(target, v1_mount)[0] == {"version": "2"}


def test_cli_enable_versioning_upgrades(target: Target, v1_mount: str) -> None:
    assert target.bao("kv", "put", f"{v1_mount}/s", "k=v").rc == 0
    r = target.bao("kv", "enable-versioning", v1_mount)
    assert r.rc == 0, r
    assert f"Success! Tuned the secrets engine at: {v1_mount}/" in r.stdout
    _eventually(lambda: target.http("GET", f"{v1_mount}/data/s"), "v2 read after enable-versioning")
    r = target.bao("kv", "get", "-format=json", f"{v1_mount}/s")
    assert r.rc == 0, r
    got = r.json()["data"]
    assert got["data"] == {"k": "v"}
    assert got["metadata"]["version"] == 1
