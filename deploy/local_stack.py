"""`make run`: the whole stack on one machine with embedded defaults, supervised by supervisord.

    python -m deploy.local_stack          prepare .data/, check ports, then exec supervisord (foreground)
    python -m deploy.local_stack announce wait until the gateway is ready and print how to use it

supervisord (deploy/supervisord.conf) starts NATS with JetStream, the embedded MongoDB (SQLite file), and
the services, restarts any that crash, and on Ctrl-C or SIGTERM stops them all. Data lives under `.data/`
and survives restarts. Settings come from the environment, as in production (`FOLLOW_UP_HOUR_SECONDS=1
make run`); only what the local stack itself decides (ports, URLs of the embedded servers) is set here.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CASEFLOW_DATA", ROOT / ".data"))


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def local_environment(environ: dict[str, str]) -> dict[str, str]:
    env = dict(environ)
    env.setdefault("LOCAL_NATS_PORT", "4222")
    env.setdefault("LOCAL_MONGO_PORT", "27017")
    env.setdefault("GATEWAY_PORT", "8000")
    env.setdefault("NATS_URL", f"nats://127.0.0.1:{env['LOCAL_NATS_PORT']}")
    env.setdefault("MONGO_URL", f"mongodb://127.0.0.1:{env['LOCAL_MONGO_PORT']}/?directConnection=true")
    # Local client endpoints are on this machine; production keeps the SSRF guard on.
    env.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")
    env["CASEFLOW_ROOT"] = str(ROOT)
    env["CASEFLOW_DATA"] = str(DATA)
    env["CASEFLOW_BIN"] = str(Path(sys.executable).parent)
    return env


def run() -> None:
    env = local_environment(dict(os.environ))
    busy = [
        f"{name}={env[name]}"
        for name in ("LOCAL_NATS_PORT", "LOCAL_MONGO_PORT", "GATEWAY_PORT")
        if _port_in_use(int(env[name]))
    ]
    if busy:
        sys.exit(
            f"make run: port already in use ({', '.join(busy)}); stop the other process or set another port."
        )
    for sub in ("nats", "mongo", "logs"):
        (DATA / sub).mkdir(parents=True, exist_ok=True)
    supervisord = str(Path(sys.executable).parent / "supervisord")
    conf = str(ROOT / "deploy" / "supervisord.conf")
    # Replace this process so signals from make or the terminal reach supervisord directly.
    os.execve(supervisord, [supervisord, "--nodaemon", "--configuration", conf], env)  # noqa: S606


def announce(timeout_seconds: float = 120.0) -> None:
    url = f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}"
    deadline = time.monotonic() + timeout_seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=2.0)
            if response.status_code == 200:
                break
            last = response.json().get("error", {}).get("message", response.text)
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    else:
        print(f"caseflow: the stack did not become ready in {timeout_seconds:.0f}s ({last})", flush=True)
        sys.exit(1)
    banner = [
        "",
        "  Caseflow is ready.",
        f"  Gateway:  {url}",
        f"  API docs: {url}/schema",
        f"  Data:     {DATA}",
        "  Stop with Ctrl-C.",
        "",
    ]
    print("\n".join(banner), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["announce"]:
        announce()
    elif sys.argv[1:]:
        sys.exit(f"usage: python -m deploy.local_stack [announce]; got {' '.join(sys.argv[1:])}")
    else:
        run()
