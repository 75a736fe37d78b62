"""The LLM agent (`AGENT_BACKEND=openai`): writes emails and judges replies with any OpenAI-compatible
chat-completions server (OpenAI, vLLM, Ollama, llama.cpp, ...).

The key decision: the model proposes, the code decides. Every answer is requested against a JSON schema, decoded
with msgspec and checked (a result against the case's resultSchema; a reply or question present when the outcome
needs one); an unusable answer is sent back with what was wrong, a bounded number of times, and then the client is
asked instead. A GOAL_ACHIEVED answer completes nothing until each result field's citation is found verbatim in
the counterparty's own words (`citations.py`). A per-case token budget stops the spending. So a confused or
manipulated model can at worst pause a case in INPUT_NEEDED; it can neither crash it nor complete it wrongly.
Each request's prompt is estimated before it is sent, and one that would take the case past its budget is not sent.
Server trouble is not the client's business: a transient failure or a refused configuration raises (the
shared.failures types), and the worker's consumer retries later; the request shape a server takes is learnt by the
chat client (completions.py), first by a start-up probe whose result `/readyz` shows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from services.case.agent import prompts
from services.case.agent.citations import Citation, unsupported_fields
from services.case.agent.completions import (
    MODEL,
    ChatClient,
    ChatMessage,
    ModelRequestRejected,
    estimated_tokens,
)
from services.case.agent.port import (
    AgentCannotProceed,
    ComposeRequest,
    Draft,
    Judgement,
    JudgeRequest,
    Outcome,
    TokenUsage,
)
from services.case.lifecycle import result_problem
from services.case.model import CaseRecord, EmailKind
from shared.contracts.agentmail import TranscriptMessage
from shared.failures import DEPENDENCY_PROBLEMS, DependencyFailure
from shared.settings import CaseSettings

log = logging.getLogger("caseflow.case.agent.openai")

type Sleep = Callable[[float], Awaitable[None]]


class DraftOutput(msgspec.Struct, frozen=True):
    subject: str = ""
    body: str = ""
    question: str | None = None


class ProbeOutput(msgspec.Struct, frozen=True):
    ok: bool


class JudgementOutput(msgspec.Struct, frozen=True):
    outcome: Outcome
    reason: str = ""
    result: dict[str, Any] | None = None
    citations: list[Citation] = []
    reply: str | None = None
    question: str | None = None


@dataclass(frozen=True, slots=True)
class Answer[T]:
    output: T
    usage: TokenUsage


@dataclass(frozen=True, slots=True)
class Stuck:
    """The model could not be used for this step; `why` completes "I could not ..., because ..."."""

    why: str
    usage: TokenUsage


type Check[T] = Callable[[T], str | None]


class RecentAnswers:
    """The answers to the last few requests, by a digest of everything an answer depends on.

    The worker re-runs a whole step when its versioned write loses a race (the outbox relay's own write often
    does that right after a send is requested). The rules agent gives the same answer again for free; a model
    would be paid again and might answer differently from the email already sent. So an identical request gets
    the answer already given, whose usage the winning write records once.
    """

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._answers: OrderedDict[str, Draft | Judgement] = OrderedDict()

    @staticmethod
    def key(case: CaseRecord, transcript: list[TranscriptMessage], *step: str | int) -> str:
        inputs = (case.case_id, case.goal, case.constraints, case.result_schema, transcript, step)
        return hashlib.sha256(msgspec.json.encode(inputs)).hexdigest()

    def get(self, key: str) -> Draft | Judgement | None:
        answer = self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
        return answer

    def put(self, key: str, answer: Draft | Judgement) -> None:
        self._answers[key] = answer
        self._answers.move_to_end(key)
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)


class OpenAIAgent:
    def __init__(
        self, settings: CaseSettings, *, client: ChatClient | None = None, sleep: Sleep = asyncio.sleep
    ) -> None:
        self._client = client or ChatClient(settings)
        self._budget = settings.openai_token_budget_per_case
        self._max_output_attempts = settings.openai_max_output_attempts
        self._probe_retry_seconds = settings.openai_probe_retry_seconds
        self._sleep = sleep
        self._recent = RecentAnswers()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def probe(self) -> str | None:
        """One tiny structured request: None when the model answers it usably, else what was wrong.

        In `auto` mode an answer that does not follow the schema moves to the next mode (the server may have
        ignored `response_format`; the next modes put the schema in the prompt) and asks again. Raises the
        shared.failures types like any call (a refusal is reported by the client)."""
        prompt = prompts.probe_prompt()
        while True:
            completion = await self._client.complete(prompt)
            output, problem = _decode(completion.content, completion.refusal, ProbeOutput)
            if output is not None and not output.ok:
                problem = 'the answer was {"ok": false}'
            if not problem:
                log.info(
                    "model probe answered",
                    extra={"model": self._client.model, "structured_output": completion.mode},
                )
                return None
            if not self._client.dialect.degrade(completion.mode, why=f"the probe's answer: {problem}"):
                return f"its answer to the start-up probe is unusable in {completion.mode} mode ({problem})"

    async def probe_until_answered(self) -> None:
        """The start-up probe, in the background (the service starts even while the model is away), repeated every
        OPENAI_PROBE_RETRY_SECONDS until the model answers it: a refusal or an unusable answer is reported in
        DEPENDENCY_PROBLEMS (so `/readyz` names the model) until an answer clears it."""
        while True:
            try:
                problem = await self.probe()
            except DependencyFailure as failure:
                log.warning("model probe failed", extra={"kind": failure.kind, "reason": failure.reason[:300]})
            else:
                if problem is None:
                    return
                DEPENDENCY_PROBLEMS.report(MODEL, f"the model {problem}")
                log.error("model probe answer unusable", extra={"problem": problem[:300]})
            await self._sleep(self._probe_retry_seconds)

    async def compose(self, request: ComposeRequest) -> Draft:
        key = RecentAnswers.key(request.case, request.transcript, "compose", request.kind, request.attempt)
        return await self._once(key, Draft, lambda: self._compose(request))

    async def judge(self, request: JudgeRequest) -> Judgement:
        key = RecentAnswers.key(request.case, request.transcript, "judge", request.trigger)
        return await self._once(key, Judgement, lambda: self._judge(request))

    async def _once[A: (Draft, Judgement)](self, key: str, kind: type[A], answer: Callable[[], Awaitable[A]]) -> A:
        known = self._recent.get(key)
        if isinstance(known, kind):
            return known
        fresh = await answer()
        self._recent.put(key, fresh)
        return fresh

    async def _compose(self, request: ComposeRequest) -> Draft:
        prompt = prompts.compose_prompt(request)
        answer = await self._ask(
            request.case, prompt, DraftOutput, _draft_problem, purpose=f"compose:{request.kind}:{request.attempt}"
        )
        if isinstance(answer, Stuck):
            raise AgentCannotProceed(
                f"I could not write email number {request.attempt} ({_KIND_NAMES[request.kind]}) to the "
                f"counterparty, because {answer.why}. Please review the case and tell me how to proceed."
            )
        if answer.output.question and answer.output.question.strip():
            raise AgentCannotProceed(answer.output.question.strip())
        objective = _thread_subject(request.case)
        subject = answer.output.subject.strip() or (objective if request.kind == "first" else f"Re: {objective}")
        return Draft(subject=subject, text=answer.output.body.strip(), usage=answer.usage)

    async def _judge(self, request: JudgeRequest) -> Judgement:
        case = request.case
        if not any(message.direction == "inbound" for message in request.transcript):
            return Judgement(outcome="WAIT", reason="There is no message from the counterparty to judge.")
        prompt = prompts.judge_prompt(request)

        def problem(output: JudgementOutput) -> str | None:
            return _judgement_problem(output, case.result_schema)

        answer = await self._ask(case, prompt, JudgementOutput, problem, purpose=f"judge:{request.trigger}")
        if isinstance(answer, Stuck):
            return Judgement(
                outcome="NEEDS_INPUT",
                question=(
                    f"I could not decide what the counterparty's latest message means for this case (whether the "
                    f"goal is achieved, they refused, or they need an answer), because {answer.why}. Please read "
                    "the thread and tell me how to proceed."
                ),
                reason="the model's judgement could not be used",
                usage=answer.usage,
            )
        output, usage = answer.output, answer.usage
        reason = output.reason.strip()
        match output.outcome:
            case "GOAL_ACHIEVED":
                result = output.result if output.result is not None else {}
                missing = unsupported_fields(
                    result, output.citations, request.transcript, client_answers=prompts.client_answers(case)
                )
                if missing:
                    log.warning(
                        "goal not confirmed: citations not found in the counterparty's words",
                        extra={"fields": [entry.field for entry in missing], "prompt_version": prompts.PROMPT_VERSION},
                    )
                    details = "; ".join(f"{entry.field}: {entry.why}" for entry in missing)
                    return Judgement(
                        outcome="NEEDS_INPUT",
                        question=(
                            "The counterparty's reply may complete this case, but I could not confirm it from their "
                            f"own words ({details}). Please read the thread and tell me whether the goal is achieved "
                            "and what the result should be."
                        ),
                        reason="the result is not supported by the counterparty's own words",
                        usage=usage,
                    )
                return Judgement(outcome="GOAL_ACHIEVED", result=result, reason=reason, usage=usage)
            case "REQUIRES_REPLY":
                reply = Draft(subject=f"Re: {_thread_subject(case)}", text=(output.reply or "").strip())
                return Judgement(outcome="REQUIRES_REPLY", reply=reply, reason=reason, usage=usage)
            case "NEEDS_INPUT":
                question = (output.question or "").strip()
                return Judgement(outcome="NEEDS_INPUT", question=question, reason=reason, usage=usage)
            case "REFUSED" | "WAIT":
                return Judgement(outcome=output.outcome, reason=reason, usage=usage)

    async def _ask[T](
        self, case: CaseRecord, prompt: prompts.Prompt, output_type: type[T], check: Check[T], *, purpose: str
    ) -> Answer[T] | Stuck:
        """Ask until an answer decodes and passes `check`, within the attempts and the case's token budget."""
        messages = list(prompt.messages)
        usage = TokenUsage()
        problem = "no answer was requested"
        for attempt in range(1, self._max_output_attempts + 1):
            before = case.token_usage
            spent = before.prompt_tokens + before.completion_tokens + usage.prompt_tokens + usage.completion_tokens
            if spent >= self._budget:
                log.warning(
                    "token budget of the case spent",
                    extra={"purpose": purpose, "spent_tokens": spent, "budget_tokens": self._budget},
                )
                return Stuck(f"this case has used its model budget ({spent} of {self._budget} tokens)", usage)
            request = dataclasses.replace(prompt, messages=messages)
            estimate = estimated_tokens(request, self._client.dialect.structured_output)
            if spent + estimate > self._budget:
                log.warning(
                    "prompt would exceed the token budget of the case",
                    extra={
                        "purpose": purpose,
                        "spent_tokens": spent,
                        "estimated_prompt_tokens": estimate,
                        "budget_tokens": self._budget,
                    },
                )
                return Stuck(
                    f"the next request to the model (about {estimate} tokens) would exceed this case's model budget "
                    f"({spent} of {self._budget} tokens spent)",
                    usage,
                )
            try:
                completion = await self._client.complete(request)
            except ModelRequestRejected as exc:
                log.warning("model server rejected the request", extra={"purpose": purpose, "status": exc.status})
                return Stuck(f"the model server rejected the request ({exc.status}: {exc.message})", usage)
            usage += completion.usage
            output, problem = _decode(completion.content, completion.refusal, output_type)
            if output is not None and (problem := check(output) or ""):
                output = None
            log.info(
                "model answered",
                extra={
                    "purpose": purpose,
                    "model": self._client.model,
                    "prompt_version": prompts.PROMPT_VERSION,
                    "structured_output": completion.mode,
                    "output_attempt": attempt,
                    "estimated_prompt_tokens": estimate,
                    "prompt_tokens": completion.usage.prompt_tokens,
                    "completion_tokens": completion.usage.completion_tokens,
                    "finish_reason": completion.finish_reason,
                    "problem": problem,
                },
            )
            if output is not None:
                return Answer(output, usage)
            messages += [ChatMessage(role="assistant", content=completion.content or ""), prompts.correction(problem)]
        return Stuck(
            f"the model gave no usable answer in {self._max_output_attempts} attempts (the last one: {problem})", usage
        )


