"""Log lines are written together: below WARNING within a tenth of a second, a
WARNING at once with everything before it, the rest when logging shuts down."""

from __future__ import annotations

import io
import json
import logging
import time

from agentserver.logs import BufferedStreamHandler, JsonFormatter


def _logger(stream: io.StringIO, flush_s: float) -> tuple[logging.Logger, BufferedStreamHandler]:
    handler = BufferedStreamHandler(stream, flush_s=flush_s)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"test_logs.{id(stream)}")
    log.propagate = False
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    return log, handler


def _messages(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]


def test_lines_below_warning_wait_then_are_written_by_the_thread() -> None:
    stream = io.StringIO()
    log, handler = _logger(stream, flush_s=0.05)
    try:
        log.info("one")
        log.info("two")
        assert stream.getvalue() == ""  # not one write per line
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _messages(stream) == ["one", "two"]
    finally:
        handler.close()


def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    stream = io.StringIO()
    log, handler = _logger(stream, flush_s=60.0)
    try:
        log.info("before")
        log.warning("trouble")
        assert _messages(stream) == ["before", "trouble"]
        log.info("after")
        assert _messages(stream) == ["before", "trouble"]
    finally:
        handler.close()
    assert _messages(stream) == ["before", "trouble", "after"]


def test_closing_writes_what_waits_and_ends_the_thread() -> None:
    stream = io.StringIO()
    log, handler = _logger(stream, flush_s=60.0)
    log.info("last words")
    handler.close()  # what logging.shutdown does at exit
    assert _messages(stream) == ["last words"]
    handler._flusher.join(5)
    assert not handler._flusher.is_alive()


def test_a_long_backlog_is_written_without_waiting() -> None:
    stream = io.StringIO()
    log, handler = _logger(stream, flush_s=60.0)
    try:
        for i in range(2000):  # well past MAX_PENDING_CHARS
            log.info("line %d", i)
        assert len(_messages(stream)) > 1000
    finally:
        handler.close()
    assert _messages(stream) == [f"line {i}" for i in range(2000)]
