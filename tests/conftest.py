"""Test-wide guards: no network except loopback, isolated config/data folders, no real Ollama/HF."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

_real_connect = socket.socket.connect


def _is_loopback(address: object) -> bool:
    if isinstance(address, tuple) and address:
        host = str(address[0])
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return isinstance(address, (str, bytes))  # AF_UNIX sockets are local


def _guarded_connect(self: socket.socket, address: object) -> object:
    if not _is_loopback(address):
        raise RuntimeError(f"test tried to reach the network: {address!r} (tests must stay offline)")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _offline_and_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test: no non-loopback connections, its own settings/data folders, HF hub offline by default,
    and an Ollama host nobody listens on, so a test never talks to a real server by accident."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    home = tmp_path_factory.mktemp("lf-home")
    monkeypatch.setenv("LLAMAFORGE_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("LLAMAFORGE_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # discard port: nothing answers
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.setenv("HOME", str(home / "user"))


# -- precision ------------------------------------------------------------------------------------------------------
# The trainer picks fp32 or bf16 autocast on a CPU (core/train/setup.py: resolve_precision, bf16 where the CPU has
# AVX512-BF16/AMX). Tests that depend on the arithmetic take the ``train_dtype`` fixture and run under each precision
# chosen here: ``--precision all`` (the default), ``fp32`` or ``bf16``; or LLAMAFORGE_TEST_PRECISION.
TEST_PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--precision", choices=("all", *TEST_PRECISIONS),
                     default=os.environ.get("LLAMAFORGE_TEST_PRECISION", "all"),
                     help="training precision(s) for the precision-sensitive tests (default: all; "
                          "env LLAMAFORGE_TEST_PRECISION)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "train_dtype" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--precision")
        names = list(TEST_PRECISIONS) if chosen == "all" else [chosen]
        metafunc.parametrize("train_dtype", [TEST_PRECISIONS[n] for n in names], ids=names)
