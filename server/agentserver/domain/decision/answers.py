"""Questions the business context answers: "when do you open on Saturday?", "where
are you?", "how much is a haircut?", "what is your cancellation policy?".

The answer is the business's own words, quoted from `business_context` (which the
caller sends with each message), and no action is proposed: a question is not a
request. Only questions about the business are answered, and only from a field whose
name or text is about what was asked, so "what time is it in Tokyo?" is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["answer", "is_question"]

# What a question is about → words that name it in a question, and in a field name.
_TOPICS: dict[str, tuple[frozenset[str], frozenset[str]]] = {}


def _topic(name: str, asked: str, fields: str) -> None:
    _TOPICS[name] = (frozenset(asked.split()), frozenset(fields.split()))


_topic(
    "hours",
    "open opening opens close closing closes hours hour horario abren abierto cierran "
    "öffnungszeiten geöffnet öffnen schließen horaires ouvert ouvrez fermez ouverture",
    "hours hour opening open schedule times horario öffnungszeiten horaires",
)
_topic(
    "address",
    "where address located location find directions dónde donde dirección wo adresse "
    "où adresse situés",
    "address location directions where dirección adresse",
)
_topic(
    "prices",
    "price prices cost costs much fee fees rate rates charge charges tariff precio cuesta "
    "cuánto preis kostet kosten prix coûte combien",
    "price prices pricing cost costs fee fees rate rates menu tariff precios preise tarifs",
)
_topic(
    "policies",
    "policy policies cancel cancellation refund refunds pets pet dogs dog parking park "
    "deposit late rules allowed política cancelación stornierung richtlinie politique "
    "annulation",
    "policy policies cancellation refund refunds pets pet parking deposit rules terms",
)
_topic(
    "contact",
    "phone number call email reach contact teléfono telefon téléphone",
    "phone telephone email contact",
)

_QUESTION_START = re.compile(
    r"^\s*(?:¿|what|when|where|how|which|who|do|does|did|is|are|can|could|may|will|"
    r"qué|que|cuándo|cuando|dónde|donde|cuánto|cuanto|cuál|tienen|hay|was|wann|wo|wie|"
    r"welche|haben|gibt|ist|quand|où|ou|combien|quel|quelle|quels|est-ce|avez)\b",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


def is_question(message: str) -> bool:
    """A question rather than a request: it ends with "?" or opens like one."""
    text = message.strip()
    return text.endswith("?") or bool(_QUESTION_START.match(text))


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, (*path, str(k)))
    elif isinstance(value, list | tuple):
        texts = [str(v) for v in value if isinstance(v, str | int | float)]
        if texts and len(texts) == len(value):
            yield path, "; ".join(texts)
        else:
            for i, v in enumerate(value):
                yield from _leaves(v, (*path, str(i)))
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value).strip()
        if text:
            yield path, text


# Day names in the languages read, as the English a field is likely named in.
_DAYS = {
    "lunes": "monday",
    "martes": "tuesday",
    "miércoles": "wednesday",
    "jueves": "thursday",
    "viernes": "friday",
    "sábado": "saturday",
    "sabado": "saturday",
    "domingo": "sunday",
    "montag": "monday",
    "dienstag": "tuesday",
    "mittwoch": "wednesday",
    "donnerstag": "thursday",
    "freitag": "friday",
    "samstag": "saturday",
    "sonntag": "sunday",
    "lundi": "monday",
    "mardi": "tuesday",
    "mercredi": "wednesday",
    "jeudi": "thursday",
    "vendredi": "friday",
    "samedi": "saturday",
    "dimanche": "sunday",
    "weekend": "saturday",
    "fin": "saturday",
    "wochenende": "saturday",
}


def _words(text: str) -> set[str]:
    words = {w.lower() for w in _WORD_RE.findall(text.replace("_", " "))}
    return words | {_DAYS[w] for w in words if w in _DAYS} | {w[:3] for w in words if len(w) > 5}


def answer(message: str, business_context: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field name, the context's words) answering ``message``, or None."""
    if not business_context or not is_question(message):
        return None
    asked = _words(message)
    topics = [t for t, (words, _) in _TOPICS.items() if asked & words]
    if not topics:
        return None
    best: tuple[int, tuple[str, ...], str] | None = None
    for path, text in _leaves(business_context):
        names = _words(" ".join(path))
        for topic in topics:
            if not names & _TOPICS[topic][1]:
                continue
            # Prefer the field that also shares the question's own words ("Saturday").
            score = 10 + len(asked & _words(text)) + len(asked & names)
            if best is None or score > best[0]:
                best = (score, path, text)
    if best is None:
        return None
    return ".".join(best[1]), best[2]
