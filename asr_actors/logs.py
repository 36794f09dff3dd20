"""Logging with the session on every line: set by the supervisor, inherited by its tasks and threads."""

from __future__ import annotations

import contextvars
import datetime
import json
import logging

# "-" outside a session. Trio tasks and trio.to_thread workers inherit context variables from their parent.
current_session_id: contextvars.ContextVar[str] = contextvars.ContextVar("current_session_id", default="-")
current_app: contextvars.ContextVar[str] = contextvars.ContextVar("current_app", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [session=%(session)s app=%(app)s] %(message)s"


class SessionContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.session = current_session_id.get()
        record.app = current_app.get()
        return True


class JsonLines(logging.Formatter):
    """One JSON object per line, for log collectors: time (UTC, ISO 8601), level, logger, session, app,
    message, and the traceback as `exception` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "session": getattr(record, "session", "-"),
            "app": getattr(record, "app", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


FORMATS = ("text", "json")


def configure(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(SessionContext())
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
