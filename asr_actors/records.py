"""Traffic and transcript records: one record per session, kept for a configured number of days.

The embedded gateway keeps them in SQLite (a file; queries run in a worker thread); gateways on the Redis
bus keep them in Redis, shared by all of them. Both answer the same queries, which
`python -m asr_actors records traffic|transcripts` prints.
"""

from __future__ import annotations

import collections
import datetime
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import attrs
import trio

DAY = 86400
# Audio frames whose arrival times a session keeps for timing its next final (~7 minutes of 100 ms frames).
ARRIVALS_KEPT = 4096


@attrs.frozen
class FinalRecord:
    text: str
    begin_ms: int
    end_ms: int
    # (text, begin_ms, end_ms) per word, where the engine gave word times; records kept before they
    # existed have none.
    words: tuple[tuple[str, int, int], ...] = ()


@attrs.frozen
class SessionRecord:
    # Kept as `session` in the stored JSON (records written before the rename read the same).
    session_id: str
    app: str
    language: str
    engine: str
    started_at: float  # unix seconds
    ended_at: float
    audio_bytes: int
    sample_rate: int
    error_code: int | None
    finals: tuple[FinalRecord, ...]

    @property
    def audio_seconds(self) -> float:
        return self.audio_bytes / (2 * self.sample_rate) if self.sample_rate else 0.0

    @property
    def day(self) -> str:
        return day_of(self.started_at)

    def to_json(self) -> str:
        fields = attrs.asdict(self)
        fields["session"] = fields.pop("session_id")
        return json.dumps(fields, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionRecord:
        fields = json.loads(text)
        fields["session_id"] = fields.pop("session")
        fields["finals"] = tuple(
            FinalRecord(**{**final, "words": tuple(tuple(word) for word in final.get("words", ()))})
            for final in fields["finals"]
        )
        return cls(**fields)


@attrs.frozen
class TrafficRow:
    """One app's traffic on one day (UTC)."""

    day: str
    app: str
    sessions: int
    audio_seconds: float
    audio_bytes: int
    errors: int


def day_of(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d")


@attrs.define
class SessionLedger:
    """Filled in while a session runs: audio by the receiver, results by the relay; for the session's
    record, and for the latency metrics (when the audio a result is about arrived)."""

    audio_bytes: int = 0
    finals: list[FinalRecord] = attrs.field(factory=list)
    # (bytes received so far, arrival time) per audio frame since the last final; bounded, so that a
    # sentence that never ends costs no growing memory (its final is then not timed).
    arrivals: collections.deque[tuple[int, float]] = attrs.field(
        factory=lambda: collections.deque(maxlen=ARRIVALS_KEPT)
    )
    first_audio_at: float | None = None
    first_partial_s: float | None = None
    final_latencies: list[float] = attrs.field(factory=list)

    def heard(self, nbytes: int, now: float) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.audio_bytes += nbytes
        self.arrivals.append((self.audio_bytes, now))

    def partial_sent(self, now: float) -> None:
        if self.first_partial_s is None and self.first_audio_at is not None:
            self.first_partial_s = now - self.first_audio_at

    def final_sent(self, final: FinalRecord, end_byte: int, now: float) -> None:
        """A final about the audio up to `end_byte`: timed from the arrival of the frame holding it."""
        self.finals.append(final)
        while self.arrivals and self.arrivals[0][0] < end_byte:
            self.arrivals.popleft()
        if self.arrivals:
            self.final_latencies.append(now - self.arrivals[0][1])


class RecordStore(Protocol):
    async def save(self, record: SessionRecord) -> None: ...

    async def traffic(self, *, app: str | None = None, since: float = 0) -> list[TrafficRow]: ...

    async def transcripts(self, *, app: str | None = None, since: float = 0) -> list[SessionRecord]: ...


def aggregate(records: Sequence[SessionRecord]) -> list[TrafficRow]:
    """Traffic per (day, app), from session records."""
    rows: dict[tuple[str, str], TrafficRow] = {}
    for record in records:
        key = (record.day, record.app)
        row = rows.get(key, TrafficRow(record.day, record.app, 0, 0.0, 0, 0))
        rows[key] = TrafficRow(
            row.day,
            row.app,
            row.sessions + 1,
            row.audio_seconds + record.audio_seconds,
            row.audio_bytes + record.audio_bytes,
            row.errors + (record.error_code is not None),
        )
    return [rows[key] for key in sorted(rows)]


class SqliteRecordStore:
    """Records in a SQLite file; every query runs in a worker thread, one at a time, on one connection.

    Write-ahead logging with `synchronous=NORMAL`: a commit does not wait for the disk (a crash of the
    machine, not of the process, may lose the last records), and the retention sweep runs at most once a
    minute. Opening a connection and syncing per record made the records a sixth of the gateway's work
    when sessions turn over quickly (docs/performance.md).
    """

    PRUNE_INTERVAL = 60.0

    def __init__(self, path: str | Path, retention_days: float) -> None:
        self._path = str(path)
        self._retention = retention_days * DAY
        self._lock = trio.CapacityLimiter(1)
        self._connection: sqlite3.Connection | None = None
        self._pruned_at = 0.0

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # Used from trio's worker threads, one query at a time (the limiter), never concurrently.
            connection = sqlite3.connect(self._path, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS sessions"
                " (session TEXT PRIMARY KEY, app TEXT, started_at REAL, body TEXT)"
            )
            connection.execute("CREATE INDEX IF NOT EXISTS sessions_by_time ON sessions (started_at)")
            self._connection = connection
        return self._connection

    def _save(self, record: SessionRecord) -> None:
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
                (record.session_id, record.app, record.started_at, record.to_json()),
            )
            if record.ended_at - self._pruned_at >= self.PRUNE_INTERVAL:
                connection.execute(
                    "DELETE FROM sessions WHERE started_at < ?", (record.ended_at - self._retention,)
                )
                self._pruned_at = record.ended_at

    def _select(self, app: str | None, since: float) -> list[SessionRecord]:
        query = "SELECT body FROM sessions WHERE started_at >= ?"
        parameters: list[object] = [since]
        if app is not None:
            query += " AND app = ?"
            parameters.append(app)
        rows = self._connect().execute(query + " ORDER BY started_at", parameters).fetchall()
        return [SessionRecord.from_json(body) for (body,) in rows]

    async def save(self, record: SessionRecord) -> None:
        await trio.to_thread.run_sync(self._save, record, limiter=self._lock)

    async def transcripts(self, *, app: str | None = None, since: float = 0) -> list[SessionRecord]:
        return await trio.to_thread.run_sync(self._select, app, since, limiter=self._lock)

    async def traffic(self, *, app: str | None = None, since: float = 0) -> list[TrafficRow]:
        return aggregate(await self.transcripts(app=app, since=since))
