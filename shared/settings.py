"""Typed settings for every service, read once from the environment at start-up.

Each field maps to the upper-cased environment variable of the same name (`nats_url` ← `NATS_URL`). Every
field has a default that works for the local stack (`make run`); fields whose default is only fit for local
use are tagged `deploy_required` (docker-compose must set them, a test checks it) and secrets are tagged
`secret` (with `CASEFLOW_ENV=production`, keeping the development default is refused).

A bad value stops the process with a message that names the variable: `load_settings_or_exit`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import sys
import types
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

DEPLOY_REQUIRED: Final = {"deploy_required": True}
SECRET: Final = {"deploy_required": True, "secret": True}
# A secret whose empty default stands for a development value derived elsewhere (NATS passwords).
REQUIRED_IN_PRODUCTION: Final = {"required_in_production": True}
# A Svix / Standard Webhooks signing secret: `whsec_` + base64 of at least WHSEC_MIN_BYTES random bytes. A shorter
# key (`whsec_` alone is an empty HMAC key) would make signatures forgeable, so the process refuses to start.
WEBHOOK_SIGNING_SECRET: Final = {**SECRET, "whsec": True}
WHSEC_MIN_BYTES: Final = 24

Port = Annotated[int, Meta(ge=1, le=65535)]
PositiveSeconds = Annotated[float, Meta(gt=0)]
RATE_PATTERN: Final = r"^\d+(\.\d+)?/\d+$"


class SettingsError(Exception):
    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"invalid setting {variable}: {problem}")


# The event loops a process may run on (EVENT_LOOP; shared.event_loop).
type EventLoop = Literal["uvloop", "asyncio"]


class CommonSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings every service reads."""

    caseflow_env: Literal["development", "production"] = "development"
    nats_url: Annotated[str, Meta(min_length=1, extra=DEPLOY_REQUIRED)] = "nats://127.0.0.1:4222"
    mongo_url: Annotated[str, Meta(min_length=1, extra=DEPLOY_REQUIRED)] = (
        "mongodb://127.0.0.1:27017/?directConnection=true"
    )
    mongo_db: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,63}$")] = "caseflow"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # The process's event loop: uvloop (libuv) spends less CPU per NATS message and HTTP request than the standard
    # library's loop (bench/README.md); `asyncio` is there to compare or to rule uvloop out.
    event_loop: EventLoop = "uvloop"
    # Request/reply deadline between services; FastStream's 0.5 s default is too short for Mongo work.
    rpc_timeout_seconds: PositiveSeconds = 5.0
    # Requests each RPC handler of this process has admitted at once, running (as many as the handler runs
    # concurrently, 1 for most) or waiting their turn; set per service in its own environment. The next is answered
    # 503 SERVICE_UNAVAILABLE at once, never after the asker's RPC timeout (shared.messaging.admission). Sized above one
    # gateway's bound for creates (MAX_IN_FLIGHT_CREATE 32), so a service sheds when it is asked for more than a
    # gateway admits (several gateways, or a burst of reads).
    rpc_max_in_flight: Annotated[int, Meta(ge=1)] = 64
    # The wait such a shed reply asks for; the gateway sends it as the HTTP Retry-After header.
    rpc_shed_retry_after_seconds: Annotated[int, Meta(ge=1)] = 1
    # How long a stopping service waits for in-flight messages before exiting.
    shutdown_grace_seconds: PositiveSeconds = 15.0
    # Replicas of every stream and durable consumer (3 on a three-node NATS cluster; 1 on a single server).
    stream_replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    # This process's NATS user and password (deploy/nats.conf gives each service, the admin CLI and the tests
    # their own, with permissions for their own subjects only). Empty: the service's name as the user and its
    # development password (`dev_nats_password`), which CASEFLOW_ENV=production refuses.
    nats_user: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]*$")] = ""
    nats_password: Annotated[str, Meta(extra=SECRET | REQUIRED_IN_PRODUCTION)] = ""
    # Redelivery of a JetStream message whose handler failed: delay before the n-th retry (then doubling up to
    # the cap below), and the count of poison failures after which the message is parked on the PARKED stream.
    consumer_backoff_seconds: Annotated[list[PositiveSeconds], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [1.0, 2.0, 5.0, 15.0, 30.0, 60.0]
    )
    consumer_max_deliver: Annotated[int, Meta(ge=1, le=1000)] = 20
    # A failure of a dependency (transient or misconfigured) is redelivered for as long as it lasts, never parked:
    # after the list above the delay keeps doubling up to this cap, so a long outage costs one retry per cap.
    consumer_backoff_cap_seconds: PositiveSeconds = 300.0
    # While a handler runs, the consumer tells JetStream "in progress" this often (well under its 30 s ack
    # wait), so slow handlers are not redelivered under themselves and crashed ones are, within 30 s.
    consumer_keep_alive_seconds: PositiveSeconds = 10.0
    mongo_timeout_seconds: PositiveSeconds = 5.0
    # Port of the Prometheus exporter (`GET /metrics`, all interfaces); 0 turns it off. Off by default because
    # every process on a machine needs a port of its own: `make run` gives each service one (9101-9106),
    # docker-compose gives every container 9100.
    metrics_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    # Test-only: log every MongoDB command this process issues (name, collection, request id) so a test can
    # count what one request costs across services. Off in every deployment.
    mongo_command_log: bool = False
    # Port of a backend service's own health endpoint (GET /livez, GET /readyz; all interfaces) for Kubernetes
    # probes; 0 turns it off. The gateway answers /healthz and /readyz on its API port instead.
    health_port: Annotated[int, Meta(ge=0, le=65535)] = 0


