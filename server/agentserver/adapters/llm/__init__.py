"""LLM-backed decision engines (OpenAI Chat Completions and compatible servers)."""

from agentserver.adapters.llm.openai_engine import OpenAIEngine
from agentserver.adapters.llm.tools import ToolSpec
from agentserver.adapters.llm.transport import LlmSettings

__all__ = ["LlmSettings", "OpenAIEngine", "ToolSpec"]
