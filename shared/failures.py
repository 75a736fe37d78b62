"""How a failure of a dependency is classified: once, where it is caught, and carried as a type from there on.

docs/architecture.md ("Transient is not poison") is the rule this module names:

- `Transient`: the dependency is away or overloaded (timeouts, connection errors, 408, 429, 5xx, MongoDB not
  reachable, no NATS responder). Retried with capped exponential backoff for as long as it lasts; it never counts
  toward parking a message.
- `Misconfigured`: the dependency refuses *our own* configuration or credentials (AgentMail 401 or 403 on the
  inbox, a model server refusing the request shape we send). Retried like a transient failure, so work waits
  rather than fails; in addition the service reports not ready naming the dependency (`DEPENDENCY_PROBLEMS`,
  read by the health handler and so by the gateway's `/readyz`), and an error log and a metric say so.
- `Terminal`: the dependency refuses *this particular request* and always will (AgentMail 400, 404, 422). The
  caller ends the work it was doing with the reason (a case's send: `FAILED`, `send_failed`).

Everything else a handler raises is a bug or poison (undecodable, contract-violating input) and is parked after
the consumer's deliveries, or at once for `PermanentFailure` (shared.messaging.middleware).
"""

from __future__ import annotations

import threading
from typing import Literal

from shared import metrics

type FailureKind = Literal["transient", "misconfigured", "terminal"]


class DependencyFailure(Exception):
    """A dependency failed; `dependency` names it ("agentmail", "model", "mongodb", "nats", a service)."""

    kind: FailureKind = "transient"

    def __init__(self, dependency: str, reason: str) -> None:
        super().__init__(f"{dependency}: {reason}")
        self.dependency = dependency
        self.reason = reason


class Transient(DependencyFailure):
    kind: FailureKind = "transient"


class Misconfigured(DependencyFailure):
    kind: FailureKind = "misconfigured"


class Terminal(DependencyFailure):
    kind: FailureKind = "terminal"


class DependencyProblems:
    """What this process currently knows to be misconfigured, by dependency: reported not ready until cleared.

    Set where the refusal is seen (`report`), cleared by the next success of the same dependency (`clear`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[str, str] = {}

    def report(self, dependency: str, reason: str) -> bool:
        """Record the problem; True when it is new or its reason changed (the caller logs once per change)."""
        with self._lock:
            changed = self._problems.get(dependency) != reason
            self._problems[dependency] = reason
        metrics.DEPENDENCY_MISCONFIGURED.labels(dependency=dependency).set(1)
        return changed

    def clear(self, dependency: str) -> bool:
        """Forget the problem; True when there was one (the caller logs the recovery)."""
        with self._lock:
            known = self._problems.pop(dependency, None)
        if known is not None:
            metrics.DEPENDENCY_MISCONFIGURED.labels(dependency=dependency).set(0)
        return known is not None

    def current(self) -> dict[str, str]:
        with self._lock:
            return dict(self._problems)


# One per process: the health handler of every service reports it.
DEPENDENCY_PROBLEMS = DependencyProblems()
