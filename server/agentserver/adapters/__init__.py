"""Adapters: the I/O behind the domain's ports (database, channels, LLM, Redis)."""
