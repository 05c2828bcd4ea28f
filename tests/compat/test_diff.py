"""Side by side: the same script of calls against OpenBao and Custos, then
compare status codes / exit codes and JSON shapes (keys and value types;
values such as ids and timestamps are ignored). One assertion lists every
difference, so a single run shows the whole gap."""

from __future__ import annotations

import json
from typing import Any

from compat_lib import ENVELOPE_KEYS, Target, shape, shape_diff, uniq
from expected import (
    KV_METADATA_KEYS_OPENBAO_ONLY,
    MOUNT_ENTRY_KEYS_OPENBAO_ONLY,
    POLICY_READ_KEYS_OPENBAO_ONLY,
    STATUS_HA_KEYS,
)

# Keys OpenBao sends that Custos need not (plugin-catalog details).
IGNORED_KEYS = frozenset(MOUNT_ENTRY_KEYS_OPENBAO_ONLY) | KV_METADATA_KEYS_OPENBAO_ONLY | POLICY_READ_KEYS_OPENBAO_ONLY | STATUS_HA_KEYS

Step = tuple[str, int, Any]


def _body_shape(resp) -> Any:
    if not resp.content:
        return "<empty>"
    try:
        return shape(resp.json())
    except ValueError:
        return "<not json>"


def _get(f, default: str) -> Any:
    try:
        return f()
    except (ValueError, KeyError, TypeError):
        return default


def http_script(t: Target) -> list[Step]:
    steps: list[Step] = []
    base = uniq("diff")
    p = f"{base}/s"
    pol = uniq("dpol")

    def call(label: str, method: str, path: str, pick=None, **kw) -> Any:
        r = t.http(method, path, **kw)
        body: Any = _body_shape(r)
        if pick is not None and r.content:
            try:
                body = shape(pick(r.json()))
            except (ValueError, KeyError, TypeError) as exc:
                body = f"<unexpected body: {exc!r}>"
        steps.append((label, r.status_code, body))
        return r

    call("health", "GET", "sys/health", token=None)
    call("seal-status", "GET", "sys/seal-status", token=None)
    call("kv write", "POST", f"secret/data/{p}", json_body={"data": {"a": "1", "n": 2}})
    call("kv read", "GET", f"secret/data/{p}")
    call("kv metadata", "GET", f"secret/metadata/{p}")
    call(
        "kv patch",
        "PATCH",
        f"secret/data/{p}",
        data=b'{"data":{"b":"2"}}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    call(
        "kv metadata write",
        "POST",
        f"secret/metadata/{p}",
        json_body={"max_versions": 3, "custom_metadata": {"o": "x"}},
    )
    call("kv read with custom metadata", "GET", f"secret/data/{p}")
    call("kv read version 1", "GET", f"secret/data/{p}", params={"version": "1"})
    call("kv list", "LIST", f"secret/metadata/{base}")
    call("kv list ?list=true", "GET", f"secret/metadata/{base}/", params={"list": "true"})
    call("kv delete", "DELETE", f"secret/data/{p}")
    call("kv read deleted", "GET", f"secret/data/{p}")
    call("kv undelete", "POST", f"secret/undelete/{p}", json_body={"versions": [2]})
    call("kv destroy", "POST", f"secret/destroy/{p}", json_body={"versions": [1]})
    call("kv read destroyed", "GET", f"secret/data/{p}", params={"version": "1"})
    call("kv metadata after destroy", "GET", f"secret/metadata/{p}")
    call("kv cas mismatch", "POST", f"secret/data/{p}", json_body={"data": {"a": "x"}, "options": {"cas": 1}})
    call("kv unknown field", "POST", f"secret/data/{p}", json_body={"data": {"a": "x"}, "zzz": 1})
    call("kv read absent", "GET", f"secret/data/{uniq('absent')}")
    call("kv malformed", "POST", f"secret/data/{p}", data=b'{"data":', headers={"Content-Type": "application/json"})
    call("kv data string", "POST", f"secret/data/{p}", json_body={"data": "notamap"})
    call("no token", "GET", f"secret/data/{p}", token=None)
    call("bad token", "GET", f"secret/data/{p}", token="bogus")
    call("unknown sys path", "GET", "sys/nope")
    call("unknown mount", "GET", f"{uniq('nomount')}/x")
    call("405", "PATCH", "sys/mounts", data=b"{}", headers={"Content-Type": "application/merge-patch+json"})

    r = call(
        "token create",
        "POST",
        "auth/token/create",
        json_body={"policies": ["default"], "ttl": "1h", "meta": {"k": "v"}},
    )
    tok = _get(lambda: r.json()["auth"]["client_token"], "missing")
    call("token lookup-self", "GET", "auth/token/lookup-self", token=tok)
    call("token lookup", "POST", "auth/token/lookup", json_body={"token": tok})
    call("token renew-self", "POST", "auth/token/renew-self", token=tok, json_body={"increment": "2h"})
    call("token revoke", "POST", "auth/token/revoke", json_body={"token": tok})
    call("token lookup revoked", "POST", "auth/token/lookup", json_body={"token": tok})

    call(
        "policy write",
        "PUT",
        f"sys/policies/acl/{pol}",
        json_body={"policy": 'path "secret/*" {\n  capabilities = ["read"]\n}\n'},
    )
    call("policy read", "GET", f"sys/policies/acl/{pol}")
    call("policy list", "LIST", "sys/policies/acl")
    call("policy legacy list", "GET", "sys/policy")
    call("policy legacy read", "GET", f"sys/policy/{pol}")
    call("policy delete", "DELETE", f"sys/policies/acl/{pol}")

    call("mounts: secret/ entry", "GET", "sys/mounts", pick=lambda b: b["data"]["secret/"])
    call("mount read", "GET", "sys/mounts/secret", pick=lambda b: b["data"])
    call("ui mounts (CLI preflight)", "GET", f"sys/internal/ui/mounts/secret/{p}")
    call(
        "audit list",
        "GET",
        "sys/audit",
        # Devices differ by design (Custos dev declares a file device; OpenBao's
        # dev server has none), and sys/audit repeats them at the top level.
        pick=lambda b: {k: v for k, v in b.items() if k in ENVELOPE_KEYS and k != "data"} | {"data": "<devices>"},
    )
    return steps


