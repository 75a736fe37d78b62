"""`python -m simulator.agentmail`: serve the simulator with uvicorn on AGENTMAIL_SIM_HOST:AGENTMAIL_SIM_PORT."""

from __future__ import annotations

import uvicorn

from shared.logs import configure_logging
from simulator.agentmail.app import create_app
from simulator.agentmail.settings import load_simulator_settings_or_exit


def main() -> None:
    settings = load_simulator_settings_or_exit()
    configure_logging("agentmail_simulator", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
