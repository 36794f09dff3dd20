"""The boundary with the WebSocket library: its exceptions become ours here, and only here."""

from __future__ import annotations

from typing import Protocol

import trio_websocket


class ClientGone(Exception):
    """The client closed or dropped the connection; there is nobody left to tell anything."""


class Transport(Protocol):
    """What the actors need of a WebSocket connection (trio-websocket's satisfies it)."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


async def receive(transport: Transport) -> str | bytes:
    try:
        return await transport.get_message()
    except trio_websocket.ConnectionClosed as exc:
        raise ClientGone(str(exc.reason)) from None


async def send(transport: Transport, message: str) -> None:
    try:
        await transport.send_message(message)
    except trio_websocket.ConnectionClosed as exc:
        raise ClientGone(str(exc.reason)) from None
