"""Billing service: plan caps from configuration (PLANS) and atomic per-client, per-UTC-month usage counters.

It answers RESERVE, RELEASE and USAGE; the case service reserves a unit before storing a case and releases it
when the create fails.
"""

from __future__ import annotations

import sys

from services.billing.domain import parse_plans
from services.billing.handlers import BillingApi, register
from services.billing.store import INDEXES, UsageStore
from shared.runtime import ServiceRuntime
from shared.settings import BillingSettings, load_settings_or_exit
from shared.subjects import Service


def build(settings: BillingSettings) -> ServiceRuntime:
    """The service wired up and ready to run (also used to generate the AsyncAPI documents).

    Raises ValueError for a PLANS value the settings pattern cannot catch, such as a plan listed twice."""
    plans = parse_plans(settings.plans)
    runtime = ServiceRuntime(Service.BILLING, settings, indexes=INDEXES)
    register(BillingApi(broker=runtime.broker, store=UsageStore(runtime.db), plans=plans))
    return runtime


def main() -> None:
    settings = load_settings_or_exit(BillingSettings, Service.BILLING)
    try:
        runtime = build(settings)
    except ValueError as exc:
        print(f"caseflow billing: invalid setting PLANS: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    runtime.run()


if __name__ == "__main__":
    main()
