"""AppRole through hvac, the `bao` CLI, `bao agent` and raw HTTP, against
OpenBao and Custos side by side: roles and their reads, role-ids and
secret-ids (generate, custom, list, lookup, destroy, accessors, wrapped
delivery), the token a login issues, wrong credentials and bad input, tidy,
and `bao agent` logging in with AppRole and rendering a KV v2 secret through
a template.

Where OpenBao 2.7.2 answers bad input with a 500 (malformed CIDR blocks, an
unknown role on secret-id lookup, a duplicate custom secret-id, a role left
without constraints), Custos answers 400 with the same message; those cases
are listed in `OPENBAO_500` and checked for the message only.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from compat_lib import Target, assert_error, assert_keys, bao_cli, shape, shape_diff, uniq

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
# GET auth/approle/role/:name on OpenBao 2.7.2 (no deprecated fields set).
ROLE_KEYS = {
    "bind_secret_id",
    "local_secret_ids",
    "secret_id_bound_cidrs",
    "secret_id_num_uses",
    "secret_id_ttl",
    "token_bound_cidrs",
    "token_explicit_max_ttl",
    "token_max_ttl",
    "token_no_default_policy",
    "token_num_uses",
    "token_period",
    "token_policies",
    "token_strictly_bind_ip",
    "token_ttl",
    "token_type",
}
SECRET_ID_KEYS = {"secret_id", "secret_id_accessor", "secret_id_num_uses", "secret_id_ttl"}
SECRET_ID_LOOKUP_KEYS = {
    "cidr_list",
    "creation_time",
    "expiration_time",
    "last_updated_time",
    "metadata",
    "secret_id_accessor",
    "secret_id_num_uses",
    "secret_id_ttl",
    "token_bound_cidrs",
}
INVALID = "invalid role or secret ID"


def enable_approle(t: Target, **role: object) -> tuple[str, str]:
    """A fresh approle mount with role `app` (plus a read policy on
    `secret/data/<mount>/*`); returns the mount and the role_id."""
    mount = uniq("ar")
    r = t.http("POST", f"sys/auth/{mount}", json_body={"type": "approle"})
    assert r.status_code == 204, f"{t.name}: enable approle: {r.status_code} {r.text}"
    policy = f'path "secret/data/{mount}/*" {{ capabilities = ["read"] }}'
    r = t.http("PUT", f"sys/policies/acl/kvr-{mount}", json_body={"policy": policy})
    assert r.status_code == 204, r.text
    body: dict[str, object] = {"token_ttl": "1h", **role}
    if "policies" not in role:
        body["token_policies"] = f"kvr-{mount}"
    r = t.http("POST", f"auth/{mount}/role/app", json_body=body)
    assert r.status_code == 204, f"{t.name}: create role: {r.status_code} {r.text}"
    r = t.http("GET", f"auth/{mount}/role/app/role-id")
    assert r.status_code == 200, r.text
    return mount, r.json()["data"]["role_id"]


def secret_id(t: Target, mount: str, **body: object) -> dict:
    r = t.http("POST", f"auth/{mount}/role/app/secret-id", json_body=body)
    assert r.status_code == 200, f"{t.name}: secret-id: {r.status_code} {r.text}"
    data = r.json()["data"]
    assert_keys(data, SECRET_ID_KEYS, f"{t.name} secret-id")
    return data


def login(t: Target, mount: str, role_id: str, sid: str | None) -> object:
    body = {"role_id": role_id}
    if sid is not None:
        body["secret_id"] = sid
    return t.http("POST", f"auth/{mount}/login", token=None, json_body=body)


def test_hvac_approle_flow(target: Target) -> None:
    mount, _ = enable_approle(target, secret_id_num_uses=3, secret_id_ttl="10m")
    r = target.http("POST", f"secret/data/{mount}/db", json_body={"data": {"pw": "s3cr3t"}})
    assert r.status_code == 200, r.text
    root = target.client()
    ar = root.auth.approle

    role = ar.read_role("app", mount_point=mount)["data"]
    assert_keys(role, ROLE_KEYS, f"{target.name} role")
    assert role["bind_secret_id"] is True
    assert role["secret_id_bound_cidrs"] is None
    assert role["token_bound_cidrs"] == []
    assert (role["secret_id_num_uses"], role["secret_id_ttl"], role["token_ttl"]) == (3, 600, 3600)
    assert ar.list_roles(mount_point=mount)["data"]["keys"] == ["app"]
    role_id = ar.read_role_id("app", mount_point=mount)["data"]["role_id"]

    gen = ar.generate_secret_id("app", metadata={"env": "prod"}, mount_point=mount)["data"]
    assert_keys(gen, SECRET_ID_KEYS, f"{target.name} generate")
    assert (gen["secret_id_num_uses"], gen["secret_id_ttl"]) == (3, 600)
    sid, acc = gen["secret_id"], gen["secret_id_accessor"]
    assert ar.list_secret_id_accessors("app", mount_point=mount)["data"]["keys"] == [acc]

    c = target.client(token="")
    auth = c.auth.approle.login(role_id=role_id, secret_id=sid, mount_point=mount)["auth"]
    assert_keys(auth, LOGIN_AUTH_KEYS, f"{target.name} login auth")
    assert auth["policies"] == ["default", f"kvr-{mount}"]
    assert auth["metadata"] == {"env": "prod", "role_name": "app"}
    assert auth["lease_duration"] == 3600
    assert auth["renewable"] is True and auth["orphan"] is True
    assert auth["token_type"] == "service"
    assert auth["entity_id"]
    assert c.token == auth["client_token"]
    data = c.secrets.kv.v2.read_secret_version(path=f"{mount}/db", raise_on_deleted_version=True)["data"]["data"]
    assert data == {"pw": "s3cr3t"}
    me = c.auth.token.lookup_self()["data"]
    assert me["display_name"] == mount
    assert me["meta"] == {"env": "prod", "role_name": "app"}
    assert me["path"] == f"auth/{mount}/login"

    looked = ar.read_secret_id("app", sid, mount_point=mount)["data"]
    assert_keys(looked, SECRET_ID_LOOKUP_KEYS, f"{target.name} lookup")
    assert looked["secret_id_num_uses"] == 2
    assert looked["metadata"] == {"env": "prod"}
    assert looked["cidr_list"] == [] and looked["token_bound_cidrs"] == []
    by_acc = ar.read_secret_id_accessor("app", acc, mount_point=mount)["data"]
    assert by_acc["secret_id_accessor"] == acc

    # Custom secret-ids, destroy by value and by accessor.
    custom = ar.create_custom_secret_id("app", secret_id=f"custom-{mount}", mount_point=mount)["data"]
    assert custom["secret_id"] == f"custom-{mount}"
    assert login(target, mount, role_id, f"custom-{mount}").status_code == 200
    ar.destroy_secret_id("app", f"custom-{mount}", mount_point=mount)
    assert_error(login(target, mount, role_id, f"custom-{mount}"), 400, f"{target.name} destroyed", INVALID)
    ar.destroy_secret_id_accessor("app", acc, mount_point=mount)
    assert_error(login(target, mount, role_id, sid), 400, f"{target.name} destroyed by accessor", INVALID)

    # A new role_id moves the index; deleting the role removes it.
    ar.update_role_id("app", f"rid-{mount}", mount_point=mount)
    sid2 = secret_id(target, mount)["secret_id"]
    assert_error(login(target, mount, role_id, sid2), 400, f"{target.name} old role_id", INVALID)
    assert login(target, mount, f"rid-{mount}", sid2).status_code == 200
    ar.delete_role("app", mount_point=mount)
    assert_error(login(target, mount, f"rid-{mount}", sid2), 400, f"{target.name} deleted role", INVALID)


def test_role_and_secret_id_reads_match_openbao(both: tuple[Target, Target]) -> None:
    """Every read an operator makes, side by side: the same keys, the same
    types (and `null` where OpenBao says `null`)."""
    shapes: list[dict] = []
    for t in both:
        mount, _ = enable_approle(t, policies="b,a", period="1h", bound_cidr_list="127.0.0.0/8", local_secret_ids=True)
        out: dict[str, object] = {}
        for sub in (
            "",
            "/policies",
            "/period",
            "/token-bound-cidrs",
            "/secret-id-bound-cidrs",
            "/bound-cidr-list",
            # (OpenBao 2.7.2 answers 404 "unsupported path" on
            # /bind-secret-id, which Vault documents; Custos serves it.)
            "/secret-id-num-uses",
            "/secret-id-ttl",
            "/token-num-uses",
            "/token-ttl",
            "/token-max-ttl",
            "/local-secret-ids",
            "/role-id",
        ):
            r = t.http("GET", f"auth/{mount}/role/app{sub}")
            assert r.status_code == 200, f"{t.name} GET role/app{sub}: {r.status_code} {r.text}"
            body = r.json()
            out[sub or "role"] = {"data": body["data"], "warnings": body["warnings"]}
        role = out["role"]["data"]
        assert role["policies"] == ["a", "b"] and role["token_policies"] == ["a", "b"]
        assert (role["period"], role["token_period"]) == (3600, 3600)
        assert role["secret_id_bound_cidrs"] == ["127.0.0.0/8"]
        assert role["local_secret_ids"] is True
        sid = secret_id(t, mount, cidr_list="127.0.0.1/32", token_bound_cidrs="127.0.0.1/32", metadata="k=v")
        r = t.http("POST", f"auth/{mount}/role/app/secret-id/lookup", json_body={"secret_id": sid["secret_id"]})
        assert r.status_code == 200, r.text
        out["lookup"] = r.json()["data"]
        assert out["lookup"]["metadata"] == {"k": "v"}
        assert out["lookup"]["expiration_time"] == "0001-01-01T00:00:00Z"
        r = t.http("POST", f"auth/{mount}/role/app/secret-id-accessor/lookup", json_body={"secret_id_accessor": "nope"})
        assert r.status_code == 404, r.text
        out["accessor-404"] = r.json()
        del out["accessor-404"]["request_id"]
        r = t.http("POST", f"auth/{mount}/tidy/secret-id")
        assert r.status_code == 202, r.text
        out["tidy"] = r.json()["warnings"]
        shapes.append(out)
    diff = shape_diff(shape(shapes[0]), shape(shapes[1]), names=("openbao", "custos"))
    assert not diff, "\n".join(diff)
    # Same warnings word for word (deprecated field, tidy).
    assert shapes[0]["/bound-cidr-list"]["warnings"] == shapes[1]["/bound-cidr-list"]["warnings"]
    assert shapes[0]["tidy"] == shapes[1]["tidy"]
    assert shapes[0]["accessor-404"]["data"]["error"] == shapes[1]["accessor-404"]["data"]["error"]


def test_use_limits_and_cidr_bindings(target: Target) -> None:
    mount, role_id = enable_approle(target, secret_id_num_uses=2, secret_id_bound_cidrs="127.0.0.0/8")
    sid = secret_id(target, mount)["secret_id"]
    assert login(target, mount, role_id, sid).status_code == 200
    assert login(target, mount, role_id, sid).status_code == 200
    assert_error(login(target, mount, role_id, sid), 400, f"{target.name} spent", INVALID)

    far = secret_id(target, mount, cidr_list="127.0.0.2/32")["secret_id"]
    assert_error(
        login(target, mount, role_id, far),
        400,
        f"{target.name} far secret-id",
        'source address "127.0.0.1" unauthorized by CIDR restrictions on the secret ID',
    )
    r = target.http(
        "POST", f"auth/{mount}/role/app/secret-id-bound-cidrs", json_body={"secret_id_bound_cidrs": "10.0.0.0/8"}
    )
    assert r.status_code == 204, r.text
    near = secret_id(target, mount)["secret_id"]
    assert_error(
        login(target, mount, role_id, near),
        400,
        f"{target.name} far role",
        'source address "127.0.0.1" unauthorized by CIDR restrictions on the role',
    )

    # Limits on a secret-id may only narrow the role's.
    for body, msg in (
        ({"num_uses": 3}, "num_uses cannot be higher than the role's secret_id_num_uses"),
        ({"num_uses": -1}, "num_uses cannot be negative"),
        ({"metadata": "a=b=c"}, "failed to parse metadata: failed to parse the input: invalid <key,value> format"),
    ):
        r = target.http("POST", f"auth/{mount}/role/app/secret-id", json_body=body)
        assert_error(r, 400, f"{target.name} {body}", msg)


# Bad input where both answer 400 with the same message.
BAD_INPUT_400 = [
    ("login", {"role_id": "unknown", "secret_id": "x"}, INVALID),
    ("login", {"role_id": "__ROLE_ID__", "secret_id": "wrong"}, INVALID),
    ("login", {"role_id": "__ROLE_ID__"}, "missing secret_id"),
    ("role/app", {"secret_id_num_uses": -1}, "secret_id_num_uses cannot be negative"),
    ("role/app", {"period": "800h"}, 'period of "800h0m0s" is greater than the backend\'s maximum lease TTL'),
    ("role/app", {"token_ttl": "2h", "token_max_ttl": "1h"}, "'token_ttl' cannot be greater than 'token_max_ttl'"),
    ("role/app", {"local_secret_ids": True}, "local_secret_ids can only be modified during role creation"),
    ("role/app/role-id", {"role_id": ""}, "missing role_id"),
    ("role/app/token-ttl", {}, "missing token_ttl"),
    ("role/app/secret-id-num-uses", {}, "missing secret_id_num_uses"),
    ("role/app/custom-secret-id", {}, "missing secret_id"),
    ("role/app/secret-id/lookup", {}, "missing secret_id"),
    ("role/app/secret-id-accessor/destroy", {}, "missing secret_id_accessor"),
]
BAD_CIDR = "invalid CIDR address: "
# Bad input OpenBao answers with a 500 ("1 error occurred: ..."): Custos
# says the same with a 400.
OPENBAO_500 = [
    (
        "role/app",
        {"secret_id_bound_cidrs": "10.0.0.0/33"},
        "failed to validate CIDR blocks: " + BAD_CIDR + "10.0.0.0/33",
    ),
    ("role/app", {"secret_id_bound_cidrs": "127.0.0.1"}, "failed to validate CIDR blocks: " + BAD_CIDR + "127.0.0.1"),
    ("role/app", {"bind_secret_id": False}, "at least one constraint should be enabled on the role"),
    ("role/app/secret-id", {"cidr_list": "10.0.0.0/33"}, "failed to validate CIDR blocks"),
    ("role/nope/secret-id/lookup", {"secret_id": "x"}, 'role "nope" does not exist'),
    ("role/nope/secret-id/destroy", {"secret_id": "x"}, 'role "nope" does not exist'),
    ("role/app/secret-id-accessor/destroy", {"secret_id_accessor": "nope"}, "failed to find accessor entry"),
    ("login", {}, "missing role_id"),
]


@pytest.mark.parametrize(("path", "body", "msg"), BAD_INPUT_400)
def test_bad_input_400(target: Target, path: str, body: dict, msg: str) -> None:
    mount, role_id = enable_approle(target)
    body = {k: (role_id if v == "__ROLE_ID__" else v) for k, v in body.items()}
    before = target.http("GET", f"auth/{mount}/role/app").json()["data"]
    token = None if path == "login" else "__root__"
    r = target.http("POST", f"auth/{mount}/{path}", token=token, json_body=body)
    assert_error(r, 400, f"{target.name} {path} {body}", msg)
    assert target.http("GET", f"auth/{mount}/role/app").json()["data"] == before, "bad input changed the role"


@pytest.mark.parametrize(("path", "body", "msg"), OPENBAO_500)
def test_bad_input_openbao_500(target: Target, path: str, body: dict, msg: str) -> None:
    mount, _ = enable_approle(target)
    token = None if path == "login" else "__root__"
    r = target.http("POST", f"auth/{mount}/{path}", token=token, json_body=body)
    want = 500 if target.name == "openbao" else (404 if "accessor entry" in msg else 400)
    assert_error(r, want, f"{target.name} {path} {body}", msg)


def test_unknown_role_paths(target: Target) -> None:
    mount, _ = enable_approle(target)
    assert_error(
        target.http("POST", f"auth/{mount}/role/nope/secret-id", json_body={}),
        404,
        target.name,
        'role "nope" does not exist',
    )
    assert_error(
        target.http("LIST", f"auth/{mount}/role/nope/secret-id"), 400, target.name, 'role "nope" does not exist'
    )
    assert_error(
        target.http("POST", f"auth/{mount}/role/nope/token-ttl", json_body={"token_ttl": 1}),
        404,
        target.name,
        "unsupported path",
    )
    assert target.http("GET", f"auth/{mount}/role/nope").status_code == 404
    assert target.http("GET", f"auth/{mount}/role/nope/token-ttl").status_code == 404
    assert target.http("DELETE", f"auth/{mount}/role/nope").status_code == 204


def test_bao_cli_login_and_wrapped_secret_id(target: Target) -> None:
    mount, role_id = enable_approle(target)
    res = target.bao("write", "-format=json", "-wrap-ttl=60s", "-f", f"auth/{mount}/role/app/secret-id")
    assert res.rc == 0, f"{target.name}: {res}"
    wrapped = res.json()
    assert wrapped["data"] is None
    wrap = wrapped["wrap_info"]
    assert wrap["ttl"] == 60
    assert wrap["creation_path"] == f"auth/{mount}/role/app/secret-id"
    assert wrap["wrapped_accessor"]

    res = target.bao("unwrap", "-format=json", wrap["token"], token=None)
    assert res.rc == 0, f"{target.name}: {res}"
    data = res.json()["data"]
    assert data["secret_id_accessor"] == wrap["wrapped_accessor"]
    again = target.bao("unwrap", wrap["token"], token=None)
    assert again.rc == 2, f"{target.name}: a wrapping token unwraps once: {again}"

    res = target.bao(
        "write",
        "-format=json",
        f"auth/{mount}/login",
        f"role_id={role_id}",
        f"secret_id={data['secret_id']}",
        token=None,
    )
    assert res.rc == 0, f"{target.name}: {res}"
    auth = res.json()["auth"]
    assert auth["metadata"] == {"role_name": "app"}
    assert auth["client_token"]
    bad = target.bao("write", f"auth/{mount}/login", f"role_id={role_id}", "secret_id=nope", token=None)
    assert bad.rc == 2, f"{target.name}: {bad}"
    assert INVALID in bad.stderr


def test_bao_agent_renders_a_kv_secret_with_approle(target: Target) -> None:
    """`bao agent` with auto_auth approle and a template stanza: the
    rendered file holds the secret within a bounded wait."""
    mount, role_id = enable_approle(target)
    value = f"v-{uniq('pw')}"
    r = target.http("POST", f"secret/data/{mount}/db", json_body={"data": {"password": value}})
    assert r.status_code == 200, r.text
    sid = secret_id(target, mount)["secret_id"]

    with tempfile.TemporaryDirectory(prefix="agent-") as d:
        work = Path(d)
        (work / "role_id").write_text(role_id)
        (work / "secret_id").write_text(sid)
        out = work / "rendered.txt"
        config = f"""
