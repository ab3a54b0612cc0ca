"""Records beyond bookable things: customers, suppliers, orders, products, staff.

They are kept as resources of their kind (`resource_type` customer, supplier, order,
product, staff), so the same four actions read, create, update and delete them:

  * read: "show me customer Jane Roe", "look up supplier Acme", "details of order 1042"
  * create from a list of fields: "add a customer: Jane Roe, jane@roe.com, +1 555 …,
    VIP" is one record with its fields, not four requests
  * update: "mark order 1042 as shipped", "set the status of order 55 to paid",
    "change the price of product Lavender Soap to $6"
  * delete: "delete supplier Acme", "remove product Old Soap"

`reading` tells which of the four a segment asks for, and `extract` reads its
parameters; the offline engine asks them before its general rules.
"""

from __future__ import annotations

import re
from typing import Any

from agentserver.domain.decision.textparse import find_amounts, find_emails, find_phones

__all__ = ["extract", "listing", "reading"]

# The kind a word names, singular.
_KINDS = {
    "customer": "customer", "customers": "customer", "client": "customer",
    "clients": "customer", "supplier": "supplier", "suppliers": "supplier",
    "vendor": "supplier", "vendors": "supplier", "order": "order", "orders": "order",
    "product": "product", "products": "product", "staff": "staff", "employee": "staff",
    "employees": "staff", "worker": "staff", "colleague": "staff",
}  # fmt: skip
_KIND = (
    r"(?P<kind>customers?|clients?|suppliers?|vendors?|orders?|products?|employees?|worker|"
    r"colleague|staff(?:\s+member)?)"
)
_ARTICLE = r"(?:(?:a|an|the|our|new|this|that)\s+){0,2}"

_READ_RE = re.compile(
    rf"\b(?:show(?:\s+me)?|look\s*up|lookup|find|display|view|pull\s+up|open|get|check|"
    rf"details\s+(?:of|for|on)|info(?:rmation)?\s+(?:on|about|for)|status\s+of|list)\s+"
    rf"(?:all\s+)?{_ARTICLE}(?:details\s+(?:of|for)\s+)?{_ARTICLE}{_KIND}\b",
    re.IGNORECASE,
)
_CREATE_RE = re.compile(
    rf"\b(?:add|create|register|enter|record|set\s+up|new)\s+{_ARTICLE}{_KIND}\b", re.IGNORECASE
)
_DELETE_RE = re.compile(
    rf"\b(?:delete|remove|erase|archive|drop)\s+{_ARTICLE}{_KIND}\b", re.IGNORECASE
)
_MARK_RE = re.compile(
    rf"\bmark\s+{_ARTICLE}{_KIND}\s+(?P<name>.+?)\s+as\s+(?P<value>.+?)\s*[.!]?$",
    re.IGNORECASE,
)
_SET_OF_RE = re.compile(
    rf"\b(?:set|change|update|make|adjust|raise|lower)\s+(?:the\s+)?(?P<key>[a-z][a-z ]{{0,20}}?)"
    rf"\s+(?:of|for|on)\s+{_ARTICLE}{_KIND}\s+(?P<name>.+?)\s+(?:to|=)\s+(?P<value>.+?)"
    rf"\s*[.!]?$",
    re.IGNORECASE,
)
_UPDATE_RE = re.compile(
    rf"\b(?:update|change|edit|modify)\s+{_ARTICLE}{_KIND}\s+(?P<name>.+?)\s*"
    rf"(?::|,|\bwith\b|\bset\b)\s*(?P<fields>.+)$",
    re.IGNORECASE,
)


def listing(text: str) -> bool:
    """True when ``text`` creates or updates a record from a list of fields (so the
    commas after it separate fields, not requests)."""
    return bool(_CREATE_RE.search(text) or _UPDATE_RE.search(text))


def reading(text: str) -> str | None:
    """The resource action a segment asks for about a record, or None."""
    if _MARK_RE.search(text) or _SET_OF_RE.search(text) or _UPDATE_RE.search(text):
        return "resource.update"
    if _DELETE_RE.search(text):
        return "resource.delete"
    if _CREATE_RE.search(text):
        return "resource.create"
    if _READ_RE.search(text):
        return "resource.read"
    return None


def _kind(word: str) -> str:
    return _KINDS.get(word.lower().split()[0], "staff")


def _name(rest: str) -> str | None:
    """The record's name at the start of ``rest``: a quoted name, an order number, or
    capitalised words."""
    rest = rest.strip(" :,-")
    m = re.match(r'"(?P<q>[^"]+)"|#?(?P<id>[A-Z]{0,4}-?\d[\w-]*)\b', rest)
    if m:
        return m.group("q") or m.group("id").lstrip("#")
    m = re.match(
        r"(?P<n>(?:(?:Mr|Mrs|Ms|Dr|Prof)\.?\s+)?[A-ZÀ-Þ][\w'’&.-]*(?:\s+(?:&\s+)?[A-ZÀ-Þ0-9][\w'’&.-]*)*)",
        rest,
    )
    return m.group("n").rstrip(".,") if m else None