class GatewaySettings(CommonSettings, frozen=True, kw_only=True):
    gateway_host: str = "127.0.0.1"
    gateway_port: Port = 8000
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 1024 * 1024
    max_header_bytes: Annotated[int, Meta(ge=1024)] = 16 * 1024
    readiness_timeout_seconds: PositiveSeconds = 2.0
    retry_after_seconds: Annotated[int, Meta(ge=1)] = 2
    # Throttling per API key and route as "requests per second/burst" (token buckets shared by every gateway
    # through NATS KV). Sized below what the embedded stack serves (bench/README.md: ~12-15 creates/s, ~40-60
    # pages of 50 per second), so one key is told 429 before it saturates the stack for everyone.
    rate_limit_create: Annotated[str, Meta(pattern=RATE_PATTERN)] = "5/10"
    rate_limit_default: Annotated[str, Meta(pattern=RATE_PATTERN)] = "20/40"
    # Where the per-key buckets live: "nats" (a JetStream KV bucket every gateway shares) or "local" (each gateway
    # process its own, so N gateways allow N times the rate).
    throttle_store: Literal["nats", "local"] = "nats"
    # Deadline of one shared-throttle read or write; past it the gateway decides with its own buckets.
    throttle_store_timeout_seconds: PositiveSeconds = 0.5
    # How long a verified API key is trusted without asking auth again; revocations evict it at once.
    auth_cache_seconds: Annotated[float, Meta(ge=0)] = 30.0
    # Requests that fail authentication (or AgentMail signature checks), per source address, before the address
    # is answered 429 without a lookup: requests per second / burst.
    rate_limit_failed_auth: Annotated[str, Meta(pattern=RATE_PATTERN)] = "1/20"
    # Reverse proxies whose X-Forwarded-For is believed (CIDRs, comma-separated); none by default.
    trusted_proxies: Annotated[list[str], Meta(extra={"cidrs": True})] = msgspec.field(default_factory=list)
    # /readyz answers from a result at most this old, so probing it cannot fan out to every service per request.
    readyz_cache_seconds: Annotated[float, Meta(ge=0)] = 1.0
    # Admission control: requests in flight at once per gateway, for POST /cases and for every other API route;
    # the next is answered 503 with Retry-After at once. Sized so the last admitted create is still answered
    # within RPC_TIMEOUT_SECONDS at the embedded stack's measured create rate (bench/README.md).
    max_in_flight_create: Annotated[int, Meta(ge=1)] = 32
    max_in_flight_default: Annotated[int, Meta(ge=1)] = 256
    # Slow clients (slowloris): a request's headers must arrive within this of the connection opening (or of the
    # previous response), and no gap between two pieces of its body may be longer than the body timeout: 408.
    header_read_timeout_seconds: PositiveSeconds = 10.0
    body_read_timeout_seconds: PositiveSeconds = 30.0
    # Connections open at once; the next is answered 503 with Retry-After and closed.
    max_connections: Annotated[int, Meta(ge=1)] = 2000
    # AgentMail's webhook ingress has its own body limit: a genuine event is never refused for the client limit.
    agentmail_ingress_max_body_bytes: Annotated[int, Meta(ge=1024)] = 64 * 1024 * 1024
    # /console sessions are Fernet tokens (encrypted and signed) in a cookie, so any gateway holding these keys
    # reads any session: the first key seals new sessions, all of them open (rotation).
    console_session_keys: Annotated[list[FernetKey], Meta(min_length=1, extra=SECRET)] = msgspec.field(
        default_factory=lambda: ["ZGV2LW9ubHktY29uc29sZS1zZXNzaW9uLWtleS0wMDE="]
    )
    # How long a console sign-in lasts; the API key behind it is still checked on every request.
    console_session_seconds: Annotated[int, Meta(ge=60)] = 8 * 3600
    # How often an open console page asks whether what it shows has changed.
    console_poll_seconds: PositiveSeconds = 2.0


