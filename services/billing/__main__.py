"""Billing service: plan caps from configuration and atomic per-month usage counters."""

from __future__ import annotations

from services.billing.store import INDEXES
from shared.runtime import ServiceRuntime
from shared.settings import BillingSettings, load_settings_or_exit
from shared.subjects import Service


def main() -> None:
    settings = load_settings_or_exit(BillingSettings, Service.BILLING)
    runtime = ServiceRuntime(Service.BILLING, settings, indexes=INDEXES)
    runtime.run()


if __name__ == "__main__":
    main()
