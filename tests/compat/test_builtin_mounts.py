"""The mounts every server has: `sys/mounts` and `sys/internal/ui/mounts`
list `cubbyhole/`, `identity/` and `sys/` with OpenBao's types, descriptions,
flags and options, and none of them can be disabled, moved, moved onto or
mounted over. Also `sys/remount` of an ordinary mount, which keeps its data.
Every expectation was observed on OpenBao 2.7.2."""

from __future__ import annotations

import time

import pytest

from compat_lib import Target, assert_error, assert_keys, uniq
from expected import MOUNT_CONFIG_KEYS_REQUIRED, MOUNT_ENTRY_KEYS_OPENBAO_ONLY, MOUNT_ENTRY_KEYS_REQUIRED

# path -> (type, description, local, seal_wrap, config.passthrough_request_headers)
BUILTIN = {
    "sys/": ("system", "system endpoints used for control, policy and debugging", False, True, ["Accept"]),
    "cubbyhole/": ("cubbyhole", "per-token private secret storage", True, False, None),
    "identity/": ("identity", "identity store", False, False, ["Authorization"]),
}


def _check_builtin(path: str, entry: dict, what: str) -> None:
    kind, description, local, seal_wrap, passthrough = BUILTIN[path]
    assert_keys(entry, MOUNT_ENTRY_KEYS_REQUIRED, what, exact=False)
    extra = set(entry) - MOUNT_ENTRY_KEYS_REQUIRED - MOUNT_ENTRY_KEYS_OPENBAO_ONLY - {"path"}
    assert not extra, f"{what}: keys OpenBao does not send: {sorted(extra)}"
    assert (entry["type"], entry["description"]) == (kind, description), what
    assert (entry["local"], entry["seal_wrap"]) == (local, seal_wrap), what
    assert entry["options"] is None, what
    assert entry["external_entropy_access"] is False, what
    # Core mounts are not plugins: no deprecation status.
    assert "deprecation_status" not in entry, what
    assert entry["accessor"].startswith(f"{kind}_"), what
    assert isinstance(entry["uuid"], str) and entry["uuid"], what
    config = entry["config"]
    assert_keys(config, MOUNT_CONFIG_KEYS_REQUIRED, f"{what}.config", exact=False)
    assert (config["default_lease_ttl"], config["max_lease_ttl"], config["force_no_cache"]) == (0, 0, False), what
    assert config.get("passthrough_request_headers") == passthrough, what


def test_sys_mounts_lists_builtin_mounts(target: Target) -> None:
    m = target.client().sys.list_mounted_secrets_engines()
    for path in BUILTIN:
        assert path in m["data"], f"sys/mounts: {sorted(m['data'])}"
        _check_builtin(path, m["data"][path], f"sys/mounts {path}")
        # The legacy top-level copy too.
        assert m[path] == m["data"][path]
    # Reading one: sys/mounts/<path>.
    for path in BUILTIN:
        r = target.http("GET", f"sys/mounts/{path}")
        assert r.status_code == 200, r.text
        _check_builtin(path, r.json()["data"], f"sys/mounts/{path}")


def test_internal_ui_mounts_lists_builtin_mounts(target: Target) -> None:
    r = target.http("GET", "sys/internal/ui/mounts")
    assert r.status_code == 200, r.text
    secret = r.json()["data"]["secret"]
    token = r.json()["data"]["auth"]["token/"]
    assert (token["type"], token["config"]["token_type"]) == ("token", "default-service")
    for path in BUILTIN:
        _check_builtin(path, secret[path], f"internal/ui/mounts secret {path}")
    # The mount owning a path: the built-in mount, with its path.
    for path, under in (("sys/", "sys/foo"), ("cubbyhole/", "cubbyhole/x"), ("identity/", "identity/entity")):
        for asked in (path.rstrip("/"), under):
            one = target.http("GET", f"sys/internal/ui/mounts/{asked}")
            assert one.status_code == 200, one.text
            data = one.json()["data"]
            assert data["path"] == path
            _check_builtin(path, data, f"internal/ui/mounts/{asked}")


def test_cli_secrets_list_shows_builtin_mounts(target: Target) -> None:
    r = target.bao("secrets", "list", "-format=json")
    assert r.rc == 0, r
    listed = r.json()
    for path, (kind, *_rest) in BUILTIN.items():
        assert listed[path]["type"] == kind
    r = target.bao("secrets", "list")
    assert r.rc == 0, r
    for path in BUILTIN:
        assert path in r.stdout


@pytest.mark.parametrize("path", ["sys", "cubbyhole", "identity"])
def test_builtin_mounts_cannot_be_disabled(target: Target, path: str) -> None:
    for asked in (path, f"{path}/"):
        assert_error(target.http("DELETE", f"sys/mounts/{asked}"), 400, f"disable {asked}", f'cannot unmount "{path}/"')
    r = target.bao("secrets", "disable", path)
    assert r.rc == 2 and f'cannot unmount "{path}/"' in r.stderr, r
    assert f"{path}/" in target.client().sys.list_mounted_secrets_engines()["data"]


def test_token_auth_cannot_be_disabled_through_sys_mounts(target: Target) -> None:
    assert_error(
        target.http("DELETE", "sys/mounts/auth/token"), 400, "disable auth/token", 'cannot unmount "auth/token/"'
    )


