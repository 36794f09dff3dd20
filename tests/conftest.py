"""Fixtures shared by the tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

# Seconds a test that uses the `guarded` fixture may take in all (real sockets, real clock).
GUARD = 60


@pytest.fixture
async def guarded() -> AsyncIterator[None]:
    """An absolute bound on the whole test."""
    with trio.fail_after(GUARD):
        yield


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as opened:
        yield opened
        opened.cancel_scope.cancel()
