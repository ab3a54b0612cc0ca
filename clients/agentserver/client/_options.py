"""What every call of the client takes besides its request."""

from __future__ import annotations

import enum
from typing import Final


class _UseClientDefault(enum.Enum):
    """Marks a `timeout` that was not passed, as distinct from None (no deadline)."""

    TIMEOUT = enum.auto()


DEFAULT: Final = _UseClientDefault.TIMEOUT

Timeout = float | None | _UseClientDefault
