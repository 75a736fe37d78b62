"""MongoDB access shared by the services: the client factory, index bootstrap and a health ping.

Code here and in every `store.py` keeps to the operations listed in docs/storage.md so that the embedded
wire-protocol server (mongoeco) and a real MongoDB behave the same; the storage conformance test checks them.
Which MongoDB errors are an outage (transient: retried for as long as it lasts, never parked) is decided here,
once (`database_unavailable`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import pymongo
from pymongo import AsyncMongoClient, IndexModel, monitoring
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConnectionFailure, PyMongoError

from shared.logs import handled_subject_var
from shared.settings import CommonSettings

log = logging.getLogger("caseflow.mongo")
command_log = logging.getLogger("caseflow.mongo.commands")

type Document = dict[str, Any]


def at_or_before(unix_ms: int) -> Document:
    """The filter for a stored time (Unix ms) at or before `unix_ms` that never matches a null time: mongoeco,
    unlike MongoDB, matches null with `{"$lte": n}` (every case stores `repairAt: null` when no lease runs, and
    so on), so a bare `$lte` would select every case on the embedded server. Times are never negative, so the
    lower bound changes nothing on MongoDB, where it is the same index range."""
    return {"$gte": 0, "$lte": unix_ms}


def database_unavailable(exc: BaseException) -> bool:
    """MongoDB is not reachable right now (a restart, a failover, an operation timeout): a transient failure, so
    a request is answered SERVICE_UNAVAILABLE (503), not INTERNAL_ERROR, and a message is redelivered."""
    return isinstance(exc, ConnectionFailure) or (isinstance(exc, PyMongoError) and exc.timeout)


class CommandLog(monitoring.CommandListener):
    """Test-only (MONGO_COMMAND_LOG): one log line per MongoDB command, carrying the request id of the work that
    issued it (the driver calls listeners in the issuing task, so the logging context is that request's)."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        command_log.info(
            "mongo command",
            extra={
                "mongo_command": event.command_name,
                "collection": collection if isinstance(collection, str) else None,
                "handling": handled_subject_var.get(),
            },
        )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def create_mongo_client(settings: CommonSettings, *, app_name: str) -> AsyncMongoClient[Document]:
    timeout_ms = int(settings.mongo_timeout_seconds * 1000)
    return AsyncMongoClient(
        settings.mongo_url,
        event_listeners=[CommandLog()] if settings.mongo_command_log else [],
        appname=app_name,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        # Bound every operation so a stalled server yields an error, not a hung request.
        timeoutMS=timeout_ms,
        retryWrites=True,
        tz_aware=False,
    )


# Index builds are start-up work, not a request: they get this long instead of the client's per-operation timeout.
# On the embedded server under load, a createIndexes of indexes that were already there took over 3 s, and each
# retry started it over, so a restarted replica waited minutes for its own start-up.
INDEX_BUILD_TIMEOUT_SECONDS: Final = 60.0


def _already_built(existing: Mapping[str, Any], model: IndexModel) -> bool:
    """Whether the collection has this index, by name, with the same keys and options."""
    spec = model.document
    built = existing.get(spec["name"])
    if built is None or list(built["key"]) != list(spec["key"].items()):
        return False
    return all(built.get(option) == value for option, value in spec.items() if option not in ("name", "key"))


async def ensure_indexes(
    db: AsyncDatabase[Document],
    indexes: Mapping[str, Sequence[IndexModel]],
    *,
    attempts: int = 60,
    delay_seconds: float = 0.5,
) -> None:
    """Create every index the code relies on that the collection lacks (one listIndexes per collection, and a
    createIndexes only for what is missing or changed); waits for MongoDB at start-up."""
    for attempt in range(1, attempts + 1):
        try:
            for collection, models in indexes.items():
                if not models:
                    continue
                # Under the client's own timeout: an unreachable server fails as fast as any other call.
                existing = await db[collection].index_information()
                missing = [model for model in models if not _already_built(existing, model)]
                if missing:
                    with pymongo.timeout(INDEX_BUILD_TIMEOUT_SECONDS):
                        await db[collection].create_indexes(missing)
        except PyMongoError as exc:
            if attempt == attempts:
                raise
            log.warning("MongoDB not ready; retrying index creation", extra={"error": str(exc)[:200]})
            await asyncio.sleep(delay_seconds)
        else:
            return


async def ping(client: AsyncMongoClient[Document], *, timeout_seconds: float) -> bool:
    try:
        async with asyncio.timeout(timeout_seconds):
            await client.admin.command("ping")
    except (PyMongoError, TimeoutError):
        return False
    return True
