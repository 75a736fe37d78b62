"""`run_main` runs a process's main coroutine on the loop EVENT_LOOP names, with the imported heap frozen."""

from __future__ import annotations

import asyncio
import gc

import pytest
import uvloop

from shared.event_loop import run_main
from shared.settings import CommonSettings, EventLoop, SettingsError, load_settings


def loop_of(event_loop: EventLoop) -> asyncio.AbstractEventLoop:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    try:
        run_main(main(), event_loop=event_loop)
    finally:
        gc.unfreeze()  # the test session's own heap stays collectable
    return seen[0]


def test_uvloop_is_the_default_and_runs_main() -> None:
    settings = load_settings(CommonSettings, {})
    assert settings.event_loop == "uvloop"
    assert isinstance(loop_of(settings.event_loop), uvloop.Loop)


def test_asyncio_runs_main_on_the_standard_library_loop() -> None:
    assert not isinstance(loop_of("asyncio"), uvloop.Loop)


def test_the_heap_built_before_main_is_frozen_out_of_full_collections() -> None:
    frozen: list[int] = []

    async def main() -> None:
        frozen.append(gc.get_freeze_count())

    try:
        run_main(main(), event_loop="asyncio")
    finally:
        gc.unfreeze()
    assert frozen[0] > 0


def test_an_unknown_event_loop_is_refused() -> None:
    with pytest.raises(SettingsError, match="EVENT_LOOP"):
        load_settings(CommonSettings, {"EVENT_LOOP": "trio"})
