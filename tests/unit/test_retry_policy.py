"""The redelivery delays the consumer policy computes: the listed steps, then doubling, never past the cap."""

from __future__ import annotations

import pytest

from shared.messaging.middleware import RetryPolicy


@pytest.mark.parametrize(
    ("failed_delivery", "delay"), [(0, 1.0), (1, 1.0), (2, 2.0), (3, 5.0), (4, 10.0), (5, 20.0), (6, 30.0), (50, 30.0)]
)
def test_delay_follows_the_steps_then_doubles_up_to_the_cap(failed_delivery: int, delay: float) -> None:
    policy = RetryPolicy(backoff_seconds=(1.0, 2.0, 5.0), max_deliver=10, cap_seconds=30.0)
    assert policy.delay_after(failed_delivery) == delay


def test_a_step_longer_than_the_cap_is_capped_and_weeks_of_failures_do_not_overflow() -> None:
    policy = RetryPolicy(backoff_seconds=(1.0, 500.0), max_deliver=10, cap_seconds=300.0)
    assert policy.delay_after(2) == 300.0
    assert policy.delay_after(1_000_000) == 300.0