@pytest.mark.parametrize("path", ["sys", "cubbyhole", "identity"])
def test_builtin_mounts_cannot_be_moved_or_mounted_over(target: Target, path: str) -> None:
    other = uniq("moved")
    assert_error(
        target.http("POST", "sys/remount", json_body={"from": path, "to": other}),
        400,
        f"remount {path}",
        f'cannot remount "{path}/"',
    )
    r = target.bao("secrets", "move", path, other)
    assert r.rc == 2 and f'cannot remount "{path}/"' in r.stderr, r
    assert_error(
        target.http("POST", "sys/remount", json_body={"from": "secret", "to": path}),
        400,
        f"remount onto {path}",
        f"cannot remount to destination {path}/",
    )
    assert_error(
        target.http("POST", "sys/remount", json_body={"from": "secret", "to": f"{path}/sub"}),
        400,
        f"remount under {path}",
        f"cannot remount to destination {path}/sub/",
    )
    for asked in (path, f"{path}/sub"):
        assert_error(
            target.http("POST", f"sys/mounts/{asked}", json_body={"type": "kv"}),
            400,
            f"mount at {asked}",
            f'cannot mount "{asked}/"',
        )
    mounts = target.client().sys.list_mounted_secrets_engines()["data"]
    assert f"{path}/" in mounts and f"{other}/" not in mounts and "secret/" in mounts


def test_secrets_engines_stay_out_of_auth(target: Target) -> None:
    name = uniq("a")
    assert_error(
        target.http("POST", f"sys/mounts/auth/{name}", json_body={"type": "kv"}),
        400,
        "mount under auth/",
        f'cannot mount "auth/{name}/"',
    )
    assert_error(
        target.http("POST", "sys/remount", json_body={"from": "auth/token", "to": f"auth/{name}"}),
        400,
        "remount auth/token",
        'cannot remount "auth/token/"',
    )
    assert_error(
        target.http("POST", "sys/remount", json_body={"from": "secret", "to": f"auth/{name}"}),
        400,
        "remount into auth/",
        f"cannot remount to destination auth/{name}/",
    )


def test_remount_bad_requests(target: Target) -> None:
    missing = uniq("nomount")
    assert_error(
        target.http("POST", "sys/remount", json_body={"from": missing, "to": uniq("x")}),
        400,
        "remount a missing mount",
        f'no matching mount at "{missing}/"',
    )
    for body in ({}, {"from": "secret"}):
        assert_error(
            target.http("POST", "sys/remount", json_body=body),
            400,
            f"remount {body}",
            "both 'from' and 'to' path must be specified as a string",
        )
    assert_error(
        target.http("POST", "sys/remount", json_body={"from": "secret", "to": "secret/sub"}),
        400,
        "remount into itself",
        'path already in use at "secret/"',
    )
    assert target.http("GET", f"sys/remount/status/{uniq('nomigration')}").status_code == 404


def test_remount_moves_a_mount_with_its_data(target: Target) -> None:
    c = target.client()
    src, dst = uniq("mvsrc"), uniq("mvdst")
    c.sys.enable_secrets_engine("kv", path=src, options={"version": "2"})
    try:
        c.secrets.kv.v2.create_or_update_secret(path="a", secret={"x": "1"}, mount_point=src)
        r = target.http("POST", "sys/remount", json_body={"from": src, "to": dst})
        assert r.status_code == 200, r.text
        body = r.json()
        migration = body["data"]["migration_id"]
        assert isinstance(migration, str) and migration
        # OpenBao copies it to the top level too (legacy sys response).
        assert body["migration_id"] == migration
        assert len(body["warnings"]) == 1 and body["warnings"][0].startswith("Mount move has been queued.")
        deadline = time.monotonic() + 15
        while True:
            st = target.http("GET", f"sys/remount/status/{migration}")
            assert st.status_code == 200, st.text
            info = st.json()["data"]
            if info["migration_info"]["status"] == "success" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert info == {
            "migration_id": migration,
            "migration_info": {"source_mount": f"{src}/", "target_mount": f"{dst}/", "status": "success"},
        }
        mounts = c.sys.list_mounted_secrets_engines()["data"]
        assert f"{dst}/" in mounts and f"{src}/" not in mounts
        got = c.secrets.kv.v2.read_secret_version(path="a", mount_point=dst, raise_on_deleted_version=True)
        assert got["data"]["data"] == {"x": "1"}
        assert target.http("GET", f"{src}/data/a").status_code == 404
        # The CLI move waits for the migration and reports it.
        r = target.bao("secrets", "move", dst, src)
        assert r.rc == 0, r
        assert "Success! Finished moving secrets engine" in r.stdout
        got = c.secrets.kv.v2.read_secret_version(path="a", mount_point=src, raise_on_deleted_version=True)
        assert got["data"]["data"] == {"x": "1"}
    finally:
        c.sys.disable_secrets_engine(path=src)
        c.sys.disable_secrets_engine(path=dst)


def test_internal_ui_mounts_unknown_path(target: Target) -> None:
    # What the CLI's version detection sees for a path no mount owns.
    name = uniq("nomount")
    for asked in (name, f"{name}/a/b"):
        assert_error(
            target.http("GET", f"sys/internal/ui/mounts/{asked}"),
            403,
            f"ui mount of {asked}",
            f'please ensure client\'s policies grant access to path "{asked}/"',
        )
    r = target.bao("kv", "get", f"{name}/x")
    assert r.rc == 2, r


def test_tune_of_a_missing_mount(target: Target) -> None:
    name = uniq("nomount")
    assert_error(
        target.http("GET", f"sys/mounts/{name}/tune"), 400, "read tune", f'cannot fetch sysview for path "{name}/"'
    )
    assert_error(
        target.http("POST", f"sys/mounts/{name}/tune", json_body={"description": "x"}),
        400,
        "write tune",
        f'tune of path "{name}/" failed: no mount entry found',
    )
