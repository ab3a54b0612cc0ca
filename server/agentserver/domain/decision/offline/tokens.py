"""A message's words as the offline engine reads them: phrases folded into one word,
each word with the concept it names (a typo forgiven), and a segment, the words of
one request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentserver.domain.decision.offline.vocabulary import (
    _CONCEPTS,
    _PHRASES,
    _PROTECTED,
    _TYPO_TARGETS,
    _VOCABULARY,
)
from agentserver.domain.decision.textparse import fuzzy_lookup


@dataclass
class _Token:
    text: str  # as written
    word: str  # lower case, phrase-folded
    concept: str | None
    typo: bool
    start: int


@dataclass
class _Segment:
    text: str  # masked text of this segment (quotes as QUOTEn)
    tokens: list[_Token]
    family: str | None = None
    strength: int = 0
    typo: bool = False


_TOKEN_RE = re.compile(r"QUOTE\d+|[A-Za-z][A-Za-z'’_-]*|\d+(?:[:.]\d+)?|[@#+]\S+")


def _leading_word(pattern: str) -> str:
    found = re.match(r"\\b([a-z]+)", pattern)
    assert found, f"phrase {pattern!r} must start with a literal word"
    return found.group(1)


# Each phrase starts with a literal word: a text without it is not searched at all.
_PHRASES_RE = [(re.compile(p), repl, _leading_word(p)) for p, repl in _PHRASES]
_LET_KNOW_RE = re.compile(r"\blet\s+((?:\w+\s+){0,3}?)know\b")


def _fold(text: str) -> str:
    low = text.lower().replace("’", "'")
    for pattern, repl, literal in _PHRASES_RE:
        if literal in low:
            low = pattern.sub(repl, low)
    return _LET_KNOW_RE.sub(r"letknow \1", low) if "let" in low else low


def _tokenise(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    folded = _fold(text)
    for m in _TOKEN_RE.finditer(folded):
        raw = m.group(0)
        if raw.startswith("quote") and raw[5:].isdigit():
            tokens.append(_Token(raw.upper(), raw.upper(), "QUOTE", False, m.start()))
            continue
        word = raw.strip("'-_")
        concept_word = fuzzy_lookup(word, _VOCABULARY, targets=_TYPO_TARGETS, protected=_PROTECTED)
        concept = _CONCEPTS.get(concept_word) if concept_word else None
        tokens.append(_Token(raw, word, concept, concept_word not in (None, word), m.start()))
    return tokens


def _first(tokens: list[_Token], *concepts: str) -> int | None:
    for i, t in enumerate(tokens):
        if t.concept in concepts:
            return i
    return None


def _has(tokens: list[_Token], *concepts: str) -> bool:
    return _first(tokens, *concepts) is not None


def _has_word(tokens: list[_Token], *words: str) -> bool:
    return any(t.word in words for t in tokens)
