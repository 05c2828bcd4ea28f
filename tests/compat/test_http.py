"""Raw HTTP: the bad-input sweep, tokens, methods, body limits, LIST.

Expected status codes and messages are OpenBao 2.7.2's (see expected.py).
After every rejected request the secret it aimed at must be unchanged:
"bad input gets a clear error in Vault's shape and changes nothing".
"""

from __future__ import annotations

import json

import pytest

from compat_lib import Target, assert_envelope, assert_error, uniq
from expected import (
    MAX_REQUEST_BYTES,
    STATUS_BAD_CAS,
    STATUS_BAD_TOKEN,
    STATUS_MALFORMED_JSON,
    STATUS_NO_DATA,
    STATUS_NO_TOKEN,
    STATUS_PATCH_NO_CTYPE,
    STATUS_PATCH_WRONG_CTYPE,
    STATUS_TOO_LARGE,
    STATUS_UNKNOWN_MOUNT,
    STATUS_UNKNOWN_SYS_PATH,
    STATUS_UNSUPPORTED_OP,
    STATUS_WRONG_TYPE,
)

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def assert_unchanged(target: Target, path: str, version: int = 1, data: dict | None = None) -> None:
    """The secret written by the `kv_secret` fixture is still exactly v1."""
    r = target.http("GET", f"secret/metadata/{path}")
    assert r.status_code == 200, r.text
    meta = r.json()["data"]
    assert meta["current_version"] == version, f"current_version moved to {meta['current_version']}"
    assert sorted(meta["versions"]) == [str(v) for v in range(1, version + 1)]
    r = target.http("GET", f"secret/data/{path}")
    assert r.status_code == 200, r.text
    assert r.json()["data"]["data"] == (data if data is not None else {"a": "1"})


# (label, raw body, expected status, substring of an error message)
BAD_KV_BODIES = [
    ("truncated JSON", b'{"data":', STATUS_MALFORMED_JSON, "failed to decode JSON input"),
    ("not JSON at all", b"{not json}", STATUS_MALFORMED_JSON, "failed to decode JSON input"),
    ("JSON array", b"[1, 2]", STATUS_MALFORMED_JSON, "failed to decode JSON input"),
    ("JSON string", b'"x"', STATUS_MALFORMED_JSON, "failed to decode JSON input"),
    ("data is a string", b'{"data": "notamap"}', STATUS_WRONG_TYPE, 'field "data"'),
    ("data is a list", b'{"data": [1]}', STATUS_WRONG_TYPE, 'field "data"'),
    ("options is a string", b'{"data": {"a": "2"}, "options": "x"}', STATUS_WRONG_TYPE, 'field "options"'),
    ("cas is a non-numeric string", b'{"data": {"a": "2"}, "options": {"cas": "x"}}', STATUS_BAD_CAS, "check-and-set"),
    ("cas is fractional", b'{"data": {"a": "2"}, "options": {"cas": 1.5}}', STATUS_BAD_CAS, "check-and-set"),
    ("cas is negative", b'{"data": {"a": "2"}, "options": {"cas": -1}}', 400, "check-and-set parameter did not match"),
    ("cas mismatch", b'{"data": {"a": "2"}, "options": {"cas": 7}}', 400, "check-and-set parameter did not match"),
    ("empty body", b"", STATUS_NO_DATA, "no data provided"),
    ("empty object", b"{}", STATUS_NO_DATA, "no data provided"),
]


@pytest.mark.parametrize("label,body,status,message", BAD_KV_BODIES, ids=[b[0] for b in BAD_KV_BODIES])
def test_bad_kv_write_is_rejected_and_changes_nothing(
    target: Target, kv_secret: str, label: str, body: bytes, status: int, message: str
) -> None:
    r = target.http("POST", f"secret/data/{kv_secret}", data=body, headers={"Content-Type": "application/json"})
    assert_error(r, status, label, message)
    assert_unchanged(target, kv_secret)


def test_bad_kv_patch_is_rejected_and_changes_nothing(target: Target, kv_secret: str) -> None:
    path = f"secret/data/{kv_secret}"
    assert_error(target.http("PATCH", path, data=b'{"data":', headers=MERGE_PATCH), 400, "patch malformed JSON")
    assert_error(target.http("PATCH", path, data=b'{"data":"x"}', headers=MERGE_PATCH), 400, "patch data string")
    assert_error(
        target.http("PATCH", path, json_body={"data": {"b": "2"}}),
        STATUS_PATCH_WRONG_CTYPE,
        "patch with application/json",
        "PATCH requires Content-Type of application/merge-patch+json",
    )
    assert_error(
        target.http("PATCH", path, data=b'{"data":{"b":"2"}}'),
        STATUS_PATCH_NO_CTYPE,
        "patch without Content-Type",
    )
    assert_unchanged(target, kv_secret)
    # And the real thing works: merge-patch, version 2.
    r = target.http("PATCH", path, data=json.dumps({"data": {"b": "2"}}), headers=MERGE_PATCH)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["version"] == 2
    assert_unchanged(target, kv_secret, version=2, data={"a": "1", "b": "2"})
    # PATCH of a secret that does not exist: 404 (OpenBao sends an empty body).
    r = target.http("PATCH", f"secret/data/{uniq('nopatch')}", data=b'{"data":{"b":"2"}}', headers=MERGE_PATCH)
    assert r.status_code == 404


