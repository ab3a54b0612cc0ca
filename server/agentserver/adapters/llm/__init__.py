"""LLM-backed decision engines (OpenAI Chat Completions and compatible servers).

Names with a leading underscore are private to this package: its modules share
them, nothing outside it uses them.
"""

from agentserver.adapters.llm.openai_engine import OpenAIEngine
from agentserver.adapters.llm.tools import ToolSpec
from agentserver.adapters.llm.transport import LlmSettings

__all__ = ["LlmSettings", "OpenAIEngine", "ToolSpec"]
