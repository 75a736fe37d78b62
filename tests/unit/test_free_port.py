"""`free_port` hands out loopback ports no outgoing connection can be holding when the child process binds."""

from __future__ import annotations

import socket

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


def test_free_port_skips_a_port_something_listens_on() -> None:
    first = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", first + 1))
        listener.listen()
        # Ports are handed out in order from a random start, so the next candidate is the listener's.
        assert free_port() != first + 1