pid_file = "{work / "agent.pid"}"
vault {{
  address = "{target.addr}"
}}
auto_auth {{
  method "approle" {{
    mount_path = "auth/{mount}"
    config = {{
      role_id_file_path = "{work / "role_id"}"
      secret_id_file_path = "{work / "secret_id"}"
      remove_secret_id_file_after_reading = false
    }}
  }}
  sink "file" {{
    config = {{
      path = "{work / "token"}"
    }}
  }}
}}
template_config {{
  exit_on_retry_failure = true
}}
template {{
  contents = "{{{{ with secret \\"secret/data/{mount}/db\\" }}}}{{{{ .Data.data.password }}}}{{{{ end }}}}"
  destination = "{out}"
}}
"""
        (work / "agent.hcl").write_text(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        log = open(work / "agent.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [bao_cli(), "agent", "-config", str(work / "agent.hcl")], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if out.exists() and out.read_text().strip():
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.2)
            rendered = out.read_text() if out.exists() else ""
            log.flush()
            assert rendered.strip() == value, (
                f"{target.name}: rendered {rendered!r}; agent log:\n{(work / 'agent.log').read_text()[-3000:]}"
            )
            token = (work / "token").read_text().strip()
            me = target.http("GET", "auth/token/lookup-self", token=token).json()["data"]
            assert me["meta"] == {"role_name": "app"}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
