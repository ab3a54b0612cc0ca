"""Spanish, German and French messages for the communication and booking families.

The offline engine reads English; a message in another language is first told
apart (`detect`), then its instruction is carried over into the English the
engine reads (`pivot`): verbs, channels, days, times, durations and the little
words between them. The text to send is never translated or touched: it is
found after the language's own markers ("diciendo que", "dass", "disant que", a
colon or quotes) and passed on as written, so it leaves exactly as the user wrote
it. The reply is then written in the user's language (`phrase`).
"""

from __future__ import annotations

import functools
import re

__all__ = ["LANGUAGES", "detect", "phrase", "pivot"]

LANGUAGES = ("en", "es", "de", "fr")


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_MARKERS = {
    "es": _set(
        "el la los las de del que y para por con una un mañana hoy envía envia manda mándale "
        "reserva reservar cancela cancelar correo mensaje diciendo dile llama llamar las "
        "durante hora minutos sala cita"
    ),
    "de": _set(
        "der die das den dem und für mit morgen heute um uhr bitte schick schicke sende "
        "buche buchen storniere stornieren dass nachricht eine einen ruf rufe an sag stunde "
        "minuten raum termin"
    ),
    "fr": _set(
        "le la les et pour avec demain aujourd'hui envoie envoyez réserve réservez annule "
        "annulez que disant courriel message un une appelle appelez dis heure minutes salle "
        "rendez-vous"
    ),
    "en": _set(
        "the and for with tomorrow today send book cancel that saying email text call please "
        "to at hour minutes room message"
    ),
}
_WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def detect(message: str) -> str:
    """The message's language among `LANGUAGES` (English when unsure)."""
    words = [w.lower() for w in _WORD_RE.findall(message)]
    scores = {lang: sum(w in vocab for w in words) for lang, vocab in _MARKERS.items()}
    best = max(("es", "de", "fr"), key=lambda lang: scores[lang])
    return best if scores[best] >= 2 and scores[best] > scores["en"] else "en"


# Where the dictated text starts, per language (the English markers follow).
_BODY = {
    "es": r"\b(?:diciendo\s+que|diciendo|diciéndole\s+que|que\s+diga|con\s+el\s+mensaje|"
    r"y\s+dile\s+que|dile\s+que|que)\b|:(?=\s)",
    "de": r"\b(?:dass|mit\s+der\s+nachricht|und\s+sag(?:e)?\s+(?:ihm|ihr|ihnen)?,?\s*dass|"
    r"und\s+sag(?:e)?)\b|:(?=\s)",
    "fr": r"\b(?:disant\s+que|pour\s+dire\s+que|et\s+dis(?:-lui|-leur)?\s+que|qu'|que)\b"
    r"|:(?=\s)",
}

# Where the purpose of a call starts ("para confirmar …", "pour confirmer …",
# "um … zu bestätigen"): carried over as "to", the words after it as written.
_PURPOSE = {
    "es": r"\bpara\s+(?=[a-záéíóúñ]+(?:ar|er|ir)\b)",
    "de": r"\bum\s+(?=[^.]*\bzu\b)",
    "fr": r"\bpour\s+(?=[a-zéèêàç]+(?:er|ir|re)\b)",
}

