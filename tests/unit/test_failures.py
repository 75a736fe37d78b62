"""The dependency-problem registry behind not-ready reports (shared.failures)."""

from __future__ import annotations

from shared import metrics
from shared.failures import DependencyProblems, Misconfigured, Terminal, Transient


def _gauge(dependency: str) -> float:
    value: float = metrics.DEPENDENCY_MISCONFIGURED.labels(dependency=dependency)._value.get()
    return value


def test_reported_problem__listed_and_counted_until_cleared() -> None:
    problems = DependencyProblems()
    problems.report("agentmail-test", "401 from AgentMail: the API key is refused")
    assert problems.current() == {"agentmail-test": "401 from AgentMail: the API key is refused"}
    assert _gauge("agentmail-test") == 1
    problems.clear("agentmail-test")
    assert problems.current() == {}
    assert _gauge("agentmail-test") == 0


def test_failure_kinds__carried_by_type() -> None:
    assert [cls("x", "y").kind for cls in (Transient, Misconfigured, Terminal)] == [
        "transient",
        "misconfigured",
        "terminal",
    ]
    assert str(Terminal("agentmail", "400 invalid recipient")) == "agentmail: 400 invalid recipient"
