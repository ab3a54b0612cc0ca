"""LLM-backed decision engines (OpenAI Chat Completions and compatible servers)."""

from agentserver.adapters.llm.openai_engine import LlmSettings, OpenAIEngine, ToolSpec

__all__ = ["LlmSettings", "OpenAIEngine", "ToolSpec"]
