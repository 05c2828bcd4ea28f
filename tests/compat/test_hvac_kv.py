"""KV v2 through hvac, the most common Python client: write, read, versions,
patch, CAS, delete/undelete/destroy, metadata, list, delete-all."""

from __future__ import annotations

import hvac.exceptions as hx
import pytest

from compat_lib import Target, assert_envelope, assert_keys, uniq
from expected import (
    KV_METADATA_KEYS,
    KV_METADATA_KEYS_OPENBAO_ONLY,
    KV_METADATA_VERSION_KEYS,
    KV_READ_KEYS,
    KV_VERSION_KEYS,
)


def kv(target: Target):
    return target.client().secrets.kv.v2


def read(target: Target, path: str, version: int | None = None, raise_on_deleted: bool = True) -> dict:
    return kv(target).read_secret_version(
        path=path, version=version, mount_point="secret", raise_on_deleted_version=raise_on_deleted
    )


def current_version(target: Target, path: str) -> int:
    return kv(target).read_secret_metadata(path=path, mount_point="secret")["data"]["current_version"]


def test_write_and_read_roundtrip(target: Target) -> None:
    path = uniq("rt")
    w = kv(target).create_or_update_secret(path=path, secret={"user": "alice", "n": 3, "nested": {"k": [1, "x"]}})
    assert_envelope(w, "kv write")
    assert_keys(w["data"], KV_VERSION_KEYS, "kv write data")
    assert w["data"]["version"] == 1
    assert w["data"]["destroyed"] is False
    assert w["data"]["deletion_time"] == ""
    assert w["data"]["custom_metadata"] is None
    assert isinstance(w["data"]["created_time"], str) and w["data"]["created_time"].endswith("Z")
    assert w["auth"] is None and w["warnings"] is None

    r = read(target, path)
    assert_envelope(r, "kv read")
    assert_keys(r["data"], KV_READ_KEYS, "kv read data")
    assert_keys(r["data"]["metadata"], KV_VERSION_KEYS, "kv read metadata")
    # JSON types survive the round trip (numbers stay numbers).
    assert r["data"]["data"] == {"user": "alice", "n": 3, "nested": {"k": [1, "x"]}}
    assert r["data"]["metadata"]["version"] == 1


def test_versions_increment_and_old_versions_stay_readable(target: Target) -> None:
    path = uniq("ver")
    for i in range(1, 4):
        w = kv(target).create_or_update_secret(path=path, secret={"i": str(i)})
        assert w["data"]["version"] == i
    assert read(target, path)["data"]["data"] == {"i": "3"}
    assert read(target, path, version=1)["data"]["data"] == {"i": "1"}
    assert read(target, path, version=2)["data"]["metadata"]["version"] == 2
    # A version that never existed: 404 -> InvalidPath.
    with pytest.raises(hx.InvalidPath):
        read(target, path, version=99)


def test_read_missing_secret_is_invalid_path(target: Target) -> None:
    with pytest.raises(hx.InvalidPath):
        read(target, uniq("missing"))


def test_patch_merges(target: Target) -> None:
    path = uniq("patch")
    kv(target).create_or_update_secret(path=path, secret={"a": "1", "b": "2"})
    p = kv(target).patch(path=path, secret={"b": "20", "c": "3"}, mount_point="secret")
    assert p["data"]["version"] == 2
    assert read(target, path)["data"]["data"] == {"a": "1", "b": "20", "c": "3"}
    with pytest.raises(hx.InvalidPath):
        kv(target).patch(path=uniq("nopatch"), secret={"x": "1"}, mount_point="secret")


def test_cas_success_and_mismatch(target: Target) -> None:
    path = uniq("cas")
    # cas=0: write only if the secret does not exist.
    assert kv(target).create_or_update_secret(path=path, secret={"v": "1"}, cas=0)["data"]["version"] == 1
    with pytest.raises(hx.InvalidRequest, match="check-and-set parameter did not match the current version"):
        kv(target).create_or_update_secret(path=path, secret={"v": "x"}, cas=0)
    assert kv(target).create_or_update_secret(path=path, secret={"v": "2"}, cas=1)["data"]["version"] == 2
    with pytest.raises(hx.InvalidRequest, match="check-and-set parameter did not match the current version"):
        kv(target).create_or_update_secret(path=path, secret={"v": "x"}, cas=1)
    # The failed writes changed nothing.
    assert current_version(target, path) == 2
    assert read(target, path)["data"]["data"] == {"v": "2"}


def test_delete_latest_then_undelete(target: Target) -> None:
    path = uniq("del")
    kv(target).create_or_update_secret(path=path, secret={"v": "1"})
    kv(target).create_or_update_secret(path=path, secret={"v": "2"})
    resp = kv(target).delete_latest_version_of_secret(path=path, mount_point="secret")
    assert resp.status_code == 204, resp.text

    # Reading a deleted version: 404 -> InvalidPath ...
    with pytest.raises(hx.InvalidPath):
        read(target, path)
    # ... but the 404 body still carries the metadata (hvac returns it when asked).
    body = read(target, path, raise_on_deleted=False)
    assert body["data"]["data"] is None
    assert_keys(body["data"]["metadata"], KV_VERSION_KEYS, "deleted version metadata")
    assert body["data"]["metadata"]["version"] == 2
    assert body["data"]["metadata"]["deletion_time"] != ""
    assert body["data"]["metadata"]["destroyed"] is False
    # Older versions are untouched.
    assert read(target, path, version=1)["data"]["data"] == {"v": "1"}

    resp = kv(target).undelete_secret_versions(path=path, versions=[2], mount_point="secret")
    assert resp.status_code == 204, resp.text
    r = read(target, path)
    assert r["data"]["data"] == {"v": "2"}
    assert r["data"]["metadata"]["deletion_time"] == ""


