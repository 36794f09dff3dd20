"""What the actors need of a client connection, and how its end is told: `ClientGone`."""

from __future__ import annotations

import math
from typing import Protocol


class ClientGone(Exception):
    """The client closed or dropped the connection; there is nobody left to tell anything."""


class Transport(Protocol):
    """A WebSocket connection (`asr_actors.websocket.WebSocket`): every failure of the client's side,
    reading or writing, raises `ClientGone`."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes, stall_timeout: float = math.inf) -> None:
        """`stall_timeout` bounds the write once begun; past it the connection is broken (`ClientGone`)."""

    def writable(self) -> bool:
        """Whether the client's socket takes data now (a check, no wait)."""

    async def wait_writable(self) -> None:
        """Until the client's socket takes data again (the client reads what it was sent)."""

    async def wait_closed(self) -> None:
        """Until the client closes (raises `ClientGone` then); what it sends meanwhile is dropped."""

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...
