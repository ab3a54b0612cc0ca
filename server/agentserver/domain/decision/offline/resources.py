"""Resources (resource.create, .read, .update, .delete): which resource a message
names, of what type, and the attributes it sets ("capacity 8, price $40"). Records
of customers, suppliers, orders, products and staff are read by `records` first.
"""

from __future__ import annotations

import re

from agentserver.domain.decision.offline.context import _clean, _Context, _Extracted, _quotes_in
from agentserver.domain.decision.offline.names import _NAMED_RE, _RESOURCE_REF_RE, _resource_id
from agentserver.domain.decision.offline.tokens import _Segment, _Token
from agentserver.domain.decision.offline.vocabulary import _CONCEPTS, _VERB_CONCEPTS
from agentserver.domain.decision.textparse import singular

_ATTR_RE = re.compile(
    r"(?P<k>[a-z][a-z ]{0,20}?)\s*(?:=|:|\bof\b|\bis\b|\bto\b)?\s*(?P<v>\$?\d[\d.,]*\s*\w*|QUOTE\d+"
    r"|[A-Za-z][\w-]*)\s*$"
    r"|^(?P<v2>\d[\d.]*)\s+(?P<k2>[a-z][a-z ]{0,20})$",
    re.IGNORECASE,
)


def _attributes(fragment: str | None, ctx: _Context) -> list[dict[str, str]] | None:
    """``capacity 8, price $40 and colour blue`` → key/value pairs (None when none)."""
    if not fragment:
        return None
    out: list[dict[str, str]] = []
    for raw in re.split(r",\s*|\s+and\s+|;\s*", fragment):
        part = re.sub(r"^(?:a|an|the)\s+", "", raw.strip(" ."), flags=re.I)
        m = _ATTR_RE.match(part)
        if not m:
            continue
        if m.group("v2"):
            key, value = m.group("k2"), m.group("v2")
        else:
            key, value = m.group("k"), m.group("v")
        key = _key(key)
        value = _clean(value, ctx) or ""
        if key and value:
            out.append({"key": key, "value": value})
    return out or None


def _resource_name(text: str, ctx: _Context) -> tuple[str | None, str | None]:
    """(resource id, resource name) an update/delete/read message names."""
    rid = _resource_id(text)
    if rid is not None:
        return rid, None
    quotes = _quotes_in(text, ctx)
    if quotes:
        return None, quotes[0][1]
    m = _RESOURCE_REF_RE.search(text)
    if m:
        return None, m.group(0)
    for m in _NAMED_RE.finditer(text):
        name = m.group(0)
        if _CONCEPTS.get(name.split()[0].lower()) in _VERB_CONCEPTS:
            continue  # "Email John" or "Book Friday" are not names of resources
        return None, re.sub(r"'s$", "", name)
    m = re.search(r"\bthe\s+(?P<n>[A-Z][\w-]*(?:\s+[A-Z0-9][\w-]*)*)", text)
    if m:
        return None, m.group("n")
    return None, None


def _resource_type(tokens: list[_Token]) -> str | None:
    for t in tokens:
        if t.concept == "RESOURCE" and t.word not in ("resource", "resources", "inventory"):
            return "facility" if t.word == "facilities" else singular(t.word)
    return None


def _extract_resource_create(seg: _Segment, ctx: _Context) -> _Extracted:
    text = seg.text
    name: str | None = None
    rtype: str | None = None
    m = re.search(
        r"\b(?:called|named|name(?:d)?:)\s+(?:(?P<q>QUOTE\d+)|(?P<n>[^,;]+?)(?=\s+(?:with|and|"
        r"that|which|for|at|to|in|into|costing|priced|of\s+type)\b|[,;.!?]|$))",
        text,
        re.IGNORECASE,
    )
    colon = re.search(r"^[^:]*\bnew\b[^:]*:\s*(?P<n>[^,;]+?)\s*(?:[,;.!?]|$)", text, re.IGNORECASE)
    if m:
        name = _clean(m.group("q") or m.group("n"), ctx)
    elif _quotes_in(text, ctx):
        name = _quotes_in(text, ctx)[0][1]
    elif colon:
        name = _clean(colon.group("n"), ctx)  # "New bike: City Bike 7"
    tm = re.search(
        r"\b(?:create|add|register|setup|set\s+up|make|introduce)\s+(?:(?:a|an|the|another|one)\s+)?"
        r"(?:new\s+)?(?P<t>[a-z][a-z ]{1,30}?)\s+(?=called|named|QUOTE|:|with|for)",
        text,
        re.IGNORECASE,
    )
    if tm and tm.group("t").strip().lower() not in ("resource", "new resource"):
        rtype = singular(tm.group("t").strip().split()[-1])
    ty = re.search(r"\b(?:of\s+type|type:?)\s+(?P<t>[a-z]+)", text, re.IGNORECASE)
    if ty:
        rtype = singular(ty.group("t"))
    if rtype is None:
        rtype = _resource_type(seg.tokens)
    if name is None:
        # "add Court 5": a named resource directly after the verb.
        nm = re.search(
            r"\b(?:create|add|register|setup)\s+(?:(?:a|an|the)\s+)?(?:new\s+)?"
            r"(?P<n>[A-Z][\w-]*(?:\s+(?:[A-Z][\w-]*|\d+))*)",
            text,
        )
        if nm:
            name = nm.group("n")
            if rtype is None:
                rtype = (
                    singular(name.split()[0].lower())
                    if name.split()[0].lower() in (_CONCEPTS)
                    else None
                )
    am = re.search(r"\bwith\s+(?P<a>.+)$", text, re.IGNORECASE)
    attrs = _attributes(am.group("a"), ctx) if am else None
    params = {"resource_type": rtype, "name": name, "attributes": attrs}
    return params, [p for p in ("resource_type", "name") if not params[p]]