def test_bad_kv_metadata_and_version_input(target: Target, kv_secret: str) -> None:
    md = f"secret/metadata/{kv_secret}"
    assert_error(
        target.http("POST", md, json_body={"max_versions": "abc"}), 400, "max_versions string", 'field "max_versions"'
    )
    assert_error(
        target.http("POST", md, json_body={"custom_metadata": "abc"}),
        400,
        "custom_metadata string",
        'field "custom_metadata"',
    )
    assert_error(
        target.http("POST", f"secret/undelete/{kv_secret}", json_body={}),
        400,
        "undelete without versions",
        "No version number provided",
    )
    assert_error(
        target.http("POST", f"secret/destroy/{kv_secret}", json_body={"versions": "x"}), 400, "destroy versions=x"
    )
    assert_error(target.http("GET", f"secret/data/{kv_secret}", params={"version": "abc"}), 400, "read version=abc")
    assert_error(
        target.http("POST", "secret/data/", json_body={"data": {"a": "1"}}), 400, "write to a path ending in /"
    )
    r = target.http("GET", f"secret/data/{kv_secret}", params={"version": "99"})
    assert_error(r, 404, "read version 99")
    assert r.json() == {"errors": []}
    assert target.http("GET", md).json()["data"]["max_versions"] == 0
    assert_unchanged(target, kv_secret)


def test_unknown_top_level_field_is_ignored_with_a_warning(target: Target, kv_secret: str) -> None:
    r = target.http("POST", f"secret/data/{kv_secret}", json_body={"data": {"a": "2"}, "bogus": 1})
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == ["Endpoint ignored these unrecognized parameters: [bogus]"]
    assert_unchanged(target, kv_secret, version=2, data={"a": "2"})


def test_unknown_paths(target: Target) -> None:
    r = target.http("GET", "sys/no-such-endpoint")
    assert_error(r, STATUS_UNKNOWN_SYS_PATH, "unknown sys path", "unsupported path")
    assert_error(
        target.http("GET", "sys/no/such/thing"), STATUS_UNKNOWN_SYS_PATH, "deep unknown sys path", "unsupported path"
    )
    assert_error(
        target.http("GET", f"{uniq('nomount')}/x"), STATUS_UNKNOWN_MOUNT, "unknown mount", "no handler for route"
    )
    r = target.http("GET", f"secret/data/{uniq('absent')}")
    assert_error(r, 404, "absent secret")
    assert r.json() == {"errors": []}
    assert_error(target.http("GET", f"secret/metadata/{uniq('absent')}"), 404, "absent metadata")
    assert_error(target.http("GET", "sys/policies/acl/" + uniq("nopol")), 404, "absent policy")


def test_missing_and_bad_tokens(target: Target, kv_secret: str) -> None:
    path = f"secret/data/{kv_secret}"
    errs = assert_error(target.http("GET", path, token=None), STATUS_NO_TOKEN, "no token")
    assert errs == ["permission denied"]
    errs = assert_error(target.http("GET", path, token="s.bogusbogusbogus"), STATUS_BAD_TOKEN, "bad token")
    assert errs == ["permission denied"]
    errs = assert_error(
        target.http("GET", path, token=None, headers={"Authorization": "Bearer bogus"}), 403, "bad bearer"
    )
    assert errs == ["permission denied"]
    # Writes without a valid token change nothing.
    assert_error(target.http("POST", path, token=None, json_body={"data": {"a": "9"}}), 403, "write without token")
    assert_error(target.http("POST", path, token="bogus", json_body={"data": {"a": "9"}}), 403, "write with bad token")
    assert_error(target.http("GET", "sys/mounts", token=None), 403, "sys/mounts without token", "permission denied")
    assert_error(
        target.http("GET", "sys/policies/acl", token=None, params={"list": "true"}), 403, "policies without token"
    )
    assert_unchanged(target, kv_secret)


def test_bearer_token_works_like_x_vault_token(target: Target, kv_secret: str) -> None:
    path = f"secret/data/{kv_secret}"
    a = target.http("GET", path)
    b = target.http("GET", path, token=None, headers={"Authorization": f"Bearer {target.token}"})
    assert a.status_code == b.status_code == 200
    assert a.json()["data"] == b.json()["data"]
    w = target.http(
        "POST", path, token=None, headers={"Authorization": f"Bearer {target.token}"}, json_body={"data": {"a": "2"}}
    )
    assert w.status_code == 200, w.text
    assert w.json()["data"]["version"] == 2