# A Fernet key: URL-safe base64 of 32 random bytes (`python -c "from cryptography.fernet import Fernet;
# print(Fernet.generate_key().decode())"`).
FernetKey = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{43}=$")]


class AuthSettings(CommonSettings, frozen=True, kw_only=True):
    # Development defaults for secrets are refused when CASEFLOW_ENV=production.
    key_hash_secret: Annotated[str, Meta(min_length=16, extra=SECRET)] = "dev-only-key-hash-secret-change-me"  # noqa: S105
    # Keys that encrypt client webhook secrets at rest: the first encrypts, all decrypt (rotation).
    webhook_secret_keys: Annotated[list[FernetKey], Meta(min_length=1, extra=SECRET)] = msgspec.field(
        default_factory=lambda: ["ZGV2LW9ubHktd2ViaG9vay1zZWNyZXQta2V5LTAwMDE="]
    )


class BillingSettings(CommonSettings, frozen=True, kw_only=True):
    # plan:cap pairs; a cap of 0 means no cap.
    plans: Annotated[str, Meta(pattern=r"^[a-z0-9_-]+:\d+(,[a-z0-9_-]+:\d+)*$")] = "free:100,pro:10000,unlimited:0"


class CaseSettings(CommonSettings, frozen=True, kw_only=True):
    # Length of one "hour" of follow-up delay, so tests and demos can run a 72-hour schedule in seconds.
    follow_up_hour_seconds: PositiveSeconds = 3600.0
    agent_backend: Literal["rules", "openai"] = "rules"
    openai_base_url: Annotated[str, Meta(pattern=r"^https?://")] = "http://127.0.0.1:11434/v1"
    openai_api_key: Annotated[str, Meta(extra={"secret": True})] = ""
    openai_model: str = "gpt-4o-mini"
    # One HTTP attempt's deadline (local models on a CPU can take tens of seconds to answer).
    openai_timeout_seconds: PositiveSeconds = 60.0
    # Retries after a 429, 5xx, timeout or connection failure, with exponential backoff from the base delay;
    # `Retry-After` is waited exactly, and one longer than the maximum delay ends the retries at once.
    openai_max_retries: Annotated[int, Meta(ge=0, le=10)] = 3
    openai_retry_base_seconds: PositiveSeconds = 1.0
    openai_retry_max_seconds: PositiveSeconds = 30.0
    # Completions asked for one email or one judgement before the agent gives up on unusable output
    # (unparseable JSON, a result that fails resultSchema) and asks the client instead.
    openai_max_output_attempts: Annotated[int, Meta(ge=1, le=10)] = 3
    # Cap on the tokens of one completion (`max_tokens`).
    openai_max_output_tokens: Annotated[int, Meta(ge=64)] = 1500
    # Tokens (prompt and completion) one case may spend; past it the agent asks the client instead of the model.
    openai_token_budget_per_case: Annotated[int, Meta(ge=1000)] = 200_000
    # Structured output: `auto` starts with json_schema and moves to json_object (with the schema), then plain text
    # (the schema in the prompt) when the server refuses; a pinned mode the server refuses is a configuration error.
    openai_structured_output: Literal["auto", "json_schema", "json_object", "text"] = "auto"
    # The completion cap's name: `auto` sends max_tokens until a server asks for max_completion_tokens.
    openai_completion_cap_field: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    # The start-up probe (one tiny structured request) is repeated this often until the model answers it.
    openai_probe_retry_seconds: PositiveSeconds = 30.0
    # Local deployments: allow http and private/loopback client webhook URLs at case creation (the webhook
    # service reads the same variable for its SSRF guard).
    webhook_allow_private: bool = False
    idempotency_ttl_hours: Annotated[float, Meta(gt=0)] = 24.0
    # A create is confirmed by the gateway publishing its created command, at the latest a little after the
    # request's deadline (CREATE_REPLY_GRACE_SECONDS + CONFIRM_PUBLISH_SECONDS in services/gateway/context.py).
    # This long after the deadline an unconfirmed case is removed (its unit released) and its Idempotency-Key
    # may be taken over. Must exceed that wait plus the publish and any clock skew between hosts.
    create_confirm_grace_seconds: PositiveSeconds = 30.0
    # Test-only fault injection: the process SIGKILLs itself right after storing a new case, before replying
    # (proves a create cut off there never emails unless its Idempotency-Key retry returns it).
    fault_exit_after_case_insert: bool = False
    # Deadline for the adapter to send one email, retries included (longer than RPC_TIMEOUT_SECONDS: a send
    # may wait out AgentMail's Retry-After; asking again after a timeout is safe, sends are idempotent).
    send_timeout_seconds: PositiveSeconds = 45.0
    # How often the scheduler looks for due cases (follow-ups are precise to about this).
    scheduler_interval_seconds: PositiveSeconds = 1.0
    # With timers on JetStream (services/case/timers.py) the due-case scan is only the safety net for a timer that
    # was lost (a crash between a case write and its arm): it runs this often. Its cost is one scan of the
    # scheduled cases (indexed on MongoDB; the whole collection on the embedded server), so a lost timer is late
    # by at most this long.
    scheduler_safety_scan_seconds: PositiveSeconds = 60.0
    # How often the open-cases gauge (`caseflow_cases`) is counted from MongoDB, or less often: never more than
    # 2 % of the time (metrics.DATABASE_GAUGE_MAX_SHARE). Each count costs one read per open case on the embedded
    # server, which runs one command at a time: counted every 5 s, ~3 000 open cases held every other read for
    # 100-200 ms each time (the p99 of `GET /cases/{id}`; bench/README.md).
    case_gauge_refresh_seconds: PositiveSeconds = 60.0
    # Leases of the steps that wait for a message (real time, not scaled by FOLLOW_UP_HOUR_SECONDS): once one
    # passes, the scheduler's reconciler requests the step again from the case document. Each must exceed the
    # step's normal duration (a send: SEND_TIMEOUT_SECONDS; an answer or a reply: one judgement by the model).
    send_lease_seconds: PositiveSeconds = 300.0
    input_lease_seconds: PositiveSeconds = 300.0
    reply_lease_seconds: PositiveSeconds = 300.0
    # A reply whose thread is not yet on any case (its first email's confirmation not yet written) is looked up
    # again after each of these delays before it is stored as unmatched.
    thread_match_retry_seconds: Annotated[list[Annotated[float, Meta(ge=0)]], Meta(max_length=20)] = msgspec.field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0]
    )