def test_destroy_versions(target: Target) -> None:
    path = uniq("destroy")
    kv(target).create_or_update_secret(path=path, secret={"v": "1"})
    kv(target).create_or_update_secret(path=path, secret={"v": "2"})
    resp = kv(target).destroy_secret_versions(path=path, versions=[1], mount_point="secret")
    assert resp.status_code == 204, resp.text
    with pytest.raises(hx.InvalidPath):
        read(target, path, version=1)
    # The raw 404 still carries the version's metadata, marked destroyed.
    raw = target.http("GET", f"secret/data/{path}", params={"version": "1"})
    assert raw.status_code == 404, raw.text
    assert raw.json()["data"]["data"] is None
    assert raw.json()["data"]["metadata"]["destroyed"] is True
    assert raw.json()["data"]["metadata"]["deletion_time"] == ""
    meta = kv(target).read_secret_metadata(path=path, mount_point="secret")["data"]
    assert meta["versions"]["1"]["destroyed"] is True
    assert meta["versions"]["2"]["destroyed"] is False
    # Destroyed is permanent: undelete does not bring it back.
    kv(target).undelete_secret_versions(path=path, versions=[1], mount_point="secret")
    with pytest.raises(hx.InvalidPath):
        read(target, path, version=1)
    assert read(target, path)["data"]["data"] == {"v": "2"}


def test_read_and_update_metadata(target: Target) -> None:
    path = uniq("meta")
    kv(target).create_or_update_secret(path=path, secret={"v": "1"})
    kv(target).create_or_update_secret(path=path, secret={"v": "2"})
    m = kv(target).read_secret_metadata(path=path, mount_point="secret")
    assert_envelope(m, "kv metadata")
    d = m["data"]
    assert_keys(d, KV_METADATA_KEYS, "kv metadata data", optional=KV_METADATA_KEYS_OPENBAO_ONLY)
    assert d["current_version"] == 2
    assert d["oldest_version"] == 0
    assert d["max_versions"] == 0
    assert d["cas_required"] is False
    assert d["delete_version_after"] == "0s"
    assert d["custom_metadata"] is None
    assert set(d["versions"]) == {"1", "2"}
    for v in d["versions"].values():
        assert_keys(v, KV_METADATA_VERSION_KEYS, "kv metadata version")

    resp = kv(target).update_metadata(
        path=path, max_versions=5, custom_metadata={"owner": "team-a"}, mount_point="secret"
    )
    assert resp.status_code == 204, resp.text
    d = kv(target).read_secret_metadata(path=path, mount_point="secret")["data"]
    assert d["max_versions"] == 5
    assert d["custom_metadata"] == {"owner": "team-a"}
    assert d["current_version"] == 2
    # custom_metadata shows up on the version metadata of reads too.
    assert read(target, path)["data"]["metadata"]["custom_metadata"] == {"owner": "team-a"}


def test_list_secrets(target: Target) -> None:
    base = uniq("list")
    for p in ("b", "a", "c/d", "c/e"):
        kv(target).create_or_update_secret(path=f"{base}/{p}", secret={"x": "1"})
    lst = kv(target).list_secrets(path=base, mount_point="secret")
    assert_envelope(lst, "kv list")
    assert lst["data"] == {"keys": ["a", "b", "c/"]}
    assert kv(target).list_secrets(path=f"{base}/c", mount_point="secret")["data"]["keys"] == ["d", "e"]
    with pytest.raises(hx.InvalidPath):
        kv(target).list_secrets(path=uniq("nolist"), mount_point="secret")


def test_list_secrets_paginated(target: Target) -> None:
    """OpenBao's paginated LIST (`after`, `limit` as query parameters): the
    items that sort after `after` (which need not exist), at most `limit`."""
    base = uniq("page")
    for p in ("b", "a", "c/d", "c/e", "c0", "c-x", "d/e/f"):
        kv(target).create_or_update_secret(path=f"{base}/{p}", secret={"x": "1"})

    def page(**params: str) -> list[str] | int:
        r = target.http("LIST", f"secret/metadata/{base}/", params=params)
        return r.json()["data"]["keys"] if r.status_code == 200 else r.status_code

    assert page() == ["a", "b", "c-x", "c/", "c0", "d/"]
    assert page(limit="2") == ["a", "b"]
    assert page(after="a", limit="2") == ["b", "c-x"]
    assert page(after="c") == ["c-x", "c/", "c0", "d/"]
    assert page(after="c/") == ["c0", "d/"]
    assert page(after="bb", limit="1") == ["c-x"]
    assert page(limit="0") == page(limit="-1") == page()
    assert page(after="zz") == 404
    assert page(limit="abc") == 400


def test_delete_metadata_and_all_versions(target: Target) -> None:
    base = uniq("delall")
    kv(target).create_or_update_secret(path=f"{base}/gone", secret={"v": "1"})
    kv(target).create_or_update_secret(path=f"{base}/gone", secret={"v": "2"})
    kv(target).create_or_update_secret(path=f"{base}/kept", secret={"v": "1"})
    resp = kv(target).delete_metadata_and_all_versions(path=f"{base}/gone", mount_point="secret")
    assert resp.status_code == 204, resp.text
    with pytest.raises(hx.InvalidPath):
        kv(target).read_secret_metadata(path=f"{base}/gone", mount_point="secret")
    with pytest.raises(hx.InvalidPath):
        read(target, f"{base}/gone", version=1)
    assert kv(target).list_secrets(path=base, mount_point="secret")["data"]["keys"] == ["kept"]
    # Writing again starts over at version 1.
    assert kv(target).create_or_update_secret(path=f"{base}/gone", secret={"v": "3"})["data"]["version"] == 1