@pytest.mark.parametrize(
    "method,path,headers",
    [
        ("PATCH", "sys/mounts", MERGE_PATCH),
        ("PUT", "sys/mounts", None),
        ("DELETE", "sys/mounts", None),
        ("PATCH", "sys/policy/default", MERGE_PATCH),
        ("DELETE", "sys/health", None),
        ("PATCH", "sys/health", MERGE_PATCH),
        ("POST", "sys/seal-status", None),
        ("DELETE", "sys/seal-status", None),
        ("FOO", "secret/data/x", None),
        ("LIST", "secret/data/", None),
    ],
)
def test_unsupported_method_is_405(target: Target, method: str, path: str, headers: dict | None) -> None:
    r = target.http(method, path, data=b"{}", headers=headers)
    assert_error(r, STATUS_UNSUPPORTED_OP, f"{method} {path}")


def test_patch_content_type_is_checked_before_the_route(target: Target) -> None:
    # OpenBao checks PATCH's Content-Type first: 415 / 400 even where PATCH is unsupported.
    assert_error(target.http("PATCH", "sys/mounts", json_body={}), STATUS_PATCH_WRONG_CTYPE, "PATCH sys/mounts json")
    r = target.http("PATCH", "sys/mounts", data=b"{}")
    assert_error(r, STATUS_PATCH_NO_CTYPE, "PATCH sys/mounts without Content-Type")


def _big_body(size: int) -> bytes:
    pre, post = b'{"data":{"a":"', b'"}}'
    return pre + b"x" * (size - len(pre) - len(post)) + post


def test_oversize_body_is_413_and_changes_nothing(target: Target, kv_secret: str) -> None:
    path = f"secret/data/{kv_secret}"
    body = _big_body(33 * 1024 * 1024)
    errs = assert_error(
        target.http("POST", path, data=body, headers={"Content-Type": "application/json"}),
        STATUS_TOO_LARGE,
        "33 MiB body",
    )
    assert errs == ["http: request body too large"]
    # One byte over the limit is already too large; the limit applies before auth.
    assert_error(target.http("POST", path, data=_big_body(MAX_REQUEST_BYTES + 1)), STATUS_TOO_LARGE, "32 MiB + 1 byte")
    assert_error(target.http("POST", path, token=None, data=body), STATUS_TOO_LARGE, "33 MiB body without a token")

    # Chunked upload (no Content-Length) is held to the same limit.
    def chunks():
        step = 1024 * 1024
        for i in range(0, len(body), step):
            yield body[i : i + step]

    r = target.session.post(target.url(path), data=chunks(), headers={"X-Vault-Token": target.token}, timeout=60)
    assert_error(r, STATUS_TOO_LARGE, "33 MiB chunked body")
    assert_unchanged(target, kv_secret)


def test_list_method_and_list_query_agree(target: Target) -> None:
    base = uniq("ls")
    for p in ("one", "two", "sub/three"):
        assert target.http("POST", f"secret/data/{base}/{p}", json_body={"data": {"x": "1"}}).status_code == 200
    results = [
        target.http("LIST", f"secret/metadata/{base}/"),
        target.http("LIST", f"secret/metadata/{base}"),
        target.http("GET", f"secret/metadata/{base}/", params={"list": "true"}),
        target.http("GET", f"secret/metadata/{base}", params={"list": "true"}),
    ]
    for r in results:
        assert r.status_code == 200, r.text
        assert_envelope(r.json(), "list")
        assert r.json()["data"] == {"keys": ["one", "sub/", "two"]}
    # Listing something that has no children: 404 {"errors": []}.
    r = target.http("LIST", f"secret/metadata/{uniq('nothing')}/")
    assert_error(r, 404, "empty list")
    assert r.json() == {"errors": []}
    # ?list=true on a leaf path that is not a directory: 404.
    assert_error(target.http("GET", f"secret/metadata/{base}/one", params={"list": "true"}), 404, "list a leaf")
    # Policies list the same way.
    for r in (target.http("LIST", "sys/policies/acl"), target.http("GET", "sys/policies/acl", params={"list": "true"})):
        assert r.status_code == 200, r.text
        assert {"default", "root"} <= set(r.json()["data"]["keys"])


def test_error_bodies_are_json_with_status(target: Target) -> None:
    """Every error is `{"errors": [...]}` with Content-Type application/json."""
    for method, path, token in [
        ("GET", "sys/nope", "__root__"),
        ("GET", "secret/data/x", None),
        ("DELETE", "sys/health", "__root__"),
    ]:
        r = target.http(method, path, token=token)
        assert r.status_code >= 400
        assert set(r.json()) == {"errors"}
