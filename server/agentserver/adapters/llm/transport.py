"""Reaching the model: the settings (where, which model, the bounds of time, retries
and output), the client built from them, and the one chat-completions call, whose
errors it sorts into the failures `modes` names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)
from openai.types.shared_params import ResponseFormatJSONObject

from agentserver.adapters.llm.modes import (
    OutputMode,
    _ModeRejected,
    _ParamRefused,
    _refused_param,
    _refuses_mode,
    _server_message,
    _short,
    _TransportFailure,
    _UnusableOutput,
)

# The engine's log: its lines are the engine's, whichever module writes them.
log = logging.getLogger("agentserver.adapters.llm.openai_engine")


@dataclass(frozen=True)
class LlmSettings:
    """How to reach the model. ``base_url=None`` means OpenAI itself."""

    base_url: str | None
    api_key: str
    model: str
    timeout_seconds: float = 20.0  # per HTTP attempt
    max_retries: int = 2  # the client's own retries on timeouts, 408/409/429/5xx
    history_messages: int = 10  # how many past messages the model sees
    temperature: float | None = 0.0  # None: not sent (the model's default)
    max_tokens: int = 1024  # per answer; an engine answer is a few hundred
    deadline_seconds: float = 30.0  # for the whole decision, across modes and retries


class _Completions:
    """The chat-completions call: a client bounded by the settings (time per attempt,
    the client's own retries), and the sampling parameters this server accepts."""

    def __init__(
        self,
        settings: LlmSettings,
        tool_params: list[ChatCompletionFunctionToolParam],
        client: openai.AsyncOpenAI | None,
        name: str,
    ) -> None:
        self._settings = settings
        self._tool_params = tool_params
        self.name = name  # the engine's, for the log
        self._send_temperature = settings.temperature is not None
        self._tokens_param = "max_tokens"  # or "max_completion_tokens", once refused
        self._owns_client = client is None
        if client is None:
            client = openai.AsyncOpenAI(
                # Local servers (llama.cpp, Ollama) ignore the key, but the client
                # refuses to start without one.
                api_key=settings.api_key or "no-key",
                base_url=settings.base_url,
                timeout=settings.timeout_seconds,
                max_retries=settings.max_retries,
            )
        else:
            # The engine's bounds hold whoever built the client.
            client = client.with_options(
                timeout=settings.timeout_seconds, max_retries=settings.max_retries
            )
        self._client = client

    def stop_sending(self, param: str) -> bool:
        """Stop sending a refused parameter (the newer name, for the token bound);
        False when it was not being sent: the refusal is about something else."""
        if param == "temperature" and self._send_temperature:
            self._send_temperature = False
        elif param == "max_tokens" and self._tokens_param == "max_tokens":
            self._tokens_param = "max_completion_tokens"
        else:
            return False
        log.warning("%s: server refused %s; adapting from now on", self.name, param)
        return True

    async def create(
        self, mode: OutputMode, messages: list[ChatCompletionMessageParam]
    ) -> ChatCompletion:
        """One chat completion (with the client's bounded retries), errors classified."""
        json_object: ResponseFormatJSONObject = {"type": "json_object"}
        try:
            return await self._client.chat.completions.create(
                model=self._settings.model,
                messages=messages,
                temperature=(
                    self._settings.temperature
                    if self._send_temperature and self._settings.temperature is not None
                    else openai.omit
                ),
                max_tokens=(
                    self._settings.max_tokens if self._tokens_param == "max_tokens" else openai.omit
                ),
                max_completion_tokens=(
                    self._settings.max_tokens
                    if self._tokens_param == "max_completion_tokens"
                    else openai.omit
                ),
                tools=self._tool_params if mode is OutputMode.TOOLS else openai.omit,
                tool_choice="required" if mode is OutputMode.TOOLS else openai.omit,
                response_format=json_object if mode is OutputMode.JSON_OBJECT else openai.omit,
            )
        except openai.APITimeoutError as exc:
            raise _TransportFailure("timeout") from exc
        except openai.APIConnectionError as exc:
            raise _TransportFailure("connection error") from exc
        except openai.RateLimitError as exc:
            raise _TransportFailure("rate limited (429)") from exc
        except openai.InternalServerError as exc:
            raise _TransportFailure(f"server error ({exc.status_code})") from exc
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            if param := _refused_param(exc):
                raise _ParamRefused(param) from exc
            if _refuses_mode(exc, mode):
                raise _ModeRejected(
                    f"mode rejected ({exc.status_code}: {_short(_server_message(exc))})"
                ) from exc
            raise _TransportFailure(f"bad request ({exc.status_code})") from exc
        except openai.APIStatusError as exc:
            raise _TransportFailure(f"http {exc.status_code}") from exc
        except openai.APIError as exc:  # e.g. a response body the client cannot read
            raise _UnusableOutput(f"invalid response ({type(exc).__name__})") from exc

    async def aclose(self) -> None:
        """Close the HTTP client if the engine created it."""
        if self._owns_client:
            await self._client.close()