_DAYS = {
    "es": "lunes martes miércoles jueves viernes sábado domingo",
    "de": "montag dienstag mittwoch donnerstag freitag samstag sonntag",
    "fr": "lundi mardi mercredi jeudi vendredi samedi dimanche",
}
_WEEK = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# (pattern, English), applied in order to the instruction only, case-insensitively.
_WORDS: dict[str, list[tuple[str, str]]] = {
    "es": [
        (r"pasado\s+mañana", "day after tomorrow"),
        (r"mañana", "tomorrow"),
        (r"hoy", "today"),
        (r"a\s+las\s+(\d{1,2})(?::(\d{2}))?(?:\s+de\s+la\s+tarde)", r"at \1:\2pm"),
        (r"a\s+las\s+(\d{1,2}(?::\d{2})?)", r"at \1"),
        (r"a\s+la\s+(\d{1,2}(?::\d{2})?)", r"at \1"),
        (r"(?:durante|por)\s+una\s+hora", "for one hour"),
        (r"(?:durante|por)\s+(\d+)\s+minutos", r"for \1 minutes"),
        (r"(?:durante|por)\s+(\d+)\s+horas", r"for \1 hours"),
        (r"(?:envíale|envíale|envía|envia|envíe|manda|mándale|mande|enviar)", "send"),
        (r"(?:un\s+)?correo(?:\s+electrónico)?|(?:un\s+)?e-?mail", "an email"),
        (r"(?:un\s+)?mensaje\s+de\s+texto|(?:un\s+)?sms", "a text"),
        (r"(?:un\s+)?(?:mensaje\s+de\s+)?whats\s*app", "a whatsapp"),
        (r"(?:llama|llame|llamar)(?:\s+al?)?", "call"),
        (r"la\s+reserva|la\s+cita", "the booking"),
        (r"(?:reserva|reserve|reservar|agenda)", "book"),
        (r"(?:cancela|cancele|cancelar|anula|anular)", "cancel"),
        (r"para", "for"),
        (r"(?:a|al)(?=\s+(?:[+\d]|\S+@))", "to"),
        (r"(?:el|la|los|las)(?=\s)", "the"),
        (r"por\s+favor", "please"),
        (r"y", "and"),
    ],
    "de": [
        (r"übermorgen", "day after tomorrow"),
        (r"morgen", "tomorrow"),
        (r"heute", "today"),
        (r"um\s+(\d{1,2})(?:[:.](\d{2}))?\s*uhr", r"at \1:\2"),
        (r"um\s+(\d{1,2}:\d{2})", r"at \1"),
        (r"für\s+eine\s+stunde|eine\s+stunde\s+lang", "for one hour"),
        (r"für\s+(\d+)\s+minuten", r"for \1 minutes"),
        (r"für\s+(\d+)\s+stunden", r"for \1 hours"),
        (r"(?:schicke|schick|sende|senden|schicken)", "send"),
        (r"(?:eine\s+)?e-?mail", "an email"),
        (r"(?:eine\s+)?sms", "a text"),
        (r"(?:eine\s+)?whats\s*app(?:-nachricht)?", "a whatsapp"),
        (r"(?:rufe|ruf)\s+(.+?)\s+an(?=\W|$)", r"call \1"),
        (r"(?:anrufen|rufe\s+an|ruf\s+an)", "call"),
        (r"die\s+buchung|den\s+termin|die\s+reservierung", "the booking"),
        (r"(?:buche|buchen|reserviere|reservieren)", "book"),
        (r"(?:storniere|stornieren|sage?\s+ab)", "cancel"),
        (r"für", "for"),
        (r"an(?=\s+(?:[+\d]|\S+@))", "to"),
        (r"(?:der|die|das|den|dem)(?=\s)", "the"),
        (r"bitte", "please"),
        (r"und", "and"),
    ],
    "fr": [
        (r"après-demain", "day after tomorrow"),
        (r"demain", "tomorrow"),
        (r"aujourd'hui", "today"),
        (r"à\s+(\d{1,2})\s*h\s*(\d{2})", r"at \1:\2"),
        (r"à\s+(\d{1,2})\s*h(?!\w)", r"at \1:00"),
        (r"à\s+(\d{1,2}:\d{2})", r"at \1"),
        (r"pendant\s+une\s+heure|pour\s+une\s+heure", "for one hour"),
        (r"pendant\s+(\d+)\s+minutes", r"for \1 minutes"),
        (r"pendant\s+(\d+)\s+heures", r"for \1 hours"),
        (r"(?:envoie|envoyez|envoyer|envoie-lui)", "send"),
        (r"(?:un\s+)?(?:e-?mail|courriel|mail)", "an email"),
        (r"(?:un\s+)?(?:sms|texto)", "a text"),
        (r"(?:un\s+)?(?:message\s+)?whats\s*app", "a whatsapp"),
        (r"(?:appelle|appelez|appeler)(?:\s+(?:le|au|la))?", "call"),
        (r"la\s+réservation|le\s+rendez-vous", "the booking"),
        (r"(?:réserve|réservez|réserver)", "book"),
        (r"(?:annule|annulez|annuler)", "cancel"),
        (r"pour", "for"),
        (r"(?:à|au)(?=\s+(?:[+\d]|\S+@))", "to"),
        (r"(?:le|la|les|l')(?=\s)", "the"),
        (r"s'il\s+(?:te|vous)\s+pla[iî]t", "please"),
        (r"et", "and"),
    ],
}
_COMPILED = {
    lang: [(re.compile(rf"(?<![\w-]){p}(?![\w-])", re.IGNORECASE), r) for p, r in pairs]
    for lang, pairs in _WORDS.items()
}
_BODY_RE = {lang: re.compile(p, re.IGNORECASE) for lang, p in _BODY.items()}
_PURPOSE_RE = {lang: re.compile(p, re.IGNORECASE) for lang, p in _PURPOSE.items()}


