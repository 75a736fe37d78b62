"""`free_port` hands out loopback ports no outgoing connection can be holding when the child process binds."""

from __future__ import annotations

import socket

import pytest

from deploy import processes
from deploy.processes import ephemeral_port_range, free_port


def test_a_free_port_lies_outside_the_kernels_ephemeral_range() -> None:
    # A port the kernel picked for `bind(0)` comes from the ephemeral range, the same range it picks the local
    # port of every outgoing connection from: between the test releasing it and the child binding it, any
    # client socket on the machine may take it (CI saw METRICS_PORT "Address already in use" this way).
    low, high = ephemeral_port_range()
    ports = [free_port() for _ in range(50)]
    assert all(port < low or port > high for port in ports)


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_free_port_skips_a_port_something_listens_on(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener, socket.socket() as spare:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        spare.bind(("127.0.0.1", 0))
        busy, free = listener.getsockname()[1], spare.getsockname()[1]
        spare.close()
        # The candidates in a known order: the port something listens on first.
        monkeypatch.setattr(processes, "_listen_port_candidates", lambda: iter([busy, free]))
        assert free_port() == free
