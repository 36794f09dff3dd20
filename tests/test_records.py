"""Traffic and transcript records: both stores (SQLite, real Redis), the session hook and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio

from asr_actors.engines.fake import FakeEngine
from asr_actors.records import DAY, FinalRecord, RecordStore, SessionRecord, SqliteRecordStore, TrafficRow
from asr_actors.stores.redis import RedisRecordStore
from asr_actors.testing.redis_server import redis_server
from tests.support import (
    APPKEY,
    SECRET,
    fake_config,
    open_connection,
    read_until_close,
    redis_connection,
    wired_gateway,
)

GUARD = 30
DAY_ONE = 1_700_000_000.0  # 2023-11-14 UTC
StoreFactory = Callable[[float], AbstractAsyncContextManager[RecordStore]]


def record(
    session: str, app: str, started_at: float, *, seconds: float = 2.0, error: int | None = None
) -> SessionRecord:
    return SessionRecord(
        session_id=session,
        app=app,
        language="en",
        engine="fake",
        started_at=started_at,
        ended_at=started_at + seconds,
        audio_bytes=int(seconds * 32000),
        sample_rate=16000,
        error_code=error,
        finals=(FinalRecord("hello world", 0, 1000),),
    )


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    @asynccontextmanager
    async def sqlite(retention_days: float) -> AsyncIterator[RecordStore]:
        yield SqliteRecordStore(tmp_path / "records.sqlite3", retention_days)

    @asynccontextmanager
    async def redis(retention_days: float) -> AsyncIterator[RecordStore]:
        async with redis_server(tmp_path) as server, redis_connection(server.url).open() as connection:
            yield RedisRecordStore(connection.client, retention_days)

    return sqlite if request.param == "sqlite" else redis


async def test_traffic_per_app_and_day(store: StoreFactory) -> None:
    """Sessions aggregate into traffic per (day, app): sessions, audio seconds, bytes, errors."""
    with trio.fail_after(GUARD):
        async with store(3650) as records:
            await records.save(record("a1", "alpha", DAY_ONE))
            await records.save(record("a2", "alpha", DAY_ONE + 60, seconds=1.0, error=408))
            await records.save(record("b1", "beta", DAY_ONE + 120))
            await records.save(record("a3", "alpha", DAY_ONE + DAY))
            traffic = await records.traffic()
            alpha_later = await records.traffic(app="alpha", since=DAY_ONE + DAY / 2)
            transcripts = await records.transcripts(app="beta")
    assert [
        TrafficRow("2023-11-14", "alpha", 2, 3.0, 96000, 1),
        TrafficRow("2023-11-14", "beta", 1, 2.0, 64000, 0),
        TrafficRow("2023-11-15", "alpha", 1, 2.0, 64000, 0),
    ] == traffic
    assert [TrafficRow("2023-11-15", "alpha", 1, 2.0, 64000, 0)] == alpha_later
    assert [record("b1", "beta", DAY_ONE + 120)] == transcripts


async def test_records_older_than_the_retention_are_dropped(store: StoreFactory) -> None:
    """A record is kept retention_days after its session; saving a newer one purges the old."""
    with trio.fail_after(GUARD):
        async with store(1) as records:
            await records.save(record("old", "alpha", DAY_ONE))
            await records.save(record("new", "alpha", DAY_ONE + 2 * DAY))
            assert ["new"] == [r.session_id for r in await records.transcripts()]


async def test_sessions_are_recorded_with_their_finals(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Every session leaves a record: app, language, engine, audio, finals; an error session its code."""
    records = SqliteRecordStore(tmp_path / "records.sqlite3", 30)
    gateway = wired_gateway(fake_config(), {"fake": FakeEngine()}, {APPKEY: SECRET}, records=records)
    good = await open_connection(nursery, gateway)
    for _ in range(12):
        await good.send_message(b"\x01\x00" * 1600)
    await good.send_message('{"status": "end"}')
    await read_until_close(good)
    bad = await open_connection(nursery, gateway)
    await bad.send_message(b"\x01\x00" * 1600)
    await bad.send_message("not json")
    await read_until_close(bad)
    with trio.fail_after(GUARD):
        while len(saved := await records.transcripts()) < 2:  # noqa: ASYNC110 -- saved after the close
            await trio.sleep(0.01)
    ok, failed = saved
    assert (APPKEY, "en", "fake", 1.2, None) == (
        ok.app,
        ok.language,
        ok.engine,
        ok.audio_seconds,
        ok.error_code,
    )
    assert ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9", "w10 w11"] == [final.text for final in ok.finals]
    assert (403, 0.1) == (failed.error_code, failed.audio_seconds)


def test_records_cli(tmp_path: Path) -> None:
    """`records traffic` and `records transcripts` print what the store holds, as tables or JSON."""
    path = tmp_path / "records.sqlite3"
    trio.run(SqliteRecordStore(path, 3650).save, record("a1", "alpha", DAY_ONE))
    config = tmp_path / "config.toml"
    config.write_text(f'[records]\npath = "{path}"\nretention_days = 3650.0\n')

    def cli(*args: str) -> str:
        command = [sys.executable, "-m", "asr_actors", "records", *args, "--config", str(config)]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    assert "2023-11-14  alpha" in cli("traffic")
    assert {
        "day": "2023-11-14",
        "app": "alpha",
        "sessions": 1,
        "audio_seconds": 2.0,
        "audio_bytes": 64000,
        "errors": 0,
    } == json.loads(cli("traffic", "--json"))
    assert "hello world" in cli("transcripts", "--app", "alpha")
    assert "" == cli("transcripts", "--since", "2024-01-01")
