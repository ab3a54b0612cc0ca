"""Structured JSON logs; every line written during an rpc carries its request id."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import TextIO

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_RESERVED = set(vars(logging.makeLogRecord({})))
# One encoder for every line (`json.dumps` with `default=` builds a new one each call).
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := request_id_var.get():
            data["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(data)


# How long a line below WARNING may wait in memory before it is written.
FLUSH_S = 0.1
# Lines waiting past this many characters are written at once.
MAX_PENDING_CHARS = 64 * 1024


class BufferedStreamHandler(logging.StreamHandler[TextIO]):
    """Lines written together, as Envoy and nginx write access logs. A write to stderr
    per line was a system call on the event loop's thread for every rpc; writing them
    together cut the server's CPU per ChargeTokens call by 2-4% and added as much to
    its calls/s (bench/README.md, issue 10's fourth round). Lines wait in memory at
    most `flush_s` (a thread writes them), a WARNING or worse is written at once with
    everything before it, and `logging.shutdown` (at exit) writes the rest. A process
    killed with SIGKILL loses at most the last `flush_s` of lines below WARNING."""

    def __init__(self, stream: TextIO, flush_s: float = FLUSH_S) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._chars = 0
        self._stopping = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_every, args=(flush_s,), name="log-flush", daemon=True
        )
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (Handler.handle).
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        self._chars += len(line)
        if record.levelno >= logging.WARNING or self._chars >= MAX_PENDING_CHARS:
            self._write()

    def _write(self) -> None:
        if self._pending:
            lines, self._pending, self._chars = self._pending, [], 0
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except Exception:  # a closed or broken stderr: as StreamHandler, report it
                self.handleError(logging.makeLogRecord({"msg": "log write failed"}))

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _flush_every(self, seconds: float) -> None:
        while not self._stopping.wait(seconds):
            self.flush()

    def close(self) -> None:
        self._stopping.set()
        self.flush()
        super().close()


def configure(level: str = "INFO", fmt: str = "json") -> None:
    # The JSON lines carry none of these; skip collecting them on every record (the
    # caller's file and line cost a walk up the stack for each line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BufferedStreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BufferedStreamHandler):
            old.close()  # its lines are written and its thread ends
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiosqlite", "asyncio", "alembic.runtime.migration", "httpx", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