def _expand(template: str, m: re.Match[str]) -> str:
    # An unmatched minutes group leaves "at 15:" (completed below) or "3:pm".
    return m.expand(template).replace(":pm", "pm")


def _english(instruction: str, lang: str) -> str:
    out = instruction
    for rx, repl in _COMPILED[lang]:
        out = rx.sub(functools.partial(_expand, repl), out)
    for i, day in enumerate(_DAYS[lang].split()):
        out = re.sub(rf"\b(?:el\s+|am\s+|le\s+)?{day}\b", f"on {_WEEK[i]}", out, flags=re.I)
    return re.sub(r"\bat (\d{1,2}):(?=\D|$)", r"at \1:00", out)


def pivot(message: str, lang: str) -> str:
    """``message`` as the English the offline engine reads: the instruction carried
    over, the dictated text (after the language's marker, or quoted) and a call's
    purpose as written."""
    if lang == "en" or lang not in _COMPILED:
        return message
    # (where it starts, minus where its marker ends, the English joint)
    found: list[tuple[int, int, str]] = [(len(message), -len(message), "")]
    for rx, joint in ((_BODY_RE[lang], "saying"), (_PURPOSE_RE[lang], "to")):
        m = rx.search(message)
        if m:
            found.append((m.start(), -m.end(), joint))
    quote = re.search(r"[\"“«]", message)
    if quote:
        found.append((quote.start(), -quote.start(), ""))
    start, minus_end, joint = min(found)
    head = _english(message[:start], lang).rstrip()
    if joint:
        return f"{head} {joint} {message[-minus_end:].lstrip(' :')}"
    return f"{head} {message[start:]}".rstrip()


_PHRASES: dict[str, dict[str, str]] = {
    "email.send": {"es": "enviar un correo", "de": "eine E-Mail senden", "fr": "envoyer un e-mail"},
    "sms.send": {"es": "enviar un SMS", "de": "eine SMS senden", "fr": "envoyer un SMS"},
    "whatsapp.send": {
        "es": "enviar un mensaje de WhatsApp",
        "de": "eine WhatsApp-Nachricht senden",
        "fr": "envoyer un message WhatsApp",
    },
    "phone.call": {
        "es": "hacer una llamada con IA",
        "de": "einen KI-Anruf tätigen",
        "fr": "passer un appel IA",
    },
    "booking.create": {
        "es": "crear una reserva",
        "de": "eine Buchung anlegen",
        "fr": "créer une réservation",
    },
    "booking.cancel": {
        "es": "cancelar una reserva",
        "de": "eine Buchung stornieren",
        "fr": "annuler une réservation",
    },
    "will": {"es": "Voy a {}.", "de": "Ich werde {}.", "fr": "Je vais {}."},
    "and": {"es": " y ", "de": " und ", "fr": " et "},
    "missing": {
        "es": "Falta: {}.",
        "de": "Es fehlt: {}.",
        "fr": "Il manque : {}.",
    },
    "unsure": {
        "es": "No estoy seguro de lo que quieres que haga.",
        "de": "Ich bin nicht sicher, was ich tun soll.",
        "fr": "Je ne suis pas sûr de ce que vous voulez que je fasse.",
    },
    "bypass": {
        "es": "No puedo saltarme aprobaciones, permisos ni cargos; esto esperará a un aprobador.",
        "de": "Ich kann Freigaben, Berechtigungen und Kosten nicht umgehen; "
        "das wartet auf eine Freigabe.",
        "fr": "Je ne peux pas contourner les validations, les droits ni les coûts ; "
        "ceci attendra un approbateur.",
    },
    "answer": {
        "es": 'Según los datos de su negocio ({}): "{}"',
        "de": 'Laut Ihren Geschäftsangaben ({}): "{}"',
        "fr": "D'après les informations de votre entreprise ({}) : « {} »",
    },
}


def phrase(key: str, lang: str) -> str | None:
    """A reply phrase in ``lang`` (None for English or an action without one)."""
    return _PHRASES.get(key, {}).get(lang)
