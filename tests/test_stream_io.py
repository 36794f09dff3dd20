"""`asr_actors/stream_io.py` over real sockets: a write the socket takes whole, a write the peer takes in
part and then reads, and a write the peer stops reading in the middle of (bounded by `stall_timeout`).

The timeouts run on MockClock: a task waiting on a socket counts as idle, so the clock jumps to the
deadline; the peer here never reads, so nothing real is raced.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from asr_actors.stream_io import SocketIO

BIG = b"x" * (8 << 20)  # far more than two small socket buffers hold


def _small_buffered_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    left, right = trio.socket.socketpair()
    for sock in (left, right):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return left, right


async def test_a_write_the_socket_takes_whole_returns_without_waiting() -> None:
    left, right = _small_buffered_pair()
    with left, right, trio.fail_after(10):
        io = SocketIO(left, 65536)
        with trio.testing.assert_no_checkpoints():  # no trip through the scheduler, no cancel scope
            await io.send_all(b"hello", stall_timeout=1.0)
        assert b"hello" == await SocketIO(right, 65536).receive()


async def test_a_write_taken_in_part_finishes_when_the_peer_reads() -> None:
    left, right = _small_buffered_pair()
    received = bytearray()

    async def read_all() -> None:
        reader = SocketIO(right, 65536)
        while len(received) < len(BIG):
            received.extend(await reader.receive())

    with left, right, trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await SocketIO(left, 65536).send_all(BIG, stall_timeout=20.0)
    assert len(BIG) == len(received)


async def test_a_peer_that_stops_reading_mid_write_breaks_the_connection_at_stall_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    left, right = _small_buffered_pair()
    with left, right, trio.fail_after(60):
        started = trio.current_time()
        with pytest.raises(trio.BrokenResourceError, match="took no more of a write for 15 s"):
            await SocketIO(left, 65536).send_all(BIG, stall_timeout=15.0)
        assert started + 15 == pytest.approx(trio.current_time(), abs=0.01)
