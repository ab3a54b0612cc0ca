"""A gRPC-web exchange by hand (framing as the browser's connect-web sends it), for
tests that must see the wire: frames, trailers, status details, CORS headers."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any

import httpx
from google.protobuf.message import Message
from google.rpc import status_pb2

CONTENT_TYPE = "application/grpc-web+proto"


def frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


@dataclass
class Reply:
    http_status: int
    headers: httpx.Headers
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_status(self) -> int | None:
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))

    def status_details(self) -> status_pb2.Status:
        raw = self.trailers.get(
            "grpc-status-details-bin", self.headers.get("grpc-status-details-bin", "")
        )
        return status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))

    def message(self, cls: type[Any]) -> Any:
        (body,) = self.messages
        return cls.FromString(body)


def parse(response: httpx.Response) -> Reply:
    reply = Reply(response.status_code, response.headers)
    body = response.content
    while len(body) >= 5:
        flags, length = struct.unpack(">BI", body[:5])
        chunk, body = body[5 : 5 + length], body[5 + length :]
        if flags & 0x80:
            for line in chunk.decode().split("\r\n"):
                if ":" in line:
                    key, value = line.split(":", 1)
                    reply.trailers[key.strip().lower()] = value.strip()
        else:
            reply.messages.append(chunk)
    return reply


def headers(key: str = "", tenant: str = "", user: str = "", **extra: str) -> dict[str, str]:
    out = {"content-type": CONTENT_TYPE, "x-grpc-web": "1", **extra}
    if key:
        out["authorization"] = f"Bearer {key}"
    if tenant:
        out["x-tenant-id"] = tenant
    if user:
        out["x-user-id"] = user
    return out


async def call(
    http: httpx.AsyncClient,
    base: str,
    method: str,
    request: Message | bytes,
    hdrs: dict[str, str],
) -> Reply:
    """POST one unary gRPC-web call to `{base}/{method}` (method: `pkg.Service/Method`)."""
    payload = request if isinstance(request, bytes) else frame(request.SerializeToString())
    return parse(await http.post(f"{base}/{method}", content=payload, headers=hdrs))
