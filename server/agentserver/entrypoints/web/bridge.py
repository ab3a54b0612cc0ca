"""connectrpc ⇄ our gRPC servicers: one object per service whose methods hand each
request to the servicer's `@rpc`-wrapped method with a context that looks, to that
method, like grpc.aio's. Identity, scopes, input checks, rate limits, the audit
trail and the error table therefore run exactly as on the native server; only the
framing differs. A status the servicer aborts with leaves as a ConnectError whose
details are the very `google.rpc.Status` details the native server sends, so
`grpc-status-details-bin` carries the same bytes either way.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NoReturn

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.request import RequestContext
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2
from protobuf.wkt import Any as WireAny

from agentserver.entrypoints.grpc.requests import tolerant

_DETAILS_KEY = "grpc-status-details-bin"
_CODES = {code.value[0]: code.name for code in grpc.StatusCode}
_CODES[grpc.StatusCode.CANCELLED.value[0]] = "CANCELED"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def connect_code(code: grpc.StatusCode) -> Code:
    return Code[_CODES[code.value[0]]]


class ConnectServicerContext:
    """What `@rpc` asks of a grpc.aio.ServicerContext, answered from an HTTP request."""

    def __init__(self, ctx: RequestContext[Any, Any]) -> None:
        self._ctx = ctx

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        out: list[tuple[str, str | bytes]] = []
        for key, value in self._ctx.request_headers.allitems():
            if key.endswith("-bin"):  # binary metadata travels base64-encoded, as in gRPC
                try:
                    out.append((key, base64.b64decode(value + "===")))
                except ValueError:
                    continue
            else:
                out.append((key, value))
        return tuple(out)

    def peer(self) -> str:
        address = self._ctx.client_address or ""
        host = address.rsplit(":", 1)[0]
        return f"ipv6:{address}" if host.startswith("[") else f"ipv4:{address}"

    def time_remaining(self) -> float | None:
        remaining = self._ctx.timeout_ms
        return None if remaining is None else max(0.0, remaining / 1000)

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        for key, value in metadata:
            self._ctx.response_trailers.add(key, value)

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        for key, value in metadata:
            self._ctx.response_headers.add(key, value)

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        raise to_connect_error(code, details, trailing_metadata)


def to_connect_error(
    code: grpc.StatusCode, message: str, trailing_metadata: Sequence[tuple[str, str | bytes]]
) -> ConnectError:
    """The ConnectError for a status as the servicer aborts with it: the google.rpc
    details travel as they are (re-wrapped from google.protobuf's Any into
    connectrpc's, byte for byte)."""
    details: list[ErrorDetail] = []
    for key, value in trailing_metadata:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            details = [
                ErrorDetail(WireAny(type_url=d.type_url, value=d.value)) for d in status.details
            ]
    return ConnectError(connect_code(code), message, details)


class TolerantProtoCodec:
    """connectrpc's binary protobuf codec, parsing as the gRPC server does
    (`requests.tolerant`): a body that does not parse reaches `@rpc` as an
    `Unparseable` marker and is answered there, with the same status and details."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Message]) -> Any:
        return tolerant(message_class)(bytes(data))


Handler = Callable[[Any, Any], Awaitable[Any]]


class ServicerBridge:
    """A connectrpc service (snake_case methods taking `(request, ctx)`) over a gRPC
    servicer (CamelCase methods taking `(request, context)`)."""

    def __init__(self, servicer: object, service: ServiceDescriptor) -> None:
        for method in service.methods:
            handler = getattr(servicer, method.name)
            forward = self._stream if method.server_streaming else self._forward
            setattr(self, _snake(method.name), forward(handler))

    @staticmethod
    def _forward(method: Handler) -> Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]]:
        async def call(request: Any, ctx: RequestContext[Any, Any]) -> Any:
            return await method(request, ConnectServicerContext(ctx))

        return call

    @staticmethod
    def _stream(
        method: Callable[[Any, Any], AsyncIterator[Any]],
    ) -> Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]]:
        """A server-streaming method: connectrpc writes each message as it comes (over
        gRPC-web and Connect alike) and stops the generator when the client leaves."""

        def call(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
            return method(request, ConnectServicerContext(ctx))

        return call
