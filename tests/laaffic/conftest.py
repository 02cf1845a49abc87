"""Fixtures for the LAAFFIC tests: simulators with any configuration, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from pipelines.laaffic.simulator import Simulator, SimulatorConfig, SimulatorServer

Serve = Callable[..., SimulatorServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """`serve(SimulatorConfig(...))` starts a simulator on a free 127.0.0.1 port."""
    servers: list[SimulatorServer] = []

    def start(config: SimulatorConfig | None = None) -> SimulatorServer:
        server = SimulatorServer(Simulator(config or SimulatorConfig())).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
