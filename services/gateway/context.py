"""What the gateway's route handlers need from the process: settings, the broker and a MongoDB ping."""

from __future__ import annotations

from dataclasses import dataclass

from faststream.nats import NatsBroker
from pymongo import AsyncMongoClient

from shared.mongo import Document
from shared.settings import GatewaySettings


@dataclass(frozen=True, slots=True)
class GatewayContext:
    settings: GatewaySettings
    broker: NatsBroker
    # Used only to report MongoDB's readiness; the gateway owns no collections.
    mongo: AsyncMongoClient[Document]
