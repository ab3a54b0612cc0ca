"""The offline engine's words: which phrases fold into one word, which word names
which concept (EMAIL, BOOK, RESOURCE, ...), which keywords a typo may reach and which
real words it must never be taken for, and the small words a request is padded with.
"""

from __future__ import annotations

# Multi-word phrases folded into one token before matching.
_PHRASES: list[tuple[str, str]] = [
    (r"\be[\s-]?mails?\b", "email"),
    (r"\bwhats\s*app\b", "whatsapp"),
    (r"\btext\s+message\b", "text"),
    (r"\blook\s+up\b", "lookup"),
    (r"\bset\s+up\b", "setup"),
    (r"\bcall\s+off\b", "calloff"),
    (r"\bget\s+rid\s+of\b", "remove"),
    (r"\bsign[\s-]?off\b", "signoff"),
    (r"\bgreen[\s-]?light\b", "signoff"),
    (r"\bheads[\s-]?up\b", "headsup"),
    (r"\breal\s+(?:person|human)\b", "human"),
    (r"\bhow\s+(?:many|much)\b", "howmany"),
    (r"\bgive\s+(\w+\s+)?a\s+(?:call|ring|buzz)\b", r"call \1"),
    (r"\bget\s+in\s+touch\s+with\b", "contact"),
    (r"\breach\s+out\s+to\b", "contact"),
    (r"\bdrop\s+(\w+\s+)?a\s+line\b", r"contact \1"),
    (r"\bhand\s+(?:this\s+|it\s+)?over\b", "transfer"),
    (r"\bput\s+me\s+through\b", "transfer"),
    (r"\bphone\s+(?:number|no\.?)\b", "phonenumber"),
]

_CONCEPTS: dict[str, str] = {}


def _words_of(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _words(concept: str, *words: str) -> None:
    for w in words:
        _CONCEPTS[w] = concept


_words("EMAIL", "email", "emails", "emailed", "emailing", "mail", "inbox")
_words("SMS", "text", "texts", "texting", "sms", "txt", "smses")
_words("WA", "whatsapp", "whatsapps", "whatsapping")
_words("CALL", "call", "calls", "calling", "ring", "phone", "dial", "telephone")
_words("BOOK", "book", "reserve", "schedule")
_words("BOOKING", "booking", "bookings", "reservation", "reservations", "appointment")
_words("BOOKING", "appointments", "slot")
_words("CANCEL", "cancel", "calloff", "unbook")
_words("CANCELLED", "cancellation", "cancellations", "cancelled", "canceled")
_words("CREATE", "create", "add", "new", "setup", "register", "make", "introduce")
_words("READ", "show", "list", "lookup", "find", "display", "view", "see", "check", "fetch")
_words("READ", "search", "details", "which", "what", "whats", "available", "availability")
_words("UPDATE", "update", "change", "rename", "modify", "edit", "set", "adjust", "increase")
_words("UPDATE", "decrease", "reduce", "raise", "lower", "bump", "upgrade")
_words("DELETE", "delete", "remove", "decommission", "retire", "archive", "erase")
_words("REPORT", "report", "reports", "summary", "summarise", "summarize", "analyse")
_words("REPORT", "analyze", "analysis", "analytics", "stats", "statistics", "overview")
_words("REPORT", "breakdown", "insights", "trends", "metrics", "kpis", "dashboard", "howmany")
_words("REPORT", "recap", "usage")
_words("ESCALATE", "escalate", "escalation", "escalating", "transfer")
_words("HUMAN", "human", "manager", "supervisor", "boss", "person", "someone", "somebody")
_words("HUMAN", "owner")
_words("TALK", "talk", "speak", "connect", "chat")
_words("NOTIFY", "notify", "notification", "alert", "inform", "announce", "broadcast")
_words("NOTIFY", "headsup", "letknow")
_words("TELL", "tell", "remind", "ping", "update_them")
_words("AUDIENCE", "team", "staff", "everyone", "everybody", "coordinators", "coordinator")
_words("AUDIENCE", "colleagues", "employees", "crew", "coordination")
_words("APPROVAL", "approval", "approve", "signoff", "authorisation", "authorization")
_words("APPROVAL", "authorise", "authorize", "approvals")
_words("SEND", "send", "message", "write", "contact", "forward", "shoot", "msg", "reply")
_words("CUSTOMER", "customer", "client", "guest", "caller")
_words("ASK", "ask", "request", "seek", "get", "need")
_RESOURCE_NOUNS = _words_of(
    "resource room table desk court vehicle car van truck chair bay studio machine "
    "equipment space bed boat bike field lane pitch locker projector asset station booth "
    "cabin suite hall kayak simulator therapist stylist trainer instructor barber tent pod "
    "gym pool sauna cottage apartment villa boardroom classroom venue "
    # Spanish, German, French (see languages.py)
    "sala mesa pista cancha habitación consulta raum saal zimmer tisch platz salle chambre "
    "terrain cabine"
)
for _n in _RESOURCE_NOUNS:
    _CONCEPTS.setdefault(_n, "RESOURCE")
    _CONCEPTS.setdefault(_n + "s", "RESOURCE")
_CONCEPTS["facilities"] = "RESOURCE"
_CONCEPTS["inventory"] = "RESOURCE"

_VOCABULARY = frozenset(_CONCEPTS)
# Keywords matched despite a typo: long and distinctive enough that a near miss is
# almost certainly a misspelling of them.
_TYPO_TARGETS = _words_of(
    "email whatsapp booking bookings appointment reservation reserve schedule cancel "
    "cancellation escalate notify notification report summary summarise summarize analyse "
    "analyze analysis statistics delete remove update rename create message approval approve "
    "customer coordinators telephone display modify register breakdown overview announce "
    "broadcast calling texting escalation appointments reservations"
)
# Real words one typo away from a keyword; never "corrected".
_PROTECTED = _words_of(
    "looking cooking hooking booked books bookie remote resort repeat notice notion noted "
    "nothing chance charge changed hanging single sample simple female emile tablet lowered "
    "report's reserved received records record detail deluxe recall recalls hall's rooms "
    "texture tested tests texted mailed email's rental dental metric matrix staffs coach "
    "approach approved reviews review course courts called caller massage contract emily "
    "updated creative remover"
)

_FILLERS = _words_of(
    "please pls plz also then and kindly can could would will you u i we need want to go "
    "ahead make sure dont don't forget remember just quickly now oh ok okay so after that "
    "afterwards finally lastly first next additionally"
)
_ARTICLES = frozenset({"a", "an", "the", "our", "my", "his", "her", "their", "this", "that"})
_PRONOUNS = frozenset({"him", "her", "them", "they", "he", "she"})
_WEEKDAY_NAMES = _words_of(
    "monday tuesday wednesday thursday friday saturday sunday today tomorrow tonight"
)
_MONTH_NAMES = _words_of(
    "january february march april may june july august september october november december "
    "jan feb mar apr jun jul aug sep sept oct nov dec"
)
# The concepts a request opens with ("text Maria …", "also book …").
_VERB_CONCEPTS = _words_of(
    "EMAIL SMS WA CALL BOOK CANCEL CREATE READ UPDATE DELETE REPORT ESCALATE TALK NOTIFY "
    "TELL APPROVAL SEND ASK"
)
