"""Logging with the session on every line: set by the supervisor, inherited by its tasks and threads."""

from __future__ import annotations

import contextvars
import logging

# "-" outside a session. Trio tasks and trio.to_thread workers inherit context variables from their parent.
current_session: contextvars.ContextVar[str] = contextvars.ContextVar("current_session", default="-")
current_app: contextvars.ContextVar[str] = contextvars.ContextVar("current_app", default="-")

FORMAT = "%(asctime)s %(levelname)s %(name)s [session=%(session)s app=%(app)s] %(message)s"


class SessionContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.session = current_session.get()
        record.app = current_app.get()
        return True


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(SessionContext())
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
