"""Time as the services read it: one injectable `Clock`, and Unix milliseconds as the API and the stores keep it.

Design decision a reader must know: a component that takes a timestamp accepts a `Clock` (default
`system_clock`), a callable returning the current time timezone-aware in UTC, so a test sets the time by passing
its own. Unix ms (`unix_ms`, `now_ms`) is what crosses a boundary; naive UTC datetimes (`naive_utc`) are only for
MongoDB documents the driver reads back naive (`tz_aware=False`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

type Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def unix_ms(moment: dt.datetime) -> int:
    """`moment` as Unix ms; a naive `moment` (a stored date, an RFC 3339 timestamp without zone) is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def naive_utc(moment: dt.datetime) -> dt.datetime:
    """`moment` as MongoDB hands stored dates back: UTC without a timezone (an aware `moment` is converted)."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo is not None else moment


def now_ms() -> int:
    return int(time.time() * 1000)
