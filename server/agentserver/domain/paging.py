"""Opaque page tokens and page-size rules shared by every list rpc."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from agentserver.domain.errors import InvalidArgument


@dataclass(frozen=True)
class PageRequest:
    size: int
    after: dict[str, Any] | None  # the cursor: where the previous page stopped


def page_request(
    page_size: int,
    page_token: str,
    *,
    default: int,
    maximum: int,
    kind: str,
    keys: tuple[str, ...] = ("id",),
) -> PageRequest:
    """Validate a page size and decode a page token made by `encode_token(kind, ...)`
    with the cursor `keys`."""
    if page_size < 0 or page_size > maximum:
        raise InvalidArgument.field("page_size", f"must be between 0 and {maximum}")
    after = decode_token(page_token, kind, keys) if page_token else None
    return PageRequest(size=page_size or default, after=after)


def bad_token() -> InvalidArgument:
    return InvalidArgument.field("page_token", "is not a token this server issued")


def encode_token(kind: str, cursor: dict[str, Any]) -> str:
    raw = json.dumps({"k": kind, **cursor}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, kind: str, keys: tuple[str, ...] = ("id",)) -> dict[str, Any]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad_token() from None
    if not isinstance(data, dict) or data.pop("k", None) != kind:
        raise InvalidArgument.field("page_token", "belongs to another listing")
    # Tokens are not signed: a made-up one must fail here, not in a query.
    if sorted(data) != sorted(keys) or not all(
        isinstance(v, str) and "\x00" not in v for v in data.values()
    ):
        raise bad_token()
    return data
