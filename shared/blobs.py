"""Blobs larger than one NATS message, handed between services through a JetStream object store bucket.

Only the AgentMail webhook ingress uses it (a genuine event may exceed NATS's max_payload). Either side may be
first to need the bucket, so both create it idempotently on first use.
"""

from __future__ import annotations

from faststream.nats import NatsBroker
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.object_store import ObjectStore

from shared.messaging.broker import stream_replicas
from shared.subjects import ObjectBucket


async def object_bucket(broker: NatsBroker, bucket: ObjectBucket, *, replicas: int | None = None) -> ObjectStore:
    """The bucket, created with its TTL when it does not exist yet (with STREAM_REPLICAS replicas by default,
    like every stream, so a NATS node's death loses no body)."""
    replicas = stream_replicas(broker) if replicas is None else replicas
    js = broker.connection.jetstream()
    try:
        return await js.object_store(bucket.name)
    except (BucketNotFoundError, NotFoundError):
        # nats-py copies `bucket` over the config's name, so it is passed twice.
        return await js.create_object_store(
            bucket.name,
            config=ObjectStoreConfig(
                bucket=bucket.name,
                description=bucket.description,
                ttl=bucket.ttl_seconds,
                storage=StorageType.FILE,
                replicas=replicas,
            ),
        )
