"""Token-bucket throttling per API key and route class."""

from __future__ import annotations

from services.gateway.throttle import BucketState, RateLimit, Throttle, advance


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_sixth_request_in_a_burst_of_five_is_refused() -> None:
    clock = FakeClock()
    throttle = Throttle(limits={"create": RateLimit(1.0, 5)}, clock=clock)
    decisions = [throttle.take(caller="key-1", route_class="create") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    refused = decisions[-1]
    assert refused.headers()["Retry-After"] == "1"
    assert refused.headers()["RateLimit-Remaining"] == "0"
    assert refused.headers()["RateLimit-Limit"] == "5"


def test_tokens_refill_at_the_configured_rate() -> None:
    clock = FakeClock()
    throttle = Throttle(limits={"default": RateLimit(2.0, 2)}, clock=clock)
    assert throttle.take(caller="k", route_class="default").allowed
    assert throttle.take(caller="k", route_class="default").allowed
    assert not throttle.take(caller="k", route_class="default").allowed
    clock.now += 0.5  # one token at 2/s
    assert throttle.take(caller="k", route_class="default").allowed
    assert not throttle.take(caller="k", route_class="default").allowed


def test_buckets_are_per_key_and_per_route_class() -> None:
    throttle = Throttle(limits={"create": RateLimit(1.0, 1), "default": RateLimit(1.0, 1)}, clock=FakeClock())
    assert throttle.take(caller="a", route_class="create").allowed
    assert not throttle.take(caller="a", route_class="create").allowed
    assert throttle.take(caller="a", route_class="default").allowed
    assert throttle.take(caller="b", route_class="create").allowed


def test_rate_limit_parses_rate_and_burst() -> None:
    assert RateLimit.parse("10/20") == RateLimit(10.0, 20)
    assert RateLimit.parse("0.5/3") == RateLimit(0.5, 3)


def test_advance_treats_a_missing_bucket_as_full_and_a_clock_behind_as_no_refill() -> None:
    limit = RateLimit(1.0, 3)
    state, decision = advance(None, limit, now=50.0, spend=True)
    assert (state.tokens, decision.allowed, decision.remaining) == (2.0, True, 2)
    # Another gateway's clock a second behind: no refill, and no draining either.
    behind, _ = advance(BucketState(tokens=0.5, updated=100.0), limit, now=99.0, spend=False)
    assert behind.tokens == 0.5
    _, refused = advance(BucketState(tokens=0.5, updated=100.0), limit, now=100.0, spend=True)
    assert not refused.allowed
    assert refused.headers()["Retry-After"] == "1"
