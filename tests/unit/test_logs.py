"""Log lines are written together: below WARNING within a tenth of a second, a
WARNING at once with everything before it, the rest when logging shuts down."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator

from agentserver.logs import BufferedStreamHandler, JsonFormatter


@contextlib.contextmanager
def _logging(flush_s: float) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing JSON lines through a BufferedStreamHandler into a string,
    closed (as logging.shutdown closes it at exit) when the block ends."""
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream, flush_s=flush_s)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"test_logs.{id(stream)}")
    log.propagate = False
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    try:
        yield log, stream
    finally:
        handler.close()
        handler._flusher.join(5)
        assert not handler._flusher.is_alive()


def _messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]


def test_lines_below_warning_wait_then_are_written_by_the_thread() -> None:
    with _logging(flush_s=0.05) as (log, stream):
        log.info("one")
        log.info("two")
        assert stream.getvalue() == ""  # not one write per line
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _messages(stream) == ["one", "two"]


def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    with _logging(flush_s=60.0) as (log, stream):
        log.info("before")
        log.warning("trouble")
        assert _messages(stream) == ["before", "trouble"]
        log.info("after")
        assert _messages(stream) == ["before", "trouble"]
    assert _messages(stream) == ["before", "trouble", "after"]  # written when closed


def test_a_long_backlog_is_written_without_waiting() -> None:
    with _logging(flush_s=60.0) as (log, stream):
        for i in range(2000):  # well past MAX_PENDING_CHARS
            log.info("line %d", i)
        assert len(_messages(stream)) > 1000
    assert _messages(stream) == [f"line {i}" for i in range(2000)]
