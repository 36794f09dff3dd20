"""The server WebSocket (asr_actors/websocket.py), driven by a wsproto client over an in-memory stream."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from asr_actors.transport import ClientGone
from asr_actors.websocket import WebSocket

LIMIT = 1000


class Client:
    """The client side: sends wsproto events, collects what the server sends back."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.protocol = WSConnection(ConnectionType.CLIENT)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.protocol.send(event))

    async def receive(self) -> list[Event]:
        self.protocol.receive_data(await self.stream.receive_some())
        return list(self.protocol.events())


async def connected() -> tuple[Client, WebSocket]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    request = client.protocol.send(Request(host="gateway.test", target="/v1/asr"))
    server = await WebSocket.accept(server_stream, request, LIMIT)
    assert [AcceptConnection] == [type(event) for event in await client.receive()]
    return client, server


async def test_fragmented_messages_are_joined() -> None:
    client, server = await connected()
    await client.send(BytesMessage(data=b"\x01\x02", message_finished=False))
    await client.send(BytesMessage(data=b"\x03\x04", message_finished=True))
    await client.send(TextMessage(data="pi", message_finished=False))
    await client.send(TextMessage(data="ng", message_finished=True))
    assert b"\x01\x02\x03\x04" == await server.get_message()
    assert "ping" == await server.get_message()


async def test_a_ping_is_answered_while_reading() -> None:
    client, server = await connected()
    await client.send(Ping(payload=b"are you there"))
    await client.send(TextMessage(data="hello"))
    assert "hello" == await server.get_message()
    assert [Pong(payload=b"are you there")] == await client.receive()