class AgentMailSettings(CommonSettings, frozen=True, kw_only=True):
    agentmail_base_url: Annotated[str, Meta(pattern=r"^https?://", extra=DEPLOY_REQUIRED)] = "http://127.0.0.1:8025"
    agentmail_api_key: Annotated[str, Meta(min_length=1, extra=SECRET)] = "am_dev_simulator_key"
    agentmail_inbox_id: Annotated[str, Meta(min_length=1, extra=DEPLOY_REQUIRED)] = "caseflow@sim.example"
    agentmail_webhook_secret: Annotated[str, Meta(pattern=r"^whsec_", extra=WEBHOOK_SIGNING_SECRET)] = (
        "whsec_ZGV2LW9ubHktYWdlbnRtYWlsLXdlYmhvb2stc2VjcmV0"  # noqa: S105
    )
    # One HTTP attempt's deadline; a timed-out send is retried under the same Idempotency-Key.
    agentmail_timeout_seconds: PositiveSeconds = 10.0
    # Retries after a 429, 409, 5xx or transport failure (never after another 4xx), with exponential backoff
    # from the base delay; a Retry-After longer than the maximum delay ends the retries at once.
    agentmail_max_retries: Annotated[int, Meta(ge=0, le=10)] = 3
    agentmail_retry_base_seconds: PositiveSeconds = 0.5
    agentmail_retry_max_seconds: PositiveSeconds = 10.0


