"""Fixtures: the `target` each test runs against (OpenBao, Custos), pairs of
targets for side-by-side shape comparison, and disposable dev servers for
tests that break the server (sealing).

Addresses come from `COMPAT_OPENBAO_ADDR` / `COMPAT_CUSTOS_ADDR`; a target
whose variable is unset is skipped locally and fails in CI (`CI=true`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests

from compat_lib import (
    ADDR_ENV,
    BIN_ENV,
    IN_CI,
    TARGET_NAMES,
    DevServer,
    Target,
    server_bin,
    uniq,
)


def _absent(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: every compat target must be present)", pytrace=False)
    pytest.skip(reason)


def _make_target(name: str) -> Target:
    addr = os.environ.get(ADDR_ENV[name], "").strip().rstrip("/")
    if not addr:
        _absent(f"{ADDR_ENV[name]} is not set: no {name} server to test")
    t = Target(name, addr)
    try:
        t.session.get(t.url("sys/seal-status"), timeout=5)
    except requests.RequestException as exc:
        pytest.fail(f"{name} at {addr} ({ADDR_ENV[name]}) is not reachable: {exc}", pytrace=False)
    return t


@pytest.fixture(scope="session", params=TARGET_NAMES)
def target(request: pytest.FixtureRequest) -> Target:
    """A running dev server with root token `root` (one per parameter)."""
    return _make_target(request.param)


@pytest.fixture(scope="session")
def both() -> tuple[Target, Target]:
    """OpenBao (the reference) and Custos, for side-by-side comparison."""
    return _make_target("openbao"), _make_target("custos")


@pytest.fixture
def kv_secret(target: Target) -> str:
    """A fresh KV v2 secret at `secret/<name>` holding version 1 = {"a": "1"}."""
    path = uniq("kv")
    r = target.http("POST", f"secret/data/{path}", json_body={"data": {"a": "1"}})
    assert r.status_code == 200, f"setup write failed on {target.name}: {r.status_code} {r.text}"
    return path


@pytest.fixture(scope="module", params=TARGET_NAMES)
def dev_server(request: pytest.FixtureRequest) -> Iterator[DevServer]:
    """A disposable dev server of each kind, for tests that seal it."""
    kind = request.param
    binary = server_bin(kind)
    if not binary:
        _absent(f"{BIN_ENV[kind]} is not set: cannot start a disposable {kind} dev server")
    server = DevServer(kind, binary)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """One line per distinct skip reason instead of one per test."""
    counts: dict[str, int] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        counts[reason] = counts.get(reason, 0) + 1
    if counts:
        terminalreporter.section("skipped")
        for reason, n in sorted(counts.items()):
            terminalreporter.write_line(f"{n:4d} x {reason}")
