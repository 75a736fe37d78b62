"""Time as the API and the stores keep it: Unix milliseconds (integers), UTC."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