class WebhookSettings(CommonSettings, frozen=True, kw_only=True):
    # Delays before each delivery attempt; the first is usually 0 (immediately).
    webhook_retry_schedule_seconds: Annotated[list[Annotated[float, Meta(ge=0)]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    )
    webhook_timeout_seconds: PositiveSeconds = 10.0
    webhook_allow_private: bool = False
    # A replica claims a due delivery for this long; if it dies mid-attempt another replica retries after it.
    # Must exceed one attempt (secret lookup + DNS + WEBHOOK_TIMEOUT_SECONDS), or a slow attempt is sent twice.
    webhook_claim_lease_seconds: PositiveSeconds = 60.0
    # How often a replica looks for due deliveries it was not told about (other replicas' retries, restarts).
    webhook_poll_seconds: PositiveSeconds = 1.0
    # Deliveries in flight at once per replica.
    webhook_concurrency: Annotated[int, Meta(ge=1, le=1000)] = 16
    # A case event taken from JetStream but not acknowledged (the replica died) is redelivered after this long.
    webhook_ack_wait_seconds: PositiveSeconds = 30.0


def env_var(field_name: str) -> str:
    return field_name.upper()


def _is_list(annotation: Any) -> bool:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, types.UnionType):
        return any(_is_list(arg) for arg in get_args(annotation))
    return get_origin(annotation) is list


def _raw_value(raw: str, annotation: Any) -> object:
    # Lists come from the environment as comma-separated values.
    if _is_list(annotation):
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


_FIELD_IN_ERROR = re.compile(r"at `\$\.([a-z0-9_]+)")


