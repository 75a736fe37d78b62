"""How every Caseflow process runs its main coroutine: on the event loop EVENT_LOOP names (uvloop by default)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from shared.settings import EventLoop


def loop_factory(event_loop: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The `loop_factory` for `asyncio.run` (None: the standard library's own loop)."""
    return uvloop.new_event_loop if event_loop == "uvloop" else None


def run_main(main: Coroutine[Any, Any, None], *, event_loop: EventLoop) -> None:
    """Run `main` to its end. What the imports built lives as long as the process: frozen out of the garbage
    collector's view first, so that its full collections, which pause every request in flight, scan only what
    serving creates (a full collection of the imported modules alone takes tens of milliseconds)."""
    gc.collect()
    gc.freeze()
    asyncio.run(main, loop_factory=loop_factory(event_loop))
