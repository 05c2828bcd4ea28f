"""Transit through hvac (`client.secrets.transit.*`), the `bao` CLI and raw
HTTP, against OpenBao and Custos: key lifecycle, encrypt/decrypt/rewrap with
batches and derived keys, min_decryption_version, data keys, random, hash,
HMAC, sign/verify, the bad-input sweep (each a 400, never a 500), and one
side-by-side script whose status codes and JSON shapes must match OpenBao's.

Every test mounts transit at its own random path, so runs never collide.
Expected keys and messages were observed on OpenBao 2.7.2."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import hvac.exceptions as hx
import pytest

from compat_lib import Target, assert_envelope, assert_error, assert_keys, shape, shape_diff, uniq

TOO_OLD = "ciphertext or signature version is disallowed by policy (too old)"

# `keys/:name` read data for a non-derived symmetric key (OpenBao 2.7.2).
KEY_READ_KEYS = {
    "allow_plaintext_backup",
    "auto_rotate_period",
    "deletion_allowed",
    "derived",
    "exportable",
    "imported_key",
    "keys",
    "latest_version",
    "min_available_version",
    "min_decryption_version",
    "min_encryption_version",
    "name",
    "soft_deleted",
    "supports_decryption",
    "supports_derivation",
    "supports_encryption",
    "supports_signing",
    "type",
}
DERIVED_EXTRA_KEYS = {"kdf", "convergent_encryption"}
SIGNING_KEY_ENTRY_KEYS = {"certificate_chain", "creation_time", "name", "public_key"}


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


@pytest.fixture
def mount(target: Target) -> Iterator[str]:
    """A fresh transit mount on `target`, removed afterwards."""
    path = uniq("transit")
    target.client().sys.enable_secrets_engine("transit", path=path)
    try:
        yield path
    finally:
        target.client().sys.disable_secrets_engine(path)


def transit(target: Target):
    return target.client().secrets.transit


# ------------------------------------------------------------ keys


def test_key_create_read_list_and_types(target: Target, mount: str) -> None:
    t = transit(target)
    created = t.create_key(name="k1", mount_point=mount)
    assert_envelope(created, "create key")
    assert_keys(created["data"], KEY_READ_KEYS, "create key data")
    r = t.read_key(name="k1", mount_point=mount)
    assert_envelope(r, "read key")
    d = r["data"]
    assert_keys(d, KEY_READ_KEYS, "read key data")
    assert d["type"] == "aes256-gcm96" and d["latest_version"] == 1 and d["min_decryption_version"] == 1
    assert list(d["keys"]) == ["1"] and isinstance(d["keys"]["1"], int)
    assert d["supports_encryption"] and d["supports_decryption"] and not d["supports_signing"]

    # hvac's own list lacks aes128-gcm96: create that one over raw HTTP.
    aes128 = target.http("POST", f"{mount}/keys/aes128-gcm96", json_body={"type": "aes128-gcm96"})
    assert aes128.status_code == 200, aes128.text
    for key_type in ("aes128-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256"):
        if key_type != "aes128-gcm96":
            t.create_key(name=key_type, key_type=key_type, mount_point=mount)
        d = t.read_key(name=key_type, mount_point=mount)["data"]
        assert d["type"] == key_type
        if key_type in ("ed25519", "ecdsa-p256"):
            assert d["supports_signing"] and not d["supports_encryption"]
            assert_keys(d["keys"]["1"], SIGNING_KEY_ENTRY_KEYS, f"{key_type} key entry")
    hm = target.http("POST", f"{mount}/keys/hm", json_body={"type": "hmac", "key_size": 32})
    assert hm.status_code == 200, hm.text
    assert "keys" not in hm.json()["data"] and hm.json()["data"]["key_size"] == 32

    derived = t.create_key(name="der", derived=True, mount_point=mount)["data"]
    assert_keys(derived, KEY_READ_KEYS | DERIVED_EXTRA_KEYS, "derived key data")
    assert derived["kdf"] == "hkdf_sha256"

    listed = t.list_keys(mount_point=mount)["data"]["keys"]
    assert sorted(listed) == sorted(["k1", "aes128-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256", "hm", "der"])
    with pytest.raises(hx.InvalidPath):
        t.read_key(name="missing", mount_point=mount)
    assert_error(
        target.http("POST", f"{mount}/keys/bad", json_body={"type": "rot13"}), 400, "bad type", "unknown key type rot13"
    )
    assert_error(
        target.http("POST", f"{mount}/keys/bad", json_body={"auto_rotate_period": "10m"}),
        400,
        "short rotation",
        "auto rotate period must be 0 to disable or at least an hour",
    )


def test_delete_only_when_allowed_and_config_validation(target: Target, mount: str) -> None:
    t = transit(target)
    t.create_key(name="d", mount_point=mount)
    with pytest.raises(hx.InvalidRequest, match="deletion is not allowed for this key"):
        t.delete_key(name="d", mount_point=mount)
    for body, msg in [
        ({"min_decryption_version": 5}, "cannot set min decryption version of 5, latest key version is 1"),
        ({"min_encryption_version": 5}, "cannot set min encryption version of 5, latest key version is 1"),
        ({"min_decryption_version": -1}, "min decryption version cannot be negative"),
    ]:
        assert_error(target.http("POST", f"{mount}/keys/d/config", json_body=body), 400, str(body), msg)
    assert_error(
        target.http("POST", f"{mount}/keys/nope/config", json_body={"deletion_allowed": True}),
        400,
        "config missing key",
        "no existing key named nope could be found",
    )
    zero = target.http("POST", f"{mount}/keys/d/config", json_body={"min_decryption_version": 0})
    assert zero.status_code == 200 and "forcing minimum to 1" in zero.json()["warnings"][0]
    cfg = t.update_key_configuration(name="d", deletion_allowed=True, mount_point=mount)
    assert cfg["data"]["deletion_allowed"] is True
    r = t.delete_key(name="d", mount_point=mount)
    assert r.status_code == 204
    with pytest.raises(hx.InvalidPath):
        t.read_key(name="d", mount_point=mount)
    assert_error(target.http("DELETE", f"{mount}/keys/d"), 400, "delete missing", "not found")


def test_rotate_trim_and_min_decryption_version(target: Target, mount: str) -> None:
    t = transit(target)
    t.create_key(name="r", mount_point=mount)
    v1 = t.encrypt_data(name="r", plaintext=b64("first"), mount_point=mount)["data"]["ciphertext"]
    rotated = t.rotate_key(name="r", mount_point=mount)
    assert rotated["data"]["latest_version"] == 2 and sorted(rotated["data"]["keys"]) == ["1", "2"]
    rewrapped = t.rewrap_data(name="r", ciphertext=v1, mount_point=mount)["data"]
    assert rewrapped["key_version"] == 2 and rewrapped["ciphertext"].startswith("vault:v2:")
    assert set(rewrapped) == {"ciphertext", "key_version"}, "rewrap never returns plaintext"

    cfg = t.update_key_configuration(name="r", min_decryption_version=2, mount_point=mount)["data"]
    assert cfg["min_decryption_version"] == 2 and list(cfg["keys"]) == ["2"]
    with pytest.raises(hx.InvalidRequest, match=r"disallowed by policy \(too old\)"):
        t.decrypt_data(name="r", ciphertext=v1, mount_point=mount)
    plain = t.decrypt_data(name="r", ciphertext=rewrapped["ciphertext"], mount_point=mount)["data"]["plaintext"]
    assert base64.b64decode(plain) == b"first"

    assert_error(
        target.http("POST", f"{mount}/keys/r/trim", json_body={"min_available_version": 2}),
        400,
        "trim without min_encryption_version",
        "minimum encryption version is not set",
    )
    t.update_key_configuration(name="r", min_encryption_version=2, mount_point=mount)
    trimmed = t.trim_key(name="r", min_version=2, mount_point=mount)
    assert trimmed["data"]["min_available_version"] == 2
    assert_error(
        target.http("POST", f"{mount}/keys/r/trim", json_body={"min_available_version": 1}),
        400,
        "trim decrement",
        "minimum available version cannot be decremented",
    )


# ------------------------------------------------ encrypt / decrypt


def test_encrypt_decrypt_upsert_and_batches(target: Target, mount: str) -> None:
    t = transit(target)
    # Encrypting with a missing key creates it (upsert, root can `create`).
    enc = t.encrypt_data(name="auto", plaintext=b64("hello"), mount_point=mount)
    assert_envelope(enc, "encrypt")
    assert set(enc["data"]) == {"ciphertext", "key_version"}
    assert enc["data"]["ciphertext"].startswith("vault:v1:")
    # Vault's layout: 12-byte nonce || ciphertext || 16-byte tag.
    assert len(base64.b64decode(enc["data"]["ciphertext"][9:])) == 12 + 5 + 16
    dec = t.decrypt_data(name="auto", ciphertext=enc["data"]["ciphertext"], mount_point=mount)
    assert set(dec["data"]) == {"plaintext"} and base64.b64decode(dec["data"]["plaintext"]) == b"hello"

    items = [{"plaintext": b64(f"item {i}"), "reference": f"ref-{i}"} for i in range(5)]
    batch = t.encrypt_data(name="auto", batch_input=items, mount_point=mount)["data"]["batch_results"]
    assert [r["reference"] for r in batch] == [f"ref-{i}" for i in range(5)]
    assert all(set(r) == {"ciphertext", "key_version", "reference"} for r in batch)
    back = t.decrypt_data(name="auto", batch_input=[{"ciphertext": r["ciphertext"]} for r in batch], mount_point=mount)[
        "data"
    ]["batch_results"]
    assert [base64.b64decode(r["plaintext"]) for r in back] == [f"item {i}".encode() for i in range(5)]

    # One bad item: per-item error, the others succeed, HTTP 400.
    mixed = target.http(
        "POST",
        f"{mount}/encrypt/auto",
        json_body={"batch_input": [{"plaintext": b64("a")}, {"plaintext": "!!"}]},
    )
    assert mixed.status_code == 400
    results = mixed.json()["data"]["batch_results"]
    assert "ciphertext" in results[0] and results[1]["error"].startswith("illegal base64 data")
    partial = target.http(
        "POST",
        f"{mount}/decrypt/auto",
        json_body={
            "batch_input": [{"ciphertext": batch[0]["ciphertext"]}, {"ciphertext": "bad"}],
            "partial_failure_response_code": 207,
        },
    )
    assert partial.status_code == 207
    assert partial.json()["data"]["batch_results"][1] == {
        "plaintext": "",
        "error": "invalid ciphertext: no prefix",
        "reference": "",
    }
    # Rewrap batches answer 200 even when an item fails.
    rw = target.http("POST", f"{mount}/rewrap/auto", json_body={"batch_input": [{"ciphertext": "bad"}]})
    assert rw.status_code == 200 and rw.json()["data"]["batch_results"][0]["error"] == "invalid ciphertext: no prefix"


def test_derived_keys_need_their_context(target: Target, mount: str) -> None:
    t = transit(target)
    ctx = b64("tenant-1")
    enc = t.encrypt_data(name="der", plaintext=b64("s3cret"), context=ctx, mount_point=mount)["data"]
    assert t.read_key(name="der", mount_point=mount)["data"]["derived"] is True
    ok = t.decrypt_data(name="der", ciphertext=enc["ciphertext"], context=ctx, mount_point=mount)
    assert base64.b64decode(ok["data"]["plaintext"]) == b"s3cret"
    with pytest.raises(hx.InvalidRequest, match="message authentication failed"):
        t.decrypt_data(name="der", ciphertext=enc["ciphertext"], context=b64("tenant-2"), mount_point=mount)
    with pytest.raises(hx.InvalidRequest, match="missing 'context' for key derivation"):
        t.decrypt_data(name="der", ciphertext=enc["ciphertext"], mount_point=mount)


def test_bad_input_is_400_never_500(target: Target, mount: str) -> None:
    t = transit(target)
    t.create_key(name="k", mount_point=mount)
    ct = t.encrypt_data(name="k", plaintext=b64("x"), mount_point=mount)["data"]["ciphertext"]
    raw = bytearray(base64.b64decode(ct[9:]))
    raw[-1] ^= 1
    tampered = "vault:v1:" + base64.b64encode(bytes(raw)).decode()
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("decrypt/k", {"ciphertext": tampered}, "cipher: message authentication failed"),
        ("decrypt/k", {"ciphertext": "vault:v9:" + ct[9:]}, "invalid ciphertext: version is too new"),
        ("decrypt/k", {"ciphertext": "vault:v1:%%%"}, "invalid ciphertext: could not decode base64"),
        ("decrypt/k", {"ciphertext": "garbage"}, "invalid ciphertext: no prefix"),
        ("decrypt/k", {"ciphertext": "vault:vX:AAAA"}, "invalid ciphertext: version number could not be decoded"),
        ("decrypt/k", {"ciphertext": "vault:v1:YWJj"}, "invalid ciphertext length"),
        ("decrypt/k", {}, "missing ciphertext to decrypt"),
        ("decrypt/nokey", {"ciphertext": ct}, "encryption key not found"),
        ("encrypt/k", {"plaintext": "!!"}, "illegal base64 data at input byte 0"),
        ("encrypt/k", {"plaintext": b64("x"), "key_version": 7}, "higher than the latest key version"),
        ("encrypt/k", {"batch_input": []}, "missing batch input to process"),
        ("rewrap/k", {"ciphertext": "garbage"}, "invalid ciphertext: no prefix"),
        ("datakey/wrapped/k", {"bits": 100}, "invalid bit length"),
        ("datakey/other/k", {}, "Invalid path, must be 'plaintext' or 'wrapped'"),
        ("hash", {"input": b64("x"), "algorithm": "md5"}, "unsupported algorithm md5"),
        ("random/0", {}, "'bytes' cannot be less than 1"),
        ("hmac/k", {"input": b64("x"), "key_version": 5}, "key version does not exist"),
        ("verify/k", {"input": b64("x")}, "neither a 'signature' nor an 'hmac' were given to verify"),
        ("sign/k", {"input": b64("x")}, "does not support signing"),
    ]
    for path, body, msg in cases:
        assert_error(target.http("POST", f"{mount}/{path}", json_body=body), 400, f"{path} {body}", msg)
    # A disabled (retired) version: 400 with Vault's wording.
    t.rotate_key(name="k", mount_point=mount)
    t.update_key_configuration(name="k", min_decryption_version=2, mount_point=mount)
    assert_error(target.http("POST", f"{mount}/decrypt/k", json_body={"ciphertext": ct}), 400, "retired", TOO_OLD)


# ------------------------------------- datakey, random, hash, hmac, sign


def test_datakey_random_hash(target: Target, mount: str) -> None:
    t = transit(target)
    t.create_key(name="dk", mount_point=mount)
    full = t.generate_data_key(name="dk", key_type="plaintext", bits=512, mount_point=mount)["data"]
    assert set(full) == {"ciphertext", "key_version", "plaintext"} and len(base64.b64decode(full["plaintext"])) == 64
    unwrapped = t.decrypt_data(name="dk", ciphertext=full["ciphertext"], mount_point=mount)["data"]["plaintext"]
    assert unwrapped == full["plaintext"]
    wrapped = t.generate_data_key(name="dk", key_type="wrapped", mount_point=mount)["data"]
    assert set(wrapped) == {"ciphertext", "key_version"}

    rnd = t.generate_random_bytes(n_bytes=16, output_format="hex", mount_point=mount)["data"]
    assert set(rnd) == {"random_bytes"} and len(rnd["random_bytes"]) == 32
    rnd = target.http("POST", f"{mount}/random/8", json_body={}).json()["data"]
    assert len(base64.b64decode(rnd["random_bytes"])) == 8

    s = t.hash_data(hash_input=b64("hello"), mount_point=mount)["data"]
    assert s == {"sum": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}
    s = t.hash_data(hash_input=b64("hello"), algorithm="sha2-512", output_format="base64", mount_point=mount)
    assert len(base64.b64decode(s["data"]["sum"])) == 64


def test_hmac_and_signatures(target: Target, mount: str) -> None:
    t = transit(target)
    t.create_key(name="h", mount_point=mount)
    mac = t.generate_hmac(name="h", hash_input=b64("msg"), mount_point=mount)["data"]["hmac"]
    assert mac.startswith("vault:v1:")
    assert t.verify_signed_data(name="h", hash_input=b64("msg"), hmac=mac, mount_point=mount)["data"] == {"valid": True}
    assert t.verify_signed_data(name="h", hash_input=b64("other"), hmac=mac, mount_point=mount)["data"] == {
        "valid": False
    }
    for key_type, extra in [("ed25519", {}), ("ecdsa-p256", {}), ("ecdsa-p256", {"marshaling_algorithm": "jws"})]:
        name = f"s-{key_type}"
        t.create_key(name=name, key_type=key_type, mount_point=mount)
        signed = t.sign_data(name=name, hash_input=b64("payload"), mount_point=mount, **extra)["data"]
        assert set(signed) == {"signature", "key_version"} and signed["signature"].startswith("vault:v1:")
        good = t.verify_signed_data(
            name=name, hash_input=b64("payload"), signature=signed["signature"], mount_point=mount, **extra
        )
        assert good["data"]["valid"] is True, (key_type, extra)
        bad = t.verify_signed_data(
            name=name, hash_input=b64("tampered"), signature=signed["signature"], mount_point=mount, **extra
        )
        assert bad["data"]["valid"] is False, (key_type, extra)


# --------------------------------------------------------------- CLI


def test_bao_cli_transit(target: Target, mount: str) -> None:
    r = target.bao("write", "-f", f"{mount}/keys/cli")
    assert r.rc == 0, str(r)
    enc = target.bao("write", "-format=json", f"{mount}/encrypt/cli", f"plaintext={b64('from the cli')}")
    assert enc.rc == 0, str(enc)
    ct = enc.json()["data"]["ciphertext"]
    dec = target.bao("write", "-format=json", f"{mount}/decrypt/cli", f"ciphertext={ct}")
    assert dec.rc == 0 and base64.b64decode(dec.json()["data"]["plaintext"]) == b"from the cli", str(dec)
    assert target.bao("write", "-f", f"{mount}/keys/cli/rotate").rc == 0
    rw = target.bao("write", "-format=json", f"{mount}/rewrap/cli", f"ciphertext={ct}")
    assert rw.rc == 0 and rw.json()["data"]["key_version"] == 2, str(rw)
    read = target.bao("read", "-format=json", f"{mount}/keys/cli")
    assert read.rc == 0 and read.json()["data"]["latest_version"] == 2, str(read)
    listed = target.bao("list", "-format=json", f"{mount}/keys")
    assert listed.rc == 0 and listed.json() == ["cli"], str(listed)
    bad = target.bao("write", f"{mount}/decrypt/cli", "ciphertext=vault:v1:%%%")
    assert bad.rc == 2 and "could not decode base64" in bad.stderr, str(bad)
    refused = target.bao("delete", f"{mount}/keys/cli")
    assert refused.rc == 2 and "deletion is not allowed" in refused.stderr, str(refused)


# ------------------------------------------------------ side by side


def _script(t: Target) -> list[tuple[str, int, Any]]:
    mnt = uniq("transit-diff")
    steps: list[tuple[str, int, Any]] = []

    def call(label: str, method: str, path: str, body: Any = None) -> Any:
        r = t.http(method, path if path.startswith("sys/") else f"{mnt}/{path}", json_body=body)
        try:
            body_shape = shape(r.json()) if r.content else "<empty>"
        except ValueError:
            body_shape = "<not json>"
        steps.append((label, r.status_code, body_shape))
        try:
            return r.json()
        except ValueError:
            return None

    call("mount", "POST", f"sys/mounts/{mnt}", {"type": "transit"})
    call("create", "POST", "keys/k", {})
    call("create again", "POST", "keys/k", {})
    call("create ed25519", "POST", "keys/ed", {"type": "ed25519"})
    call("create ecdsa", "POST", "keys/ec", {"type": "ecdsa-p256"})
    call("create derived", "POST", "keys/der", {"derived": True})
    call("read", "GET", "keys/k")
    call("read ed25519", "GET", "keys/ed")
    call("list", "LIST", "keys")
    ct = call("encrypt", "POST", "encrypt/k", {"plaintext": b64("x")})["data"]["ciphertext"]
    call("encrypt batch", "POST", "encrypt/k", {"batch_input": [{"plaintext": b64("a")}, {"plaintext": "!"}]})
    call("decrypt", "POST", "decrypt/k", {"ciphertext": ct})
    call("decrypt batch", "POST", "decrypt/k", {"batch_input": [{"ciphertext": ct}, {"ciphertext": "x"}]})
    call("decrypt tampered", "POST", "decrypt/k", {"ciphertext": ct[:-4] + "AAA="})
    call("rotate", "POST", "keys/k/rotate", {})
    call("rewrap", "POST", "rewrap/k", {"ciphertext": ct})
    call("rewrap batch", "POST", "rewrap/k", {"batch_input": [{"ciphertext": ct}, {"ciphertext": "x"}]})
    call("config", "POST", "keys/k/config", {"min_decryption_version": 2})
    call("decrypt too old", "POST", "decrypt/k", {"ciphertext": ct})
    call("datakey plaintext", "POST", "datakey/plaintext/k", {})
    call("datakey wrapped", "POST", "datakey/wrapped/k", {"bits": 128})
    call("random", "POST", "random/16", {})
    call("hash", "POST", "hash/sha2-256", {"input": b64("x")})
    call("hmac", "POST", "hmac/k", {"input": b64("x")})
    call("hmac batch", "POST", "hmac/k", {"batch_input": [{"input": b64("x")}, {"input": "!"}]})
    sig = call("sign", "POST", "sign/ed", {"input": b64("x")})["data"]["signature"]
    call("sign batch", "POST", "sign/ec", {"batch_input": [{"input": b64("x")}, {"input": "!"}]})
    call("verify", "POST", "verify/ed", {"input": b64("x"), "signature": sig})
    call("verify batch", "POST", "verify/ed", {"batch_input": [{"input": b64("x"), "signature": sig}]})
    call("trim refused", "POST", "keys/k/trim", {"min_available_version": 2})
    call("delete refused", "DELETE", "keys/k")
    call("allow delete", "POST", "keys/k/config", {"deletion_allowed": True})
    call("delete", "DELETE", "keys/k")
    call("read deleted", "GET", "keys/k")
    call("unmount", "DELETE", f"sys/mounts/{mnt}")
    return steps


def test_side_by_side_shapes_match_openbao(both: tuple[Target, Target]) -> None:
    bao, custos = both
    want, got = _script(bao), _script(custos)
    diffs: list[str] = []
    for (label, s1, b1), (_, s2, b2) in zip(want, got, strict=True):
        if s1 != s2:
            diffs.append(f"{label}: status openbao {s1} != custos {s2}")
        for d in shape_diff(b1, b2, ignore=frozenset({"request_id"}), names=("openbao", "custos")):
            diffs.append(f"{label}: {d}")
    assert not diffs, "differences from OpenBao:\n" + "\n".join(diffs)
