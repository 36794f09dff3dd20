"""How the commands print: tables of traffic, session transcripts, a live view of a transcription."""

from __future__ import annotations

import datetime
import json
import sys

import attrs

from asr_actors import client
from asr_actors.records import SessionRecord, TrafficRow


def print_traffic(rows: list[TrafficRow], *, as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(attrs.asdict(row)))
        return
    print(f"{'day':<10}  {'app':<20} {'sessions':>8} {'audio s':>10} {'bytes':>12} {'errors':>6}")
    for row in rows:
        print(
            f"{row.day:<10}  {row.app:<20} {row.sessions:>8} {row.audio_seconds:>10.1f}"
            f" {row.audio_bytes:>12} {row.errors:>6}"
        )


def print_transcripts(records: list[SessionRecord], *, as_json: bool) -> None:
    for record in records:
        if as_json:
            print(record.to_json())
            continue
        started = datetime.datetime.fromtimestamp(record.started_at, datetime.UTC).isoformat(
            timespec="seconds"
        )
        outcome = f"error {record.error_code}" if record.error_code else "ok"
        print(
            f"{started}  {record.session_id}  app={record.app} lang={record.language} engine={record.engine}"
            f" audio={record.audio_seconds:.1f}s {outcome}"
        )
        for final in record.finals:
            print(f"    [{final.begin_ms / 1000:7.2f}-{final.end_ms / 1000:7.2f}] {final.text}")


class TerminalView:
    """Partials overwrite one line (with progress); each final gets its own line."""

    def __init__(self, interactive: bool, seconds: float, show_finals: bool = True) -> None:
        self._interactive = interactive
        self._show_finals = show_finals
        self._seconds = seconds
        self._fraction = 0.0
        self._partial = ""
        self._reported_tenth = -1

    def progress(self, fraction: float) -> None:
        self._fraction = fraction
        if self._interactive:
            self._redraw()
        elif int(fraction * 10) != self._reported_tenth:
            self._reported_tenth = int(fraction * 10)
            print(f"sent {fraction:.0%} of {self._seconds:.1f} s", file=sys.stderr, flush=True)

    def result(self, received: client.Received) -> None:
        if received.status == "partial":
            self._partial = received.text
            if self._interactive:
                self._redraw()
        elif received.status == "final" and self._show_finals:
            self._partial = ""
            if self._interactive:
                sys.stdout.write("\r\x1b[K")
            print(received.text, flush=True)
            if self._interactive:
                self._redraw()

    def _redraw(self) -> None:
        sys.stdout.write(f"\r\x1b[K[{self._fraction:4.0%}] {self._partial}")
        sys.stdout.flush()

    def done(self) -> None:
        if self._interactive:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