_KIND_NAMES: Final[dict[EmailKind, str]] = {"first": "the first email", "follow_up": "a follow-up", "reply": "a reply"}


def _decode[T](content: str | None, refusal: str | None, output_type: type[T]) -> tuple[T | None, str]:
    """The decoded answer and "", or None and why it could not be read."""
    if refusal:
        return None, f"the model refused: {refusal}"
    if not content or not content.strip():
        return None, "the answer was empty"
    try:
        output = msgspec.json.decode(_json_text(content), type=output_type)
    except msgspec.ValidationError as exc:
        return None, f"the JSON does not follow the schema ({exc})"
    except msgspec.DecodeError as exc:
        return None, f"the answer is not valid JSON ({exc})"
    return output, ""


def _json_text(content: str) -> str:
    """The JSON object in an answer. Models without a server holding them to a schema (text mode, and some in the
    other modes) wrap it in a markdown fence or a sentence despite the instructions: from the first `{` to the
    last `}`, which is then decoded and validated like any answer."""
    text = content.strip()
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def _draft_problem(output: DraftOutput) -> str | None:
    if output.question and output.question.strip():
        return None
    if not output.body.strip():
        return "`body` is empty: write the email's body, or set `question` when you cannot"
    return None


def _judgement_problem(output: JudgementOutput, result_schema: dict[str, Any] | None) -> str | None:
    match output.outcome:
        case "GOAL_ACHIEVED":
            result = output.result if output.result is not None else ({} if result_schema is None else None)
            problem = result_problem(result_schema, result)
            return f"`result` does not satisfy resultSchema ({problem})" if problem else None
        case "REQUIRES_REPLY" if not (output.reply or "").strip():
            return "the outcome is REQUIRES_REPLY but `reply` is empty: write the reply's body in `reply`"
        case "NEEDS_INPUT" if not (output.question or "").strip():
            return "the outcome is NEEDS_INPUT but `question` is empty: write the question for the client"
        case _:
            return None


def _thread_subject(case: CaseRecord) -> str:
    return case.goal.objective.strip().rstrip(".")
