"""LLM-backed decision engines (OpenAI Chat Completions and compatible servers)."""

from agentserver.adapters.llm.openai_engine import LlmSettings, OpenAIEngine
from agentserver.adapters.llm.tools import ToolSpec

__all__ = ["LlmSettings", "OpenAIEngine", "ToolSpec"]
