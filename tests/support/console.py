"""Driving /console over plain HTTP like a browser would: fetch a form, send back its CSRF token, keep the cookie."""

from __future__ import annotations

import re

import httpx

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def sign_in(console: httpx.AsyncClient, api_key: str) -> httpx.Response:
    """Sign `console` in (it keeps the session cookie); returns the sign-in POST's response (303 when accepted)."""
    form = await console.get("/console/sign-in")
    assert form.status_code == 200, form.text
    return await console.post("/console/sign-in", data={"csrf": csrf_of(form.text), "api_key": api_key})