async def test_a_message_over_the_limit_closes_with_1009() -> None:
    client, server = await connected()
    await client.send(BytesMessage(data=bytes(LIMIT // 2), message_finished=False))
    await client.send(BytesMessage(data=bytes(LIMIT // 2 + 2), message_finished=True))
    with pytest.raises(ClientGone, match="refused"):
        await server.get_message()
    [close] = await client.receive()
    assert isinstance(close, CloseConnection)
    assert 1009 == close.code


async def test_the_clients_close_is_answered_and_ends_reading() -> None:
    client, server = await connected()
    await client.send(TextMessage(data="last words"))
    await client.send(CloseConnection(code=1000, reason="bye"))
    # Messages sent before the close are still delivered, then the close is reported.
    assert "last words" == await server.get_message()
    with pytest.raises(ClientGone, match="closed by the client"):
        await server.get_message()
    assert [CloseConnection(code=1000, reason="bye")] == await client.receive()


async def test_a_dropped_connection_is_client_gone_for_reader_and_writer() -> None:
    client, server = await connected()
    await client.stream.aclose()
    with pytest.raises(ClientGone, match="without a close frame"):
        await server.get_message()
    with pytest.raises(ClientGone):
        await server.send_message("anyone?")


async def test_the_servers_close_waits_for_the_clients_reply() -> None:
    client, server = await connected()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.aclose, 4408, "Connection Timeout")
        [close] = await client.receive()
        assert CloseConnection(code=4408, reason="Connection Timeout") == close
        await client.send(close.response())
    # The server closed its socket after the handshake: the client reads the end of the stream.
    assert b"" == await client.stream.receive_some()


async def test_an_upgrade_without_a_key_is_refused_with_400() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    request = (
        b"GET /v1/asr HTTP/1.1\r\nHost: gateway.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with pytest.raises(ClientGone, match="refused the upgrade"):
        await WebSocket.accept(server_stream, request, LIMIT)
    assert (await client_stream.receive_some()).startswith(b"HTTP/1.1 400 ")


async def test_a_frame_that_breaks_the_protocol_is_closed_with_its_code() -> None:
    """An unmasked client frame (RFC 6455 says a server must refuse it): close 1002, the reader is told."""
    client, server = await connected()
    await client.stream.send_all(b"\x82\x02\x01\x00")  # binary, 2 bytes, no mask
    with pytest.raises(ClientGone, match="refused"):
        await server.get_message()
    [close] = await client.receive()
    assert isinstance(close, CloseConnection)
    assert 1002 == close.code


class Server:
    """A wsproto server side, for the client role of WebSocket (the native engines' upstream)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.protocol = WSConnection(ConnectionType.SERVER)

    async def accept_and_send(self, *first_messages: str) -> None:
        """Read the upgrade, then answer 101 and the first messages in one write (one TCP segment)."""
        while not any(isinstance(event, Request) for event in self.protocol.events()):
            self.protocol.receive_data(await self.stream.receive_some())
        data = self.protocol.send(AcceptConnection())
        for message in first_messages:
            data += self.protocol.send(TextMessage(data=message))
        await self.stream.send_all(data)

    async def receive(self) -> list[Event]:
        self.protocol.receive_data(await self.stream.receive_some())
        return list(self.protocol.events())


async def test_a_message_that_arrives_with_the_101_is_read() -> None:
    """A service that sends its first message in the same segment as its 101 (iFlytek's `started`): the
    client reads it from what the handshake left over, rather than waiting on the socket for more."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = Server(server_stream)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.accept_and_send, '{"action": "started"}', "second")
            websocket = await WebSocket.connect(client_stream, "service.test", "/v1/ws", LIMIT)
            assert ['{"action": "started"}', "second"] == [
                await websocket.get_message(),
                await websocket.get_message(),
            ]


async def test_a_ping_after_our_close_is_not_answered() -> None:
    """The client closes; the server pings before it has read the close (the race trio-websocket failed
    sessions on): the client sends no pong after its close frame, takes the server's close, and ends clean."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = Server(server_stream)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.accept_and_send)
            websocket = await WebSocket.connect(client_stream, "service.test", "/v1/ws", LIMIT)

            # The ping leaves the server before it has read the client's close: made while still open.
            late = server.protocol.send(Ping(payload=b"late"))

            async def serve_the_close() -> None:
                events = await server.receive()
                assert [CloseConnection] == [type(event) for event in events]
                await server.stream.send_all(late + server.protocol.send(events[0].response()))
                after_close = b""
                while chunk := await server.stream.receive_some():
                    after_close += chunk
                assert b"" == after_close, "nothing (no pong) after the client's close frame"

            nursery.start_soon(serve_the_close)
            await websocket.aclose()
    assert 1000 == websocket.peer_close_code


async def test_a_ping_with_the_peers_last_message_and_close_loses_nothing() -> None:
    """A ping, the service's last message and its close in one segment (iFlytek's tail, under a pinging
    service): the message is read, no pong follows the close, then the clean close (code 1000)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = Server(server_stream)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.accept_and_send)
            websocket = await WebSocket.connect(client_stream, "service.test", "/v1/ws", LIMIT)
            last = server.protocol.send(Ping(payload=b"p")) + server.protocol.send(TextMessage(data="last"))
            await server.stream.send_all(last + server.protocol.send(CloseConnection(code=1000)))
            assert "last" == await websocket.get_message()
            with pytest.raises(ClientGone):
                await websocket.get_message()
    assert 1000 == websocket.peer_close_code


async def test_client_frames_are_masked_each_with_its_own_key_and_read_by_wsproto() -> None:
    """Our client's frames (its masking keys come from a block of OS randomness, not one system call per
    frame) as an independent server reads them: every size of length field, text and binary, and the same
    message twice goes out as different bytes (a new key each time)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = WSConnection(ConnectionType.SERVER)
    received: list[Event] = []
    raw: list[bytes] = []
    messages: list[str | bytes] = [b"\x01" * 10, b"\x02" * 300, b"\x03" * 70_000, "text", b"same", b"same"]

    async def serve() -> None:
        server.receive_data(await server_stream.receive_some())
        assert [Request] == [type(event) for event in server.events()]
        await server_stream.send_all(server.send(AcceptConnection()))
        while len(received) < len(messages):
            data = await server_stream.receive_some()
            raw.append(data)
            server.receive_data(data)
            received.extend(server.events())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            client = await WebSocket.connect(client_stream, "service.test", "/ws", LIMIT * 100)
            for message in messages:
                await client.send_message(message)
    assert messages == [event.data for event in received]
    assert all(isinstance(event, BytesMessage | TextMessage) and event.message_finished for event in received)
    # The last 20 bytes are the two b"same" frames: FIN + binary, mask bit + length 4, key, payload.
    first, second = b"".join(raw)[-20:-10], b"".join(raw)[-10:]
    assert b"\x82\x84" == first[:2] == second[:2]
    assert first[2:6] != second[2:6]