def load_settings[S: CommonSettings](cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build `cls` from the environment; raises SettingsError naming the offending variable."""
    environ = os.environ if environ is None else environ
    hints = get_type_hints(cls, include_extras=True)
    values: dict[str, object] = {}
    for field in msgspec.structs.fields(cls):
        raw = environ.get(env_var(field.name))
        if raw is not None:
            values[field.name] = _raw_value(raw, hints[field.name])
    try:
        settings = msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _FIELD_IN_ERROR.search(message)
        variable = env_var(match.group(1)) if match else "<settings>"
        problem = message.split(" - at `", 1)[0]
        raise SettingsError(variable, problem) from None
    _refuse_weak_signing_secrets(settings)
    _refuse_bad_networks(settings)
    _refuse_dev_secrets_in_production(settings)
    return settings


def _refuse_bad_networks(settings: CommonSettings) -> None:
    hints = get_type_hints(type(settings), include_extras=True)
    for field in msgspec.structs.fields(settings):
        if not field_extra(hints[field.name]).get("cidrs"):
            continue
        for cidr in getattr(settings, field.name):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise SettingsError(env_var(field.name), f"{cidr!r} is not an IP address or CIDR network") from None


def whsec_key_bytes(secret: str) -> bytes | None:
    """The HMAC key of a `whsec_` secret, or None when it is not valid base64."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        return None


def _refuse_weak_signing_secrets(settings: CommonSettings) -> None:
    hints = get_type_hints(type(settings), include_extras=True)
    for field in msgspec.structs.fields(settings):
        if not field_extra(hints[field.name]).get("whsec"):
            continue
        key = whsec_key_bytes(getattr(settings, field.name))
        if key is None or len(key) < WHSEC_MIN_BYTES:
            raise SettingsError(
                env_var(field.name), f"must be whsec_ followed by base64 of at least {WHSEC_MIN_BYTES} bytes"
            )


def _refuse_dev_secrets_in_production(settings: CommonSettings) -> None:
    if settings.caseflow_env != "production":
        return
    hints = get_type_hints(type(settings), include_extras=True)
    for field in msgspec.structs.fields(settings):
        # An empty default means "not needed unless you use it" (a local model server needs no key).
        # A list default comes from its factory (field.default is then NODEFAULT).
        default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
        extra = field_extra(hints[field.name])
        value = getattr(settings, field.name)
        left_at_default = extra.get("secret") and default and value == default
        if left_at_default or (extra.get("required_in_production") and not value):
            raise SettingsError(env_var(field.name), "must be set in production (the default is for local use only)")


def dev_nats_password(user: str) -> str:
    """The development password of a NATS user: what `make run` and the tests give nats-server and the clients
    when NATS_PASSWORD is not set. Never accepted in production (NATS_PASSWORD is then required)."""
    return f"dev-only-nats-{user}-password"


def field_extra(annotation: Any) -> dict[str, Any]:
    """The `Meta(extra=...)` tags of a settings field."""
    extra: dict[str, Any] = {}
    while get_origin(annotation) is Annotated:
        base, *metas = get_args(annotation)
        for meta in metas:
            if isinstance(meta, Meta) and meta.extra:
                extra.update(meta.extra)
        annotation = base
    return extra


def secret_values(settings: CommonSettings) -> list[str]:
    """The values of the settings tagged secret (for log redaction)."""
    hints = get_type_hints(type(settings), include_extras=True)
    values: list[str] = []
    for f in msgspec.structs.fields(settings):
        if not field_extra(hints[f.name]).get("secret"):
            continue
        value = getattr(settings, f.name)
        # A key ring is redacted key by key.
        values.extend(str(item) for item in (value if isinstance(value, list) else [value]) if item)
    return values


def deploy_required_variables(cls: type[CommonSettings]) -> list[str]:
    """Environment variables a deployment must set for a service using `cls`."""
    hints = get_type_hints(cls, include_extras=True)
    return [env_var(f.name) for f in msgspec.structs.fields(cls) if field_extra(hints[f.name]).get("deploy_required")]


def load_settings_or_exit[S: CommonSettings](cls: type[S], service: str) -> S:
    try:
        return load_settings(cls)
    except SettingsError as exc:
        print(f"caseflow {service}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


SETTINGS_BY_SERVICE: Final[dict[str, type[CommonSettings]]] = {
    "gateway": GatewaySettings,
    "auth": AuthSettings,
    "billing": BillingSettings,
    "case": CaseSettings,
    "agentmail_adapter": AgentMailSettings,
    "webhook": WebhookSettings,
}


# What each variable does, for the generated configuration table in the README (`python -m deploy.settings_table`).
# A test fails when a setting has no entry here, so the README cannot miss one.
SETTING_HELP: Final[dict[str, str]] = {
    "CASEFLOW_ENV": "`production` refuses secrets left at their development default",
    "NATS_URL": "NATS server (a comma-separated list for a cluster)",
    "MONGO_URL": "MongoDB connection string (a replica set in production)",
    "MONGO_DB": "database name",
    "LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR; one JSON object per line",
    "EVENT_LOOP": "`uvloop`, or `asyncio` (the standard library's loop: to compare, or to rule uvloop out)",
    "RPC_TIMEOUT_SECONDS": "deadline of a request between services; a miss is a 503 to the client",
    "RPC_MAX_IN_FLIGHT": "requests each RPC handler of a service process admits at once, running or waiting its "
    "turn (set per service); the next is answered 503 at once with Retry-After",
    "RPC_SHED_RETRY_AFTER_SECONDS": "the Retry-After a service's shed reply asks for (the gateway's header)",
    "SHUTDOWN_GRACE_SECONDS": "how long SIGTERM waits for in-flight work",
    "STREAM_REPLICAS": "replicas of each stream and durable consumer (3 on a three-node NATS cluster)",
    "NATS_USER": "this process's NATS user (default: the service's name; see deploy/nats.conf)",
    "NATS_PASSWORD": "this process's NATS password (secret; required in production)",
    "CONSUMER_BACKOFF_SECONDS": "delays before redelivering a failed message (then doubling up to the cap)",
    "CONSUMER_MAX_DELIVER": "deliveries with poison failures (not outages) before a message is parked",
    "CONSUMER_BACKOFF_CAP_SECONDS": "longest redelivery delay; an outage is retried this often, never parked",
    "CONSUMER_KEEP_ALIVE_SECONDS": "how often a running handler tells JetStream it is still working",
    "MONGO_TIMEOUT_SECONDS": "deadline of each MongoDB operation and server selection",
    "MONGO_COMMAND_LOG": "test-only: log every MongoDB command with its request id (tests count commands per request)",
    "METRICS_PORT": "Prometheus metrics port of the process (0: off)",
    "HEALTH_PORT": "a backend service's own /livez and /readyz for probes (0: off)",
    "GATEWAY_HOST": "address the gateway listens on (0.0.0.0 in containers)",
    "GATEWAY_PORT": "the API's port",
    "MAX_BODY_BYTES": "largest request body (413 above)",
    "MAX_HEADER_BYTES": "largest request headers (400 above)",
    "READINESS_TIMEOUT_SECONDS": "how long /readyz waits for each component",
    "RETRY_AFTER_SECONDS": "Retry-After sent with 503s",
    "RATE_LIMIT_CREATE": "POST /cases throttle per API key: requests per second / burst",
    "RATE_LIMIT_DEFAULT": "throttle of the other routes per API key: requests per second / burst",
    "THROTTLE_STORE": "where the per-key buckets live: nats (shared by every gateway, KV) or local (per process)",
    "THROTTLE_STORE_TIMEOUT_SECONDS": "deadline of one shared-throttle KV call; past it the gateway's buckets decide",
    "AGENTMAIL_INGRESS_MAX_BODY_BYTES": "largest AgentMail webhook accepted at /webhooks/agentmail (413 above)",
    "CONSOLE_SESSION_KEYS": "Fernet keys sealing /console session cookies: the first seals, all open (rotation)",
    "CONSOLE_SESSION_SECONDS": "how long a /console sign-in lasts (the key is still checked on every request)",
    "CONSOLE_POLL_SECONDS": "how often an open /console page asks whether what it shows has changed",
    "RATE_LIMIT_FAILED_AUTH": "failed authentications or AgentMail signatures per source address: per second / burst",
    "TRUSTED_PROXIES": "CIDRs of reverse proxies whose X-Forwarded-For names the client (none by default)",
    "MAX_IN_FLIGHT_CREATE": "POST /cases requests a gateway works on at once; more are shed (503, Retry-After)",
    "MAX_IN_FLIGHT_DEFAULT": "other API requests a gateway works on at once; more are shed (503, Retry-After)",
    "HEADER_READ_TIMEOUT_SECONDS": "a request's headers must arrive within this (408 after)",
    "BODY_READ_TIMEOUT_SECONDS": "longest pause while a request body arrives (408 after)",
    "MAX_CONNECTIONS": "connections a gateway holds at once; the next gets 503 with Retry-After",
    "READYZ_CACHE_SECONDS": "how long /readyz reuses its last answer",
    "AUTH_CACHE_SECONDS": "how long a gateway trusts a verified key (revocations evict it at once)",
    "KEY_HASH_SECRET": "HMAC key API keys are hashed with; changing it invalidates every key",
    "WEBHOOK_SECRET_KEYS": "Fernet keys encrypting client webhook secrets at rest; the first encrypts (secret)",
    "PLANS": "plan:cap pairs, cases per client per UTC month (0: no cap)",
    "FOLLOW_UP_HOUR_SECONDS": 'length of one follow-up "hour" (1 runs a 72-hour schedule in 72 s)',
    "AGENT_BACKEND": "`rules` (deterministic, offline) or `openai` (any OpenAI-compatible server)",
    "OPENAI_BASE_URL": "chat-completions server, e.g. https://api.openai.com/v1 or Ollama's /v1",
    "OPENAI_API_KEY": "the model server's key (secret; empty for local servers)",
    "OPENAI_MODEL": "model name",
    "OPENAI_TIMEOUT_SECONDS": "deadline of one model call",
    "OPENAI_MAX_RETRIES": "retries of a model call after 429/5xx/timeouts",
    "OPENAI_RETRY_BASE_SECONDS": "first backoff delay of those retries",
    "OPENAI_RETRY_MAX_SECONDS": "longest wait; a longer Retry-After ends the retries",
    "OPENAI_MAX_OUTPUT_ATTEMPTS": "answers asked for before unusable output pauses the case for input",
    "OPENAI_MAX_OUTPUT_TOKENS": "cap of each completion",
    "OPENAI_TOKEN_BUDGET_PER_CASE": "tokens a case may spend before it pauses for input",
    "OPENAI_STRUCTURED_OUTPUT": "`auto` (learnt from the server), `json_schema`, `json_object` or `text`",
    "OPENAI_COMPLETION_CAP_FIELD": "`auto` (learnt from the server), `max_tokens` or `max_completion_tokens`",
    "OPENAI_PROBE_RETRY_SECONDS": "how often the start-up probe of the model is repeated until it answers",
    "WEBHOOK_ALLOW_PRIVATE": "allow http and private/loopback webhook destinations (local runs only)",
    "IDEMPOTENCY_TTL_HOURS": "how long an Idempotency-Key replays its create",
    "FAULT_EXIT_AFTER_CASE_INSERT": "test-only fault injection: SIGKILL the case service after it stores a new case",
    "CREATE_CONFIRM_GRACE_SECONDS": "how long after its deadline a create the gateway never confirmed is removed "
    "(unit released) and its Idempotency-Key may be taken over",
    "SEND_TIMEOUT_SECONDS": "deadline for the adapter to send one email, its retries included",
    "SCHEDULER_INTERVAL_SECONDS": "how often the scheduler scans for due cases when no timers are armed on "
    "JetStream (with timers: SCHEDULER_SAFETY_SCAN_SECONDS)",
    "SCHEDULER_SAFETY_SCAN_SECONDS": "how often the safety round runs behind the JetStream timers (one query for "
    "due cases, passed leases and unconfirmed creates; a lost timer is late by at most this)",
    "CASE_GAUGE_REFRESH_SECONDS": "how often the open-cases gauge `caseflow_cases` is counted from MongoDB; a "
    "count that takes t seconds waits at least 50 t before the next (on the embedded server a count reads every "
    "open case and holds every other command meanwhile)",
    "SEND_LEASE_SECONDS": "a requested email not confirmed within this is requested again (same attempt)",
    "INPUT_LEASE_SECONDS": "a resolved input request not applied within this is queued again",
    "REPLY_LEASE_SECONDS": "a stored reply not judged within this is judged again",
    "THREAD_MATCH_RETRY_SECONDS": "delays between lookups of a reply's unknown thread before it is stored unmatched",
    "AGENTMAIL_BASE_URL": "AgentMail API (the local simulator by default)",
    "AGENTMAIL_API_KEY": "AgentMail API key (secret)",
    "AGENTMAIL_INBOX_ID": "the inbox cases send from",
    "AGENTMAIL_WEBHOOK_SECRET": "Svix secret of AgentMail's webhooks to /webhooks/agentmail (secret)",
    "AGENTMAIL_TIMEOUT_SECONDS": "deadline of one AgentMail call",
    "AGENTMAIL_MAX_RETRIES": "retries after 429/409/5xx/transport errors",
    "AGENTMAIL_RETRY_BASE_SECONDS": "first backoff delay of those retries",
    "AGENTMAIL_RETRY_MAX_SECONDS": "longest wait; a longer Retry-After ends the retries",
    "WEBHOOK_RETRY_SCHEDULE_SECONDS": "delay before each client webhook attempt",
    "WEBHOOK_TIMEOUT_SECONDS": "an attempt succeeds with a 2xx within this",
    "WEBHOOK_CLAIM_LEASE_SECONDS": "after this, an attempt claimed by a dead replica is retried",
    "WEBHOOK_POLL_SECONDS": "how often due deliveries are looked for",
    "WEBHOOK_CONCURRENCY": "attempts in flight per replica",
    "WEBHOOK_ACK_WAIT_SECONDS": "redelivery of a case event whose consumer died before storing it",
}
