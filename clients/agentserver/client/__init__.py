"""Typed async client for the agentserver gRPC API.

::

    from agentserver.client import AgentServerClient, AgentServerError, StatusCode
    from agentserver.v1 import token_service_pb2

    async with AgentServerClient("localhost:50051", api_key=key, tenant_id="t1") as client:
        try:
            balance = await client.get_balance(token_service_pb2.GetBalanceRequest(tenant_id="t1"))
        except AgentServerError as error:
            if error.code is StatusCode.NOT_FOUND: ...

Request and response messages are the generated ones in `agentserver.v1`.
"""

from ._client import AgentServerClient
from ._errors import (
    AgentServerError,
    ErrorDetails,
    FieldViolation,
    PreconditionViolation,
    QuotaViolation,
    StatusCode,
)
from ._events import EventWatch

__all__ = [
    "AgentServerClient",
    "AgentServerError",
    "ErrorDetails",
    "EventWatch",
    "FieldViolation",
    "PreconditionViolation",
    "QuotaViolation",
    "StatusCode",
]
