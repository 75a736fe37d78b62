from __future__ import annotations

import pytest

from shared.messaging import RetryPolicy


@pytest.mark.parametrize(("failed_delivery", "delay"), [(1, 1.0), (2, 2.0), (3, 5.0), (4, 5.0), (50, 5.0)])
def test_delay_grows_then_repeats_the_last_step(failed_delivery: int, delay: float) -> None:
    policy = RetryPolicy(backoff_seconds=(1.0, 2.0, 5.0), max_deliver=10)
    assert policy.delay_after(failed_delivery) == delay
