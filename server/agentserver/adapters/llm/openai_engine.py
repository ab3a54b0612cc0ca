"""`OpenAIEngine`: a `DecisionEngine` over the OpenAI Chat Completions API.

Works against OpenAI itself and OpenAI-compatible servers (vLLM, llama.cpp, Ollama,
LiteLLM, ...) through the official ``openai`` client. Like every engine it only
*proposes* (DESIGN.md, principle 1): what it returns is parsed, validated, clamped
data for the deterministic policy; nothing the model writes is trusted further.

Primary design: strict function tools
-------------------------------------
Each registry action becomes one function tool with ``strict: true``, plus a final
``respond`` tool carrying ``{reply, confidence, reasoning, bypass_attempt}``;
``tool_choice="required"`` so the model always answers through tools. We chose this
over a single ``json_schema`` response format whose actions carry
``parameters_json: string`` because:

* a string-typed ``parameters_json`` puts the action parameters *outside* the
  schema, so the server cannot constrain them; with tools every action's own
  parameter schema is enforced by constrained decoding;
* picking a function per requested action is exactly what models are trained for,
  and the registry's descriptions become the tool descriptions;
* tool calling is more widely implemented by OpenAI-compatible servers than strict
  ``json_schema`` with nested ``anyOf``.

The cost: OpenAI does not guarantee strict adherence when several tools are called
in one turn, so the engine validates every action client-side anyway (below).

A tool's arguments are an envelope ``{parameters, confidence, missing_parameters,
reasoning}``: per-action confidence and missing parameters have nowhere else to
go. Strict mode needs every property required, so the engine rewrites each
registry schema into the strict subset (``additionalProperties: false``, all
properties required, optional ones nullable, unsupported keywords dropped) and
makes every *top-level* parameter nullable: a model that lacks a value answers
``null`` and names it in ``missing_parameters`` instead of inventing one. Nulls
the original schema does not allow are removed before validation. A schema that
cannot be expressed strictly (a free-form object, an array without ``items``) is
sent as a non-strict tool instead. Tool names are sanitised (``email.send`` ->
``email_send``: OpenAI allows only ``[a-zA-Z0-9_-]``) and mapped back.

Output modes and degradation
----------------------------
1. ``tools`` (above).
2. ``json_object``: ``response_format={"type": "json_object"}`` and a prompt that
   spells out the JSON shape and the action catalogue; the first JSON object in
   the text is parsed.
3. ``plain_json``: the same prompt with no ``response_format`` at all, for servers
   that reject even ``json_object``.
4. fallback: the injected offline engine; its Proposal's ``engine`` reads
   ``offline (llm:<model> failed: <reason>)``.

Rules:

* **Transport failures go straight to the fallback** (timeout, connection error,
  429 and 5xx after the client's bounded retries, any other HTTP error): the next
  output mode would hit the same server and only add latency.
* **The whole decision has a deadline** (`LlmSettings.deadline_seconds`, across
  modes and the client's retries): past it, the fallback answers, so a slow model
  costs at most that long, never (retries + 1) x timeout per mode.
* **A 400 that refuses ``temperature``** (OpenAI's reasoning models accept only
  the default) repeats the call without it, and one that refuses ``max_tokens``
  (the same models want ``max_completion_tokens``) repeats it with the newer
  name; both are *remembered*, like a refused mode.
* **Output is bounded** (`LlmSettings.max_tokens`): a small local model asked for
  tools can otherwise generate until its context is full, and a server such as
  llama.cpp's keeps generating after the client gave up (seen in the manual
  check, `bench/llm_check.py`).
* **A 400/422 whose message mentions the output mode** (``response_format``,
  ``json_schema``, ``tools``, ``tool_choice``, ``strict``, ``grammar`` ...; the
  usual answer of llama.cpp, vLLM and Ollama) moves to the next mode *and is
  remembered* for this engine instance, so later calls start in the mode that works.
* **Unusable output** (a refusal, a content-filter stop, no choices, no tool call,
  invalid JSON in ``respond`` or in the JSON answer, a JSON answer of the wrong
  shape, or every proposed action unusable) moves from ``tools`` to the JSON mode
  known to work, and from a JSON mode to the fallback. It is not remembered: it is
  the model's answer, not the server's capability.
* **A single bad action is dropped, not the whole answer**: an unknown action type
  (not one of the tools), arguments that are not a JSON object, or parameters
  failing the schema. The remaining actions stand; the overall confidence is capped
  at `DROPPED_ACTION_CONFIDENCE_CAP` so the policy picks a stricter decision level,
  and the reasoning says what was dropped and why. Dropping is safe because the
  policy only ever acts on what is proposed; degrading the whole answer for one bad
  action would throw away valid work. If *every* proposed action is dropped the
  answer is treated as unusable (its reply likely promises what cannot be done).
* Confidences are clamped to 0..100 (a fraction such as ``0.8`` is read as 80);
  unparseable ones become `UNSTATED_CONFIDENCE`.
* Nothing the model returns can raise out of `OpenAIEngine.propose`: unexpected
  exceptions in the LLM path are logged and answered by the fallback. (Only the
  fallback engine's own exceptions propagate: they are bugs, not model output.)

Validation: parameters are checked with ``jsonschema`` against the ToolSpec's
schema (with format checking), or with the injected ``validate(action_type,
parameters) -> [problems]``. A required parameter the model left out or set to
``null`` is reported in ``missing_parameters`` rather than failing the action: the
engine asks instead of guessing. The injected validator cannot know which fields
are deliberately missing, so for an action with missing parameters the engine uses
its own schema check, ignoring only the top-level ``required`` errors.

The pieces
----------
What the model is offered (`tools`, `strict_schema`) and told (`prompts`); the call
with its bounds (`transport`); the output modes and the failures that move between
them (`modes`); reading the answer (`parsing`) and checking it (`validation`).
`OpenAIEngine` composes them: it owns the degradation from mode to mode, the
deadline and the fallback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

import openai

from agentserver.adapters.llm.modes import (
    OutputMode,
    _ModeRejected,
    _ParamRefused,
    _TransportFailure,
    _UnusableOutput,
)
from agentserver.adapters.llm.parsing import _AnswerParser
from agentserver.adapters.llm.prompts import _Prompts
from agentserver.adapters.llm.tools import (
    RESPOND_TOOL,
    ToolSpec,
    _Action,
    _build_action,
    _function_tool,
    _respond_tool,
    _unique_tool_name,
)
from agentserver.adapters.llm.transport import LlmSettings, _Completions
from agentserver.adapters.llm.validation import Validate, _AnswerChecker
from agentserver.domain.decision.engine import DecisionEngine, EngineRequest, Proposal

log = logging.getLogger(__name__)


class OpenAIEngine:
    """Proposes actions with an OpenAI-compatible chat model; degrades as documented above."""

    def __init__(
        self,
        settings: LlmSettings,
        tools: Sequence[ToolSpec],
        fallback: DecisionEngine,
        *,
        client: openai.AsyncOpenAI | None = None,
        validate: Validate | None = None,
    ) -> None:
        self._settings = settings
        self._fallback = fallback
        self._mode = OutputMode.TOOLS

        self._actions: dict[str, _Action] = {}
        self._by_tool_name: dict[str, str] = {}
        taken = {RESPOND_TOOL}
        for spec in tools:
            if spec.name in self._actions:
                raise ValueError(f"duplicate tool spec {spec.name!r}")
            tool_name = _unique_tool_name(spec.name, taken)
            taken.add(tool_name)
            self._actions[spec.name] = _build_action(spec, tool_name)
            self._by_tool_name[tool_name] = spec.name
        tool_params = [_function_tool(a) for a in self._actions.values()]
        tool_params.append(_respond_tool())
        self._completions = _Completions(settings, tool_params, client, self.name)
        self._checker = _AnswerChecker(self.name, self._actions, validate)
        self._parser = _AnswerParser(self._actions, self._by_tool_name)
        self._prompts = _Prompts(settings, list(self._actions.values()))

    # -- DecisionEngine -------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"llm:{self._settings.model}"

    @property
    def output_mode(self) -> str:
        """The mode the next call starts in: ``tools``, ``json_object`` or ``plain_json``."""
        return self._mode.label

    async def propose(self, request: EngineRequest) -> Proposal:
        """Ask the model; degrade mode by mode, then to the fallback. Never raises for
        model output or server trouble."""
        failures: list[tuple[str, str]] = []
        try:
            async with asyncio.timeout(self._settings.deadline_seconds):
                proposal = await self._propose_degrading(request, failures)
        except TimeoutError:
            failures.append(
                ("deadline", f"deadline: no answer within {self._settings.deadline_seconds:g} s")
            )
            proposal = None
        return proposal or await self._fall_back(request, failures)

    async def _propose_degrading(
        self, request: EngineRequest, failures: list[tuple[str, str]]
    ) -> Proposal | None:
        """The modes in turn; None when the fallback must answer (`failures` say why:
        (kind, words) each)."""
        mode: OutputMode | None = self._mode
        while mode is not None:
            try:
                return await self._propose_in(mode, request)
            except _ParamRefused as exc:
                if not self._completions.stop_sending(exc.param):  # refused again: not ours to fix
                    failures.append(("bad_request", f"{mode.label}: bad request ({exc.param})"))
                    return None
            except _ModeRejected as exc:
                failures.append(("mode_rejected", f"{mode.label}: {exc}"))
                mode = self._demote_past(mode)
            except _UnusableOutput as exc:
                failures.append(("unusable_output", f"{mode.label}: {exc}"))
                # Output trouble in tools mode is worth one JSON-mode try; in a JSON
                # mode a simpler mode would not help (plain only exists for servers
                # that reject json_object).
                mode = max(self._mode, OutputMode.JSON_OBJECT) if mode is OutputMode.TOOLS else None
            except _TransportFailure as exc:
                failures.append(("transport", f"{mode.label}: {exc}"))
                mode = None
            except Exception as exc:  # never let a surprise escape: degrade instead
                log.exception("%s: unexpected error in %s mode", self.name, mode.label)
                failures.append(("unexpected", f"{mode.label}: unexpected {type(exc).__name__}"))
                mode = None
        return None

    async def aclose(self) -> None:
        """Close the HTTP client if this engine created it."""
        await self._completions.aclose()

    # -- one attempt ----------------------------------------------------------------

    def _demote_past(self, mode: OutputMode) -> OutputMode | None:
        """Remember that `mode` is refused by this server; return the next mode to try."""
        if mode is OutputMode.PLAIN_JSON:
            return None
        nxt = OutputMode(mode + 1)
        if nxt > self._mode:
            log.warning(
                "%s: server refused %s mode; using %s from now on", self.name, mode.label, nxt.label
            )
            self._mode = nxt
        return nxt

    async def _propose_in(self, mode: OutputMode, request: EngineRequest) -> Proposal:
        messages = self._prompts.messages(mode, request)
        completion = await self._completions.create(mode, messages)
        if not completion.choices:
            raise _UnusableOutput("no choices in the response")
        choice = completion.choices[0]
        message = choice.message
        if message.refusal:
            raise _UnusableOutput("refusal")
        if choice.finish_reason == "content_filter":
            raise _UnusableOutput("content filtered")
        if mode is OutputMode.TOOLS:
            answer = self._parser.from_tool_calls(message)
        else:
            answer = self._parser.from_text(message.content)
        return self._checker.assemble(answer, mode)

    # -- fallback -------------------------------------------------------------------

    async def _fall_back(self, request: EngineRequest, failures: list[tuple[str, str]]) -> Proposal:
        words = [text for _, text in failures]
        # With one mode tried, naming the mode adds nothing: "failed: timeout".
        reason = words[0].split(": ", 1)[1] if len(words) == 1 else "; ".join(words)
        log.warning("%s failed (%s); using %s", self.name, reason, self._fallback.name)
        proposal = await self._fallback.propose(request)
        return replace(
            proposal,
            engine=f"{proposal.engine} ({self.name} failed: {reason})",
            # The failure that ended the attempts (earlier ones led to other modes).
            fallback=failures[-1][0] if failures else "unexpected",
        )
