"""The AgentMail client with the calls only tests make: inboxes, webhooks and whole threads.

Design decision: the adapter's client (services/agentmail_adapter/client.py) holds only what the adapter calls;
these go through its same transport (`_call`: retries, error mapping), so the tests exercise that transport.
"""

from __future__ import annotations

from typing import Final

from services.agentmail_adapter.client import AgentMailClient, path_segment
from services.agentmail_adapter.payloads import CreateInbox, CreateWebhook, Inbox, Message, Thread, Webhook

# The largest page AgentMail serves (`limit`).
MAX_PAGE: Final = 100


class AgentMailTestClient(AgentMailClient):
    async def create_inbox(self, request: CreateInbox) -> Inbox:
        return await self._call("POST", "/inboxes", Inbox, body=request)

    async def get_inbox(self, inbox_id: str) -> Inbox:
        return await self._call("GET", f"/inboxes/{path_segment(inbox_id)}", Inbox)

    async def create_webhook(self, request: CreateWebhook) -> Webhook:
        return await self._call("POST", "/webhooks", Webhook, body=request)

    async def get_thread(
        self, inbox_id: str, thread_id: str, *, limit: int | None = None, page_token: str | None = None
    ) -> Thread:
        """One GET: without `limit` the whole thread (older API form), with it one page, newest page first."""
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if page_token is not None:
            params["page_token"] = page_token
        path = f"/inboxes/{path_segment(inbox_id)}/threads/{path_segment(thread_id)}"
        return await self._call("GET", path, Thread, params=params)

    async def get_thread_messages(self, inbox_id: str, thread_id: str, *, page_size: int = MAX_PAGE) -> list[Message]:
        """Every message of a thread, oldest first, following `next_page_token` until the thread is complete."""
        pages: list[list[Message]] = []
        token: str | None = None
        while True:
            page = await self.get_thread(inbox_id, thread_id, limit=page_size, page_token=token)
            pages.append(page.messages)
            token = page.next_page_token
            if not token:
                break
        # Pages run newest to oldest, each oldest-first inside; a stable sort keeps equal timestamps in order.
        unique = {message.message_id: message for page in reversed(pages) for message in page}
        return sorted(unique.values(), key=lambda message: message.timestamp)
