"""The LLM agent against fake servers that behave like the real families (OpenAI, reasoning models,
llama-cpp-python, json_object-only servers, text-only servers with prose around the JSON), over real HTTP.

Shown: the structured-output mode and the completion cap are learnt once per process (by the start-up probe or the
first refusal) and then used for every request; a refused configuration is not retried as an outage, it is
reported for /readyz and cleared by the next answer; a schema a settled server refuses for one request degrades
that request only; the probe starts nothing when the model is away and reports what it finds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from services.case.agent.completions import MODEL, ChatClient, ModelMisconfigured, ModelUnavailable
from services.case.agent.openai import OpenAIAgent
from services.case.agent.port import ComposeRequest, JudgeRequest
from services.case.agent.prompts import DRAFT_SCHEMA_NAME, JUDGEMENT_SCHEMA_NAME, PROBE_SCHEMA_NAME
from shared.failures import DEPENDENCY_PROBLEMS, Misconfigured
from shared.settings import CaseSettings
from tests.support.fake_openai import (
    BEHAVIOURS,
    JSON_OBJECT_ONLY,
    LLAMA_CPP_PYTHON,
    OPENAI_LIKE,
    PROSE_BEFORE,
    REASONING_MODEL,
    TEXT_ONLY,
    UNSURE_OF_THE_FORMAT,
    FakeOpenAI,
    ServerBehaviour,
    Sleeps,
    completion,
    error,
)
from tests.unit.test_openai_prompts import outbound
from tests.unit.test_rules_agent import PDF, case, inbound

THEIR_REPLY = "Hi Avery,\n\nPlease find the signed W-9 attached. Our EIN is 12-3456789.\n\nBest regards,\nMaya"

# behaviour → (the mode and the cap field the client settles on in `auto`)
SETTLES_ON: dict[str, tuple[str, str]] = {
    OPENAI_LIKE.name: ("json_schema", "max_tokens"),
    REASONING_MODEL.name: ("json_schema", "max_completion_tokens"),
    LLAMA_CPP_PYTHON.name: ("json_object", "max_tokens"),
    JSON_OBJECT_ONLY.name: ("json_object", "max_tokens"),
    TEXT_ONLY.name: ("text", "max_tokens"),
}


@pytest.fixture
async def make_agent(fake: FakeOpenAI, sleeps: Sleeps) -> AsyncIterator[Any]:
    made: list[OpenAIAgent] = []

    def make(**overrides: Any) -> OpenAIAgent:
        values: dict[str, Any] = {
            "openai_base_url": f"{fake.url}/v1",
            "openai_model": "fake-model-1",
            "openai_timeout_seconds": 5.0,
            "openai_max_retries": 2,
            "openai_probe_retry_seconds": 7.0,
            **overrides,
        }
        settings = msgspec.structs.replace(CaseSettings(), **values)
        agent = OpenAIAgent(settings, client=ChatClient(settings, sleep=sleeps), sleep=sleeps)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.aclose()


def transcript() -> list[Any]:
    return [outbound(), inbound(THEIR_REPLY, attachments=[PDF])]


def dialect(agent: OpenAIAgent) -> tuple[str, str]:
    found = agent._client.dialect
    return found.structured_output, found.cap_field


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=[b.name for b in BEHAVIOURS])
async def test_the_probe_learns_the_request_shape_once_and_every_call_then_uses_it(
    fake: FakeOpenAI, make_agent: Any, sleeps: Sleeps, behaviour: ServerBehaviour
) -> None:
    fake.behaviour = behaviour
    agent: OpenAIAgent = make_agent()
    assert await agent.probe() is None
    assert dialect(agent) == SETTLES_ON[behaviour.name]
    probing = fake.calls
    assert probing[-1].schema_name == PROBE_SCHEMA_NAME
    mode, cap = SETTLES_ON[behaviour.name]
    # Each refusal moved one step at once: no backoff, no outage-style retry of the same shape.
    expected_probes = 1 + ["json_schema", "json_object", "text"].index(mode) + (cap == "max_completion_tokens")
    assert len(probing) == expected_probes
    assert sleeps.delays == []

    draft = await agent.compose(ComposeRequest(case=case(), kind="first", attempt=1, transcript=[]))
    assert draft.text.startswith("Hi ")
    decided = await agent.judge(JudgeRequest(case=case(), transcript=transcript(), trigger="reply"))
    assert decided.outcome == "GOAL_ACHIEVED"
    assert decided.result is not None
    assert decided.result["taxId"] == "12-3456789"
    asked = fake.calls[len(probing) :]
    assert [call.schema_name for call in asked] == [DRAFT_SCHEMA_NAME, JUDGEMENT_SCHEMA_NAME]
    assert {call.format_type for call in asked} == {mode}
    assert all(
        cap in call.body and ({"max_tokens", "max_completion_tokens"} - {cap}).isdisjoint(call.body) for call in asked
    )
    assert MODEL not in DEPENDENCY_PROBLEMS.current()


async def test_without_a_probe_the_first_refusal_teaches_the_mode(fake: FakeOpenAI, make_agent: Any) -> None:
    """llama-cpp-python answers json_schema with a 500 validation error: a refusal, not an outage."""
    fake.behaviour = LLAMA_CPP_PYTHON
    agent: OpenAIAgent = make_agent()
    decided = await agent.judge(JudgeRequest(case=case(), transcript=transcript(), trigger="reply"))
    assert decided.outcome == "GOAL_ACHIEVED"
    first, second = fake.calls
    assert first.format_type == "json_schema"
    # The llama-cpp-python form: json_object carrying the schema, which that server holds the model to.
    assert second.body["response_format"]["type"] == "json_object"
    assert second.body["response_format"]["schema"]["properties"]["outcome"]
    assert dialect(agent) == ("json_object", "max_tokens")


async def test_text_mode_puts_the_schema_in_the_prompt_and_reads_the_json_out_of_the_prose(
    fake: FakeOpenAI, make_agent: Any
) -> None:
    fake.behaviour = TEXT_ONLY
    agent: OpenAIAgent = make_agent(openai_structured_output="text")
    decided = await agent.judge(JudgeRequest(case=case(), transcript=transcript(), trigger="reply"))
    assert decided.outcome == "GOAL_ACHIEVED"
    (call,) = fake.calls
    assert "response_format" not in call.body
    assert call.schema_name == JUDGEMENT_SCHEMA_NAME
    assert '"outcome"' in call.system
    assert '"signedW9Received"' in call.system  # the case's resultSchema travels with it
    assert "follows this JSON schema" not in call.user  # the counterparty's frame is left as it was


async def test_a_model_that_ignores_the_format_moves_the_probe_to_a_mode_with_the_schema_in_the_prompt(
    fake: FakeOpenAI, make_agent: Any
) -> None:
    """A server that takes json_schema but does not hold its model to it: the probe's prose answer is not
    usable, so the next mode (with the schema written into the prompt) is tried."""
    fake.script(completion(UNSURE_OF_THE_FORMAT))
    agent: OpenAIAgent = make_agent()
    assert await agent.probe() is None
    assert dialect(agent) == ("json_object", "max_tokens")
    assert [call.format_type for call in fake.calls] == ["json_schema", "json_object"]


async def test_prose_around_the_json_is_accepted_in_any_mode(fake: FakeOpenAI, make_agent: Any) -> None:
    agent: OpenAIAgent = make_agent()
    fake.script(completion(f'{PROSE_BEFORE}\n\n{{"outcome": "WAIT", "reason": "Out of office."}}\n\nThanks!'))
    decided = await agent.judge(JudgeRequest(case=case(), transcript=transcript(), trigger="reply"))
    assert (decided.outcome, decided.reason) == ("WAIT", "Out of office.")


@pytest.mark.parametrize(
    ("behaviour", "pinned", "status"),
    [
        (LLAMA_CPP_PYTHON, {"openai_structured_output": "json_schema"}, 500),
        (REASONING_MODEL, {"openai_completion_cap_field": "max_tokens"}, 400),
    ],
    ids=["json_schema_pinned_on_llama_cpp_python", "max_tokens_pinned_on_a_reasoning_model"],
)
async def test_a_pinned_shape_the_server_refuses_is_a_configuration_problem_until_the_server_takes_it(
    fake: FakeOpenAI, make_agent: Any, sleeps: Sleeps, behaviour: ServerBehaviour, pinned: dict[str, str], status: int
) -> None:
    fake.behaviour = behaviour
    agent: OpenAIAgent = make_agent(**pinned)
    with pytest.raises(ModelMisconfigured) as refused:
        await agent.judge(JudgeRequest(case=case(), transcript=transcript(), trigger="reply"))
    assert isinstance(refused.value, Misconfigured)
    assert refused.value.status == status
    assert len(fake.calls) == 1
    assert sleeps.delays == []
    reason = DEPENDENCY_PROBLEMS.current()[MODEL]
    assert f"({status}: " in reason
    assert ("Input should be" if status == 500 else "max_completion_tokens") in reason
    # The server is upgraded (or reconfigured): the next attempt answers and clears the report.
    fake.behaviour = OPENAI_LIKE
    decided = await agent.judge(JudgeRequest(case=case(), transcript=transcript(), trigger="reply"))
    assert decided.outcome == "GOAL_ACHIEVED"
    assert MODEL not in DEPENDENCY_PROBLEMS.current()


async def test_a_5xx_without_a_validation_error_is_still_an_outage(
    fake: FakeOpenAI, make_agent: Any, sleeps: Sleeps
) -> None:
    agent: OpenAIAgent = make_agent()
    fake.script(error(500, message="CUDA out of memory"), error(502), error(500, message="busy"))
    with pytest.raises(ModelUnavailable):
        await agent.judge(JudgeRequest(case=case(), transcript=transcript(), trigger="reply"))
    assert len(fake.calls) == 3
    assert len(sleeps.delays) == 2
    assert MODEL not in DEPENDENCY_PROBLEMS.current()


async def test_a_schema_the_settled_server_refuses_for_one_request_degrades_that_request_only(
    fake: FakeOpenAI, make_agent: Any
) -> None:
    agent: OpenAIAgent = make_agent()
    assert await agent.probe() is None
    fake.script(
        error(400, message="Invalid schema for response_format 'caseflow_judgement': 'pattern' is not supported."),
        schema=JUDGEMENT_SCHEMA_NAME,
    )
    decided = await agent.judge(JudgeRequest(case=case(), transcript=transcript(), trigger="reply"))
    assert decided.outcome == "GOAL_ACHIEVED"
    assert [call.format_type for call in fake.calls[1:]] == ["json_schema", "json_object"]
    assert dialect(agent) == ("json_schema", "max_tokens")  # the process keeps the mode the server takes
    await agent.compose(ComposeRequest(case=case(), kind="first", attempt=1, transcript=[]))
    assert fake.calls[-1].format_type == "json_schema"
    assert MODEL not in DEPENDENCY_PROBLEMS.current()


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "Invalid prompt: your prompt was flagged as potentially violating our usage policy."),
        (413, "Request Entity Too Large"),
    ],
    ids=["flagged", "too_large"],
)
async def test_a_refusal_of_this_cases_content_asks_the_client_and_is_not_the_configuration(
    fake: FakeOpenAI, make_agent: Any, status: int, message: str
) -> None:
    agent: OpenAIAgent = make_agent()
    fake.script(error(status, message=message))
    decided = await agent.judge(JudgeRequest(case=case(), transcript=transcript(), trigger="reply"))
    assert decided.outcome == "NEEDS_INPUT"
    assert decided.question is not None
    assert f"({status}: {message})" in decided.question
    assert len(fake.calls) == 1
    assert MODEL not in DEPENDENCY_PROBLEMS.current()


async def test_the_background_probe_waits_out_a_model_that_is_away_without_reporting_it(
    fake: FakeOpenAI, make_agent: Any, sleeps: Sleeps
) -> None:
    agent: OpenAIAgent = make_agent(openai_max_retries=0)
    fake.script(error(503), error(503))
    await asyncio.wait_for(agent.probe_until_answered(), timeout=10)
    assert len(fake.calls) == 3
    assert sleeps.delays == [7.0, 7.0]  # OPENAI_PROBE_RETRY_SECONDS between probes
    assert MODEL not in DEPENDENCY_PROBLEMS.current()


async def test_the_background_probe_reports_a_refusal_until_it_is_fixed(
    fake: FakeOpenAI, make_agent: Any, sleeps: Sleeps
) -> None:
    agent: OpenAIAgent = make_agent()
    fake.script(error(404, message="The model `fake-model-1` does not exist"))
    seen: list[dict[str, str]] = []

    async def look_then_sleep(delay: float) -> None:
        seen.append(DEPENDENCY_PROBLEMS.current())
        await sleeps(delay)

    agent._sleep = look_then_sleep
    await asyncio.wait_for(agent.probe_until_answered(), timeout=10)
    (reported,) = seen
    assert "404: The model `fake-model-1` does not exist" in reported[MODEL]
    assert MODEL not in DEPENDENCY_PROBLEMS.current()


async def test_a_probe_answer_unusable_in_a_pinned_mode_is_reported(fake: FakeOpenAI, make_agent: Any) -> None:
    agent: OpenAIAgent = make_agent(openai_structured_output="json_schema")
    fake.script(completion(UNSURE_OF_THE_FORMAT))
    problem = await agent.probe()
    assert problem is not None
    assert "unusable in json_schema mode" in problem
    assert "not valid JSON" in problem
    assert dialect(agent) == ("json_schema", "max_tokens")  # a pinned mode is never changed
    assert len(fake.calls) == 1
