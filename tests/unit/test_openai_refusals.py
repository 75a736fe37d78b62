"""How the chat client reads a server's refusal, on the words real servers answer with, and its prompt estimate."""

from __future__ import annotations

import pytest

from services.case.agent import prompts
from services.case.agent.completions import CapField, Concern, estimated_tokens, is_refusal, refusal_concern
from services.case.agent.port import JudgeRequest
from tests.unit.test_openai_prompts import outbound
from tests.unit.test_rules_agent import case, inbound

LLAMA_CPP_PYTHON_VALIDATION = (
    "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or "
    "'json_object'\", 'input': 'json_schema', 'ctx': {'expected': \"'text' or 'json_object'\"}}]"
)


@pytest.mark.parametrize(
    ("message", "cap_field", "concern"),
    [
        (
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9100 tokens.",
            "max_tokens",
            "context",
        ),
        ("the request exceeds the available context size, try increasing it", "max_tokens", "context"),
        (
            "'max_tokens' or 'max_completion_tokens' is too large: 2000. This model's maximum context length is 4096 "
            "tokens and your request has 3000 input tokens (2000 > 4096 - 3000).",
            "max_tokens",
            "context",
        ),
        (
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
            "max_tokens",
            "flagged",
        ),
        (
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' "
            "instead.",
            "max_tokens",
            "cap_field",
        ),
        ("Extra inputs are not permitted: max_completion_tokens", "max_completion_tokens", "cap_field"),
        (LLAMA_CPP_PYTHON_VALIDATION, "max_tokens", "response_format"),
        ("'response_format.type' must be 'json_schema' or 'text'", "max_tokens", "response_format"),
        ("Invalid schema for response_format 'caseflow_judgement'", "max_tokens", "response_format"),
        ("Incorrect API key provided: sk-...", "max_tokens", "other"),
        ("The model `llama3.1` does not exist", "max_tokens", "other"),
    ],
    ids=[
        "openai_context",
        "llama_server_context",
        "vllm_context_naming_both_caps",
        "flagged",
        "reasoning_model_cap",
        "strict_server_refusing_the_new_cap",
        "llama_cpp_python_json_schema",
        "lm_studio_json_object",
        "schema_refused",
        "api_key",
        "model_name",
    ],
)
def test_a_refusal_is_read_for_what_it_concerns(message: str, cap_field: CapField, concern: Concern) -> None:
    assert refusal_concern(message, cap_field=cap_field) == concern


@pytest.mark.parametrize(
    ("status", "message", "refused"),
    [
        (400, "anything", True),
        (401, "Incorrect API key provided", True),
        (404, "model not found", True),
        (408, "timeout", False),
        (409, "conflict", False),
        (429, "rate limited", False),
        (500, LLAMA_CPP_PYTHON_VALIDATION, True),
        (500, "1 validation error for CreateChatCompletionRequest", True),
        (500, "CUDA out of memory", False),
        (503, "Service Unavailable", False),
    ],
)
def test_a_5xx_is_an_outage_unless_it_says_the_request_was_invalid(status: int, message: str, refused: bool) -> None:
    assert is_refusal(status, message) is refused


def test_the_estimate_counts_the_schema_and_in_the_modes_that_need_it_the_schema_note() -> None:
    prompt = prompts.judge_prompt(JudgeRequest(case=case(), transcript=[outbound(), inbound("Hi.")], trigger="reply"))
    sent = sum(len(message.content.encode()) for message in prompt.messages)
    with_schema = estimated_tokens(prompt, "json_schema")
    assert with_schema > sent // 3  # the schema counts too
    assert estimated_tokens(prompt, "json_object") == estimated_tokens(prompt, "text") > with_schema
    longer = prompts.judge_prompt(
        JudgeRequest(case=case(), transcript=[outbound(), inbound("Hi. " * 3000)], trigger="reply")
    )
    assert estimated_tokens(longer, "json_schema") - with_schema >= 11_900 // 3  # the reply's ~12 kB
