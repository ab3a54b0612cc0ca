"""What every request must be before a servicer sees it: a body that parses, and
fields within the limits the protos state (`(agentserver.v1.limits)` options).

A body that does not parse is not an exception here: the deserializer hands the rpc
wrapper an `Unparseable` marker, which it answers INVALID_ARGUMENT before anything
else (no authentication, no traceback). grpc would otherwise answer UNKNOWN with
protobuf's exception text and log a traceback for every malformed call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from agentserver.domain.errors import FieldViolation
from agentserver.v1 import common_pb2


class Unparseable:
    """A request body that did not parse as `type_name`."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def violation(self) -> FieldViolation:
        return FieldViolation("request", f"is not a valid {self.type_name} message")


def tolerant(cls: type[Message]) -> Callable[[bytes], Message | Unparseable]:
    parse = cls.FromString
    name = cls.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Message | Unparseable:
        try:
            return parse(data)
        except (DecodeError, RecursionError, ValueError):
            return Unparseable(name)

    return deserialize


def add_service(server: grpc.aio.Server, servicer: Any, service: ServiceDescriptor) -> None:
    """Register `servicer`'s methods for `service` (unary, or server-streaming, as the
    generated `add_*Servicer_to_server` does), with deserializers that never raise."""
    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        handler = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = handler(
            getattr(servicer, method.name),
            request_deserializer=tolerant(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


@functools.cache  # descriptors are singletons: read each field's options once
def _limits(fd: FieldDescriptor) -> tuple[int, int, int]:
    options = fd.GetOptions()
    if not options.HasExtension(common_pb2.limits):
        return 0, 0, 0
    limits = options.Extensions[common_pb2.limits]
    return limits.max_chars, limits.max_items, limits.max_bytes


def check_request(message: Any, prefix: str = "") -> FieldViolation | None:
    """The first field of `message` past its limits, or holding a NUL character
    (which PostgreSQL can neither store nor compare) in any string, nested ones and
    Struct contents included; None when there is none. A few microseconds for a
    ProcessRequest."""
    for fd, value in message.ListFields():
        name: str = prefix + fd.name
        max_chars, max_items, max_bytes = _limits(fd)
        if max_items and len(value) > max_items:
            return FieldViolation(name, f"must have at most {max_items} entries")
        if fd.type == FieldDescriptor.TYPE_STRING:
            for text in value if fd.is_repeated else (value,):
                if "\x00" in text:
                    return FieldViolation(name, "must not contain NUL characters")
                if max_chars and len(text) > max_chars:
                    return FieldViolation(name, f"must be at most {max_chars:,} characters")
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if max_bytes and value.ByteSize() > max_bytes:
                return FieldViolation(name, f"must be at most {max_bytes:,} bytes")
            if fd.message_type.GetOptions().map_entry:
                items: Any = value.items()
            else:
                items = enumerate(value) if fd.is_repeated else [("", value)]
            for key, item in items:
                path = f"{name}.{key}" if key != "" else name
                if isinstance(key, str) and "\x00" in key:
                    return FieldViolation(path, "must not contain NUL characters")
                if isinstance(item, str):
                    if "\x00" in item:
                        return FieldViolation(path, "must not contain NUL characters")
                elif hasattr(item, "ListFields") and (found := check_request(item, path + ".")):
                    return found
    return None
