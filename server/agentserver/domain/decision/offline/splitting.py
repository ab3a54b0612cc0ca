"""Splitting a message into requests: "email X … and text Y …" is two segments, but
"and" inside a text being dictated, a record's listed fields ("Add a customer: Jane
Roe, jane@roe.com, …") or lines after "Email ann@x.com:" are not new requests. Each
segment is classified as it is cut (`classify`): a piece that reads as no action
stays with the one before.
"""

from __future__ import annotations

import re

from agentserver.domain.decision import records
from agentserver.domain.decision.offline.classify import _classify
from agentserver.domain.decision.offline.tokens import _fold, _Segment, _Token, _tokenise
from agentserver.domain.decision.offline.vocabulary import _ARTICLES, _FILLERS, _VERB_CONCEPTS

_BODY_MARKER_RE = re.compile(
    r"\b(?:saying|that\s+says|to\s+say|and\s+say|say(?=\s*QUOTE)|telling\s+(?:him|her|them)|"
    r"with\s+the\s+(?:message|text)|reminding\s+(?:him|her|them)|asking\s+(?:him|her|them)|"
    r"letting\s+(?:him|her|them)\s+know|that|message:|text:|body:)(?=\W|$)|:(?=\s|$)|QUOTE\d+",
    re.IGNORECASE,
)


def _head(tokens: list[_Token], text: str) -> list[_Token]:
    """The tokens before the first body marker: words after "saying", "that", ":" or
    inside quotes are content, not instructions."""
    m = _BODY_MARKER_RE.search(text)
    if not m:
        return tokens
    cut = len(_fold(text[: m.start()]))
    return [t for t in tokens if t.start < cut]


_SPLIT_RE = re.compile(
    r"(\s*(?:[.!?;]+\s+|\s*,?\s*\b(?:and\s+then|and\s+also|and|then|also|plus|after\s+that|"
    r"afterwards|as\s+well\s+as)\b\s*|,\s+|\n+))",
    re.IGNORECASE,
)
_TITLE_END_RE = re.compile(r"\b(?:mr|mrs|ms|dr|st|no|approx|e\.g|i\.e)\.\s+$", re.IGNORECASE)


def _starts_with_action(tokens: list[_Token]) -> bool:
    """True when a piece of text opens like a new request ("text Maria …",
    "also book …", "an SMS to …"): its first real word is an action word."""
    for t in tokens:
        if t.word in _FILLERS or t.word in _ARTICLES:
            continue
        return t.concept in _VERB_CONCEPTS
    return False


def _instruction(text: str) -> str:
    """The words of a segment before the text it dictates ("saying", "that", ":", a quote)."""
    m = _BODY_MARKER_RE.search(text)
    return text[: m.start()] if m else text


_TO_THE_SENDER_RE = re.compile(r"\s*[A-Za-z]+\s+(?:me|us)\b", re.IGNORECASE)


def _split(masked: str) -> list[str]:
    parts = _SPLIT_RE.split(masked)
    # parts alternates text, separator, text, ...
    segments: list[str] = [parts[0]]
    for i in range(1, len(parts), 2):
        sep, piece = parts[i], parts[i + 1]
        if not piece.strip():
            segments[-1] += sep + piece
            continue
        sentence_break = bool(re.match(r"\s*[.!?;]", sep)) or "\n" in sep
        if sentence_break and _TITLE_END_RE.search(segments[-1] + sep):
            segments[-1] += sep + piece
            continue
        if not sentence_break and records.listing(segments[-1]):
            # "Add a customer: Jane Roe, jane@roe.com, +1 555 …": one record's fields.
            segments[-1] += sep + piece
            continue
        if (
            not sentence_break
            and _TO_THE_SENDER_RE.match(piece)
            and _BODY_MARKER_RE.search(segments[-1])
        ):
            # "Text Maria: running late, call me back": words to the sender inside
            # the text being dictated are part of it, not a request of their own.
            segments[-1] += sep + piece
            continue
        tokens = _tokenise(piece)
        starts = _starts_with_action(tokens)
        if (starts or sentence_break) and _classify(_head(tokens, piece), tokens, piece)[0]:
            segments.append(piece)
        else:
            segments[-1] += sep + piece
    return [s.strip() for s in segments if s.strip()]


def _segments(masked: str) -> list[_Segment]:
    """The requests of a message (quotes masked), each classified."""
    segments: list[_Segment] = []
    pieces = _split(masked)
    block = re.search(r":[ \t]*\n", masked)
    if block:
        # "Email ann@x.com:" and then lines of text: the lines are the text,
        # whatever words they contain.
        head = _split(masked[: block.start() + 1])
        pieces = [*head[:-1], head[-1] + masked[block.start() + 1 :]] if head else pieces
    for piece in pieces:
        tokens = _tokenise(piece)
        family, strength, typo = _classify(_head(tokens, piece), tokens, piece)
        segments.append(_Segment(piece, tokens, family, strength, typo))
    # "Email and text Maria that …": a bare action word borrows the next segment's words.
    for i, seg in enumerate(segments[:-1]):
        content = [
            t
            for t in seg.tokens
            if t.word not in _FILLERS and t.word not in _ARTICLES and t.concept is None
        ]
        if seg.family and not content and segments[i + 1].family:
            nxt = segments[i + 1]
            body = " ".join(t.text for t in nxt.tokens[1:]) if nxt.tokens else ""
            rest = nxt.text[nxt.tokens[1].start :] if len(nxt.tokens) > 1 else body
            seg.text = f"{seg.text} {rest}"
            seg.tokens = _tokenise(seg.text)
    return segments
