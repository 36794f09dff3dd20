"""The clients ASRWebSocketServer shipped (Python, Java, page), unmodified in what they send, against a real
`serve`; and the Python client's read loop, which stops at the close, over many runs.

The clients are the replicas in `tests/field_clients.py`, run as separate programs on the legacy
`websockets` API (see there for what each sends, byte for byte).
"""

from __future__ import annotations

import functools
import json
import sys
import wave
from pathlib import Path
from typing import Any

import jiwer
import pytest
import trio

from asr_actors import client
from asr_actors.server import serve
from asr_actors.testing.subprocess_server import running_server
from asr_actors.testing.textnorm import normalize
from tests.support import APPKEY, SECRET, fake_config

ROOT = Path(__file__).resolve().parent.parent.parent
DATA = ROOT / "tests" / "data" / "librivox"
CLIP = "sense_and_sensibility_01_austen_64kb-0870"
GUARD = 240
# Whisper tiny.en finals on this clip measured 0-5 %; the bound leaves room for the clients' chunking.
WER_BOUND = 0.2


async def run_clients(kind: str, wav: Path, urls: list[str]) -> list[list[dict[str, Any]]]:
    """Run the replica of `kind` once per URL, concurrently; each run's messages as its loop read them."""
    done = await trio.run_process(
        [sys.executable, "-m", "tests.field_clients", "--as", kind, str(wav), *urls],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert 0 == done.returncode, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def statuses(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["status"] if m["code"] == 200 else str(m["code"]) for m in messages]


def finals_text(messages: list[dict[str, Any]]) -> str:
    return " ".join(
        m["data"]["result"] for m in messages if m["code"] == 200 and m["data"]["status"] == "final"
    )


@pytest.mark.parametrize("kind", ["python", "java", "page"])
async def test_each_old_client_gets_its_finals_and_end(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real speech through the local engine: every old client gets start, finals that say what was said,
    and `end` last."""
    config = tmp_path / "config.toml"
    config.write_text(f'[apps.{APPKEY}]\nsecret = "{SECRET}"\n')
    reference = dict(line.split("\t") for line in (DATA / "transcripts.tsv").read_text().splitlines())[CLIP]
    with trio.fail_after(GUARD):
        async with running_server(config) as (http_url, _):
            url = client.sign_url(http_url.replace("http://", "ws://") + "v1/asr", APPKEY, SECRET)
            [messages] = await run_clients(kind, DATA / f"{CLIP}.wav", [url])
    seen = statuses(messages)
    assert ("start", "end") == (seen[0], seen[-1]), seen
    assert "final" in seen
    error = jiwer.wer(normalize(reference), normalize(finals_text(messages)))
    with capsys.disabled():
        print(f"\n[field client {kind}] WER {error:.3f}: {finals_text(messages)!r}")
    assert error <= WER_BOUND


def write_wav(path: Path, seconds: float) -> None:
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16000)
        writer.writeframes(b"\x01\x00" * int(16000 * seconds))


async def test_the_python_clients_read_loop_gets_everything_before_the_close(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The old Python client checks `ws.closed` before each read and naps 10 ms per message, so whatever is
    still queued when the close completes is lost to it. The server lingers after `end` (end_linger) and
    every one of 24 runs (12 at once, twice) must read every final and `end`. The fake engine answers at
    once: ~110 results per run pile up before the client has read them."""
    wav = tmp_path / "ten-seconds.wav"
    write_wav(wav, 10.0)
    listening = await nursery.start(functools.partial(serve, fake_config(server={"port": 0})))
    ws_url = listening.url.replace("http://", "ws://") + "v1/asr"
    expected = [*(["partial"] * 10 + ["final"]) * 10]
    with trio.fail_after(GUARD):
        for _ in range(2):
            urls = [client.sign_url(ws_url, APPKEY, SECRET, nonce=client.fresh_nonce()) for _ in range(12)]
            runs = await run_clients("python", wav, urls)
            assert [["start", *expected, "end"]] * 12 == [statuses(run) for run in runs]
