"""Schemathesis against the running gateway with a valid key: positive and negative requests, bounded.

Every response must be documented (status code, content type, body schema) and no request may produce a
5xx. Semantic validation beyond the schema (IANA zones, email syntax, JSON Schema validity) may still turn
schema-valid bodies into 400s, which the contract documents, so "positive data acceptance" is not checked.
Cases are generated with Hypothesis directly from each operation's strategy (schemathesis's pytest plugin
does not load under pytest 9).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deploy.processes import Stack
from tests.support.api import new_client

EXAMPLES_PER_OPERATION_AND_MODE = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_operation_conforms_to_its_documentation(stack: Stack) -> None:
    api_key = new_client(stack)["apiKey"]
    schema = schemathesis.openapi.from_url(f"{stack.gateway_url}/schema/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 9
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def exercise(case: Any) -> None:
                case.call_and_validate(base_url=stack.gateway_url, headers={"x-api-key": api_key}, checks=CHECKS)

            try:
                exercise()
            except Unsatisfiable:
                # An operation with no parameters and no body has nothing to make invalid.
                assert mode is GenerationMode.NEGATIVE
                assert not operation.body
                assert not list(operation.iter_parameters())
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} [{mode}]: {exc}")
    assert not failures, "\n\n".join(failures)
