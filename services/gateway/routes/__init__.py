"""Every route handler the gateway serves, in one list that `app.create_litestar` mounts."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from services.gateway.console.pages import CONSOLE_ROUTER
from services.gateway.routes.agentmail_webhook import agentmail_webhook
from services.gateway.routes.cases import CasesController, UsageController
from services.gateway.routes.docs import api_docs, docs_asset
from services.gateway.routes.health import healthz, readyz
from services.gateway.routes.webhook_deliveries import WebhookDeliveriesController

ROUTES: list[ControllerRouterHandler] = [
    healthz,
    readyz,
    api_docs,
    docs_asset,
    CasesController,
    UsageController,
    agentmail_webhook,
    WebhookDeliveriesController,
    CONSOLE_ROUTER,
]