def _field(part: str) -> tuple[str, str] | None:
    """One listed field as (key, value): an email, a phone, a price, "key: value",
    "key value" for a known key, or a note."""
    part = part.strip(" .;")
    if not part:
        return None
    emails = find_emails(part)
    if emails and emails[0] == part.lower():
        return "email", part
    phones = find_phones(part)
    if phones and phones[0][0] == 0 and phones[0][1] >= len(part) - 1:
        return "phone", phones[0][2]
    m = re.match(r"(?P<k>[A-Za-z][A-Za-z ]{0,20}?)\s*(?::|=|\bis\b)\s*(?P<v>.+)$", part)
    if m:
        return _keyed(re.sub(r"\s+", "_", m.group("k").strip().lower()), m.group("v").strip())
    m = re.match(
        r"(?P<k>price|cost|stock|quantity|qty|status|email|phone|address|role|sku|size|colour|"
        r"color|category|company|title|department|notes?)\s+(?P<v>.+)$",
        part,
        re.IGNORECASE,
    )
    if m:
        return _keyed(m.group("k").lower(), m.group("v").strip())
    if find_amounts(part) and len(part.split()) <= 2:
        return "price", part
    return "note", part


def _keyed(key: str, value: str) -> tuple[str, str]:
    """A field as stored: phone numbers in E.164, like an unlabelled one."""
    if key in ("phone", "mobile", "tel", "telephone"):
        phones = find_phones(value)
        if phones:
            return "phone", phones[0][2]
    return key, value


def _fields(text: str) -> list[dict[str, str]] | None:
    out: list[dict[str, str]] = []
    notes: list[str] = []
    for part in re.split(r",\s*|;\s*|\s+and\s+(?=[a-z]+\s*(?::|=))", text):
        kv = _field(part)
        if kv is None:
            continue
        if kv[0] == "note":
            notes.append(kv[1])
        else:
            out.append({"key": kv[0], "value": kv[1]})
    if notes:
        out.append({"key": "note", "value": ", ".join(notes)})
    return out or None


def extract(family: str, text: str) -> tuple[dict[str, Any], list[str]] | None:
    """(parameters, missing) of a record action, or None when ``text`` names no record."""
    if family == "resource.update":
        m = _MARK_RE.search(text)
        if m:
            attrs = [{"key": "status", "value": m.group("value").strip()}]
            return _update(_kind(m.group("kind")), _name(m.group("name")), attrs)
        m = _SET_OF_RE.search(text)
        if m:
            key = re.sub(r"\s+", "_", m.group("key").strip().lower())
            attrs = [{"key": key, "value": m.group("value").strip()}]
            return _update(_kind(m.group("kind")), _name(m.group("name")), attrs)
        m = _UPDATE_RE.search(text)
        if m:
            return _update(
                _kind(m.group("kind")), _name(m.group("name")), _fields(m.group("fields"))
            )
        return None
    rx = {"resource.delete": _DELETE_RE, "resource.create": _CREATE_RE}.get(family, _READ_RE)
    m = rx.search(text)
    if m is None:
        return None
    kind = _kind(m.group("kind"))
    rest = text[m.end() :]
    if family == "resource.create":
        called = re.match(r"\s*(?:called|named)\s+", rest, re.IGNORECASE)
        rest = rest[called.end() :] if called else rest
        head, _, tail = rest.lstrip(" :").partition(",")
        with_fields = re.split(r"\s+with\s+", head, maxsplit=1)
        name = _name(with_fields[0])
        listed = ", ".join(x for x in (with_fields[1] if len(with_fields) > 1 else "", tail) if x)
        params = {"resource_type": kind, "name": name, "attributes": _fields(listed)}
        return params, [] if name else ["name"]
    name = _name(rest)
    if family == "resource.delete":
        params = {
            "resource_id": None,
            "name": name,
            "resource_type": kind,
            "expected_version": None,
        }
        return params, [] if name else ["name"]
    return {"resource_type": kind, "resource_id": None, "name": name}, []


def _update(
    kind: str, name: str | None, attrs: list[dict[str, str]] | None
) -> tuple[dict[str, Any], list[str]]:
    params = {
        "resource_id": None,
        "name": name,
        "resource_type": kind,
        "attributes": attrs,
        "expected_version": None,
    }
    missing = [] if name else ["name"]
    if not attrs:
        missing.append("attributes")
    return params, missing