def cli_script(t: Target) -> list[Step]:
    steps: list[Step] = []
    path = f"secret/{uniq('dcli')}/s"

    def run(label: str, *args: str, pick=None, token: str | None = "__root__") -> Any:
        r = t.bao(*args, token=token)
        if args and "-format=json" in args and r.stdout.strip():
            try:
                value = json.loads(r.stdout)
                body = shape(pick(value) if pick else value)
            except (ValueError, KeyError, TypeError):
                body = "<not json>"
        else:
            body = "<text>"
        steps.append((label, r.rc, body))
        return r

    run("status", "status", "-format=json")
    run("kv put", "kv", "put", "-format=json", path, "a=1")
    run("kv get", "kv", "get", "-format=json", path)
    run("kv patch", "kv", "patch", "-format=json", path, "b=2")
    run("kv list", "kv", "list", "-format=json", path.rsplit("/", 1)[0])
    run("kv metadata get", "kv", "metadata", "get", "-format=json", path)
    run("kv delete", "kv", "delete", path)
    run("kv get deleted", "kv", "get", "-format=json", path)
    run("kv get absent", "kv", "get", "-format=json", f"secret/{uniq('absent')}")
    r = run("token create", "token", "create", "-policy=default", "-format=json")
    tok = _get(lambda: json.loads(r.stdout)["auth"]["client_token"], "missing")
    run("token lookup self", "token", "lookup", "-format=json")
    run("token lookup other", "token", "lookup", "-format=json", tok)
    run("token lookup bad", "token", "lookup", "-format=json", "s.bogus")
    run("policy read", "policy", "read", "-format=json", "default")
    run("policy list", "policy", "list", "-format=json")
    run("secrets list: secret/", "secrets", "list", "-format=json", pick=lambda m: m["secret/"])
    run("audit list", "audit", "list", "-format=json", pick=lambda m: "<devices>")
    run("kv get without token", "kv", "get", path, token="s.bogus")
    return steps


def _compare(ref: list[Step], other: list[Step], ref_name: str, other_name: str) -> list[str]:
    problems: list[str] = []
    for (label, s1, b1), (_, s2, b2) in zip(ref, other, strict=True):
        if s1 != s2:
            problems.append(f"[{label}] status: {ref_name}={s1} {other_name}={s2}")
        for d in shape_diff(b1, b2, ignore=IGNORED_KEYS, names=(ref_name, other_name)):
            problems.append(f"[{label}] {d}")
    return problems


def test_http_shapes_match_openbao(both: tuple[Target, Target]) -> None:
    bao, custos = both
    problems = _compare(http_script(bao), http_script(custos), bao.name, custos.name)
    assert not problems, "HTTP differences from OpenBao:\n" + "\n".join(problems)


def test_cli_shapes_match_openbao(both: tuple[Target, Target]) -> None:
    bao, custos = both
    problems = _compare(cli_script(bao), cli_script(custos), bao.name, custos.name)
    assert not problems, "CLI differences from OpenBao:\n" + "\n".join(problems)
