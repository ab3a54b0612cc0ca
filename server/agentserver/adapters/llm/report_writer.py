"""Reports in words by the configured LLM, from figures the database computed.

The model only phrases; every number comes from `SqlBusinessStore.summary`, which
is passed in and kept beside the text. Any failure (timeout, error, empty answer)
raises, and the caller falls back to its deterministic text.
"""

from __future__ import annotations

import json
from typing import Any

import openai

from agentserver.adapters.llm.transport import LlmSettings

_SYSTEM = (
    "You write short business reports (at most 120 words) for a small business owner. "
    "Use only the figures in the JSON you are given; never invent numbers. "
    "Plain text, no markdown headings."
)


class ReportWriteError(Exception):
    """The LLM could not write the report."""


class OpenAIReportWriter:
    def __init__(self, settings: LlmSettings, *, client: openai.AsyncOpenAI | None = None) -> None:
        self.model = settings.model
        self._owns_client = client is None
        self._client = (
            client
            or openai.AsyncOpenAI(base_url=settings.base_url, api_key=settings.api_key or "no-key")
        ).with_options(timeout=settings.timeout_seconds, max_retries=settings.max_retries)

    async def write(self, topic: str, summary: dict[str, Any]) -> str:
        try:
            completion = await self._client.chat.completions.create(
                model=self.model,
                temperature=0,
                messages=[
                    {"role": "system", "content": _SYSTEM},
                    {
                        "role": "user",
                        "content": f"Topic: {topic}\nFigures (JSON):\n{json.dumps(summary)}",
                    },
                ],
            )
        except openai.OpenAIError as err:
            raise ReportWriteError(str(err)) from err
        text = (completion.choices[0].message.content or "").strip() if completion.choices else ""
        if not text:
            raise ReportWriteError("the model returned no text")
        return text

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()
