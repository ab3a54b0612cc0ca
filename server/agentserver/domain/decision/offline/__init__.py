"""The offline decision engine: deterministic rules, no network (`OfflineEngine`).

One concept a module:

- `vocabulary`: the phrase table, the words of each concept, the word sets;
- `tokens`: a message's words with their concepts (typos forgiven), and segments;
- `splitting`: cutting a message into one segment per request;
- `classify`: which action type a segment asks for, with its base confidence;
- `context`, `names`: what extraction draws on beyond the words, and how things
  and people are named;
- one extractor module per family: `communication` (email, text, WhatsApp, call),
  `booking`, `resources`, `reports`, `human` (approval, escalation, notification);
- `concerns`: what keeps an action from running unattended; `scoring`: confidence;
- `reply`: what the engine says back;
- `engine`: `OfflineEngine`, which reads a message through all of them.

Names with a leading underscore are private to this package: its modules share
them, nothing outside it uses them.
"""

from agentserver.domain.decision.offline.concerns import BYPASS
from agentserver.domain.decision.offline.engine import OfflineEngine, detect_bypass

__all__ = ["BYPASS", "OfflineEngine", "detect_bypass"]