def _extract_resource_read(seg: _Segment, ctx: _Context) -> _Extracted:
    rid, name = _resource_name(seg.text, ctx)
    rtype = _resource_type(seg.tokens)
    if name and rtype and name.lower() in (rtype, rtype + "s"):
        name = None
    return {"resource_type": rtype, "resource_id": rid, "name": name}, []


def _version(text: str) -> int | None:
    m = re.search(r"\b(?:version|v)\s*#?(?P<v>\d+)\b", text, re.IGNORECASE)
    return int(m.group("v")) if m else None


def _extract_resource_update(seg: _Segment, ctx: _Context) -> _Extracted:
    text = seg.text
    rid: str | None = None
    name: str | None = None
    attrs: list[dict[str, str]] | None = None
    rename = re.search(
        r"\brename\s+(?:the\s+)?(?P<old>.+?)\s+(?:to|as)\s+(?P<new>.+?)\s*(?:[,.;!?]|$)",
        text,
        re.IGNORECASE,
    )
    set_of = re.search(
        r"\b(?:change|set|update|increase|decrease|reduce|raise|lower|bump|adjust|make|modify)"
        r"\s+(?:the\s+)?(?P<k>[a-z][a-z ]{0,25}?)\s+(?:of|for|on|in)\s+(?:the\s+)?"
        r"(?P<n>.+?)\s+(?:to|=)\s+(?P<v>.+?)\s*(?:[,;!?]|\.(?:\s|$)|$)",
        text,
        re.IGNORECASE,
    )
    possessive = re.search(
        r"\b(?:change|set|update|increase|decrease|reduce|raise|lower|bump|adjust|make|modify)"
        r"\s+(?:the\s+)?(?P<n>.+?)(?:'s|’s)\s+(?P<k>[a-z][a-z ]{0,25}?)\s+(?:to|=)\s+"
        r"(?P<v>.+?)\s*(?:[,;!?]|\.(?:\s|$)|$)",
        text,
        re.IGNORECASE,
    )
    if rename:
        name = _clean(rename.group("old"), ctx)
        attrs = [{"key": "name", "value": _clean(rename.group("new"), ctx) or ""}]
    elif possessive:
        name = _clean(possessive.group("n"), ctx)
        attrs = [
            {"key": _key(possessive.group("k")), "value": _clean(possessive.group("v"), ctx) or ""}
        ]
    elif set_of:
        name = _clean(set_of.group("n"), ctx)
        attrs = [{"key": _key(set_of.group("k")), "value": _clean(set_of.group("v"), ctx) or ""}]
    elif unnamed := re.search(
        r"\b(?:change|set|update|increase|decrease|reduce|raise|lower|bump|adjust)\s+(?:the\s+)?"
        r"(?P<k>[a-z][a-z ]{0,25}?)\s+to\s+(?P<v>.+?)\s*(?:[,;!?]|\.(?:\s|$)|$)",
        text,
        re.IGNORECASE,
    ):
        # "Change the price to 50": what to change is clear, which resource is not.
        rid, name = _resource_name(text[: unnamed.start()], ctx)
        attrs = [{"key": _key(unnamed.group("k")), "value": _clean(unnamed.group("v"), ctx) or ""}]
    else:
        rid, name = _resource_name(text, ctx)
        wm = re.search(
            r"(?:\bwith\b|\bso\s+that\b|:|\bset\b|\bto\s+have\b)\s+(?P<a>.+)$", text, re.I
        )
        attrs = _attributes(wm.group("a"), ctx) if wm else None
    if name:
        prid, pname = _resource_name(name, ctx)
        rid = rid or prid
        name = None if prid and not pname else name
    params = {
        "resource_id": rid,
        "name": name,
        "resource_type": _resource_type(seg.tokens),
        "attributes": attrs,
        "expected_version": _version(text),
    }
    missing = [] if rid or name else ["name"]
    if not attrs:
        missing.append("attributes")
    return params, missing


def _key(k: str) -> str:
    return re.sub(r"\s+", "_", k.strip().lower())


def _extract_resource_delete(seg: _Segment, ctx: _Context) -> _Extracted:
    rid, name = _resource_name(seg.text, ctx)
    params = {
        "resource_id": rid,
        "name": name,
        "resource_type": _resource_type(seg.tokens),
        "expected_version": _version(seg.text),
    }
    return params, [] if rid or name else ["name"]
