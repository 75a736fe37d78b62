"""The console's templates and the headers every console response carries.

The design decision: one Jinja2 environment with autoescaping forced on for every template and StrictUndefined,
so anything a counterparty, a client or a service wrote is rendered as text (an email containing `<script>` is
shown, never run), and a typo in a template fails loudly instead of rendering blank. The pages load scripts and
styles only from the gateway (`script-src 'self'`, no inline script or style), and htmx is configured so that
nothing it swaps in can run script either.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import Request, Response
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template import TemplateConfig

from shared.contracts.case import NOTHING_SCHEDULED
from shared.errors import ERROR_SPECS, ErrorCode

TEMPLATES_DIR: Final = Path(__file__).resolve().parent / "templates"

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Pages show one client's cases: never kept by a shared cache or the back button of the next person.
    "Cache-Control": "no-store",
}


def page_headers() -> dict[str, str]:
    return dict(_PAGE_HEADERS)


def utc_time(millis: int | None) -> str:
    if millis is None or millis >= NOTHING_SCHEDULED:
        return "—"
    return datetime.fromtimestamp(millis / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = utc_time
    env.filters["pretty_json"] = pretty_json
    return env


def console_templates() -> TemplateConfig[JinjaTemplateEngine]:
    """The app's template configuration (the console is its only user)."""
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment()))


def error_page(
    request: Request[Any, Any, Any],
    code: ErrorCode,
    message: str | None = None,
    *,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    """The JSON API's error (same code, status and message) as a page; never a trace or an internal detail."""
    spec = ERROR_SPECS[code]
    session = getattr(request.state, "console_session", None)
    return Template(
        template_name="error.html",
        context={
            "code": code.value,
            "message": message or spec.default_message,
            "status": spec.http_status,
            "signed_in": session is not None,
            "csrf": getattr(session, "csrf", ""),
        },
        status_code=spec.http_status,
        headers={**page_headers(), **(headers or {})},
    )
