"""Sealing, on a disposable dev server per target (so the shared servers stay
unsealed): `bao operator seal`, what a sealed server answers, and unsealing
with the key the dev server printed."""

from __future__ import annotations

import json

from compat_lib import DevServer, Target, assert_error, assert_keys
from expected import HEALTH_SEALED_KEYS, SEAL_STATUS_SEALED_KEYS, STATUS_SEALED


def test_seal_lifecycle(dev_server: DevServer) -> None:
    t = Target(dev_server.kind, dev_server.addr)
    w = t.http("POST", "secret/data/before-seal", json_body={"data": {"k": "v"}})
    assert w.status_code == 200, w.text

    # Only a sudo-capable token may seal: a default-policy token gets 403.
    tok = t.client().auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
    assert_error(t.http("PUT", "sys/seal", token=tok), 403, "seal with default token", "permission denied")
    r = t.bao("operator", "seal", token=tok)
    assert r.rc == 2, r
    assert t.bao("status").rc == 0

    r = t.bao("operator", "seal")
    assert r.rc == 0, r
    assert "Success! Vault is sealed." in r.stdout

    # `bao status` exits 2 when sealed, with table and JSON output alike.
    r = t.bao("status")
    assert r.rc == 2, r
    assert "Sealed" in r.stdout and "true" in r.stdout
    r = t.bao("status", "-format=json")
    assert r.rc == 2, r
    assert json.loads(r.stdout)["sealed"] is True

    # Everything behind the barrier answers 503 {"errors":["Vault is sealed"]},
    # with or without a token.
    for method, path, token in [
        ("GET", "secret/data/before-seal", "__root__"),
        ("POST", "secret/data/after-seal", "__root__"),
        ("GET", "secret/data/before-seal", None),
        ("GET", "sys/mounts", "__root__"),
        ("GET", "auth/token/lookup-self", "__root__"),
    ]:
        body = {"data": {"k": "v"}} if method == "POST" else None
        errs = assert_error(t.http(method, path, token=token, json_body=body), STATUS_SEALED, f"sealed {method} {path}")
        assert errs == ["Vault is sealed"], errs

    # sys/seal-status: 200, sealed=true; sys/health: 503 with a body.
    s = t.http("GET", "sys/seal-status", token=None)
    assert s.status_code == 200
    assert_keys(s.json(), SEAL_STATUS_SEALED_KEYS, "sealed seal-status")
    assert s.json()["sealed"] is True
    assert (s.json()["t"], s.json()["n"], s.json()["progress"]) == (1, 1, 0)
    h = t.http("GET", "sys/health", token=None)
    assert h.status_code == 503
    assert_keys(h.json(), HEALTH_SEALED_KEYS, "sealed health")
    assert h.json()["sealed"] is True and h.json()["initialized"] is True
    # ?sealedcode overrides the status code; HEAD carries it too.
    assert t.http("GET", "sys/health", token=None, params={"sealedcode": "200"}).status_code == 200
    assert t.http("HEAD", "sys/health", token=None).status_code == 503
    # Sealing a sealed server is a no-op 204; the CLI commands fail with 2.
    assert t.http("PUT", "sys/seal").status_code == 204
    assert t.bao("kv", "get", "secret/before-seal").rc == 2
    assert t.bao("kv", "put", "secret/after-seal", "k=v").rc == 2

    # Unseal with the key the dev server printed ("Unseal Key: <base64>").
    key = dev_server.unseal_key()
    assert key, f"dev server did not print 'Unseal Key: ...':\n{dev_server.log()[-2000:]}"
    assert_error(t.http("PUT", "sys/unseal", json_body={"key": "bm90LWEta2V5"}), 400, "wrong unseal key")
    r = t.bao("operator", "unseal", key)
    assert r.rc == 0, r
    assert t.bao("status").rc == 0
    got = t.http("GET", "secret/data/before-seal")
    assert got.status_code == 200, got.text
    assert got.json()["data"]["data"] == {"k": "v"}
    assert t.http("GET", "secret/data/after-seal").status_code == 404
    assert t.http("GET", "sys/health", token=None).status_code == 200
