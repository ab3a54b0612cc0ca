"""Plain-text extraction for the offline engine: addresses, phone numbers, dates,
times, durations, amounts, quoted text, and forgiving keyword matching.

Everything here is pure and deterministic; relative dates are resolved against a
given ``now`` so tests and the evaluation can pin time.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from decimal import Decimal

__all__ = [
    "When",
    "edit_distance",
    "find_amounts",
    "find_duration_minutes",
    "find_emails",
    "find_end_time",
    "find_phones",
    "find_when",
    "fuzzy_lookup",
    "mask_quotes",
    "normalise_phone",
    "singular",
]

# --- keyword matching -------------------------------------------------------------


def edit_distance(a: str, b: str, limit: int = 3) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap two
    neighbours), so "emial" is one edit from "email". Stops early past ``limit``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


@functools.lru_cache(maxsize=8192)  # pure, and the same words recur in every message
def fuzzy_lookup(
    word: str,
    vocabulary: frozenset[str],
    *,
    targets: frozenset[str] | None = None,
    protected: frozenset[str] = frozenset(),
) -> str | None:
    """The vocabulary word ``word`` is, or is a likely typo of; None otherwise.

    Only ``targets`` (default: the whole vocabulary) are matched loosely: keep them
    to longer, distinctive keywords, because plenty of real words are one letter
    from short ones ("halls" ~ "calls", "nails" ~ "mails"). Words of 5+ letters may
    be one edit away, 8+ two. Words in ``protected`` are real words that happen to
    be close to a keyword ("looking" ~ "booking") and are never corrected.
    """
    if word in vocabulary:
        return word
    if word in protected or not word.isalpha():
        return None
    # A doubled key ("texxt", "emaill") is the commonest slip on short words too.
    for i in range(1, len(word)):
        shorter = word[:i] + word[i + 1 :]
        if word[i] == word[i - 1] and len(shorter) >= 3 and shorter in vocabulary:
            return shorter
    if len(word) < 5:
        return None
    allowed = 2 if len(word) >= 8 else 1
    best: tuple[int, str] | None = None
    for v in targets if targets is not None else vocabulary:
        if len(v) < 5:
            continue
        d = edit_distance(word, v, allowed)
        if d <= allowed and (best is None or (d, v) < best):
            best = (d, v)
    return best[1] if best else None


def singular(noun: str) -> str:
    """A plain English singular: rooms → room, boxes → box, facilities → facility."""
    n = noun.lower()
    if len(n) > 4 and n.endswith("ies"):
        return n[:-3] + "y"
    if n.endswith(("sses", "xes", "ches", "shes")):
        return n[:-2]
    if len(n) > 3 and n.endswith("s") and not n.endswith(("ss", "us", "is")):
        return n[:-1]
    return n


# --- quoted text ------------------------------------------------------------------

_QUOTE_RE = re.compile(
    r"\"([^\"]+)\"|“([^”]+)”|«([^»]+)»|(?:(?<=\s)|^)'([^']{2,}?)'(?=[\s.,!?;:]|$)"
)


def mask_quotes(text: str) -> tuple[str, list[str]]:
    """Replace each quoted passage by a placeholder ``QUOTEn`` so that words inside
    quotes never trigger actions; returns the masked text and the passages."""
    quotes: list[str] = []

    def repl(m: re.Match[str]) -> str:
        quotes.append(next(g for g in m.groups() if g is not None).strip())
        return f" QUOTE{len(quotes) - 1} "

    return _QUOTE_RE.sub(repl, text), quotes


# --- addresses and numbers --------------------------------------------------------

_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A run of digits with the usual separators; at least 7 digits in total (checked below).
_PHONE_RE = re.compile(r"(?<![\w@#-])(\+?\(?\d[\d\s().-]{5,}\d)(?![\w@])")


def find_emails(text: str) -> list[str]:
    """Email addresses in order of appearance, lower-cased, without duplicates."""
    out: list[str] = []
    for m in _EMAIL_RE.finditer(text):
        e = m.group(0).rstrip(".").lower()
        if e not in out:
            out.append(e)
    return out


def normalise_phone(raw: str, default_country_code: str = "+1") -> str | None:
    """E.164 form of a written phone number, or None when it cannot be one.

    "+44 20 7946 0958" → "+442079460958"; national numbers get the default country
    code: "(555) 123-4567" → "+15551234567". A leading trunk 0 is dropped
    ("020 7946 0958" with "+44"); "00" is the international prefix.
    """
    s = raw.strip()
    digits = re.sub(r"\D", "", s)
    cc = re.sub(r"\D", "", default_country_code)
    if s.startswith("+"):
        e164 = digits
    elif digits.startswith("00"):
        e164 = digits[2:]
    elif cc == "1" and len(digits) == 11 and digits.startswith("1"):
        e164 = digits  # 1-555-123-4567 already carries the NANP country code
    elif cc == "1" and len(digits) == 10:
        e164 = cc + digits
    elif cc != "1" and digits.startswith("0") and 9 <= len(digits) <= 12:
        e164 = cc + digits[1:]
    else:
        return None
    if not 8 <= len(e164) <= 15 or e164.startswith("0"):
        return None
    return "+" + e164


def find_phones(text: str, default_country_code: str = "+1") -> list[tuple[int, int, str]]:
    """(start, end, E.164) of each phone number in ``text``, skipping dates and times."""
    out: list[tuple[int, int, str]] = []
    for m in _PHONE_RE.finditer(text):
        raw = m.group(1).rstrip(".-( ")
        if _ISO_DATE_RE.search(raw) or re.search(r"\d:\d", raw):
            continue
        if len(re.sub(r"\D", "", raw)) < 7:
            continue
        e164 = normalise_phone(raw, default_country_code)
        if e164:
            out.append((m.start(1), m.start(1) + len(raw), e164))
    return out


_AMOUNT_RE = re.compile(
    r"(?P<cur>[$€£])\s?(?P<num>\d[\d,]*(?:\.\d+)?)"
    r"|(?P<num2>\d[\d,]*(?:\.\d+)?)\s?(?P<word>dollars|euros|pounds|usd|eur|gbp|tokens)\b",
    re.IGNORECASE,
)
_CURRENCY = {"$": "USD", "€": "EUR", "£": "GBP", "dollars": "USD", "euros": "EUR"}
_CURRENCY |= {"pounds": "GBP", "usd": "USD", "eur": "EUR", "gbp": "GBP", "tokens": "TOKENS"}


def find_amounts(text: str) -> list[tuple[Decimal, str]]:
    """Money amounts as (value, ISO currency or TOKENS): "$1,200.50" → (1200.50, "USD")."""
    out: list[tuple[Decimal, str]] = []
    for m in _AMOUNT_RE.finditer(text):
        num = (m.group("num") or m.group("num2")).replace(",", "")
        cur = _CURRENCY[(m.group("cur") or m.group("word")).lower()]
        out.append((Decimal(num), cur))
    return out


# --- dates and times --------------------------------------------------------------

_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_MONTHS = {
    m: i + 1
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ]
    )
    for m in names
}
_NUMBER_WORDS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "forty-five": 45,
    "sixty": 60,
    "ninety": 90,
}
_NUM = r"(\d+(?:\.\d+)?|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")"
_MONTH_ALT = "|".join(sorted(_MONTHS, key=len, reverse=True))

_ISO_DATE_RE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{1,2}):(\d{2}))?")
_SLASH_DATE_RE = re.compile(r"\b(\d{1,2})/(\d{1,2})(?:/(\d{2,4}))?\b")
_MONTH_DAY_RE = re.compile(
    rf"\b({_MONTH_ALT})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?"
)
_DAY_MONTH_RE = re.compile(
    rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_ALT})\b\.?(?:,?\s+(\d{{4}}))?"
)
_WEEKDAY_RE = re.compile(r"\b(?:(this|next|on|coming)\s+)?(" + "|".join(_WEEKDAYS) + r")\b")
_RELATIVE_RE = re.compile(rf"\bin\s+{_NUM}\s+(minutes?|mins?|hours?|hrs?|days?|weeks?)\b")
_DAY_WORD_RE = re.compile(r"\b(day after tomorrow|tomorrow|today|tonight|tmrw|tmr)\b")
_NEXT_WEEK_RE = re.compile(r"\bnext week\b")
# Times need a clear marker: am/pm, hh:mm, "at N", or a named time.
_TIME_RE = re.compile(
    r"\b(?:at\s+|@\s*)?(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)"
    r"|\b(?:at\s+|@\s*)?([01]?\d|2[0-3]):([0-5]\d)\b"
    r"|\b(?:at|@)\s+(\d{1,2})\b(?!\s*(?:minutes?|mins?|hours?|people|guests|persons|%))"
    r"|\b(noon|midday|midnight)\b"
)


@dataclass(frozen=True)
class When:
    """A resolved point in time and which parts of it the text actually gave."""

    at: datetime
    has_date: bool
    has_time: bool


def _to_24h(hour: int, minute: int, meridiem: str | None) -> tuple[int, int] | None:
    if meridiem:
        pm = meridiem.startswith("p")
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if pm else 0)
    elif hour > 23 or minute > 59:
        return None
    return hour, minute


def _find_time(text: str) -> tuple[int, int] | None:
    for m in _TIME_RE.finditer(text):
        if m.group(1):
            t = _to_24h(int(m.group(1)), int(m.group(2) or 0), m.group(3).replace(".", ""))
        elif m.group(4):
            t = _to_24h(int(m.group(4)), int(m.group(5)), None)
        elif m.group(6):
            hour = int(m.group(6))
            if not 1 <= hour <= 12:
                continue
            # "at 3" in a business context means the afternoon; "at 9" the morning.
            t = (hour + 12, 0) if 1 <= hour <= 7 else (hour, 0)
        else:
            t = (0, 0) if m.group(7) == "midnight" else (12, 0)
        if t:
            return t
    return None


def _number(word: str) -> float:
    return float(_NUMBER_WORDS.get(word, 0)) if word in _NUMBER_WORDS else float(word)


def _dated(year: int | None, month: int, day: int, today: date) -> date | None:
    """That day, or None when there is no such day. Without a year, the next such
    day from today on (29 February: the next leap year's, once this one's passed)."""
    if year is not None:
        try:
            return date(year, month, day)
        except ValueError:
            return None
    for candidate in range(today.year, today.year + 9):
        try:
            d = date(candidate, month, day)
        except ValueError:
            continue
        if d >= today:
            return d
    return None


def _find_date(text: str, today: date) -> date | None:
    m = _ISO_DATE_RE.search(text)
    if m:
        try:
            return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            return None
    for rx, month_group, day_group in ((_MONTH_DAY_RE, 1, 2), (_DAY_MONTH_RE, 2, 1)):
        m = rx.search(text)
        if m:
            month, day = _MONTHS[m.group(month_group)], int(m.group(day_group))
            return _dated(int(m.group(3)) if m.group(3) else None, month, day, today)
    m = _SLASH_DATE_RE.search(text)
    if m:
        # Month first (US), the default country being +1; ambiguous either way.
        month, day = int(m.group(1)), int(m.group(2))
        year = int(m.group(3)) if m.group(3) else None
        return _dated(year + 2000 if year is not None and year < 100 else year, month, day, today)
    m = _DAY_WORD_RE.search(text)
    if m:
        word = m.group(1)
        if word == "day after tomorrow":
            return today + timedelta(days=2)
        return today + timedelta(days=1) if word in ("tomorrow", "tmrw", "tmr") else today
    m = _WEEKDAY_RE.search(text)
    if m:
        target = _WEEKDAYS.index(m.group(2))
        if m.group(1) == "next":
            # "next Friday" is the Friday of next week (Monday-based weeks).
            next_monday = today + timedelta(days=7 - today.weekday())
            return next_monday + timedelta(days=target)
        ahead = (target - today.weekday()) % 7
        return today + timedelta(days=ahead or 7)
    if _NEXT_WEEK_RE.search(text):
        return today + timedelta(days=7 - today.weekday())
    return None


def find_when(text: str, now: datetime, tz: tzinfo | None = None) -> When | None:
    """The first date/time the text names, resolved against ``now`` in ``tz``
    (default: ``now``'s zone). Understands ISO dates, "tomorrow at 3pm", "on Friday
    at 10:30", "next Monday", "March 3", "in 2 hours", "noon". A time without a date
    is today, or tomorrow when that time has passed."""
    low = text.lower()
    local_now = now.astimezone(tz) if tz else now
    zone = local_now.tzinfo
    m = _RELATIVE_RE.search(low)
    if m:
        n, unit = _number(m.group(1)), m.group(2)
        if unit.startswith(("min", "hour", "hr")):
            delta = timedelta(minutes=n) if unit.startswith("min") else timedelta(hours=n)
            return When((local_now + delta).replace(second=0, microsecond=0), True, True)
        days = n * 7 if unit.startswith("week") else n
        return When(_at(local_now.date() + timedelta(days=days), time(0, 0), zone), True, False)
    iso = _ISO_DATE_RE.search(low)
    d = _find_date(low, local_now.date())
    t = None
    if iso and iso.group(4):
        t = (int(iso.group(4)), int(iso.group(5)))
    else:
        t = _find_time(_ISO_DATE_RE.sub(" ", low))
    if d is None and t is None:
        return None
    if d is None:
        assert t is not None
        d = local_now.date()
        if time(*t) <= local_now.time():
            d += timedelta(days=1)
    return When(_at(d, time(*t) if t else time(0, 0), zone), True, t is not None)


def _at(d: date, t: time, zone: tzinfo | None) -> datetime:
    return datetime.combine(d, t, tzinfo=zone)


_DURATION_RE = re.compile(
    rf"\b(?:for\s+)?(?:(half\s+an?\s+hour)|{_NUM}\s*(?:-|\s)?\s*"
    r"(minutes?|mins?|hours?|hrs?|h)\b(?:\s+and\s+a\s+half)?)"
)
_RANGE_RE = re.compile(
    r"\b(?:from|between)\s+(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\s*(?:to|and|until|till|-)\s*"
    r"(\d{1,2})(?::(\d{2}))?\s*(am|pm)?"
    r"|\b(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\s*-\s*(\d{1,2})(?::(\d{2}))?\s*(am|pm)\b"
)
_UNTIL_RE = re.compile(r"\b(?:until|till|til|to)\s+(\d{1,2})(?::(\d{2}))?\s*(am|pm)?\b")


def find_duration_minutes(text: str) -> int | None:
    """Minutes of a stated duration: "for 90 minutes", "for an hour", "1.5 hours",
    "for half an hour", "an hour and a half", "45-minute". Ignores "in 2 hours"."""
    low = text.lower()
    for m in _DURATION_RE.finditer(low):
        before = low[max(0, m.start() - 3) : m.start()]
        if before.endswith("in "):
            continue  # "in 2 hours" is a start time, not a length
        if m.group(1):
            return 30
        n, unit = _number(m.group(2)), m.group(3)
        minutes = n if unit.startswith("m") else n * 60
        if m.group(0).endswith("and a half"):
            minutes += 30 if not unit.startswith("m") else 0
        if minutes > 0:
            return round(minutes)
    return None


def find_end_time(text: str) -> tuple[int, int] | None:
    """(hour, minute) a stated range ends at: "from 3pm to 5pm", "2-4pm", "until 17:30"."""
    low = text.lower()
    m = _RANGE_RE.search(low)
    if m:
        g = m.groups()
        h2, m2, ap2 = g[3:6] if g[0] else g[9:12]
        return _to_24h(int(h2), int(m2 or 0), ap2) if ap2 else _guess_pm(int(h2), int(m2 or 0))
    m = _UNTIL_RE.search(low)
    if m and (m.group(0).startswith(("until", "till", "til")) or m.group(2) or m.group(3)):
        h, mi, ap = int(m.group(1)), int(m.group(2) or 0), m.group(3)
        return _to_24h(h, mi, ap) if ap else _guess_pm(h, mi)
    return None


def _guess_pm(hour: int, minute: int) -> tuple[int, int] | None:
    if hour > 23 or minute > 59:
        return None
    return (hour + 12, minute) if 1 <= hour <= 7 else (hour, minute)
