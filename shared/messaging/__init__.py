"""NATS plumbing every service shares, one concern per module (import from the module, never from here).

- `connection`: NATS_URL and credentials as nats-py wants them, the live client, connecting at start-up.
- `broker`: the broker factory every process uses (`create_broker`), with ServiceMiddleware installed and the
  responder's handlers subscribed when it starts.
- `rpc`: the one request/reply client (`RpcClient`, over `request`): explicit deadlines, typed replies.
- `responder`: the request/reply handlers (`rpc_subscriber`), on plain nats-py subscriptions.
- `admission`: each RPC handler's in-flight bound and its shed reply.
- `middleware`: ServiceMiddleware, the configured retry/park/metrics middleware, and its RetryPolicy.
- `jetstream`: durable publishing and consuming, stream declaration.

Design decision a reader must know: a JetStream message is acknowledged only after its handler returns; a
failure is redelivered with a growing delay or parked, never dropped (`middleware`).
"""
